"""The pretraining run end to end on the bundled corpus: loss falls, exact resume, time limit, CLI errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reference_llm.train.loop as train_mod
from reference_llm.assets import corpus_path
from reference_llm.cli import run_main
from reference_llm.config import load_config
from reference_llm.train import Trainer, main
from reference_llm.train.checkpoint import list_checkpoints, load_checkpoint, load_model
from reference_llm.train.metrics import read_metrics


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One prepared copy of the corpus (char tokenizer: builds in about a second) for every test here."""
    return tmp_path_factory.mktemp("data-cache")


def _overrides(run_dir, cache_dir, **extra) -> list[str]:
    values = {
        "data.corpus": str(corpus_path()),
        "data.tokenizer": "char",
        "data.cache_dir": str(cache_dir),
        "model.preset": "tiny",
        "train.micro_batch": 8,
        "train.max_steps": 40,
        "train.warmup_steps": 5,
        "train.lr": 3e-3,
        "train.min_lr": 3e-4,
        "train.log_interval": 1,
        "train.dtype": "float32",
        "eval.interval": 20,
        "eval.iters": 4,
        "checkpoint.dir": str(run_dir),
        "checkpoint.interval": 0,
    }
    values.update({key.replace("__", "."): value for key, value in extra.items()})
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]  # JSON scalars are valid TOML


def _config(run_dir, cache_dir, **extra):
    return load_config(None, _overrides(run_dir, cache_dir, **extra))


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def test_loss_falls_and_the_run_is_recorded(tmp_path, cache_dir):
    run = tmp_path / "run"
    trainer = Trainer(_config(run, cache_dir))
    last = trainer.fit()
    records = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert len(losses) == 40 and [r["step"] for r in evals] == [20, 40]
    vocab = trainer.tokenizer.vocab_size
    padded = trainer.config.model.vocab_size
    assert padded == 64 * math.ceil(vocab / 64)
    assert losses[0] == pytest.approx(math.log(padded), abs=0.3)  # a uniform guess at initialisation
    assert sum(losses[-5:]) / 5 < losses[0] - 1.2  # a real drop, not noise
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < losses[0]
    # Bits per byte is the validation loss converted with the split's token and byte counts.
    split = trainer.val_loader.meta["splits"]["val"]
    expected_bpb = last["val_loss"] * split["tokens"] / (split["bytes"] * math.log(2))
    assert last["val_bpb"] == pytest.approx(expected_bpb)
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]))
    assert (run / "latest").read_text().strip() == "step_0000040"

    model, tokenizer, config = load_model(run)
    assert config.model == trainer.config.model and tokenizer.fingerprint() == trainer.tokenizer.fingerprint()
    x, _ = next(trainer.val_loader.iter_eval_batches(1))
    trainer.engine.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], trainer.engine.model(x)[0])


def test_interrupted_run_resumes_bit_exactly(tmp_path, cache_dir, monkeypatch):
    # Dropout and gradient accumulation on: the RNG state and the loader position both matter.
    settings = dict(
        train__max_steps=16,
        train__grad_accum=2,
        model__dropout=0.1,
        checkpoint__interval=4,
        eval__interval=6,
        train__dtype="auto",
    )
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    Trainer(_config(whole, cache_dir, **settings)).fit()

    real_step, calls = train_mod.train_step, []

    def crash_at_step_11(*args, **kwargs):
        calls.append(1)
        if len(calls) == 11:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", crash_at_step_11)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(_config(broken, cache_dir, **settings)).fit()
    monkeypatch.setattr(train_mod, "train_step", real_step)
    assert (broken / "latest").read_text().strip() == "step_0000008"
    assert len(_losses(broken)) == 10  # logged past the last checkpoint; resume must drop steps 9-10

    resumed = Trainer(_config(broken, cache_dir, **settings), resume=True)
    assert resumed.step == 8
    resumed.fit()
    assert _losses(broken) == _losses(whole)  # exact equality, not approximate
    a, b = load_checkpoint(whole), load_checkpoint(broken)
    assert a.step == b.step == 16
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_staged_fit_and_resume_of_a_finished_run(tmp_path, cache_dir):
    run = tmp_path / "run"
    trainer = Trainer(_config(run, cache_dir, train__max_steps=6))
    trainer.fit(until=3)
    assert trainer.step == 3 and (run / "latest").read_text().strip() == "step_0000003"
    trainer.fit()
    assert trainer.step == 6 and len(_losses(run)) == 6
    again = Trainer(_config(run, cache_dir, train__max_steps=6), resume=True)
    again.fit()  # nothing left to train: evaluates, does not write another checkpoint
    assert again.step == 6 and len(_losses(run)) == 6


