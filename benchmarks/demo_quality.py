"""Quality per minute: the demo preset against nanoGPT's CPU recipe, same corpus, split and wall time.

    python benchmarks/demo_quality.py                 # 3 minutes of training per recipe (~8 min in all)
    python benchmarks/demo_quality.py --minutes 1     # shorter
    python benchmarks/demo_quality.py --steps 300     # a fixed number of steps instead (tuning proxies)
    python benchmarks/demo_quality.py --set train.lr=2e-3 --set model.n_layer=4   # vary the demo recipe

Both recipes train through the library's own `Trainer` on the bundled Shakespeare corpus, with the
data pipeline's 90/10 split (the last tenth of the text held out, as nanoGPT's prepare.py does):

- nanoGPT's CPU recipe (its README): character-level, 4 layers, 4 heads, 128 wide, context 64, batch
  12, fp32, lr 1e-3 warmed up over 100 steps and cosine-decayed to 1e-4, beta2 0.99, weight decay
  0.1, clip 1.0, dropout 0;
- the demo recipe (`DEMO`): the demo preset with the settings below (byte-level BPE, bf16 autocast
  where the CPU has it, `train.compile = "auto"`: compiled when that pays off within the run).

Each recipe first times a few steps to choose `max_steps` so that its cosine schedule ends at the time
limit (nanoGPT's schedule is tied to its step count; with a wall-clock budget the fair equivalent is
the step count that fits), then trains with `train.max_minutes` as a hard stop. With compile on, the
timing starts once compiled steps run, and the calibration run leaves the compiled kernels in the
inductor cache (`.cache/inductor` of this repository), so the timed run compiles warm, in seconds, within
its budget, as a project's second `make demo` does. Validation is the whole held-out text, in
non-overlapping windows of the model's context, reported per character (total nats / characters) and in
bits per byte, so that a character model and a BPE model compare. The report names the CPU's bf16
hardware and the load average before and after: on a shared machine, minutes of training are worth
fewer steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reference_llm.assets import corpus_path
from reference_llm.config import RunConfig, load_config
from reference_llm.data import load_prepared
from reference_llm.data.shards import open_shards
from reference_llm.train import Trainer, perf
from reference_llm.train.checkpoint import load_model
from reference_llm.train.perf import autocast, resolve_dtype

NANOGPT = {
    "model.preset": "nanogpt-cpu",
    "model.dropout": 0.0,
    "model.attention": "sdpa",
    "data.tokenizer": "char",
    "train.micro_batch": 12,
    "train.seq_len": 64,
    "train.lr": 1e-3,
    "train.min_lr": 1e-4,
    "train.warmup_steps": 100,
    "train.beta2": 0.99,
    "train.weight_decay": 0.1,
    "train.grad_clip": 1.0,
    "train.dtype": "float32",
}
DEMO = {
    "model.preset": "demo",
    "data.tokenizer": "bpe",
    "data.vocab_size": 1024,
    "train.micro_batch": 8,
    "train.lr": 3e-3,
    "train.min_lr": 3e-4,
    "train.warmup_steps": 50,
    "train.beta2": 0.99,
    "train.weight_decay": 0.1,
    "train.grad_clip": 1.0,
    "train.dtype": "auto",
    "train.compile": "auto",
}
NANOGPT_REFERENCE_NATS_PER_CHAR = 1.60  # nanoGPT itself, 3 minutes on ~1 MB of Shakespeare, this machine kind


def make_config(recipe: dict[str, Any], run_dir: Path, cache_dir: Path, max_steps: int, minutes: float) -> RunConfig:
    values = {
        **recipe,
        "data.corpus": str(corpus_path()),
        "data.cache_dir": str(cache_dir),
        "data.val_fraction": 0.1,
        "train.max_steps": max_steps,
        "train.max_minutes": minutes,
        "train.log_interval": 50,
        "eval.interval": 0,
        "eval.iters": 4,
        "checkpoint.dir": str(run_dir),
        "checkpoint.interval": 0,
        "checkpoint.keep": 1,
    }
    return load_config(None, [f"{k}={json.dumps(v)}" for k, v in values.items()])


def calibrate(recipe: dict[str, Any], work: Path, cache_dir: Path, steps: int = 30) -> float:
    """Seconds per training step, timed after a few warm-up steps (past the compile, when compiling)."""
    trainer = Trainer(make_config(recipe, work / "calibration", cache_dir, max_steps=10**6, minutes=0))
    warm_steps = 5 if recipe.get("train.compile", False) is False else perf.EAGER_CALLS + perf.COMPILED_CALLS + 3
    trainer.fit(until=warm_steps)
    warm = trainer.elapsed
    trainer.fit(until=warm_steps + steps)
    return (trainer.elapsed - warm) / steps


@torch.no_grad()
def score_on_validation(run_dir: Path, data_dir: Path) -> dict[str, float]:
    """Total nats over the whole validation split, per character and per byte of its text."""
    model, tokenizer, config = load_model(run_dir)
    prepared = load_prepared(data_dir)
    tokens = np.concatenate([np.asarray(s, dtype=np.int64) for s in open_shards(prepared.dir, prepared.meta, "val")])
    device = next(model.parameters()).device
    dtype = resolve_dtype(config.train.dtype, device)
    T = config.model.block_size
    total_nats, predicted = 0.0, 0
    windows = [(i, min(i + T, len(tokens) - 1)) for i in range(0, len(tokens) - 1, T)]
    for start in range(0, len(windows), 32):
        batch = windows[start : start + 32]
        for length in sorted({b - a for a, b in batch}):  # the last window may be shorter
            rows = [(a, b) for a, b in batch if b - a == length]
            x = torch.from_numpy(np.stack([tokens[a:b] for a, b in rows])).to(device)
            y = torch.from_numpy(np.stack([tokens[a + 1 : b + 1] for a, b in rows])).to(device)
            with autocast(device, dtype):
                logits, _ = model(x)
            total_nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
            predicted += y.numel()
    text = tokenizer.decode([int(t) for t in tokens if t != tokenizer.eot_id])
    return {
        "val_nats_per_token": total_nats / predicted,
        "val_nats_per_char": total_nats / len(text),
        "val_bits_per_byte": total_nats / (len(text.encode("utf-8")) * math.log(2)),
        "val_tokens": len(tokens),
        "val_chars": len(text),
    }


def run_recipe(
    name: str, recipe: dict[str, Any], work: Path, cache_dir: Path, minutes: float, steps: int | None
) -> dict[str, Any]:
    if steps is None:
        step_s = calibrate(recipe, work / name, cache_dir)
        max_steps, limit = max(1, int(minutes * 60 / step_s)), minutes
    else:
        step_s, max_steps, limit = None, steps, 0.0
    trainer = Trainer(make_config(recipe, work / name / "run", cache_dir, max_steps, limit))
    last = trainer.fit()
    scores = score_on_validation(work / name / "run", trainer.data_dir)
    model = trainer.config.model
    return {
        "recipe": name,
        "preset": model.name,
        "params_m": trainer.engine.model.num_params() / 1e6,
        "tokenizer": trainer.config.data.tokenizer,
        "vocab": trainer.tokenizer.vocab_size,
        "context": trainer.seq_len,
        "batch": trainer.config.train.micro_batch,
        "dtype": str(trainer.dtype).removeprefix("torch."),
        "planned_steps": max_steps,
        "steps": trainer.step,
        "compiled": _compiled(trainer),
        "calibrated_s_per_step": step_s,
        "train_minutes": trainer.elapsed / 60,
        "tokens_per_s": trainer.step * trainer.tokens_per_step / trainer.elapsed,
        "train_loss": last.get("loss"),
        **scores,
        "settings": recipe,
    }


def _compiled(trainer: Trainer) -> bool:
    """Whether the run's steps ran compiled (with "auto": once it decided to)."""
    forward = trainer.forward
    return bool(forward.compiled) if isinstance(forward, perf.AutoCompile) else forward is not trainer.engine.model


def parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="training time per recipe (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="train a fixed number of steps instead of minutes")
    parser.add_argument("--recipes", default="nanogpt,demo", help="comma-separated: nanogpt, demo")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a demo setting, e.g. --set train.lr=2e-3 (repeatable)",
    )
    parser.add_argument("--cache-dir", default=None, help="keep prepared data here between runs")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    perf.inductor_cache_dir(Path(__file__).resolve().parents[1] / ".cache" / "inductor")
    recipes = {"nanogpt": NANOGPT, "demo": {**DEMO, **parse_set(args.set)}}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="demo-quality-") as tmp:
        work = Path(tmp)
        cache_dir = Path(args.cache_dir) if args.cache_dir else work / "cache"
        rows = [
            run_recipe(name, recipes[name], work, cache_dir, args.minutes, args.steps)
            for name in args.recipes.split(",")
        ]
    load.append(os.getloadavg()[0])
    report: dict[str, Any] = {
        "minutes": None if args.steps else args.minutes,
        "steps": args.steps,
        "rows": rows,
        "nanogpt_reference_nats_per_char": NANOGPT_REFERENCE_NATS_PER_CHAR,
        "machine": {
            "cpu_features": perf.cpu_features(),
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_1min": {"start": load[0], "end": load[1]},
        },
    }
    by_name = {r["recipe"]: r for r in rows}
    if {"nanogpt", "demo"} <= set(by_name):
        gain = by_name["nanogpt"]["val_nats_per_char"] - by_name["demo"]["val_nats_per_char"]
        report["demo_gain_nats_per_char"] = gain
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    budget = f"{report['minutes']:g} minutes" if report["minutes"] else f"{report['steps']} steps"
    machine = report["machine"]
    load = machine["load_average_1min"]
    table = Table(
        title=f"Validation loss after {budget} of training on the bundled corpus ({machine['threads']} "
        f"threads, CPU bf16 hardware: {machine['cpu_features']}, load {load['start']:.1f}-"
        f"{load['end']:.1f} on {machine['cpus']} CPUs)"
    )
    for col in (
        "recipe",
        "model",
        "tokenizer",
        "ctx x batch",
        "dtype",
        "compiled",
        "steps",
        "tokens/s",
        "nats/char",
        "bits/byte",
    ):
        table.add_column(col, justify="left" if col in ("recipe", "model", "tokenizer", "dtype") else "right")
    for r in report["rows"]:
        table.add_row(
            r["recipe"],
            f"{r['preset']} {r['params_m']:.2f}M",
            f"{r['tokenizer']} {r['vocab']}",
            f"{r['context']} x {r['batch']}",
            r["dtype"],
            "yes" if r["compiled"] else "no",
            f"{r['steps']}/{r['planned_steps']}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['val_nats_per_char']:.3f}",
            f"{r['val_bits_per_byte']:.3f}",
        )
    console = Console(width=None if Console().is_terminal else 140)
    console.print(table)
    console.print(
        f"nanoGPT itself reaches about {report['nanogpt_reference_nats_per_char']:.2f} nats/char in 3 "
        f"minutes on this machine kind."
    )
    if "demo_gain_nats_per_char" in report:
        console.print(
            f"demo is {report['demo_gain_nats_per_char']:+.3f} nats/char better than the nanoGPT recipe (target >= 0.1)"
        )


if __name__ == "__main__":
    main()
