"""The shared training loop (`reference_llm.train.loop.fit`) on a tiny model, with a clock the test moves:
what each log line's tokens/s counts, the last step under a time limit, an earlier run's checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from reference_llm.config import RunConfig
from reference_llm.distributed import SingleDeviceEngine
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train.checkpoint import list_checkpoints, save_checkpoint
from reference_llm.train.loop import Batch, LoopState, fit, train_step
from reference_llm.train.metrics import read_metrics
from reference_llm.train.optim import CosineSchedule, optimizer_factory

MICRO_BATCH, SEQ_LEN = 2, 8
TOKENS_PER_STEP = MICRO_BATCH * SEQ_LEN
STEP_S, SAVE_S, VALIDATE_S = 1.0, 100.0, 50.0  # what each takes on the test's clock


class Clock:
    """Time that passes only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Run:
    """A tiny model, its engine and the hooks `fit` takes, each of which moves the clock by its cost."""

    def __init__(self, run_dir: Path, **settings: Any) -> None:
        torch.manual_seed(0)
        self.config = RunConfig(model=ModelConfig.preset("tiny", vocab_size=64, block_size=SEQ_LEN))
        self.config.checkpoint.dir = str(run_dir)
        self.config.eval.interval = 0
        self.config.checkpoint.interval = 0
        self.config.train.micro_batch = MICRO_BATCH
        self.config.train.warmup_steps = 0
        for key, value in settings.items():
            section, name = key.split("__")
            setattr(getattr(self.config, section), name, value)
        self.engine = SingleDeviceEngine(
            self.config, Transformer(self.config.model), optimizer_factory(self.config.train)
        )
        self.clock = Clock()
        self.state = LoopState()
        self.saved: list[int] = []
        self.data = torch.Generator().manual_seed(1)

    def next_batch(self) -> Batch:
        tokens = torch.randint(0, 64, (MICRO_BATCH, SEQ_LEN + 1), generator=self.data)
        return tokens[:, :-1], tokens[:, 1:]

    def step(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, float]:
        self.clock.now += STEP_S
        return train_step(*args, **kwargs)

    def save(self, metrics: dict[str, Any]) -> Path:
        self.clock.now += SAVE_S
        self.saved.append(self.state.step)
        return _checkpoint(Path(self.config.checkpoint.dir), self.state.step)

    def validate(self) -> dict[str, float]:
        self.clock.now += VALIDATE_S
        return {"val_loss": 1.0}

    def fit(self, until: int | None = None) -> dict[str, Any]:
        return fit(
            self.engine,
            CosineSchedule.from_config(self.config.train),
            self.next_batch,
            self.engine.model,
            self.state,
            self.config,
            torch.float32,
            self.save,
            validate=self.validate,
            step_fn=self.step,
            until=until,
            clock=self.clock,
        )

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(Path(self.config.checkpoint.dir) / self.config.train.metrics_file)


def test_tokens_per_second_counts_training_time_only(tmp_path):
    run = Run(tmp_path / "run", train__max_steps=6, train__log_interval=2, eval__interval=2, checkpoint__interval=2)
    run.fit()
    logged = [r for r in run.records() if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    # Validation and checkpoints at steps 2 and 4 took 300 s of wall time between the log lines...
    assert run.saved == [2, 4, 6]
    assert run.clock.now == 6 * STEP_S + 3 * (SAVE_S + VALIDATE_S)
    # ...and none of it lowers tokens/s: each window holds two training steps, 2 s, and their tokens.
    assert [r["tokens_per_s"] for r in logged] == [2 * TOKENS_PER_STEP / (2 * STEP_S)] * 3
    assert [r["elapsed_s"] for r in logged] == [2.0, 4.0, 6.0]


def test_running_out_of_time_logs_the_last_step(tmp_path):
    run = Run(tmp_path / "run", train__max_steps=100, train__log_interval=10, train__max_minutes=2.5 * STEP_S / 60)
    last = run.fit()
    assert run.state.step == 3  # 3 s of training is the first to reach 2.5 s
    logged = [r["step"] for r in run.records() if "loss" in r]
    assert logged == [3] and last["step"] == 3 and "loss" in last and "val_loss" in last
    assert run.saved == [3]  # one final checkpoint, after the final validation


def _checkpoint(run_dir: Path, step: int) -> Path:
    """A small checkpoint that the checkpoint module counts as complete."""
    return save_checkpoint(run_dir, step, {"w": torch.zeros(1)}, None, {"step": step}, None, keep=10)


def _step_dirs(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir)]


def test_a_fresh_run_replaces_an_earlier_runs_checkpoints_at_its_first_save(tmp_path, capsys):
    run_dir = tmp_path / "run"
    for step in (5, 50):
        _checkpoint(run_dir, step)
    run = Run(run_dir, train__max_steps=4, checkpoint__interval=2)
    run.fit(until=2)
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err
    assert _step_dirs(run_dir) == ["step_0000002"]
    run.fit()  # the second stage of the same run keeps the first stage's checkpoint
    assert _step_dirs(run_dir) == ["step_0000002", "step_0000004"]
    assert "earlier run" not in capsys.readouterr().err


def test_a_resumed_run_keeps_its_checkpoints(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _checkpoint(run_dir, 2)
    run = Run(run_dir, train__max_steps=4)
    run.state = LoopState(step=2, elapsed=2.0, saved_step=2)  # what resuming from step_0000002 restores
    run.fit()
    assert _step_dirs(run_dir) == ["step_0000002", "step_0000004"]
    assert "earlier run" not in capsys.readouterr().err
    run.fit()  # nothing left to train: validates, writes no checkpoint
    assert run.saved == [4]


@pytest.mark.parametrize("log_interval", [1, 3])
def test_every_step_counts_its_own_tokens(tmp_path, log_interval):
    """tokens/s comes from the batches drawn (grad_accum micro-batches a step), not from the config."""
    run = Run(tmp_path / "run", train__max_steps=3, train__grad_accum=2, train__log_interval=log_interval)
    run.fit()
    logged = [r for r in run.records() if "loss" in r]
    assert [r["step"] for r in logged] == list(range(log_interval, 4, log_interval))
    assert all(r["tokens_per_s"] == 2 * TOKENS_PER_STEP / STEP_S for r in logged)


def test_the_train_package_exports_resolve_to_the_loop_and_the_trainer():
    import reference_llm.train as train
    from reference_llm.train import loop, pretrain

    assert all(getattr(train, name) is not None for name in train.__all__)
    assert train.train_step is loop.train_step and train.fit is loop.fit and train.Trainer is pretrain.Trainer
