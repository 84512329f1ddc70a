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
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reference_llm.config import Dtype, auto_dtype, host_cpu_flags
from reference_llm.errors import ConfigError
from reference_llm.train.files import write_text_atomic


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" -> cuda if available, else cpu; "cpu", "cuda", "cuda:N" are checked against the machine."""
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


def peak_allocated_bytes(step: Callable[[], object]) -> int:
    """Peak bytes allocated on the CPU while `step()` runs, above what was allocated before it. A CPU has
    no peak counter like CUDA's, so this replays torch.profiler's allocation timeline."""
    from torch.profiler import ProfilerActivity, profile  # only measuring code pays for the profiler import

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    in_use = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        in_use += event.nbytes()
        peak = max(peak, in_use)
    return peak


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    size: int = 2048,
    repeats: int = 7,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """FLOP/s of a (size x size) @ (size x size) matmul in `dtype`, from the fastest of `repeats` timings:
    a peak, so the run least slowed by anything else on the machine is the one that counts.

    `clock=time.process_time` gives FLOPs per CPU-second of this process instead (CPU only): the
    denominator for an MFU taken from CPU time, which a busy machine's other processes lower far less."""
    device = torch.device(device)
    # A private generator: measuring must not move the global RNG, which training's dropout draws from.
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    a @ b  # warm-up: first call pays for allocation and kernel selection
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = clock()
        a @ b
        synchronize(device)
        times.append(clock() - start)
    return 2 * size**3 / min(times)


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Fraction of `peak_flops` that the model's matmuls achieve at this throughput."""
    return tokens_per_second * flops_per_token / peak_flops if peak_flops > 0 else 0.0


# ----------------------------------------------------------------------------------------------------
# train.compile = "auto": compile when it pays off within the run
# ----------------------------------------------------------------------------------------------------

COMPILE_RECORD = "reference_llm_compile.json"  # in the inductor cache: what compiling cost here before
COLD_COMPILE_S = 30.0  # prior: a cold torch.compile of the presets took 20-40 s on a quiet 2-core CPU
WARM_COMPILE_S = 5.0  # prior: the same with the cache holding this model's kernels (~3 s measured)
SPEEDUP_PRIOR = 1.2  # prior: compiled over eager step time; 1.1-1.3x measured on the presets without AMX, 1.6x with
EAGER_CALLS = 6  # eager forward calls timed before deciding (the first interval is left out: warm-up)
COMPILED_CALLS = 6  # compiled calls timed after compiling, for the record
_COMPILED_IN_THIS_PROCESS: set[str] = set()  # keys whose compile cost this process has recorded


def check_compile_setting(value: object) -> bool | str:
    """`train.compile`: true, false or "auto"; ConfigError otherwise."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return "auto"
    raise ConfigError(f'train.compile must be true, false or "auto"; got {value!r}')


def inductor_cache_dir(default: Path) -> Path:
    """Where torch.compile keeps its kernels: TORCHINDUCTOR_CACHE_DIR, set to `default` when the user did
    not set it (a project's `.cache/inductor`, rather than inductor's /tmp default that a reboot empties).

    torch writes its default into the environment itself the first time it looks (importing
    torch._dynamo does, and building an optimizer imports it), so that value counts as unset too."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:  # private, hence guarded: without it only a missing variable counts as unset
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default: str | None = os.path.abspath(default_cache_dir())
    except ImportError:
        torch_default = None
    if current is None or current == torch_default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = current = str(default.resolve())
    return Path(current)


def compile_model(model: torch.nn.Module) -> Callable:
    """`torch.compile(model)`, with inductor's C++ wrapper for a model on the CPU: the compiled graphs
    then launch their kernels from C++ instead of one Python call each. Without AMX it measured 3% (6/384)
    to 8% (4/128) faster per step, nothing on the demo shape, for a 5-40% longer cold compile; the smaller
    and faster the step, the more of it per-kernel Python overhead is (AMX CPUs)."""
    on_cpu = next((p.device.type == "cpu" for p in model.parameters()), True)
    return torch.compile(model, options={"cpp_wrapper": True} if on_cpu else None)


