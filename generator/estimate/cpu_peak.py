"""This CPU's matmul peak: given, cached from an earlier run on this machine, or measured now.

The estimate for `cpu` hardware needs a peak in TFLOP/s. Measuring it takes a torch import (over a
second) plus a few matmuls, and a measurement on a busy machine comes out low, so the result is kept
per machine in a small JSON file and later runs reuse it:

    $XDG_CACHE_HOME/llmgen/cpu_peak.json   (default ~/.cache/llmgen/cpu_peak.json)

An entry is keyed by CPU model, thread count and torch version, so a new machine, another
`OMP_NUM_THREADS` or a torch upgrade measures again. Delete the file to re-measure; set
LLMGEN_CPU_TFLOPS (one number for every precision) to skip all of this.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from generator.errors import EstimateError
from reference_llm.config import Dtype

CPU_TFLOPS_ENV = "LLMGEN_CPU_TFLOPS"
_in_process: dict[str, float] = {}


def cpu_tflops(precision: str = Dtype.BFLOAT16, size: int = 1024, repeats: int = 5) -> float:
    """Matmul peak of this CPU in TFLOP/s for `precision` (bfloat16 or float32; float8 runs as bf16 here)."""
    given = os.environ.get(CPU_TFLOPS_ENV)
    if given:
        try:
            value = float(given)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise EstimateError(f"{CPU_TFLOPS_ENV}={given!r} must be a positive number of TFLOP/s")
        return value
    key = f"{machine_key()}|{precision}|{size}"
    if key not in _in_process:
        cache = cache_path()
        entries = _read(cache)
        if key not in entries:
            entries[key] = measure(precision, size, repeats)
            _write(cache, entries)
        _in_process[key] = entries[key]
    return _in_process[key]


def measure(precision: str, size: int = 1024, repeats: int = 5) -> float:
    """Best of `repeats` square matmuls (2·size³ FLOPs each): the peak, least disturbed by other load."""
    import torch  # here: nothing else in the estimator needs torch, and importing it costs over a second

    dtype = torch.float32 if precision == Dtype.FLOAT32 else torch.bfloat16  # no fp8 matmul on CPU
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: the first call pays for thread-pool start and kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llmgen" / "cpu_peak.json"


def machine_key() -> str:
    """CPU model, threads torch will use, torch version: what the measured peak depends on."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = os.environ.get("OMP_NUM_THREADS") or str(usable)
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "none"
    return f"{model}|threads={threads}|torch={torch_version}"


def _read(path: Path) -> dict[str, float]:
    """The cached entries; an unreadable or malformed file counts as empty (it is only a cache)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and v > 0}


def _write(path: Path, entries: dict[str, float]) -> None:
    """Atomic replace; a read-only home just means the next run measures again."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cpu_peak.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
