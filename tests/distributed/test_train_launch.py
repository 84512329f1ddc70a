"""The real entry point, `python -m reference_llm.train`, under torchrun with 2 processes on gloo:
a DDP run, then a resume of its checkpoint under DeepSpeed ZeRO-2, launched as a user launches them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reference_llm.assets import corpus_path
from reference_llm.config import load_config
from reference_llm.distributed import ds_config
from reference_llm.train.checkpoint import load_checkpoint, load_model

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def write_config(root: Path) -> Path:
    config = root / "train.toml"
    config.write_text(f"""
[model]
preset = "tiny"
[data]
corpus = {json.dumps(str(corpus_path()))}
tokenizer = "char"
cache_dir = {json.dumps(str(root / "cache"))}
[train]
micro_batch = 4
grad_accum = 2
seq_len = 32
max_steps = 4
warmup_steps = 1
dtype = "float32"
device = "cpu"
log_interval = 2
[eval]
interval = 0
iters = 2
[checkpoint]
dir = {json.dumps(str(root / "runs"))}
interval = 0
[distributed]
strategy = "ddp"
deepspeed_config = {json.dumps(str(root / "deepspeed.json"))}
""")
    return config


def test_train_under_torchrun_then_resume_under_zero2(tmp_path, launch_ok):
    config = write_config(tmp_path)
    ddp = launch_ok(["-m", "reference_llm.train", "--config", str(config)], 2, tmp_path, "ddp training")
    # Rank 0 alone logs: one summary line, though two processes ran the loop.
    assert ddp.stdout.count("done: step 4") == 1, ddp.stdout
    first = load_checkpoint(tmp_path / "runs")
    assert first.step == 4 and first.run_config.distributed.strategy == "ddp"

    zero2 = load_config(config, ["distributed.strategy=zero2"])
    (tmp_path / "deepspeed.json").write_text(json.dumps(ds_config.build(zero2, world_size=2, bf16=False)))
    resumed = launch_ok(
        [
            "-m",
            "reference_llm.train",
            "--config",
            str(config),
            "distributed.strategy=zero2",
            "train.max_steps=6",
            "--resume",
        ],
        2,
        tmp_path,
        "zero2 resume",
    )
    assert resumed.stdout.count("done: step 6") == 1, resumed.stdout
    second = load_checkpoint(tmp_path / "runs")
    assert second.step == 6 and second.run_config.distributed.strategy == "zero2"
    assert set(second.weights) == set(first.weights)
    assert set(second.optimizer_state["state"]) == set(first.optimizer_state["state"])
    assert any(not w.equal(second.weights[n]) for n, w in first.weights.items())  # it trained on
    # The consolidated checkpoint written under ZeRO-2 is an ordinary single-device model.
    model, _, _ = load_model(tmp_path / "runs")
    assert model.num_params() == sum(w.numel() for w in second.weights.values())
