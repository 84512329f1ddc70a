"""What train.dtype "auto" means is one rule (`reference_llm.config.auto_dtype`), applied both by llmgen's
plans (`Hardware.auto_dtype`) and by the run itself (`reference_llm.train.perf.resolve_dtype`); and the
short precision names people type become reference_llm's names at the command line."""

from __future__ import annotations

import pytest
import torch

from generator.estimate import parse_hardware
from generator.estimate.precision import FLOAT8, PRECISIONS, canonical_precision
from generator.plan import resolve_precision
from reference_llm import config
from reference_llm.config import Dtype, auto_dtype
from reference_llm.errors import ConfigError
from reference_llm.train import perf

BF16_CPU = frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"})
AMX_CPU = frozenset({"fpu", "avx2", "amx_tile", "amx_bf16"})
OLD_CPU = frozenset({"fpu", "avx2", "avx512f"})  # AVX-512 alone has no bf16 dot products


@pytest.mark.parametrize(
    ("device", "gpu_bf16", "flags", "expected"),
    [
        ("cuda", True, (), Dtype.BFLOAT16),
        ("cuda", False, BF16_CPU, Dtype.FLOAT32),  # a GPU is judged by the GPU, not the host CPU
        ("cpu", False, BF16_CPU, Dtype.BFLOAT16),
        ("cpu", False, AMX_CPU, Dtype.BFLOAT16),
        ("cpu", True, OLD_CPU, Dtype.FLOAT32),  # a CPU is judged by its flags
        ("cpu", False, (), Dtype.FLOAT32),
    ],
)
def test_the_rule(device, gpu_bf16, flags, expected):
    assert auto_dtype(device, gpu_bf16=gpu_bf16, cpu_flags=flags) is expected


def test_llmgen_applies_the_rule_to_catalogue_gpus_and_this_cpu(monkeypatch):
    monkeypatch.setenv("LLMGEN_CPU_TFLOPS", "0.5")  # equal peaks: the old peak comparison would say bf16
    assert parse_hardware("8xH100").auto_dtype() is Dtype.BFLOAT16
    assert parse_hardware("4xT4").auto_dtype() is Dtype.FLOAT32  # Turing: no bf16 tensor cores
    cpu = parse_hardware("cpu")
    monkeypatch.setattr("generator.estimate.hardware.host_cpu_flags", lambda: OLD_CPU)
    assert cpu.auto_dtype() is Dtype.FLOAT32
    assert cpu.compute_precision("auto") == "float32" and cpu.compute_precision("bfloat16") == "bfloat16"
    monkeypatch.setattr("generator.estimate.hardware.host_cpu_flags", lambda: BF16_CPU)
    assert cpu.auto_dtype() is Dtype.BFLOAT16
    monkeypatch.setattr("generator.estimate.hardware.host_cpu_flags", lambda: None)  # not Linux
    assert cpu.auto_dtype() is Dtype.FLOAT32


@pytest.mark.parametrize(
    ("flags", "expected"), [(BF16_CPU, torch.bfloat16), (AMX_CPU, torch.bfloat16), (OLD_CPU, torch.float32)]
)
def test_the_run_and_llmgen_agree_on_a_cpu(monkeypatch, flags, expected):
    monkeypatch.setattr(perf, "host_cpu_flags", lambda: flags)
    monkeypatch.setattr("generator.estimate.hardware.host_cpu_flags", lambda: flags)
    planned = parse_hardware("cpu", cpu_tflops=1.0).auto_dtype()
    assert perf.resolve_dtype("auto", torch.device("cpu")) == getattr(torch, planned) == expected


def test_the_run_asks_torch_where_there_is_no_proc_cpuinfo(monkeypatch):
    monkeypatch.setattr(perf, "host_cpu_flags", lambda: None)
    for supported, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda s=supported: s, raising=False)
        assert perf.resolve_dtype("auto", torch.device("cpu")) == expected


def test_explicit_names_are_torchs_own():
    cpu = torch.device("cpu")
    assert (perf.resolve_dtype("float32", cpu), perf.resolve_dtype("bfloat16", cpu)) == (torch.float32, torch.bfloat16)
    with pytest.raises(ConfigError, match="train.dtype must be one of auto, float32, bfloat16; got 'bf16'"):
        perf.resolve_dtype("bf16", cpu)


def test_the_run_counts_only_native_bf16_on_gpus(monkeypatch):
    """A T4 emulates bf16 (torch.cuda.is_bf16_supported() is True by default there); auto must not pick
    it, as llmgen's plan for a T4 does not."""

    def turing(including_emulation: bool = True) -> bool:
        return including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", turing)
    assert perf.resolve_dtype("auto", torch.device("cuda")) == torch.float32
    assert parse_hardware("1xT4").auto_dtype() is Dtype.FLOAT32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # Ampere
    assert perf.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_runtime_and_llmgen_read_the_same_cpu_flags(monkeypatch):
    flags = config.host_cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this system")
    assert perf.cpu_flags() == flags
    expected = torch.bfloat16 if parse_hardware("cpu", cpu_tflops=1.0).auto_dtype() is Dtype.BFLOAT16 else torch.float32
    assert perf.resolve_dtype("auto", torch.device("cpu")) == expected


def test_short_names_become_reference_llms_names():
    assert [canonical_precision(n) for n in ("bf16", "FP32", " fp8 ")] == ["bfloat16", "float32", FLOAT8]
    assert canonical_precision("bfloat16") == "bfloat16" and canonical_precision("fp16") == "fp16"
    assert set(PRECISIONS) == {Dtype.BFLOAT16, Dtype.FLOAT32, FLOAT8}
    gpu, cpu = parse_hardware("8xH100"), parse_hardware("cpu", cpu_tflops=1.0)
    assert resolve_precision("bf16", gpu) == "bfloat16" and resolve_precision("auto", gpu) == "bfloat16"
    assert resolve_precision("auto", parse_hardware("1xT4")) == "float32"
    assert resolve_precision("auto", cpu) == "auto"  # decided at run time, on the machine that trains
