"""How long `llmgen new demo --yes --no-git` takes (target: under 3 s).

    python benchmarks/render.py            # 5 runs in-process, 5 as a subprocess
    python benchmarks/render.py --quick    # 2 of each: checks that the script runs
    python benchmarks/render.py --json     # JSON on stdout instead of a table

"subprocess" is what a person waits for: a fresh interpreter importing typer and copier (not torch:
`llmgen new` only reasons about shapes), the estimate, the Copier render, the corpus copy. The benchmark
runs with an empty cache folder (XDG_CACHE_HOME in a temporary directory), so its first subprocess run is
someone's very first run on this machine: it also creates llmgen's versioned template cache and measures
the CPU's matmul peak (the default budget is "laptop"; that takes a torch import). That run is reported
apart; the later ones find both cached, as every later `llmgen new` does. "in-process" repeats the
command inside one interpreter: the first run pays for the imports and is reported apart. Every run
writes a fresh project into a temporary directory that is deleted afterwards. Times are wall-clock;
the machine's load is printed with them because shared machines are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 3.0
COMMAND = ["new", "demo", "--yes", "--no-git"]


def time_subprocess(runs: int) -> list[float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="llmgen-bench-") as scratch:
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "generator.cli", *COMMAND], cwd=scratch, env=env, check=True, capture_output=True
            )
            times.append(time.perf_counter() - start)
    return times


def time_in_process(runs: int) -> list[float]:
    """Wall time of each call of the Typer app in this interpreter; the first includes the imports."""
    times = []
    start = time.perf_counter()
    from generator.cli import app  # timed with the first run: importing is part of a cold start

    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="llmgen-bench-") as scratch:
            cwd = os.getcwd()
            os.chdir(scratch)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # the estimate panel, not wanted here
                    code = app([*COMMAND], standalone_mode=False)
            finally:
                os.chdir(cwd)
            times.append(time.perf_counter() - start)
            if code:
                raise SystemExit(f"llmgen {' '.join(COMMAND)} exited with {code}")
        start = time.perf_counter()
    return times


def summary(name: str, times: list[float]) -> dict[str, Any]:
    return {
        "mode": name,
        "runs": len(times),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "under_target": statistics.median(times) < TARGET_SECONDS,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per mode (default 5)")
    parser.add_argument("--quick", action="store_true", help="2 runs per mode")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    args = parser.parse_args()
    runs = 2 if args.quick else args.runs

    with tempfile.TemporaryDirectory(prefix="llmgen-bench-cache-") as cache:
        os.environ["XDG_CACHE_HOME"] = cache  # holds the template cache and the CPU peak: both start empty
        os.environ.pop("LLMGEN_TEMPLATE_CACHE", None)
        os.environ.pop("LLMGEN_CPU_TFLOPS", None)
        sub = time_subprocess(runs + 1)  # one extra: the first run on this machine is reported apart
        inproc = time_in_process(runs + 1)  # one extra: the first (cold) run is reported apart
    rows = [
        summary("subprocess", sub[1:]),
        summary("subprocess, first on this machine", sub[:1]),
        summary("in-process, first (imports)", inproc[:1]),
        summary("in-process, warm", inproc[1:]),
    ]
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "target_s": TARGET_SECONDS,
        "command": "llmgen " + " ".join(COMMAND),
    }
    if args.json:
        print(json.dumps({"machine": machine, "results": rows}, indent=2))
        return 0
    table = Table(title=f"llmgen {' '.join(COMMAND)} (target < {TARGET_SECONDS:g} s)", title_justify="left")
    for column in ("mode", "runs", "median s", "min s", "max s", "< target"):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for row in rows:
        table.add_row(
            row["mode"],
            str(row["runs"]),
            f"{row['median_s']:.2f}",
            f"{row['min_s']:.2f}",
            f"{row['max_s']:.2f}",
            "yes" if row["under_target"] else "NO",
        )
    console = Console()
    console.print(table)
    console.print(
        f"Python {machine['python']}, {machine['cpus']} CPUs, load average {machine['load_avg_1m']} "
        "(noisy on a shared machine: compare medians of runs taken together)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
