"""Pretraining: `python -m reference_llm.train --config FILE [section.key=value ...] [--resume]`.

The `Trainer` puts the pretraining data (`TokenLoader`), validation (loss, perplexity, bits per byte)
and checkpoints (weights, optimizer, RNG and loader state) around the loop that every stage shares
(`reference_llm.train.loop.fit`).

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
import sys
import time
from pathlib import Path
from typing import Any

from reference_llm.cli import ArgumentParser
from reference_llm.config import RunConfig, load_config
from reference_llm.data import TokenLoader, prepare_data
from reference_llm.distributed import build_engine
from reference_llm.errors import CheckpointError, DataError
from reference_llm.model import Transformer
from reference_llm.train import loop
from reference_llm.train.checkpoint import (
    capture_rng_state,
    checkpoint_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
)
from reference_llm.train.loop import Forward, LoopState, evaluate, padded_vocab_size, seed_everything
from reference_llm.train.optim import CosineSchedule, optimizer_factory
from reference_llm.train.perf import (
    COMPILE_RECORD,
    AutoCompile,
    check_compile_setting,
    compile_key,
    compile_model,
    inductor_cache_dir,
    resolve_dtype,
)
from reference_llm.train.sharded_checkpoint import ShardedCheckpoint, is_sharded


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
        config.model.check_memory()  # one line, not the OOM killer, for a model too large for this machine
        # A factory, not a model: sharded strategies build it deferred, each rank only its shards.
        self.engine = build_engine(config, functools.partial(Transformer, config.model), optimizer_factory(t))
        self.device = self.engine.device
        self.dtype = resolve_dtype(t.dtype, self.device)
        self.schedule = CosineSchedule.from_config(t)
        self.seq_len = config.seq_len
        self.tokens_per_step = t.micro_batch * self.seq_len * t.grad_accum * self.engine.dp_size
        self.train_loader = TokenLoader(
            self.data_dir,
            split="train",
            seq_len=self.seq_len,
            batch_size=t.micro_batch,
            seed=t.seed,
            # Ranks of one replica (tensor/pipeline parallel) read the same batches.
            rank=self.engine.dp_rank,
            world_size=self.engine.dp_size,
            sampling=config.data.sampling,
        )
        self.val_loader = TokenLoader(
            self.data_dir, split="val", seq_len=self.seq_len, batch_size=t.micro_batch, seed=t.seed
        )
        self.run_dir = Path(config.checkpoint.dir)
        self.state = LoopState()
        if resume:
            self._resume()
        self.forward = self._forward()

    def _forward(self) -> Forward:
        """What the loop calls: the model, its `torch.compile`, or for `train.compile = "auto"` an
        `AutoCompile` that compiles once timing shows it pays off within the remaining steps."""
        t = self.config.train
        setting = check_compile_setting(t.compile)
        if setting is False:
            return self.engine.model
        # Compiled kernels are kept under the project's .cache/ (unless TORCHINDUCTOR_CACHE_DIR says
        # otherwise), so that the next run of this project compiles in seconds.
        cache = inductor_cache_dir(Path(".cache") / "inductor")
        if setting is True:
            return compile_model(self.engine.model)
        key = compile_key(self.config.model, self.device, self.dtype, t.micro_batch, self.seq_len)
        budget = t.max_minutes * 60 - self.elapsed if t.max_minutes > 0 else math.inf
        main = self.engine.is_main
        return AutoCompile(
            self.engine.model,
            planned_calls=(t.max_steps - self.step) * t.grad_accum,
            budget_s=budget,
            key=key,
            record=cache / COMPILE_RECORD,
            cpu_clock=time.process_time if self.device.type == "cpu" else None,
            note=lambda text: print(f"note: {text}", file=sys.stderr) if main else None,
        )

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, over every resume."""
        return self.state.elapsed

    # -- resume / save -------------------------------------------------------------------------------

    def _resume(self) -> None:
        found = latest_checkpoint(self.run_dir)
        if found is None:
            if self.engine.is_main:
                print(f"note: --resume but {self.run_dir} has no checkpoint yet; starting from step 0", file=sys.stderr)
            return
        state = checkpoint_state(found)
        if state.get("tokenizer_fingerprint") != self.tokenizer.fingerprint():
            raise CheckpointError(
                f"{found}: trained with a different tokenizer than data.* now builds (fingerprints differ)"
            )
        if self.engine.shards_checkpoints and is_sharded(found):
            # Each rank reads only its own pieces, whatever strategy and world size wrote them.
            self.engine.load_sharded(ShardedCheckpoint.open(found))
        else:
            ckpt = load_checkpoint(found)  # consolidated, or gathered here from a sharded one
            self.engine.load_state(ckpt.weights, ckpt.optimizer_state)
        self.train_loader.load_state_dict(state["loader"])
        restore_rng_state(state["rng"])
        step = int(state["step"])
        self.state = LoopState(step=step, elapsed=float(state.get("elapsed_s", 0.0)), saved_step=step)

    def save(self, metrics: dict[str, Any]) -> Path | None:
        """Write a checkpoint of the current step (collective). Sharded strategies write a piece per
        rank; the others write from rank 0, which holds everything. Returns its path on rank 0."""
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed,
            "schedule": dataclasses.asdict(self.schedule),
            "rng": capture_rng_state(),
            "loader": self.train_loader.state_dict(),
            "config": self.config.to_dict(),
            "tokenizer_fingerprint": self.tokenizer.fingerprint(),
            "metrics": metrics,
        }
        keep = self.config.checkpoint.keep
        if self.engine.shards_checkpoints:
            path: Path | None = save_sharded_checkpoint(
                self.run_dir,
                self.step,
                self.engine.sharded_state(),
                self.config.distributed.strategy,
                state,
                self.tokenizer,
                keep,
            )
            self.engine.barrier()
            return path if self.engine.is_main else None
        weights = self.engine.full_state_dict()
        optimizer_state = self.engine.optimizer_state()
        path = None
        if self.engine.is_main:
            path = save_checkpoint(self.run_dir, self.step, weights, optimizer_state, state, self.tokenizer, keep=keep)
        self.engine.barrier()
        return path

    # -- evaluation ----------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Validation loss, perplexity and bits per byte over `eval.iters` batches (the same ones each time)."""
        batches = self.val_loader.iter_eval_batches(self.config.eval.iters)
        loss = evaluate(self.engine.model, batches, self.device, self.dtype)
        return {
            "val_loss": loss,
            "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": loss * self.tokens_per_byte / math.log(2),
        }

    # -- the loop --------------------------------------------------------------------------------------

    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to `train.max_steps` (or to step `until`, to train in stages), stopping early when
        `train.max_minutes` of training time is used up. Ends with an evaluation and a checkpoint.
        Returns the last logged metrics."""
        cfg = self.config
        if self.engine.is_main:
            print(
                f"model: {cfg.model.name}, {self.engine.model.num_params() / 1e6:.2f}M params, vocab "
                f"{cfg.model.vocab_size}; {self.device.type} {str(self.dtype).removeprefix('torch.')}, "
                f"{self.tokens_per_step:,} tokens/step, strategy {cfg.distributed.strategy}",
                file=sys.stderr,
            )
        return loop.fit(
            self.engine,
            self.schedule,
            self.train_loader.next_batch,
            self.forward,
            self.state,
            cfg,
            self.dtype,
            self.save,
            validate=self.evaluate if cfg.eval.iters > 0 else None,
            stats=lambda: {"tokens": self.step * self.tokens_per_step},
            until=until,
        )


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


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m reference_llm.train", description="Pretrain a model as configured by a TOML run config."
    )
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="run config (TOML; see reference_llm/config.py)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, values in TOML syntax, e.g. train.max_steps=200 train.lr=3e-4",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in checkpoint.dir (exactly, on the CPU)",
    )
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
        summary = " | ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in last.items()
            if k in ("step", "loss", "val_loss", "val_bpb")
        )
        print(f"done: {summary}; checkpoint in {trainer.run_dir}")
    return 0
