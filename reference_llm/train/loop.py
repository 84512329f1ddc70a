"""The training loop every stage shares: pretraining (`Trainer`), SFT and DPO (`PostTrainRun`).

One optimizer step (`train_step`) is: for each of `grad_accum` micro-batches, a forward pass under
autocast and a backward pass of loss / grad_accum (the engine skips the gradient all-reduce on all
but the last); then clip, set the scheduled learning rate and step (`engine.step`).

`fit` repeats that step until `train.max_steps` (or `train.max_minutes` of training time) and does
the same bookkeeping for every stage: a log line every `train.log_interval` steps and at the last
step, validation at `eval.interval` and at the end, a checkpoint at `checkpoint.interval` and at the
end. What differs between stages comes in as callables: the batch source, the forward/loss function,
`validate`, `stats` (extra numbers for the log line) and `save` (the stage's checkpoint, with its own
state). `step_fn` replaces `train_step` for a step that is more than one forward/backward pass
(e.g. an RL step: a rollout, then several updates).

tokens/s is measured over a window of steps that holds only training: the window restarts after each
log line, evaluation and checkpoint, so their time never lowers the figure.
"""

from __future__ import annotations

import functools
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from reference_llm.config import RunConfig
from reference_llm.distributed import Engine
from reference_llm.train import files
from reference_llm.train.checkpoint import list_checkpoints
from reference_llm.train.loggers import check_loggers, open_loggers
from reference_llm.train.metrics import ProgressDisplay
from reference_llm.train.optim import CosineSchedule
from reference_llm.train.perf import autocast, measure_matmul_peak, mfu

Batch = tuple[torch.Tensor, torch.Tensor]  # inputs (B, T) and targets (B, T)
Forward = Callable[[torch.Tensor, torch.Tensor], tuple[Any, torch.Tensor]]  # (x, y) -> (anything, loss)


# ----------------------------------------------------------------------------------------------------
# What every stage shares: seeding, the vocabulary size, the step, evaluation, the matmul peak
# ----------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def padded_vocab_size(tokenizer_vocab: int, multiple: int = 64) -> int:
    """The model's vocabulary: the tokenizer's, rounded up to a multiple of 64 so that the output
    head's matmul has an even shape (the extra rows are never a target and learn to be unlikely)."""
    return multiple * math.ceil(tokenizer_vocab / multiple)


def train_step(
    engine: Engine,
    micro_batches: Iterable[Batch],
    grad_accum: int,
    lr: float,
    grad_clip: float,
    dtype: torch.dtype,
    forward: Forward | None = None,
) -> tuple[torch.Tensor, float]:
    """One optimizer step over `grad_accum` micro-batches. Returns (mean loss as a tensor, grad norm).

    `forward` is what to call (e.g. a torch.compile'd `engine.model`, or a loss wrapper such as DPO's);
    the loss is left on the device so that callers decide when to pay for a device-to-host sync.
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


class StepFn(Protocol):
    """What `fit` calls once per step, with `train_step`'s arguments and result: (mean loss, grad norm)."""

    def __call__(
        self,
        engine: Engine,
        micro_batches: Sequence[Batch],
        grad_accum: int,
        lr: float,
        grad_clip: float,
        dtype: torch.dtype,
        forward: Forward | None = None,
    ) -> tuple[torch.Tensor, float]: ...


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


@functools.cache
def matmul_peak(dtype: torch.dtype, device: torch.device) -> float:
    """This machine's matmul FLOP/s in `dtype`, measured once per process (MFU's denominator)."""
    return measure_matmul_peak(dtype, device, size=8192 if device.type == "cuda" else 2048, repeats=5)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory so far, in MiB (the `memory_mib` of each log line): on a GPU, what torch allocated
    on it; on a CPU, the process's peak resident memory (VmHWM; not ru_maxrss, which Linux carries over execve
    from the parent, e.g. pytest's own peak). 0 where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return 0.0


# ----------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """Where a run stands; a checkpoint stores it and resume restores it."""

    step: int = 0
    elapsed: float = 0.0  # seconds of training so far, over every resume (train.max_minutes counts it)
    saved_step: int = -1  # step of this run's newest checkpoint; -1: none yet (a fresh run)