class AutoCompile:
    """The forward function for `train.compile = "auto"`: eager at first, compiled once that pays off.

    The first `EAGER_CALLS` calls run eagerly and are timed, call start to call start (so a call's time
    covers its backward pass and optimizer step too), in wall time and, where `cpu_clock` is given (the
    CPU; not CUDA, whose work the host clock does not see), in CPU time of this process, from which
    the speedup is measured. Then it compiles if the time that compiling is
    expected to save over the rest of the run, (remaining calls x eager time) x (1 - 1/speedup), capped
    by the time budget, exceeds what compiling is expected to cost. Cost and speedup come from the
    record of an earlier compile of the same model, batch and machine (kept next to the inductor
    cache, so that deleting the cache deletes the record too), else from the priors above: a warm cost
    when the record says this cache already holds the kernels, a cold one otherwise. After compiling, it
    times the compile and the compiled calls and updates the record, so estimates are measured ones
    from the second run on. With several processes, all compile only if every one would.

    The choice depends on timings, so two runs can differ at the level of compiled versus eager
    rounding; `train.compile = true` or `false` keeps a CPU run bit-reproducible.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        planned_calls: int,
        budget_s: float,
        key: str,
        record: Path,
        note: Callable[[str], None],
        clock: Callable[[], float] = time.perf_counter,
        cpu_clock: Callable[[], float] | None = time.process_time,
        compile_fn: Callable[[torch.nn.Module], Callable] = compile_model,
        busy: Callable[[], float] | None = None,
    ) -> None:
        self.model, self.planned_calls, self.budget_s = model, planned_calls, budget_s
        self.key, self.record, self.note, self.compile_fn = key, record, note, compile_fn
        self.clock, self.cpu_clock = clock, cpu_clock
        self.busy = busy or machine_busy
        self.forward: Callable = model
        self.compiled: bool | None = None  # None until decided
        self.calls = 0
        self.starts: list[tuple[float, float]] = []  # (wall, CPU) time at the start of each call, while timing
        self.eager_s = self.compile_s = self.compiled_s = math.nan
        self.eager_cpu_s = math.nan

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.compiled is None or (self.compiled and math.isnan(self.compiled_s)):
            wall = self.clock()
            self.starts.append((wall, self.cpu_clock() if self.cpu_clock else wall))
            if self.compiled is None and len(self.starts) == EAGER_CALLS + 1:
                self._decide()
            elif self.compiled and len(self.starts) == COMPILED_CALLS + 2:
                self._measure_compiled()
        return self.forward(*args, **kwargs)

    def _decide(self) -> None:
        self.eager_s, self.eager_cpu_s = _median_intervals(self.starts[1:])  # the first call warms up
        now = self.starts[-1][0]
        known = _read_records(self.record).get(self.key)
        if known:
            cost, speedup, source = known.get("warm_s", WARM_COMPILE_S), known["speedup"], "measured here before"
        else:
            cost, speedup, source = COLD_COMPILE_S, SPEEDUP_PRIOR, "prior: first compile on this machine"
        busy = self.busy()
        cost *= busy  # costs are kept as a quiet machine's; a busy one compiles slower
        if busy > 1:
            source += f"; machine {busy:.1f}x busy"
        remaining = max(
            0.0, min((self.planned_calls - self.calls + 1) * self.eager_s, self.budget_s - (now - self.starts[0][0]))
        )
        saved = remaining * max(0.0, 1 - 1 / speedup)
        self.compiled = _agree(saved > cost)
        self.note(
            f"compile auto: {'compiling' if self.compiled else 'staying eager'}: ~{cost:.0f} s to compile vs "
            f"~{saved:.0f} s saved over the remaining {remaining:.0f} s ({speedup:.2f}x, {source})"
        )
        if self.compiled:
            self.forward = self.compile_fn(self.model)
            self.starts = self.starts[-1:]  # the next interval holds the compile and the first compiled call

    def _measure_compiled(self) -> None:
        self.compiled_s, compiled_cpu_s = _median_intervals(self.starts[1:])
        self.compile_s = max(0.0, self.starts[1][0] - self.starts[0][0] - self.compiled_s)  # wall: g++ runs apart
        quiet_s = self.compile_s / self.busy()  # what it would have cost on a quiet machine (roughly)
        records = _read_records(self.record)
        entry = records.get(self.key, {"cold_s": quiet_s})
        # A record means the kernels were in the cache: a warm compile, unless this process compiled the
        # same model before, when torch's in-memory caches make it near free (not what a new run pays).
        if self.key in records and self.key not in _COMPILED_IN_THIS_PROCESS:
            entry["warm_s"] = quiet_s
        _COMPILED_IN_THIS_PROCESS.add(self.key)
        # The speedup from CPU time where there is one: on a busy machine wall time measures the neighbours.
        entry.update(speedup=self.eager_cpu_s / compiled_cpu_s, eager_s=self.eager_s, compiled_s=self.compiled_s)
        records[self.key] = entry
        with contextlib.suppress(OSError):  # only a cache: a read-only one means estimating from priors again
            self.record.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.record, json.dumps(records, indent=1, sort_keys=True))
        self.starts = []


def _median_intervals(starts: list[tuple[float, float]]) -> tuple[float, float]:
    """Median wall and CPU time between consecutive call starts."""
    pairs = list(zip(starts, starts[1:]))
    return (statistics.median(b[0] - a[0] for a, b in pairs), statistics.median(b[1] - a[1] for a, b in pairs))


def machine_busy() -> float:
    """How many times over the CPUs are asked for: the 1-minute load average over the usable CPUs, at
    least 1. A rough model of how much slower a compile (Python, then g++ on every CPU) runs now than on
    a quiet machine; measured here, 20-40 s quiet and ~190 s at 5x busy for a cold compile."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return 1.0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1.0, load / cpus)


def compile_key(config: Any, device: torch.device, dtype: torch.dtype, micro_batch: int, seq_len: int) -> str:
    """What a compile's cost and speedup depend on: the model and batch shapes, dtype, device, threads,
    torch version and processor."""
    if device.type == "cuda":
        processor = torch.cuda.get_device_name(device)
    else:
        processor = next(
            (line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")),
            platform.processor(),
        )
    shape = {k: v for k, v in dataclasses.asdict(config).items() if k != "name"}
    return json.dumps(
        {
            "model": shape,
            "batch": [micro_batch, seq_len],
            "dtype": str(dtype),
            "device": device.type,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "processor": processor,
        },
        sort_keys=True,
    )


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def _read_records(path: Path) -> dict[str, dict[str, float]]:
    """The records; a missing, unreadable or malformed file counts as empty (it is only a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        k: v
        for k, v in data.items()
        if isinstance(v, dict) and isinstance(v.get("speedup"), (int, float)) and v["speedup"] > 0
    }


def _agree(flag: bool) -> bool:
    """True only if every process of a distributed run says True (one process: `flag`)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())
