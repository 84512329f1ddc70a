"""Where a training step's time goes: torch.profiler per op, and the share of matmuls in the step.

    python benchmarks/profile_step.py                                  # 4/128 and 6/384, ours, eager
    python benchmarks/profile_step.py --shapes nanogpt-shakespeare --compile
    python benchmarks/profile_step.py --recipe nanogpt --top 10        # nanoGPT's recipe: fp32, SDPA
    python benchmarks/profile_step.py --quick --json                   # smoke run, machine-readable

The step is `benchmarks/train_throughput.py`'s (the same `Runner`: `reference_llm.train.train_step`
on a fixed batch, with the same recipes), profiled on the CPU after a few warm-up steps. For each
shape it prints the top ops by self CPU time per step, then the step split into

- matmul: the linear layers' and attention's matrix products (aten::mm/addmm/bmm and friends, and
  inductor's C++ GEMM templates under --compile), with the model FLOP/s they reach;
- fused attention: SDPA's CPU flash kernels, forward and backward (matmuls and softmax in one);
- everything else: element-wise ops, norms, softmax, casts, the optimizer, dispatch.

Self times of ops on the main thread add up to the step's wall time apart from Python outside any
op, listed as "outside ops". Under torch.compile each generated kernel shows as one op (names such
as `cpp_fused_...`), and a whole compiled region also shows as `CompiledFunction`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_throughput, when run from elsewhere
from train_throughput import BASELINE, OURS, SHAPES, Recipe, Runner  # noqa: E402

from reference_llm.train.perf import cpu_features  # noqa: E402

MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_addmm_activation",
    "mkldnn::_linear_pointwise",
    "aten::mkldnn_linear",
    "aten::_mkl_linear",
)
ATTENTION_OPS = (
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
)
# Wrappers whose time is their children's: never counted (their self time is dispatch only).
WRAPPERS = ("CompiledFunction", "CompiledFunctionBackward", "Torch-Compiled Region", "ProfilerStep")


def category(name: str) -> str:
    if name in MATMUL_OPS or "gemm" in name.lower():
        return "matmul"
    if name in ATTENTION_OPS:
        return "fused attention"
    return "other"


def profile_shape(runner: Runner, steps: int, warmup: int, top: int) -> dict[str, Any]:
    runner.run(1, warmup)  # warm-up (and, under --compile, the compilation) outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        runner.run(steps, 0)
        wall = (time.perf_counter() - start) / steps
    ops = []
    for event in prof.key_averages():
        if event.key.startswith(WRAPPERS) or event.key.startswith("## "):
            continue
        ops.append(
            {
                "op": event.key,
                "self_ms": event.self_cpu_time_total / 1000 / steps,
                "calls": event.count // steps,
                "category": category(event.key),
            }
        )
    ops.sort(key=lambda o: -o["self_ms"])
    step_ms = 1000 * wall
    by_category = {
        c: sum(o["self_ms"] for o in ops if o["category"] == c) for c in ("matmul", "fused attention", "other")
    }
    by_category["outside ops"] = max(0.0, step_ms - sum(by_category.values()))
    shape = runner.shape
    flops = runner.config.model.flops_per_token(shape.seq_len) * shape.batch * shape.seq_len
    matmul_s = by_category["matmul"] / 1000
    return {
        "shape": shape.preset,
        "batch": shape.batch,
        "seq_len": shape.seq_len,
        "recipe": runner.recipe.name,
        "dtype": str(runner.dtype).removeprefix("torch."),
        "compile": runner.recipe.compile,
        "step_ms": step_ms,
        "ms": by_category,
        "share": {c: v / step_ms for c, v in by_category.items()},
        # attention's FLOPs inside fused kernels are counted as if in matmuls: an upper bound.
        "matmul_tflops_upper_bound": flops / matmul_s / 1e12 if matmul_s else None,
        "top_ops": ops[:top],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="nanogpt-cpu,nanogpt-shakespeare", help="comma-separated presets")
    parser.add_argument("--recipe", choices=("ours", "nanogpt"), default="ours")
    parser.add_argument("--compile", action="store_true", help="profile the torch.compile'd step")
    parser.add_argument("--steps", type=int, default=None, help="profiled steps (default 10; 2 with --quick)")
    parser.add_argument("--top", type=int, default=15, help="ops listed per shape")
    parser.add_argument("--quick", action="store_true", help="few steps: checks that it runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args()
    base = BASELINE if args.recipe == "nanogpt" else OURS
    recipe = Recipe(
        base.name + (" + compile" if args.compile else ""),
        base.dtype,
        base.attention,
        args.compile,
        base.keep_freed_memory,
    )
    steps = args.steps or (2 if args.quick else 10)
    warmup = 1 if args.quick else 5
    shapes = [s for s in SHAPES if s.preset in args.shapes.split(",")]
    if not shapes:
        parser.error(f"--shapes: none of {args.shapes!r} is one of {', '.join(s.preset for s in SHAPES)}")
    if args.compile:
        # Generated C++ kernels record profiler events only when built to; otherwise their time would
        # show only as "outside ops". The flag is part of inductor's cache key: a first run compiles cold.
        torch._inductor.config.cpp.enable_kernel_profile = True
    # One process for every shape: the recipe's malloc setting applies to all alike.
    results = [profile_shape(Runner(shape, recipe), steps, warmup, args.top) for shape in shapes]
    report = {
        "machine": {"threads": torch.get_num_threads(), "cpu_features": cpu_features(), "torch": torch.__version__},
        "profiles": results,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_tables(report)


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    machine = report["machine"]
    console = Console(width=None if Console().is_terminal else 140)
    for p in report["profiles"]:
        table = Table(
            title=f"{p['shape']} ({p['batch']} x {p['seq_len']}), {p['recipe']}, {p['dtype']}: "
            f"{p['step_ms']:.1f} ms/step; {machine['threads']} threads, {machine['cpu_features']}"
        )
        for col in ("op", "category", "calls/step", "self ms/step", "share"):
            table.add_column(col, justify="left" if col in ("op", "category") else "right")
        for op in p["top_ops"]:
            table.add_row(
                op["op"][:70],
                op["category"],
                str(op["calls"]),
                f"{op['self_ms']:.2f}",
                f"{100 * op['self_ms'] / p['step_ms']:.1f}%",
            )
        console.print(table)
        split = ", ".join(f"{c} {v:.1f} ms ({100 * p['share'][c]:.0f}%)" for c, v in p["ms"].items())
        console.print(f"step: {split}")
        if p["matmul_tflops_upper_bound"]:
            console.print(
                f"model FLOPs over matmul time: {p['matmul_tflops_upper_bound']:.2f} TFLOP/s "
                f"(upper bound: fused attention's FLOPs counted as matmul's)\n"
            )


if __name__ == "__main__":
    main()
