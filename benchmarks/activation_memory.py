"""Activation checkpointing on this machine: peak memory of a training step against the estimator's
prediction, and the step time it costs, for train.activation_checkpointing = none, selective, full.

    python benchmarks/activation_memory.py              # a few minutes on 2 cores
    python benchmarks/activation_memory.py --quick      # smoke run: a smaller model, fewer steps
    python benchmarks/activation_memory.py --json       # machine-readable, on stdout
    python benchmarks/activation_memory.py --threads 2  # torch threads (default 1, see below)

Checkpointing is applied as training applies it (`reference_llm.distributed.parallelize`
`apply_activation_checkpointing`, per block). Memory is the peak of allocated bytes during one forward
+ backward (torch.profiler's allocation timeline, after a first step so gradients already exist),
compared with what `generator.estimate` says appears during a step: activations + logits (+ the
bf16 weight casts, none in fp32). Time is the median forward + backward of several steps without
the profiler, in the same process and the same rounds for every setting, so the slowdowns are
ratios measured side by side; both wall time and the process's CPU time are reported. On a shared,
busy machine wall time swings by several times from step to step, CPU time far less, and with one
thread (the default) CPU time is the step's compute: its ratio is the cost of recomputation.
The model is GPT-2-shaped with a small vocabulary, so that activations rather than logits dominate;
rows with the manual attention path (which keeps the score matrix, what selective checkpointing
drops) and with SDPA (which keeps none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import torch

from generator.estimate import RunSpec, estimate_run
from generator.estimate.hardware import Hardware, cpu_spec
from reference_llm.distributed.parallelize import CHECKPOINTING, apply_activation_checkpointing
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train.perf import cpu_features, peak_allocated_bytes

MIB = 2**20


def step(model: Transformer, idx: torch.Tensor) -> None:
    logits, loss = model(idx, idx)  # the caller holds the logits, as the training loop does
    loss.backward()
    del logits


def measured_peak(model: Transformer, idx: torch.Tensor) -> int:
    """Peak bytes allocated during one step, above what is allocated before it."""
    return peak_allocated_bytes(lambda: step(model, idx))


def estimated(config: ModelConfig, batch: int, mode: str) -> float:
    """What generator.estimate says a step allocates: activations + logits + step buffers."""
    spec = RunSpec(
        config,
        Hardware(1, 1, cpu_spec(tflops=1.0)),
        tokens=1e6,
        parallelism="single",
        precision="float32",
        micro_batch=batch,
        seq_len=config.block_size,
        activation_checkpointing=mode,
        attention="manual" if config.attention == "manual" else "flash",
    )
    return estimate_run(spec).step_bytes


def measure(config: ModelConfig, batch: int, steps: int, rounds: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    idx = torch.randint(0, config.vocab_size, (batch, config.block_size))
    models = {}
    for mode in CHECKPOINTING:
        torch.manual_seed(0)
        models[mode] = Transformer(config)
        apply_activation_checkpointing(models[mode], mode)
        step(models[mode], idx)  # gradients exist from here on, as in steady-state training
    wall: dict[str, list[float]] = {mode: [] for mode in CHECKPOINTING}
    cpu: dict[str, list[float]] = {mode: [] for mode in CHECKPOINTING}
    for _ in range(rounds):  # settings take turns, so that machine noise hits all alike
        for mode, model in models.items():
            for _ in range(steps):
                start, start_cpu = time.perf_counter(), time.process_time()
                step(model, idx)
                wall[mode].append(time.perf_counter() - start)
                cpu[mode].append(time.process_time() - start_cpu)
    rows = []
    base_wall, base_cpu = statistics.median(wall["none"]), statistics.median(cpu["none"])
    for mode, model in models.items():
        peak, estimate = measured_peak(model, idx), estimated(config, batch, mode)
        seconds, cpu_seconds = statistics.median(wall[mode]), statistics.median(cpu[mode])
        rows.append(
            {
                "attention": config.attention,
                "checkpointing": mode,
                "measured_mib": peak / MIB,
                "estimated_mib": estimate / MIB,
                "error": estimate / peak - 1,
                "step_ms": 1e3 * seconds,
                "cpu_ms": 1e3 * cpu_seconds,
                "slowdown": seconds / base_wall,
                "cpu_slowdown": cpu_seconds / base_cpu,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, fewer steps (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU time = compute)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (
        dict(n_layer=2, d_model=64, n_head=4, vocab_size=128, block_size=128)
        if args.quick
        else dict(n_layer=6, d_model=256, n_head=4, vocab_size=256, block_size=256)
    )
    batch, steps, rounds = (2, 2, 1) if args.quick else (4, 3, 3)
    rows = []
    for attention in ("manual", "sdpa"):
        config = ModelConfig.preset("tiny-gpt2", attention=attention, **shape)
        rows += measure(config, batch, steps, rounds)
    report = {
        "machine": {"cpu_features": cpu_features(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "model": {**shape, "batch": batch, "dtype": "float32"},
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"GPT-2 shape {shape}, batch {batch}, fp32, CPU ({cpu_features()}, {torch.get_num_threads()} threads)")
    print(
        f"{'attention':<9} {'checkpointing':<13} {'measured MiB':>12} {'estimate MiB':>12} {'error':>7} "
        f"{'step ms':>8} {'slowdown':>8} {'CPU ms':>8} {'CPU x':>6}"
    )
    for r in rows:
        print(
            f"{r['attention']:<9} {r['checkpointing']:<13} {r['measured_mib']:>12.2f} {r['estimated_mib']:>12.2f} "
            f"{r['error']:>+7.1%} {r['step_ms']:>8.1f} {r['slowdown']:>7.2f}x {r['cpu_ms']:>8.1f} "
            f"{r['cpu_slowdown']:>5.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
