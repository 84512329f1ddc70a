"""Checkpoint files: round trip, atomic writes, corrupt and mismatched input, no unpickling."""

from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch

import reference_llm.train.checkpoint as ckpt_mod
from reference_llm.config import RunConfig
from reference_llm.distributed.base import load_optimizer_state_by_name, optimizer_state_by_name
from reference_llm.errors import CheckpointError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train.checkpoint import (
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    restore_rng_state,
    run_config_from_dict,
    save_checkpoint,
    unique_state_dict,
)
from reference_llm.train.optim import build_optimizer


def _trained_pair(preset: str = "tiny", steps: int = 2) -> tuple[Transformer, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Transformer(ModelConfig.preset(preset))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    for _ in range(steps):
        idx = torch.randint(0, model.config.vocab_size, (2, 16))
        model(idx, idx)[1].backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _save(run_dir, step, model, opt, keep=2):
    state = {"step": step, "config": RunConfig(model=model.config).to_dict(), "rng": capture_rng_state()}
    return save_checkpoint(run_dir, step, unique_state_dict(model), optimizer_state_by_name(opt, model), state,
                           tokenizer=None, keep=keep)


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt2"])  # untied and tied output head
def test_round_trip_restores_weights_optimizer_and_config(tmp_path, preset):
    model, opt = _trained_pair(preset)
    path = _save(tmp_path, 7, model, opt)
    assert path.name == "step_0000007" and (tmp_path / "latest").read_text().strip() == path.name

    loaded = load_checkpoint(tmp_path)  # a run directory resolves through `latest`
    assert loaded.step == 7 and loaded.run_config.model == model.config
    fresh = Transformer(model.config)
    fresh_opt = build_optimizer(fresh, lr=1e-3, weight_decay=0.1)
    load_weights(fresh, loaded.weights)
    load_optimizer_state_by_name(fresh_opt, fresh, loaded.optimizer_state)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    # A tied head is stored once (under tok_emb) and is still tied after loading.
    assert ("lm_head.weight" in loaded.weights) == (not model.config.tie_embeddings)
    assert (fresh.lm_head.weight is fresh.tok_emb.weight) == model.config.tie_embeddings
    # The next optimizer step is identical from the original and from the restored pair.
    idx = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    for m, o in ((model, opt), (fresh, fresh_opt)):
        m(idx, idx)[1].backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_keeps_only_the_newest_checkpoints(tmp_path):
    model, opt = _trained_pair(steps=1)
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, model, opt, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000003", "step_0000004"]
    assert resolve_checkpoint(tmp_path / "latest").name == "step_0000004"  # the pointer file itself works too
    assert resolve_checkpoint(tmp_path / "step_0000003").name == "step_0000003"


def test_save_interrupted_half_way_leaves_previous_checkpoint_and_latest(tmp_path, monkeypatch):
    model, opt = _trained_pair(steps=1)
    _save(tmp_path, 1, model, opt)
    before = {p.name: p.read_bytes() for p in (tmp_path / "step_0000001").iterdir()}

    real_save_file = ckpt_mod.save_file
    calls = []

    def crash_on_second_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:  # model.safetensors is written, optimizer.safetensors is not
            raise OSError("disk full (simulated)")
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt_mod, "save_file", crash_on_second_file)
    with pytest.raises(OSError, match="simulated"):
        _save(tmp_path, 2, model, opt)

    assert (tmp_path / "latest").read_text().strip() == "step_0000001"
    assert [p.name for p in tmp_path.iterdir() if p.name != "latest"] == ["step_0000001"]  # no half-written dir
    assert {p.name: p.read_bytes() for p in (tmp_path / "step_0000001").iterdir()} == before
    assert load_checkpoint(tmp_path).step == 1


def test_loading_never_unpickles(tmp_path, monkeypatch):
    model, opt = _trained_pair(steps=1)
    path = _save(tmp_path, 1, model, opt)
    # A planted pickle next to the real files must be ignored, and nothing may unpickle anything.
    (path / "model.pt").write_bytes(pickle.dumps({"evil": 1}))

    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = load_checkpoint(tmp_path)
    load_weights(Transformer(model.config), loaded.weights)

    only_pickles = tmp_path / "other"
    only_pickles.mkdir()
    (only_pickles / "model.pt").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match=r"model\.pt ignored: pickle files are never loaded"):
        load_checkpoint(only_pickles)


def test_corrupt_files_raise_checkpoint_error(tmp_path):
    model, opt = _trained_pair(steps=1)
    path = _save(tmp_path, 1, model, opt)
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or truncated"):
        load_checkpoint(path)
    weights.write_bytes(data)

    state = path / "state.json"
    state.write_text(state.read_text()[:-20])
    with pytest.raises(CheckpointError, match="state.json is not readable JSON"):
        load_checkpoint(path)

    (tmp_path / "latest").write_text("step_0000099\n")
    with pytest.raises(CheckpointError, match="names 'step_0000099'"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_mismatched_model_names_the_first_bad_tensor(tmp_path):
    model, opt = _trained_pair("tiny", steps=1)
    _save(tmp_path, 1, model, opt)
    weights = load_checkpoint(tmp_path).weights
    wider = Transformer(ModelConfig.preset("tiny", d_model=128))
    with pytest.raises(CheckpointError, match=r"tensor 'tok_emb.weight' has shape \(512, 64\) in the checkpoint "
                                              r"but \(512, 128\) in the model"):
        load_weights(wider, weights)
    deeper = Transformer(ModelConfig.preset("tiny", n_layer=3))
    with pytest.raises(CheckpointError, match=r"no tensor 'blocks.2.attn_norm.weight'"):
        load_weights(deeper, weights)
    gpt2 = Transformer(ModelConfig.preset("tiny-gpt2"))
    with pytest.raises(CheckpointError, match="pos_emb.weight"):
        load_weights(gpt2, weights)
    other_opt = build_optimizer(deeper, lr=1e-3, weight_decay=0.1)
    with pytest.raises(CheckpointError, match="optimizer state does not match"):
        load_optimizer_state_by_name(other_opt, deeper, load_checkpoint(tmp_path).optimizer_state)


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(capture_rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    restore_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    with pytest.raises(CheckpointError, match="RNG state"):
        restore_rng_state({"python": "garbage"})


def test_stored_run_config_round_trips_and_rejects_garbage():
    config = RunConfig(model=ModelConfig.preset("tiny-gpt2", block_size=32))
    config.train.seq_len = 32
    assert run_config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    bad = config.to_dict()
    bad["train"]["no_such_key"] = 1
    with pytest.raises(CheckpointError, match="stored run config is invalid"):
        run_config_from_dict(bad)
