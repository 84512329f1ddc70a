"""The real entry point, `python -m reference_llm.train`, under torchrun with 2 processes on gloo,
launched as a user launches them: a DDP run, then a resume of its checkpoint under DeepSpeed ZeRO-2;
an FSDP2 run with sharded checkpoints, resumed with activation checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reference_llm.assets import corpus_path
from reference_llm.config import load_config
from reference_llm.distributed import ds_config
from reference_llm.train.checkpoint import load_checkpoint, load_model, unique_state_dict

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


def test_fsdp_training_writes_shards_resumes_with_checkpointing_and_refuses_another_model(
    tmp_path, launch_ok, torchrun
):
    """The real entry point under FSDP2: the model is built deferred, each rank writes its shard; a
    resume with activation checkpointing on carries on; consolidation gives an ordinary model; and a
    resume into a different model is one line naming both sides."""
    config = write_config(tmp_path)
    fsdp = ["-m", "reference_llm.train", "--config", str(config), "distributed.strategy=fsdp"]
    launch_ok([*fsdp, "train.max_steps=2"], 2, tmp_path, "fsdp training")
    step = tmp_path / "runs" / "step_0000002"
    assert (step / "sharded.json").is_file() and len(list((step / "shards").iterdir())) == 2
    resumed = launch_ok([*fsdp, "train.activation_checkpointing=full", "--resume"], 2, tmp_path, "fsdp resume")
    assert resumed.stdout.count("done: step 4") == 1, resumed.stdout
    gathered = load_checkpoint(tmp_path / "runs", with_optimizer=False)  # from the shards, in this process
    assert gathered.step == 4
    launch_ok(["-m", "reference_llm.train.consolidate", "runs"], 0, tmp_path, "consolidate")
    assert (tmp_path / "runs" / "step_0000004" / "model.safetensors").is_file()
    model, _, _ = load_model(tmp_path / "runs")
    weights = unique_state_dict(model)
    assert set(weights) == set(gathered.weights)
    assert all(torch.equal(weights[name], tensor) for name, tensor in gathered.weights.items())
    other = torchrun([*fsdp, "model.n_layer=3", "train.max_steps=6", "--resume"], 2, tmp_path)
    assert other.returncode != 0
    errors = [line for line in other.stderr.splitlines() if line.startswith("error: ")]
    assert errors and "(fsdp on 2 rank(s))" in errors[0] and "this run: fsdp on 2 rank(s)" in errors[0], other.stderr
    assert "blocks.2." in errors[0] and "different model config" in errors[0]