class _Window:
    """Steps, tokens and wall time since the window opened."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock, self.start, self.steps, self.tokens = clock, clock(), 0, 0

    def seconds(self) -> float:
        return self.clock() - self.start


def fit(
    engine: Engine,
    schedule: CosineSchedule,
    next_batch: Callable[[], Batch],
    forward: Forward,
    state: LoopState,
    config: RunConfig,
    dtype: torch.dtype,
    save: Callable[[dict[str, Any]], Path | None],
    *,
    validate: Callable[[], dict[str, float]] | None = None,
    stats: Callable[[], dict[str, Any]] | None = None,
    step_fn: StepFn | None = None,
    until: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Train from `state.step` to `train.max_steps` (or to step `until`, to train in stages), stopping
    early once `train.max_minutes` of training time is used up; then validate and checkpoint. Returns
    the last logged metrics (with the last validation's).

    `save(metrics)` writes a checkpoint of `state` (collective: called on every rank) and returns its
    path on rank 0, None elsewhere. A run's first `fit` with no checkpoint of its own (`saved_step` -1)
    replaces the checkpoints an earlier run left in `checkpoint.dir` at its first save. `clock` is
    injectable so that tests can control time.
    """
    t = config.train
    target = min(t.max_steps if until is None else until, t.max_steps)
    budget = t.max_minutes * 60 if t.max_minutes > 0 else math.inf
    step_fn = step_fn or train_step  # looked up at call time, so that tests can patch train_step here
    run_dir = Path(config.checkpoint.dir)
    earlier = list_checkpoints(run_dir) if state.saved_step < 0 else []
    if earlier and engine.is_main:
        print(
            f"note: {run_dir} holds checkpoints of an earlier run; this new run replaces them at its first "
            f"checkpoint (pass --resume to continue that run instead)",
            file=sys.stderr,
        )
    # A fresh run starts new records (metrics file, TensorBoard events); a resumed or staged one keeps
    # those up to now. Only rank 0 logs; the others check the same config, to stop at the same error.
    sinks = None
    if engine.is_main:
        sinks = open_loggers(config, start_step=state.step)
        sinks.log_config(config.to_dict())
    else:
        check_loggers(config)
    display = ProgressDisplay(target, start_step=state.step, enabled=engine.is_main)
    peak = matmul_peak(dtype, engine.device) * engine.world_size
    flops_per_token = config.model.flops_per_token(config.seq_len, training=True)

    def log(record: dict[str, Any]) -> None:
        if sinks is not None:
            sinks.log(record["step"], {k: v for k, v in record.items() if k != "step"})

    def run_validation(last: dict[str, Any]) -> None:
        assert validate is not None  # narrows the type: only called when there is one
        result = validate()
        last.update(result)
        log({"step": state.step, **result})
        display.note(f"step {state.step}: " + " | ".join(f"{k} {v:.4f}" for k, v in result.items()))

    def checkpoint(last: dict[str, Any]) -> None:
        path = save(last)
        state.saved_step = state.step
        if path is None:  # not rank 0
            return
        for old in earlier:
            if old != path:
                files.remove(old)  # renamed away first: a kill mid-removal never leaves a half step dir
        earlier.clear()
        display.note(f"checkpoint: {path}")

    last: dict[str, Any] = {"step": state.step}
    window = _Window(clock)
    engine.model.train()
    try:
        while state.step < target and state.elapsed < budget:
            step_start = clock()
            lr = schedule(state.step)
            micro = [next_batch() for _ in range(t.grad_accum)]
            loss, grad_norm = step_fn(engine, micro, t.grad_accum, lr, t.grad_clip, dtype, forward)
            state.step += 1
            state.elapsed += clock() - step_start
            window.steps += 1
            window.tokens += sum(x.numel() for x, _ in micro) * engine.dp_size  # every replica draws alike
            finishing = state.step >= target or state.elapsed >= budget
            if finishing or state.step % t.log_interval == 0:  # the last step is always logged
                seconds = window.seconds()
                tokens_per_s = window.tokens / seconds
                last = {
                    "step": state.step,
                    "loss": loss.item(),
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tokens_per_s,
                    "mfu": mfu(tokens_per_s, flops_per_token, peak),
                    "memory_mib": peak_memory_mib(engine.device),
                    "elapsed_s": state.elapsed,
                    **(stats() if stats else {}),
                }
                log(last)
                seconds_left = min((target - state.step) * seconds / window.steps, budget - state.elapsed)
                display.update(state.step, last, seconds_left)
                window = _Window(clock)
            if finishing:
                break  # the final validation and checkpoint follow
            validating = validate is not None and config.eval.interval and state.step % config.eval.interval == 0
            saving = config.checkpoint.interval and state.step % config.checkpoint.interval == 0
            if validating:
                run_validation(last)
            if saving:
                checkpoint(last)
            if validating or saving:  # keep their time out of the next tokens/s figure
                window = _Window(clock)
        if validate is not None:
            run_validation(last)
        if state.step != state.saved_step:  # a resumed run with nothing left to do writes nothing new
            checkpoint(last)
    finally:
        display.close()
        if sinks is not None:
            sinks.close()
    return last
