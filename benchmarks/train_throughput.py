"""Training throughput on this machine: tokens/s, ms per step and MFU, ours against nanoGPT's recipe.

    python benchmarks/train_throughput.py            # full run, a few minutes on 2 cores
    python benchmarks/train_throughput.py --quick    # smoke run: few steps, a short peak measurement
    python benchmarks/train_throughput.py --json     # machine-readable, on stdout
    python benchmarks/train_throughput.py --threads 1 --baseline-tree /tmp/before   # before/after, side by side

`--attention sdpa` or `manual` fixes the attention kernel of the "ours" rows, to measure which is
faster on a CPU where `Attention._use_sdpa`'s rule was not measured (it was on AVX512-BF16, not AMX).
`--baseline-tree DIR` names a copy of an earlier version's library (a directory holding its
`reference_llm/`, e.g. `git archive HEAD~1 reference_llm | tar -x -C DIR`): the "ours" rows then run
once with each library, in the same rounds, and the table adds after/before ratios. `--threads 1`
keeps a busy machine's other processes from stalling torch's two-thread barriers (on a shared
2-core machine under load, a 2-thread step can take 10x its quiet time); every row also reports its
process CPU time per step, which other processes lower far less than they lower wall time.

Shapes: nanoGPT's README CPU shape (4 layers, 4 heads, 128 wide, context 64, batch 12), its
Shakespeare-char shape (6/6/384, context 256, batch 8), both with nanoGPT's character vocabulary of
65, and our demo preset. Each (shape, recipe) row lives in a worker process of its own (malloc
settings are process-wide, and a row must not inherit another's), and the rows take turns round by
round so that machine noise hits all alike; each row reports its best round (the median step of
that round), as the matmul peak does:

- "nanoGPT recipe": what nanoGPT does on a CPU: fp32, eager, SDPA attention, AdamW, glibc's
  default malloc;
- "ours": the library's defaults for this device (train.dtype="auto": bf16 autocast where the CPU
  has native bf16; attention="auto": the manual path where SDPA's bf16 backward is slow) and what
  `reference_llm.train` does on a CPU (`perf.keep_freed_memory`: no page faults between steps).

A step is the real training step (`reference_llm.train.train_step`: forward, backward, clip, AdamW)
on a fixed random batch. MFU divides achieved model FLOP/s (6N + 12·L·C·T per token, see
`ModelConfig.flops_per_token`) by this machine's matmul peak in the row's dtype, measured here as the
fastest of several 2048x2048 matmuls. The report names the CPU's bf16 hardware (AMX, AVX512-BF16 or
neither: `perf.cpu_features`), which decides that peak and how much of a step the matmuls are; the
nanoGPT figures quoted are those measured with nanoGPT itself on 2 cores of the same kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import reference_llm
from reference_llm.config import RunConfig
from reference_llm.distributed import SingleDeviceEngine
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train import perf, train_step
from reference_llm.train.optim import optimizer_factory
from reference_llm.train.perf import autocast, keep_freed_memory, measure_matmul_peak, mfu, resolve_dtype

# tokens/s of nanoGPT itself on 2 cores of each kind of CPU this project runs on (docs/training.md)
NANOGPT_REFERENCE = {
    "AMX": {"nanogpt-cpu": 25_600, "nanogpt-shakespeare": 3_400},
    "AVX512-BF16": {"nanogpt-cpu": 23_000, "nanogpt-shakespeare": 1_900},
}
TARGETS = "targets (AMX CPUs): ours + compile >= 3x the nanoGPT recipe on both nanoGPT shapes, MFU >= 45% on 6/384"


@dataclass(frozen=True)
class Shape:
    preset: str
    batch: int
    seq_len: int


SHAPES = (Shape("nanogpt-cpu", 12, 64), Shape("nanogpt-shakespeare", 8, 256), Shape("demo", 8, 256))


@dataclass(frozen=True)
class Recipe:
    name: str
    dtype: str  # train.dtype
    attention: str  # model.attention
    compile: bool
    keep_freed_memory: bool  # what reference_llm.train does on a CPU
    tree: str | None = None  # run with the library in this directory (--baseline-tree) instead of this one's

    def before(self, tree: str) -> Recipe:
        return dataclasses.replace(self, name=f"{self.name} (before)", tree=tree)


BASELINE = Recipe("nanoGPT recipe", dtype="float32", attention="sdpa", compile=False, keep_freed_memory=False)
OURS = Recipe("ours", dtype="auto", attention="auto", compile=False, keep_freed_memory=True)
OURS_COMPILED = Recipe("ours + compile", dtype="auto", attention="auto", compile=True, keep_freed_memory=True)


class Runner:
    """One (shape, recipe) pair: model, engine and batch built once, timed in several rounds."""

    def __init__(self, shape: Shape, recipe: Recipe, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        if recipe.keep_freed_memory:
            keep_freed_memory()
        torch.manual_seed(0)
        self.shape, self.recipe = shape, recipe
        config = RunConfig(model=ModelConfig.preset(shape.preset, attention=recipe.attention))
        config.train.micro_batch, config.train.seq_len = shape.batch, shape.seq_len
        self.config = config
        self.engine = SingleDeviceEngine(config, Transformer(config.model), optimizer_factory(config.train))
        self.dtype = resolve_dtype(recipe.dtype, self.engine.device)
        # What the Trainer compiles with; an earlier library (--baseline-tree) may predate compile_model.
        compile_model = getattr(perf, "compile_model", torch.compile)
        self.forward = compile_model(self.engine.model) if recipe.compile else self.engine.model
        tokens = torch.randint(
            0, config.model.vocab_size, (shape.batch, shape.seq_len + 1), generator=torch.Generator().manual_seed(0)
        )
        self.batch = (tokens[:, :-1], tokens[:, 1:])
        self.round_medians: list[float] = []
        self.round_cpu_medians: list[float] = []

    def attention_kernel(self) -> str:
        """What the first block's attention runs at this shape and dtype: "sdpa" or "manual"."""
        x = torch.zeros(1, self.shape.seq_len, self.config.model.d_model)
        with autocast(self.engine.device, self.dtype):
            return "sdpa" if self.engine.model.blocks[0].attn._use_sdpa(x, self.shape.seq_len) else "manual"

    def run(self, steps: int, warmup: int) -> None:
        """One round: `warmup` untimed steps, then the median of `steps` timed ones (wall and CPU time)."""
        times, cpu_times = [], []
        for i in range(warmup + steps):
            start, cpu_start = time.perf_counter(), time.process_time()
            loss, _ = train_step(self.engine, [self.batch], 1, 1e-4, 1.0, self.dtype, forward=self.forward)
            loss.item()
            if i >= warmup:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
        self.round_medians.append(statistics.median(times))
        self.round_cpu_medians.append(statistics.median(cpu_times))

    def result(self, peaks: dict[torch.dtype, float], cpu_peaks: dict[torch.dtype, float], features: str) -> dict:
        # The best round: on a shared machine a slow round measures the neighbours, not the code.
        step_s, cpu_s = min(self.round_medians), min(self.round_cpu_medians)
        tokens = self.shape.batch * self.shape.seq_len
        tokens_per_s = tokens / step_s
        flops = self.config.model.flops_per_token(self.shape.seq_len)
        return {
            "shape": self.shape.preset,
            "recipe": self.recipe.name,
            "library": str(Path(reference_llm.__file__).parents[1]),  # where this worker imported it from
            "batch": self.shape.batch,
            "seq_len": self.shape.seq_len,
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": self.recipe.attention,
            "attention_kernel": self.attention_kernel(),
            "compile": self.recipe.compile,
            "params_m": self.engine.model.num_params() / 1e6,
            "ms_per_step": 1000 * step_s,
            "cpu_ms_per_step": 1000 * cpu_s,
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(tokens_per_s, flops, peaks[self.dtype]),
            "mfu_cpu_time": mfu(tokens / cpu_s, flops, cpu_peaks[self.dtype]),
            "round_medians_ms": [1000 * t for t in self.round_medians],
            "nanogpt_reference_tokens_per_s": NANOGPT_REFERENCE.get(features, {}).get(self.shape.preset),
        }


