"""The GPU check: what one GPU does with the library, in five figures (run by benchmarks/gpu_check.sh).

    bash benchmarks/gpu_check.sh --out gpu_check.json                         # one GPU, at most ~8 minutes
    bash benchmarks/gpu_check.sh --dry-run --no-compile --out dry_run.json    # every part on the CPU, tiny

Parts, each printing one figure line, then a summary table (and the JSON file --out names):

1. train-single: `python -m reference_llm.train` with `distributed.strategy=single`, bf16 and
   `train.compile=true`, a GPT-2 124M shape (12 layers of 768, 12 heads, context 1024) for a few hundred
   steps: tokens/s and MFU.
2. train-fsdp, 3. train-zero2: the same run under `torchrun --nproc_per_node 1` with
   `distributed.strategy=fsdp` (FSDP2) and `zero2` (DeepSpeed ZeRO-2, its JSON config from
   `reference_llm.distributed.ds_config.build`).
4. generate: greedy generation with the KV cache (`reference_llm.deploy.generate.generate`), batch 1,
   tokens/s.
5. activation-memory: the peak memory one training step allocates above what was allocated before it
   (`torch.cuda.max_memory_allocated`; on the CPU torch.profiler's allocation timeline) against
   `generator.estimate`'s activations + logits + buffers for the same shape, batch and precision.

tokens/s is the training loop's own (metrics.jsonl), counted from the end of the first logged window,
so the compile and warm-up in that window are left out. MFU is model FLOPs per token
(`ModelConfig.flops_per_token`) x tokens/s over the dense bf16 peak of --gpu in the estimator's
catalogue (`generator.estimate.hardware`; H100-SXM: 989 TFLOP/s). The model's vocabulary is the
tokenizer's (hf-bpe trained on the bundled corpus, asked for GPT-2's 50,257 entries), as the entry
point makes it: the corpus gives about 22k, so the model has about 102M parameters; the figures use
that model's FLOPs.

--dry-run runs the same code with the `tiny-gpt2` preset, a few steps, fp32 on the CPU (gloo for FSDP2,
DeepSpeed's CPU accelerator for ZeRO-2), so that a test keeps the script working (with --no-compile,
which trains eagerly: compiling three runs on the CPU costs about 2 minutes of CPU time). A part that
fails is reported as failed and the others still run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from activation_memory import measured_peak  # benchmarks/activation_memory.py, beside this script

from generator.estimate import RunSpec, estimate_run
from generator.estimate.hardware import KNOWN_GPUS, GPUSpec, Hardware, cpu_spec, lookup_gpu
from reference_llm.assets import corpus_path
from reference_llm.cli import ArgumentParser, run_main
from reference_llm.config import RunConfig, load_config
from reference_llm.data import prepare_data
from reference_llm.deploy.generate import generate
from reference_llm.distributed import ds_config
from reference_llm.errors import ConfigError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.model.transformer import Attention
from reference_llm.train.loop import padded_vocab_size
from reference_llm.train.perf import autocast

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20
STRATEGIES = ("single", "fsdp", "zero2")
PARTS = (*(f"train-{s}" for s in STRATEGIES), "generate", "activation-memory")


@dataclass(frozen=True)
class Scale:
    """What differs between the GPU run and the dry run: sizes, device and dtype, nothing else."""

    preset: str
    vocab_size: int  # asked of the tokenizer; the model gets what the corpus gives, rounded up to 64
    micro_batch: int
    steps: int
    log_interval: int
    device: str
    dtype: str
    prompt_tokens: int
    new_tokens: int


GPU = Scale("gpt2-124m", 50257, 16, 300, 50, "cuda", "bfloat16", prompt_tokens=64, new_tokens=512)
DRY_RUN = Scale("tiny-gpt2", 512, 4, 6, 2, "cpu", "float32", prompt_tokens=8, new_tokens=16)


# ----------------------------------------------------------------------------------------------------
# Training through the real entry point
# ----------------------------------------------------------------------------------------------------


def write_config(work: Path, scale: Scale, compile: bool) -> Path:
    """The run config every training part shares; each part adds its strategy as an override."""
    path = work / "train.toml"
    path.write_text(f"""
