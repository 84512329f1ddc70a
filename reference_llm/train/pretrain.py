"""Pretraining: `python -m reference_llm.train --config FILE [section.key=value ...] [--resume]`.

One optimizer step (`train_step`) is: for each of `grad_accum` micro-batches, a forward pass under
autocast and a backward pass of loss / grad_accum (the engine skips the gradient all-reduce on all
but the last); then clip, set the scheduled learning rate and step (`engine.step`). The `Trainer`
adds data, evaluation, metrics, checkpoints and resume around it.

Resume is exact: a checkpoint stores the weights, the optimizer state, the step (the schedule is a
function of it), the Python/NumPy/torch RNG states and the data loader's position, so on the CPU an
interrupted and resumed run logs bit-for-bit the losses an uninterrupted one does. Evaluation uses a
fixed set of validation windows and no global RNG, so it changes nothing either.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import random
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reference_llm.config import RunConfig, load_config
from reference_llm.data import TokenLoader, prepare_data
from reference_llm.distributed import Engine, build_engine
from reference_llm.errors import CheckpointError, ConfigError, DataError
from reference_llm.model import Transformer
from reference_llm.train.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from reference_llm.train.metrics import MetricsFile, ProgressDisplay
from reference_llm.train.optim import CosineSchedule, optimizer_factory
from reference_llm.train.perf import autocast, measure_matmul_peak, mfu, resolve_dtype

Batch = tuple[torch.Tensor, torch.Tensor]  # token ids (B, T) and targets (B, T)


# ----------------------------------------------------------------------------------------------------
# The reusable core (SFT and DPO loops call these too)
# ----------------------------------------------------------------------------------------------------


def train_step(engine: Engine, micro_batches: Iterable[Batch], grad_accum: int, lr: float, grad_clip: float,
               dtype: torch.dtype, forward: torch.nn.Module | None = None) -> tuple[torch.Tensor, float]:
    """One optimizer step over `grad_accum` micro-batches. Returns (mean loss as a tensor, grad norm).

    `forward` is the module to call (e.g. a torch.compile'd `engine.model`); the loss is left on the
    device so that callers decide when to pay for a device-to-host sync.
    """
    forward = engine.model if forward is None else forward
    total = torch.zeros((), device=engine.device)
    for i, (x, y) in enumerate(micro_batches):
        with engine.accumulating(is_last_micro_step=i == grad_accum - 1):
            with autocast(engine.device, dtype):
                _, loss = forward(x.to(engine.device, non_blocking=True), y.to(engine.device, non_blocking=True))
            engine.backward(loss / grad_accum)
        total += loss.detach()
    grad_norm = engine.step(lr, grad_clip)
    return total / grad_accum, grad_norm


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device, dtype: torch.dtype) -> float:
    """Mean loss over `batches`, with dropout off; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    losses = []
    for x, y in batches:
        with autocast(device, dtype):
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.float())
    model.train(was_training)
    return torch.stack(losses).mean().item()


def padded_vocab_size(tokenizer_vocab: int, multiple: int = 64) -> int:
    """The model's vocabulary: the tokenizer's, rounded up to a multiple of 64 so that the output
    head's matmul has an even shape (the extra rows are never a target and learn to be unlikely)."""
    return multiple * math.ceil(tokenizer_vocab / multiple)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@functools.cache
def matmul_peak(dtype: torch.dtype, device: torch.device) -> float:
    """This machine's matmul FLOP/s in `dtype`, measured once per process (MFU's denominator)."""
    return measure_matmul_peak(dtype, device, size=8192 if device.type == "cuda" else 2048, repeats=5)


# ----------------------------------------------------------------------------------------------------
# The pretraining run
# ----------------------------------------------------------------------------------------------------