class Worker:
    """A `Runner` in a process of its own, driven over a pipe: `call("run", steps, warmup)`."""

    def __init__(self, shape: Shape, recipe: Recipe, threads: int | None) -> None:
        context = mp.get_context("spawn")  # not fork: the parent's torch thread pools must not be copied
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, shape, recipe, threads), daemon=True)
        # A spawned child starts from the parent's sys.path, so a tree put first here is where the
        # child's `import reference_llm` (this module's, re-imported there) finds the library.
        saved = list(sys.path)
        if recipe.tree:
            sys.path.insert(0, str(Path(recipe.tree).resolve()))
        try:
            self.process.start()
        finally:
            sys.path[:] = saved
        child.close()

    def wait_ready(self) -> None:
        """Block until the worker has built its model (workers start in parallel; timing waits for all)."""
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"benchmark worker failed: {value}")

    def call(self, method: str, *args: object) -> object:
        self.conn.send((method, args))
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"benchmark worker failed: {value}")
        return value

    def close(self) -> None:
        self.conn.close()
        self.process.join(timeout=10)


def _serve(conn, shape: Shape, recipe: Recipe, threads: int | None) -> None:
    try:
        runner = Runner(shape, recipe, threads)
    except Exception as exc:
        conn.send((False, f"{type(exc).__name__}: {exc}"))
        return
    conn.send((True, "ready"))
    while True:
        try:
            method, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send((True, getattr(runner, method)(*args)))
        except Exception as exc:  # reported to the parent, which stops the benchmark with it
            conn.send((False, f"{type(exc).__name__}: {exc}"))


