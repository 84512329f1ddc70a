"""Device and precision choice, and speed accounting: measured matmul peak and model FLOPs utilisation.

`train.device = "auto"` picks CUDA when present, else the CPU. `train.dtype = "auto"` picks bf16
autocast where the hardware computes in bf16 natively (GPUs with bf16 tensor cores; CPUs with
AVX512-BF16 or AMX), where it trains 2-3x faster than fp32, and fp32 elsewhere: the rule is
`reference_llm.config.auto_dtype`, which llmgen's plans apply too; this module only gathers its inputs.

MFU (model FLOPs utilisation, Chowdhery et al. 2022, appendix B) is achieved model FLOP/s over the
device's peak. We measure that peak in the same process, as a large square matmul in the dtype
training uses, instead of trusting a datasheet, so that the ratio is honest on a shared or throttled
machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import time

import torch

from reference_llm.config import Dtype, auto_dtype, host_cpu_flags
from reference_llm.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" -> cuda if available, else cpu; "cpu", "cuda", "cuda:N" are checked against the machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available; use cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N; got {name!r}")
    return device


def cpu_flags() -> frozenset[str]:
    """This CPU's flags: /proc/cpuinfo's on Linux; elsewhere the AVX512-BF16 flag when PyTorch's
    (private, hence guarded) CPU feature probe reports it."""
    flags = host_cpu_flags()
    if flags is None:
        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        flags = frozenset({"avx512_bf16"} if probe and probe() else ())
    return flags


def cpu_features() -> str:
    """This CPU's bf16 matmul hardware, as benchmarks report it next to their figures: "AMX" (tile
    matmul units, Sapphire Rapids and later), "AVX512-BF16" (bf16 dot products in vector registers
    only) or "neither" (bf16 is emulated, slower than fp32)."""
    flags = cpu_flags()
    if {"amx_bf16", "amx_tile"} <= flags:
        return "AMX"
    return "AVX512-BF16" if "avx512_bf16" in flags else "neither"


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype for autocast on `device`: a `Dtype` name, "auto" resolved by `auto_dtype`."""
    if name not in tuple(Dtype):
        raise ConfigError(f"train.dtype must be one of {', '.join(Dtype)}; got {name!r}")
    dtype = Dtype(name)
    if dtype is Dtype.AUTO:
        if device.type == "cuda":
            # Native bf16 only: emulated bf16 (what the default including_emulation=True also counts)
            # runs slower than fp32 on GPUs without bf16 tensor cores.
            dtype = auto_dtype("cuda", gpu_bf16=torch.cuda.is_bf16_supported(including_emulation=False))
        else:
            dtype = auto_dtype(device.type, cpu_flags=cpu_flags())
    return getattr(torch, dtype.value)  # Dtype names are torch's: torch.float32, torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes: matmuls in `dtype`, weights and optimizer state stay fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# glibc mallopt() parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_HEAP_LIMIT = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed tensor memory instead of handing it back to the OS every step.

    By default glibc serves allocations above a threshold (128 KiB, raised on the fly up to 32 MiB)
    with fresh mmap() calls, and trims the heap's top when memory is freed. A CPU training step frees
    and reallocates every activation, so each step page-faults its memory back in: ~1,800 faults per
    step on nanoGPT's 4-layer CPU shape, where they cost a quarter of the step time. Serving
    allocations up to 1 GiB from the heap and never trimming it makes those steps fault-free; it is
    what jemalloc or tcmalloc achieve in Intel's CPU tuning guides, with nothing to install. The price
    is that the process keeps its peak memory, as every training run does anyway.

    Returns whether it was applied: only on Linux with glibc (elsewhere malloc differs; nothing to do).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; setting either value also turns off glibc's dynamic threshold.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_LIMIT) and libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_LIMIT))


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(dtype: torch.dtype, device: torch.device | str = "cpu", size: int = 2048,
                        repeats: int = 7) -> float:
    """FLOP/s of a (size x size) @ (size x size) matmul in `dtype`, from the fastest of `repeats` timings:
    a peak, so the run least slowed by anything else on the machine is the one that counts."""
    device = torch.device(device)
    # A private generator: measuring must not move the global RNG, which training's dropout draws from.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    a @ b  # warm-up: first call pays for allocation and kernel selection
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Fraction of `peak_flops` that the model's matmuls achieve at this throughput."""
    return tokens_per_second * flops_per_token / peak_flops if peak_flops > 0 else 0.0
