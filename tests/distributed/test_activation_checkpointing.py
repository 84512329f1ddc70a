"""Activation checkpointing (`train.activation_checkpointing`, parallelize.apply_activation_checkpointing):
the same gradients as without it, the parameter names untouched, the memory the estimator predicts for
each setting, and compiled as well as eager. Under DDP, FSDP2 and ZeRO-3 it runs in test_sharded.py;
through the real entry point in test_train_launch.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from generator.estimate import RunSpec, estimate_run
from generator.estimate.hardware import Hardware, cpu_spec
from reference_llm.config import config_from_dict
from reference_llm.distributed.parallelize import CHECKPOINTING, apply_activation_checkpointing
from reference_llm.errors import ConfigError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train.perf import peak_allocated_bytes

REPO = Path(__file__).resolve().parents[2]
# Activations, not logits, dominate a step of this shape (a small vocabulary, 128 tokens).
SHAPE = {"n_layer": 4, "d_model": 128, "n_head": 4, "vocab_size": 128, "block_size": 128}
BATCH = 4


def build(config: ModelConfig, mode: str) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(config)
    apply_activation_checkpointing(model, mode)
    return model


def loss_and_grads(model: torch.nn.Module, idx: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    _, loss = model(idx, idx)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize("mode", ["selective", "full"])
def test_checkpointing_changes_what_is_kept_not_what_is_computed(attention, mode):
    config = ModelConfig.preset("tiny", attention=attention)  # llama: RoPE, RMSNorm, SwiGLU, GQA
    idx = torch.randint(0, config.vocab_size, (2, 32))
    plain, checkpointed = build(config, "none"), build(config, mode)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in checkpointed.named_parameters()]
    loss, grads = loss_and_grads(plain, idx)
    loss_ac, grads_ac = loss_and_grads(checkpointed, idx)
    assert loss_ac == loss
    assert all(torch.equal(grads_ac[name], grad) for name, grad in grads.items())


def step_peak(model: Transformer, idx: torch.Tensor) -> int:
    """Peak bytes allocated during one forward + backward (the logits held by the caller, as in
    training), after a first step so that gradients exist; the estimator tests measure the same way."""

    def step() -> None:
        logits, loss = model(idx, idx)
        loss.backward()
        del logits

    step()
    return peak_allocated_bytes(step)


def estimated_step(config: ModelConfig, mode: str) -> float:
    spec = RunSpec(
        config,
        Hardware(1, 1, cpu_spec(tflops=1.0)),
        tokens=1e6,
        parallelism="single",
        precision="float32",
        micro_batch=BATCH,
        seq_len=config.block_size,
        activation_checkpointing=mode,
        attention="manual",
    )
    return estimate_run(spec).step_bytes


def test_each_setting_uses_the_memory_the_estimator_predicts():
    """With the manual attention path (which keeps the score matrix): selective drops the scores,
    full keeps one input per block, and each measured step peak is within 15% of the estimate."""
    config = ModelConfig.preset("tiny-gpt2", attention="manual", **SHAPE)
    idx = torch.randint(0, config.vocab_size, (BATCH, config.block_size))
    measured = {mode: step_peak(build(config, mode), idx) for mode in CHECKPOINTING}
    assert measured["none"] > measured["selective"] > measured["full"]
    for mode, peak in measured.items():
        assert estimated_step(config, mode) == pytest.approx(peak, rel=0.15), mode


def test_an_unknown_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        config_from_dict({"train": {"activation_checkpointing": "sometimes"}})
    with pytest.raises(ConfigError, match="selective"):
        apply_activation_checkpointing(Transformer(ModelConfig.preset("tiny")), "sometimes")


@pytest.mark.slow
def test_checkpointed_blocks_compile():
    """torch.compile traces through the checkpointed blocks, the selective policy included, and
    computes what eager mode computes."""
    config = ModelConfig.preset("tiny-gpt2", attention="manual")
    idx = torch.randint(0, config.vocab_size, (2, 32))
    loss, grads = loss_and_grads(build(config, "none"), idx)
    compiled = torch.compile(build(config, "selective"))
    loss_c, grads_c = loss_and_grads(compiled, idx)
    assert loss_c == pytest.approx(loss, rel=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_c[f"_orig_mod.{name}"], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_benchmark_runs_as_its_docstring_says(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "benchmarks/activation_memory.py", "--quick", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    rows = {(r["attention"], r["checkpointing"]): r for r in report["rows"]}
    assert set(rows) == {(a, m) for a in ("manual", "sdpa") for m in CHECKPOINTING}
    assert all(r["measured_mib"] > 0 and r["estimated_mib"] > 0 and r["step_ms"] > 0 for r in rows.values())
    assert rows[("manual", "full")]["measured_mib"] < rows[("manual", "none")]["measured_mib"]
    assert report["machine"]["cpu_features"] in ("AMX", "AVX512-BF16", "neither")