def test_a_new_run_replaces_an_earlier_runs_checkpoints(tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    Trainer(_config(run, cache_dir, train__max_steps=6, checkpoint__interval=3)).fit()
    assert [p.name for p in list_checkpoints(run)] == ["step_0000003", "step_0000006"]
    capsys.readouterr()
    Trainer(_config(run, cache_dir, train__max_steps=2)).fit()
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(run)] == ["step_0000002"]
    assert (run / "latest").read_text().strip() == "step_0000002" and len(_losses(run)) == 2


def test_max_minutes_stops_early_with_a_final_checkpoint(tmp_path, cache_dir):
    run = tmp_path / "run"
    last = Trainer(_config(run, cache_dir, train__max_minutes=1e-6)).fit()  # any step takes longer
    assert last["step"] == 1 and "val_loss" in last
    assert load_checkpoint(run).step == 1


def test_resume_without_a_checkpoint_starts_fresh(tmp_path, cache_dir, capsys):
    trainer = Trainer(_config(tmp_path / "empty", cache_dir), resume=True)
    assert trainer.step == 0
    assert "has no checkpoint yet; starting from step 0" in capsys.readouterr().err


def _cli(argv, capsys) -> tuple[int, str]:
    code = run_main(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"train__no_such_key": 1}, "error: unknown key(s) in [train]: no_such_key"),
        ({"model__preset": "gpt-5"}, "error: unknown model preset 'gpt-5'; known presets: tiny,"),
        ({"train__dtype": "float8"}, "error: train.dtype must be one of auto, float32, bfloat16; got 'float8'"),
        ({"train__max_steps": "many"}, "error: train.max_steps must be int, got 'many'"),
    ],
)
def test_cli_bad_config_is_one_line_and_exit_2(tmp_path, cache_dir, capsys, bad, message):
    code, line = _cli(["--config", str(_write_config(tmp_path)), *_overrides(tmp_path / "r", cache_dir, **bad)], capsys)
    assert code == 2 and line.startswith(message)


def test_cli_malformed_override_and_missing_config(tmp_path, capsys):
    code, line = _cli(["--config", str(_write_config(tmp_path)), "train.max_steps"], capsys)
    assert code == 2 and line == (
        "error: override 'train.max_steps' must look like section.key=value (e.g. train.max_steps=100)"
    )
    code, line = _cli(["train.max_steps=3"], capsys)
    assert code == 2 and line == "error: the following arguments are required: --config (see --help)"


def test_cli_empty_corpus(tmp_path, cache_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, line = _cli(
        ["--config", str(_write_config(tmp_path)), *_overrides(tmp_path / "r", cache_dir, data__corpus=str(empty))],
        capsys,
    )
    assert code == 2 and "empty" in line and str(empty) in line


def test_cli_resume_from_corrupt_or_mismatched_checkpoint(tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    config = str(_write_config(tmp_path))
    assert _cli(["--config", config, *_overrides(run, cache_dir, train__max_steps=2)], capsys)[0] == 0

    code, line = _cli(
        ["--config", config, "--resume", *_overrides(run, cache_dir, train__max_steps=4, model__n_layer=3)], capsys
    )
    assert code == 2 and line == (
        "error: checkpoint has no tensor 'blocks.2.attn_norm.weight' that the model "
        "needs (is it for a different model config?)"
    )

    weights = run / "step_0000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, line = _cli(["--config", config, "--resume", *_overrides(run, cache_dir, train__max_steps=4)], capsys)
    assert code == 2 and line.startswith("error: ") and "model.safetensors is corrupt or truncated" in line


def _write_config(tmp_path):
    path = tmp_path / "train.toml"
    path.write_text('[model]\npreset = "tiny"\n\n[train]\nmax_steps = 2\n')
    return path


def test_cli_subprocess_help_and_error_exit_codes(tmp_path):
    run = [sys.executable, "-m", "reference_llm.train"]
    repo = Path(__file__).resolve().parents[2]
    shown = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120, cwd=repo)
    assert shown.returncode == 0 and "--resume" in shown.stdout and "--config" in shown.stdout
    failed = subprocess.run(
        [*run, "--config", str(tmp_path / "missing.toml")], capture_output=True, text=True, timeout=120, cwd=repo
    )
    assert failed.returncode == 2
    assert failed.stderr.strip() == f"error: config file not found: {tmp_path / 'missing.toml'}"