class Trainer:
    """A pretraining run as configured by a `RunConfig`: `Trainer(config).fit()`.

    `resume=True` continues from `checkpoint.dir/latest` (a fresh start, with a note, when the run
    has no checkpoint yet, so that requeued cluster jobs can always pass --resume).
    """

    def __init__(self, config: RunConfig, resume: bool = False) -> None:
        self.config = config
        t = config.train
        seed_everything(t.seed)
        prepared = prepare_data(config.data)
        self.tokenizer = prepared.tokenizer
        self.data_dir = Path(prepared.dir)
        self.tokens_per_byte = _tokens_per_byte(prepared.meta, "val")
        # The model's vocabulary follows the tokenizer's; the stored config records the value used.
        config.model = dataclasses.replace(config.model, vocab_size=padded_vocab_size(self.tokenizer.vocab_size))
        self.engine = build_engine(config, Transformer(config.model), optimizer_factory(t))
        self.device = self.engine.device
        self.dtype = resolve_dtype(t.dtype, self.device)
        self.schedule = CosineSchedule.from_config(t)
        self.seq_len = config.seq_len
        self.tokens_per_step = t.micro_batch * self.seq_len * t.grad_accum * self.engine.world_size
        self.flops_per_token = config.model.flops_per_token(self.seq_len, training=True)
        self.train_loader = TokenLoader(self.data_dir, split="train", seq_len=self.seq_len, batch_size=t.micro_batch,
                                        seed=t.seed, rank=self.engine.rank, world_size=self.engine.world_size,
                                        sampling=config.data.sampling)
        self.val_loader = TokenLoader(self.data_dir, split="val", seq_len=self.seq_len, batch_size=t.micro_batch,
                                      seed=t.seed)
        self.run_dir = Path(config.checkpoint.dir)
        self.step = 0
        self.elapsed = 0.0  # seconds of training so far, over every resume (train.max_minutes counts it)
        self.last_saved_step = -1
        # Checkpoints of an earlier run in the same directory: replaced at this run's first save.
        self._stale = [] if resume else list_checkpoints(self.run_dir)
        if self._stale and self.engine.is_main:
            print(f"note: {self.run_dir} holds checkpoints of an earlier run; this new run replaces them at its "
                  f"first checkpoint (pass --resume to continue that run instead)", file=sys.stderr)
        if resume:
            self._resume()
        self.forward = torch.compile(self.engine.model) if t.compile else self.engine.model

    # -- resume / save -------------------------------------------------------------------------------

    def _resume(self) -> None:
        found = latest_checkpoint(self.run_dir)
        if found is None:
            if self.engine.is_main:
                print(f"note: --resume but {self.run_dir} has no checkpoint yet; starting from step 0", file=sys.stderr)
            return
        ckpt = load_checkpoint(found)
        state = ckpt.state
        if state.get("tokenizer_fingerprint") != self.tokenizer.fingerprint():
            raise CheckpointError(f"{found}: trained with a different tokenizer than data.* now builds "
                                  f"(fingerprints differ)")
        self.engine.load_state(ckpt.weights, ckpt.optimizer_state)
        self.train_loader.load_state_dict(state["loader"])
        restore_rng_state(state["rng"])
        self.step = self.last_saved_step = ckpt.step
        self.elapsed = float(state.get("elapsed_s", 0.0))

    def save(self, metrics: dict[str, Any]) -> Path | None:
        """Write a checkpoint of the current step (collective; rank 0 writes). Returns its path on rank 0."""
        weights = self.engine.full_state_dict()
        optimizer_state = self.engine.optimizer_state()
        path = None
        if self.engine.is_main:
            state = {
                "step": self.step, "elapsed_s": self.elapsed, "schedule": dataclasses.asdict(self.schedule),
                "rng": capture_rng_state(), "loader": self.train_loader.state_dict(),
                "config": self.config.to_dict(), "tokenizer_fingerprint": self.tokenizer.fingerprint(),
                "metrics": metrics,
            }
            path = save_checkpoint(self.run_dir, self.step, weights, optimizer_state, state, self.tokenizer,
                                   keep=self.config.checkpoint.keep)
            for stale in self._stale:
                if stale != path:
                    shutil.rmtree(stale, ignore_errors=True)
            self._stale = []
        self.last_saved_step = self.step
        self.engine.barrier()
        return path

    # -- evaluation ----------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Validation loss, perplexity and bits per byte over `eval.iters` batches (the same ones each time)."""
        batches = self.val_loader.iter_eval_batches(self.config.eval.iters)
        loss = evaluate(self.engine.model, batches, self.device, self.dtype)
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
                "val_bpb": loss * self.tokens_per_byte / math.log(2)}

    # -- the loop --------------------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to `train.max_steps` (or to step `until`, to train in stages), stopping early when
        `train.max_minutes` of training time is used up. Ends with an evaluation and a checkpoint.
        Returns the last logged metrics."""
        cfg, t = self.config, self.config.train
        target = min(until if until is not None else t.max_steps, t.max_steps)
        budget = t.max_minutes * 60 if t.max_minutes > 0 else math.inf
        # A fresh run starts a new metrics file; a resumed or staged one keeps the records up to now.
        metrics_file = MetricsFile(self.run_dir / t.metrics_file, keep_through_step=self.step or None) \
            if self.engine.is_main else None
        display = ProgressDisplay(target, start_step=self.step, enabled=self.engine.is_main)
        peak = matmul_peak(self.dtype, self.device) * self.engine.world_size
        display.note(f"model: {cfg.model.name}, {self.engine.model.num_params() / 1e6:.2f}M params, vocab "
                     f"{cfg.model.vocab_size}; {self.device.type} {str(self.dtype).removeprefix('torch.')}, "
                     f"{self.tokens_per_step:,} tokens/step, strategy {cfg.distributed.strategy}")
        last: dict[str, Any] = {"step": self.step}
        window = _Window()  # steps and wall time since the last log line, for tokens/s
        self.engine.model.train()
        try:
            while self.step < target and self.elapsed < budget:
                step_start = time.perf_counter()
                lr = self.schedule(self.step)
                micro = (self.train_loader.next_batch() for _ in range(t.grad_accum))
                loss, grad_norm = train_step(self.engine, micro, t.grad_accum, lr, t.grad_clip, self.dtype,
                                             forward=self.forward)
                self.step += 1
                window.steps += 1
                self.elapsed += time.perf_counter() - step_start
                finishing = self.step >= target or self.elapsed >= budget
                if finishing or self.step % t.log_interval == 0:
                    tokens_per_s = self.tokens_per_step * window.steps / window.seconds()
                    last = {"step": self.step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm,
                            "tokens_per_s": tokens_per_s, "mfu": mfu(tokens_per_s, self.flops_per_token, peak),
                            "tokens": self.step * self.tokens_per_step, "elapsed_s": self.elapsed}
                    if metrics_file is not None:
                        metrics_file.write(last)
                    seconds_left = min((target - self.step) * window.seconds() / window.steps, budget - self.elapsed)
                    display.update(self.step, last, seconds_left)
                    window = _Window()
                if finishing:
                    break  # the final evaluation and checkpoint follow
                evaluating = cfg.eval.interval and self.step % cfg.eval.interval == 0
                saving = cfg.checkpoint.interval and self.step % cfg.checkpoint.interval == 0
                if evaluating:
                    self._log_eval(last, metrics_file, display)
                if saving:
                    self._save_and_note(last, display)
                if evaluating or saving:  # keep their time out of the next tokens/s figure
                    window = _Window()
            self._log_eval(last, metrics_file, display)
            if self.step != self.last_saved_step:
                self._save_and_note(last, display)
        finally:
            display.close()
            if metrics_file is not None:
                metrics_file.close()
        return last

    def _save_and_note(self, last: dict[str, Any], display: ProgressDisplay) -> None:
        path = self.save(last)
        if path is not None:
            display.note(f"checkpoint: {path}")

    def _log_eval(self, last: dict[str, Any], metrics_file: MetricsFile | None, display: ProgressDisplay) -> None:
        if self.config.eval.iters <= 0:  # evaluation switched off
            return
        result = self.evaluate()
        last.update(result)
        if metrics_file is not None:
            metrics_file.write({"step": self.step, **result})
            display.note(f"step {self.step}: val loss {result['val_loss']:.4f} | ppl {result['val_ppl']:.2f} | "
                         f"{result['val_bpb']:.4f} bits/byte")


class _Window:
    """Wall time and optimizer steps since the last log line."""

    def __init__(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def _tokens_per_byte(meta: dict[str, Any], split: str) -> float:
    """Tokens per UTF-8 byte of a split's text, to turn a loss per token into bits per byte."""
    try:
        info = meta["splits"][split]
        return info["tokens"] / info["bytes"]
    except (KeyError, TypeError, ZeroDivisionError):
        raise DataError(f"data metadata lacks token and byte counts for the {split!r} split") from None


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit code 2, like every other user error
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m reference_llm.train",
                     description="Pretrain a model as configured by a TOML run config.")
    parser.add_argument("--config", required=True, metavar="FILE", help="run config (TOML; see reference_llm/config.py)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, values in TOML syntax, e.g. train.max_steps=200 train.lr=3e-4")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in checkpoint.dir (exactly, on the CPU)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config, args.overrides)
    trainer = Trainer(config, resume=args.resume)
    try:
        last = trainer.fit()
    finally:
        trainer.engine.shutdown()
    if trainer.engine.is_main:
        summary = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items()
                             if k in ("step", "loss", "val_loss", "val_bpb"))
        print(f"done: {summary}; checkpoint in {trainer.run_dir}")
    return 0