def main() -> None:
    # Here, not at the top: workers import this module too, possibly against an earlier library
    # (--baseline-tree) that lacks it.
    from reference_llm.train.perf import cpu_features, inductor_cache_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps per row: checks that it runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row and round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (each row keeps its best)")
    parser.add_argument("--shapes", default=",".join(s.preset for s in SHAPES), help="comma-separated presets")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per row (default: torch's)")
    parser.add_argument(
        "--attention",
        choices=("auto", "sdpa", "manual"),
        default="auto",
        help="model.attention of the ours rows: measure both kernels where auto's rule was not",
    )
    parser.add_argument(
        "--baseline-tree",
        default=None,
        metavar="DIR",
        help="also run the ours rows with the reference_llm/ under DIR (an earlier version)",
    )
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the torch.compile rows (their first compile takes ~20 s per shape)",
    )
    args = parser.parse_args()
    if args.baseline_tree and not (Path(args.baseline_tree) / "reference_llm" / "__init__.py").is_file():
        parser.error(f"--baseline-tree: {args.baseline_tree} holds no reference_llm/ package")
    steps = args.steps or (3 if args.quick else 20)
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = 1 if args.quick else 3
    if args.threads:
        torch.set_num_threads(args.threads)
    inductor_cache_dir(Path(__file__).resolve().parents[1] / ".cache" / "inductor")  # workers inherit it

    ours = [
        dataclasses.replace(r, attention=args.attention)
        for r in [OURS] + ([] if args.no_compile or args.quick else [OURS_COMPILED])
    ]
    recipes = [BASELINE] + [r.before(args.baseline_tree) for r in ours if args.baseline_tree] + ours
    shapes = [s for s in SHAPES if s.preset in args.shapes.split(",")]
    device = torch.device("cpu")
    features = cpu_features()
    peak_repeats = 3 if args.quick else 7
    peaks = {dt: 0.0 for dt in (torch.float32, torch.bfloat16)}
    cpu_peaks = dict(peaks)  # FLOPs per CPU-second of this process: the denominator of "MFU by CPU time"
    load = [os.getloadavg()[0]]
    workers = [Worker(shape, recipe, args.threads) for shape in shapes for recipe in recipes]
    try:
        for worker in workers:
            worker.wait_ready()
        for round_ in range(rounds):  # peaks are re-measured every round; the best round's figure counts
            peaks = {dt: max(p, measure_matmul_peak(dt, device, 2048, peak_repeats)) for dt, p in peaks.items()}
            cpu_peaks = {
                dt: max(p, measure_matmul_peak(dt, device, 2048, peak_repeats, clock=time.process_time))
                for dt, p in cpu_peaks.items()
            }
            for worker in workers:
                worker.call("run", steps, warmup if round_ == 0 else 1)
        rows = [w.call("result", peaks, cpu_peaks, features) for w in workers]
    finally:
        for worker in workers:
            worker.close()
    load.append(os.getloadavg()[0])
    report = {
        "machine": {
            "threads": torch.get_num_threads(),
            "cpu_features": features,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__,
            "load_average_1min": {"start": load[0], "end": load[1]},
            "cpus": os.cpu_count(),
            "matmul_peak_gflops": {str(dt).removeprefix("torch."): p / 1e9 for dt, p in peaks.items()},
            "matmul_peak_gflops_per_cpu_second": {
                str(dt).removeprefix("torch."): p / 1e9 for dt, p in cpu_peaks.items()
            },
        },
        "rows": rows,
        "speedup_vs_nanogpt_recipe": {
            f"{shape.preset} {recipe.name}": tokens_per_s(rows, shape, recipe) / tokens_per_s(rows, shape, BASELINE)
            for shape in shapes
            for recipe in recipes
            if recipe != BASELINE
        },
    }
    if args.baseline_tree:
        report["after_over_before"] = {
            f"{shape.preset} {recipe.name}": {
                "tokens_per_s": tokens_per_s(rows, shape, recipe) / tokens_per_s(rows, shape, before),
                "cpu_time": cpu_ms(rows, shape, before) / cpu_ms(rows, shape, recipe),
            }
            for shape in shapes
            for recipe, before in ((r, r.before(args.baseline_tree)) for r in ours)
        }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)