[model]
preset = "{scale.preset}"
[data]
corpus = {json.dumps(str(corpus_path()))}
tokenizer = "hf-bpe"
vocab_size = {scale.vocab_size}
cache_dir = {json.dumps(str(work / "data"))}
[train]
micro_batch = {scale.micro_batch}
max_steps = {scale.steps}
warmup_steps = {max(1, scale.steps // 10)}
lr = 6e-4
min_lr = 6e-5
dtype = "{scale.dtype}"
device = "{scale.device}"
compile = {str(compile).lower()}
log_interval = {scale.log_interval}
[eval]
interval = 0
iters = 0
[checkpoint]
interval = 0
keep = 1
[distributed]
deepspeed_config = {json.dumps(str(work / "deepspeed.json"))}
""")
    return path


def child_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # DeepSpeed's JIT-built ops are cached where the Makefile caches them, not rebuilt in every work dir.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # stale launcher variables from the caller would mislead torchrun
    return env


def train(strategy: str, config: Path, work: Path, timeout: float) -> dict[str, Any]:
    """One training run of `strategy`; returns the loop's throughput after its first logged window."""
    run_dir = work / f"run-{strategy}"
    overrides = [f"distributed.strategy={strategy}", f"checkpoint.dir={json.dumps(str(run_dir))}"]
    entry = ["-m", "reference_llm.train", "--config", str(config), *overrides]
    if strategy == "single":
        cmd = [sys.executable, *entry]
    else:  # the sharded engines need a launcher, even for one process
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", *entry]
    if strategy in ds_config.STAGES:
        run_config = load_config(config, overrides)
        ds = ds_config.build(run_config, world_size=1, bf16=run_config.train.dtype == "bfloat16")
        Path(run_config.distributed.deepspeed_config).write_text(json.dumps(ds, indent=1))
    start = time.perf_counter()
    with subprocess.Popen(
        cmd, cwd=work, env=child_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGKILL: torchrun then stops its workers, which would otherwise keep the GPU.
            proc.terminate()
            proc.communicate(timeout=60)
            raise RuntimeError(f"did not finish within {timeout:.0f} s (--part-timeout)") from None
    if proc.returncode != 0:
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        tail = errors[-1] if errors else (stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"exited {proc.returncode}: {tail}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    logged = [r for r in records if "tokens_per_s" in r]
    first, last = logged[0], logged[-1]
    if last["elapsed_s"] > first["elapsed_s"]:  # steady state: every window after the first
        tokens_per_s = (last["tokens"] - first["tokens"]) / (last["elapsed_s"] - first["elapsed_s"])
    else:
        tokens_per_s = first["tokens_per_s"]
    return {
        "steps": last["step"],
        "tokens_per_s": tokens_per_s,
        "first_window_s": first["elapsed_s"],
        "final_loss": last["loss"],
        "wall_s": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------------------------------
# Generation and activation memory, in this process
# ----------------------------------------------------------------------------------------------------


def timed_generation(model: Transformer, prompt: list[int], new_tokens: int) -> float:
    start = time.perf_counter()
    out = generate(model, [prompt], new_tokens)  # returns lists: the device has finished
    seconds = time.perf_counter() - start
    if len(out[0]) != new_tokens:
        raise RuntimeError(f"generated {len(out[0])} tokens, not {new_tokens}")
    return seconds


def generation(config: ModelConfig, scale: Scale, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Greedy generation with the KV cache, batch 1, random weights (speed does not depend on them)."""
    torch.manual_seed(0)
    model = Transformer(config).to(device=device, dtype=dtype).eval()
    prompt = torch.randint(config.vocab_size, (scale.prompt_tokens,)).tolist()
    timed_generation(model, prompt, 8)  # warm-up: allocation, kernel selection
    seconds = timed_generation(model, prompt, scale.new_tokens)
    return {
        "new_tokens": scale.new_tokens,
        "prompt_tokens": scale.prompt_tokens,
        "tokens_per_s": scale.new_tokens / seconds,
    }


def training_step(model: Transformer, idx: torch.Tensor, dtype: torch.dtype) -> None:
    with autocast(idx.device, dtype):
        logits, loss = model(idx, idx)  # the caller holds the logits, as the training loop does
    loss.backward()
    del logits


def step_peak_bytes(model: Transformer, idx: torch.Tensor, dtype: torch.dtype) -> int:
    """Peak bytes one step allocates above what is allocated before it (gradients already exist)."""
    if idx.device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        training_step(model, idx, dtype)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with autocast(idx.device, dtype):  # a CPU has no peak counter: the profiler's allocation timeline
        return measured_peak(model, idx)


def activation_memory(
    config: ModelConfig, scale: Scale, device: torch.device, dtype: torch.dtype, gpu: GPUSpec
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = Transformer(config).to(device)
    idx = torch.randint(config.vocab_size, (scale.micro_batch, config.block_size), device=device)
    training_step(model, idx, dtype)  # gradients now exist, as in steady-state training
    measured = step_peak_bytes(model, idx, dtype)
    with autocast(device, dtype):  # the kernel the model picks for this device and dtype, as in the step
        attn = model.blocks[0].attn
        assert isinstance(attn, Attention)  # narrows the type for mypy
        attention = "flash" if attn._use_sdpa(idx, config.block_size) else "manual"
    spec = RunSpec(
        config,
        Hardware(1, 1, gpu if device.type == "cuda" else cpu_spec(tflops=1.0)),
        tokens=1e6,
        parallelism="single",
        precision=scale.dtype,
        micro_batch=scale.micro_batch,
        seq_len=config.block_size,
        activation_checkpointing="none",
        attention=attention,
    )
    estimated = estimate_run(spec).step_bytes
    return {"measured_mib": measured / MIB, "estimated_mib": estimated / MIB, "error": estimated / measured - 1}


# ----------------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------------


def figure_line(part: str, result: dict[str, Any], scale: Scale, gpu: GPUSpec, compiled: bool) -> str:
    if "failed" in result:
        return f"{part}: FAILED: {result['failed']}"
    if part.startswith("train-"):
        return (
            f"{part}: {result['tokens_per_s']:,.0f} tokens/s, MFU {result['mfu']:.1%} of {gpu.name} bf16 peak "
            f"({gpu.bf16_tflops:g} TFLOP/s), {scale.dtype}, {'compiled' if compiled else 'eager'}, "
            f"{result['steps']} steps, "
            f"final loss {result['final_loss']:.3f}"
        )
    if part == "generate":
        return (
            f"{part}: {result['tokens_per_s']:,.1f} tokens/s with the KV cache, batch 1, {scale.dtype}, "
            f"{result['new_tokens']} new tokens after {result['prompt_tokens']}"
        )
    return (
        f"{part}: one step allocates {result['measured_mib']:,.1f} MiB, estimated {result['estimated_mib']:,.1f} "
        f"MiB ({result['error']:+.1%}), micro-batch {scale.micro_batch}, {scale.dtype}"
    )


def summary_row(part: str, result: dict[str, Any]) -> tuple[str, str, str]:
    if "failed" in result:
        return part, "FAILED", result["failed"][:80]
    if part.startswith("train-"):
        return part, f"{result['tokens_per_s']:,.0f} tokens/s", f"MFU {result['mfu']:.1%}"
    if part == "generate":
        return part, f"{result['tokens_per_s']:,.1f} tokens/s", "KV cache, batch 1"
    return part, f"{result['measured_mib']:,.1f} MiB", f"estimate {result['error']:+.1%}"


def run_check(args: argparse.Namespace, scale: Scale, gpu: GPUSpec, work: Path) -> dict[str, Any]:
    device, dtype = torch.device(scale.device), getattr(torch, scale.dtype)
    config = write_config(work, scale, compile=not args.no_compile)
    run_config: RunConfig = load_config(config)
    # Prepare the data once here (the runs find it cached) and size the model as the entry point does.
    tokenizer = prepare_data(run_config.data).tokenizer
    model = ModelConfig.preset(scale.preset, vocab_size=padded_vocab_size(tokenizer.vocab_size))
    flops_per_token = model.flops_per_token(model.block_size, training=True)
    peak = gpu.bf16_tflops * 1e12
    parts: dict[str, Callable[[], dict[str, Any]]] = {
        f"train-{s}": functools.partial(train, s, config, work, args.part_timeout) for s in STRATEGIES
    }
    parts["generate"] = lambda: generation(model, scale, device, dtype)
    parts["activation-memory"] = lambda: activation_memory(model, scale, device, dtype, gpu)
    results: dict[str, dict[str, Any]] = {}
    for part, run in parts.items():
        start = time.perf_counter()
        try:
            result = run()
        except Exception as exc:  # one part's failure must not cost the figures of the others
            result = {"failed": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        if part.startswith("train-") and "tokens_per_s" in result:
            result["mfu"] = result["tokens_per_s"] * flops_per_token / peak  # one GPU: world size 1
        result["seconds"] = time.perf_counter() - start
        results[part] = result
        print(figure_line(part, result, scale, gpu, compiled=not args.no_compile), flush=True)
    return {
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "peak": {"gpu": gpu.name, "bf16_tflops": gpu.bf16_tflops},
        "model": {
            "preset": scale.preset,
            "params": model.num_params(),
            "vocab_size": model.vocab_size,
            "block_size": model.block_size,
            "flops_per_token": flops_per_token,
        },
        "train": {
            "micro_batch": scale.micro_batch,
            "seq_len": model.block_size,
            "steps": scale.steps,
            "compile": not args.no_compile,
        },
        "dtype": scale.dtype,
        "torch": torch.__version__,
        "parts": results,
    }


def main(argv: list[str]) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="every part on the CPU at tiny scale")
    parser.add_argument("--out", default="gpu_check.json", help="JSON report (default: gpu_check.json)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.add_argument("--gpu", default="H100-SXM", help="the catalogue GPU whose bf16 peak MFU is against")
    parser.add_argument("--no-compile", action="store_true", help="train eagerly (default: train.compile=true)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 300; dry run 6)")
    parser.add_argument(
        "--part-timeout", type=float, default=150.0, help="seconds a training run may take (default 150)"
    )
    parser.add_argument("--keep", metavar="DIR", default=None, help="work here (configs, data, runs), kept")
    args = parser.parse_args(argv)
    gpu = lookup_gpu(args.gpu)
    if gpu is None:
        raise ConfigError(f"--gpu {args.gpu!r} is not in the catalogue; known: {', '.join(KNOWN_GPUS)}")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists; pass --force to overwrite it, or another --out")
    if not args.dry_run and not torch.cuda.is_available():
        raise ConfigError("no CUDA device: this check needs a GPU (use --dry-run for a CPU smoke run at tiny scale)")
    scale = DRY_RUN if args.dry_run else GPU
    if args.steps is not None:
        if args.steps < 2:
            raise ConfigError(f"--steps must be at least 2, got {args.steps}")
        scale = dataclasses.replace(scale, steps=args.steps, log_interval=max(1, args.steps // 6))
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        report = run_check(args, scale, gpu, Path(args.keep).resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
            report = run_check(args, scale, gpu, Path(tmp))
    print(f"\nsummary ({report['device']}, {scale.preset}: {report['model']['params'] / 1e6:.1f}M params)")
    for row in (summary_row(part, result) for part, result in report["parts"].items()):
        print(f"  {row[0]:<18} {row[1]:>20}  {row[2]}".rstrip())
    temp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    temp.write_text(json.dumps(report, indent=1))
    temp.replace(out)
    print(f"report: {out}")
    return 1 if any("failed" in r for r in report["parts"].values()) else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