def row(rows: list[dict], shape: Shape, recipe: Recipe) -> dict:
    return next(r for r in rows if r["shape"] == shape.preset and r["recipe"] == recipe.name)


def tokens_per_s(rows: list[dict], shape: Shape, recipe: Recipe) -> float:
    return row(rows, shape, recipe)["tokens_per_s"]


def cpu_ms(rows: list[dict], shape: Shape, recipe: Recipe) -> float:
    return row(rows, shape, recipe)["cpu_ms_per_step"]


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    machine = report["machine"]
    peaks = ", ".join(f"{k} {v:,.0f}" for k, v in machine["matmul_peak_gflops"].items())
    load = machine["load_average_1min"]
    table = Table(
        title=f"Training throughput, {machine['threads']} threads, CPU bf16 hardware: "
        f"{machine['cpu_features']} (matmul peak GFLOP/s: {peaks}; load {load['start']:.1f}"
        f"-{load['end']:.1f} on {machine['cpus']} CPUs)"
    )
    for col in (
        "shape",
        "B x T",
        "recipe",
        "dtype",
        "attention",
        "params",
        "ms/step",
        "CPU ms/step",
        "tokens/s",
        "MFU",
        "MFU by CPU time",
        "nanoGPT itself",
    ):
        table.add_column(col, justify="left" if col in ("shape", "recipe", "dtype", "attention") else "right")
    for r in report["rows"]:
        ref = r["nanogpt_reference_tokens_per_s"]
        attention = (
            r["attention"] if r["attention"] == r["attention_kernel"] else f"{r['attention']}: {r['attention_kernel']}"
        )
        table.add_row(
            r["shape"],
            f"{r['batch']} x {r['seq_len']}",
            r["recipe"],
            r["dtype"],
            attention,
            f"{r['params_m']:.2f}M",
            f"{r['ms_per_step']:.1f}",
            f"{r['cpu_ms_per_step']:.1f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{100 * r['mfu']:.1f}%",
            f"{100 * r['mfu_cpu_time']:.1f}%",
            f"{ref:,} tok/s" if ref else "-",
        )
    console = Console(width=None if Console().is_terminal else 160)
    console.print(table)
    for name, ratio in report["speedup_vs_nanogpt_recipe"].items():
        console.print(f"{name} / nanoGPT recipe: {ratio:.2f}x")
    for name, ratio in report.get("after_over_before", {}).items():
        console.print(
            f"{name}: after / before {ratio['tokens_per_s']:.2f}x tokens/s, "
            f"{ratio['cpu_time']:.2f}x less CPU time per step"
        )
    console.print(
        "MFU: of the measured peak of the dtype used; by CPU time: model FLOPs per CPU-second of the step "
        "over the peak matmul's FLOPs per CPU-second (steadier on a busy machine; with more than one "
        "thread both include time spent waiting at thread barriers)."
    )
    console.print(f"{TARGETS}.")


if __name__ == "__main__":
    main()
