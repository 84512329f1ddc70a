"""Checkpoint files: round trip, atomic writes, corrupt and mismatched input, no unpickling."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import reference_llm.train.checkpoint as ckpt_mod
from reference_llm.assets import corpus_path
from reference_llm.cli import run_main
from reference_llm.config import RunConfig
from reference_llm.distributed.base import load_optimizer_state_by_name, optimizer_state_by_name
from reference_llm.errors import CheckpointError
from reference_llm.model import ModelConfig, Transformer
from reference_llm.train import files
from reference_llm.train.checkpoint import (
    capture_rng_state,
    clean_run_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
    restore_rng_state,
    run_config_from_dict,
    save_checkpoint,
    save_sharded_checkpoint,
    unique_state_dict,
)
from reference_llm.train.consolidate import main as consolidate_main
from reference_llm.train.metrics import MetricsFile, read_metrics
from reference_llm.train.optim import build_optimizer
from reference_llm.train.sharded_checkpoint import Piece, ShardedCheckpoint, ShardedState, model_key, optim_key

REPO = Path(__file__).resolve().parents[2]


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
    return save_checkpoint(
        run_dir, step, unique_state_dict(model), optimizer_state_by_name(opt, model), state, tokenizer=None, keep=keep
    )


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
    with pytest.raises(CheckpointError, match=r"\(disk full \(simulated\)\).*step_0000001 is intact"):
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
    with pytest.raises(
        CheckpointError,
        match=r"tensor 'tok_emb.weight' has shape \(512, 64\) in the checkpoint "
        r"but \(512, 128\) in the model",
    ):
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


# ----------------------------------------------------------------------------------------------------
# Nothing lost, nothing left: killed writers, half-deleted directories, full disks, metrics
# ----------------------------------------------------------------------------------------------------

_KILLED_WRITER = """
import sys, time
import torch
import reference_llm.train.checkpoint as c
real = c.save_file
def stall(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    print("written", flush=True)
    time.sleep(600)  # killed here, half-way through its checkpoint
c.save_file = stall
c.save_checkpoint(sys.argv[1], 5, {"w": torch.ones(4)}, None, {"step": 5, "config": {}}, None)
"""


def test_a_killed_writers_temporary_is_removed_by_the_next_run(tmp_path):
    model, opt = _trained_pair(steps=1)
    _save(tmp_path, 1, model, opt)
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "written\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    # Control: a killed writer leaves its temporary directory behind.
    leftover = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    assert len(leftover) == 1 and leftover[0].startswith(".tmp-step_0000005@") and str(writer.pid) in leftover[0]
    assert latest_checkpoint(tmp_path).name == "step_0000001"  # the run that resumes cleans up first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000001"]


def _temp_of(run_dir: Path, step: int, host: str, pid: int, start: int) -> Path:
    path = run_dir / f".tmp-step_{step:07d}@{host}.{pid}.{start}"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"partial")
    return path


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    host = files._host()
    with subprocess.Popen(["sleep", "60"]) as live:
        try:
            start = files._start_time(live.pid)
            assert start  # this test needs /proc
            alive = _temp_of(tmp_path, 3, host, live.pid, start)
            reused = _temp_of(tmp_path, 4, host, live.pid, start + 1)
            clean_run_dir(tmp_path)
            assert alive.exists()  # another live run's checkpoint in the making
            assert not reused.exists()  # same pid, another start time: its writer died and the pid was reused
        finally:
            live.kill()
    clean_run_dir(tmp_path)
    assert not alive.exists()  # now its writer is dead too


def test_temporaries_from_other_hosts_are_removed_once_untouched_for_a_day(tmp_path):
    fresh = _temp_of(tmp_path, 3, "other-node", 123, 456)
    old = tmp_path / ".tmp-step_0000004@other-node.124.457"
    legacy = tmp_path / ".tmp-step_0000005-999"  # the name this library used before the owner tag
    for path in (old, legacy):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"partial")
        two_days_ago = time.time() - 2 * 24 * 3600
        for p in (path / "model.safetensors", path):
            os.utime(p, (two_days_ago, two_days_ago))
    clean_run_dir(tmp_path)
    assert fresh.exists() and not old.exists() and not legacy.exists()


def test_half_deleted_step_directories_are_never_chosen_and_are_removed(tmp_path):
    model, opt = _trained_pair(steps=1)
    for step in (1, 2, 3):
        _save(tmp_path, step, model, opt, keep=3)
    (tmp_path / "step_0000001" / "state.json").unlink()  # a deletion cut short, or the old rmtree-in-place
    (tmp_path / "step_0000002" / "model.safetensors").unlink()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000003"]
    (tmp_path / "latest").write_text("step_0000002\n")
    with pytest.raises(CheckpointError, match="not a complete checkpoint directory"):
        load_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("step_0000003\n")
    clean_run_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000003"]


def test_pruning_renames_a_directory_away_before_deleting_it(tmp_path, monkeypatch):
    model, opt = _trained_pair(steps=1)
    _save(tmp_path, 1, model, opt, keep=1)

    def killed(path, ignore_errors=False):
        raise KeyboardInterrupt  # the process dies during the deletion

    monkeypatch.setattr(files.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, model, opt, keep=1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[:2] == [f".tmp-removing-step_0000001@{files.owner_tag()}", "latest"] and names[2:] == ["step_0000002"]
    assert load_checkpoint(tmp_path).step == 2


def test_full_disk_is_one_error_naming_the_space_needed_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained_pair(steps=1)
    _save(tmp_path, 1, model, opt)
    before = {p.name: p.read_bytes() for p in (tmp_path / "step_0000001").iterdir()}
    real_save_file = ckpt_mod.save_file

    def full(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_mod, "save_file", full)
    with pytest.raises(
        CheckpointError,
        match=r"\(No space left on device\): a checkpoint of this run needs about "
        r"[0-9.]+ MiB .*; step_0000001 is intact",
    ):
        _save(tmp_path, 2, model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000001"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "step_0000001").iterdir()} == before

    # Not enough room to begin with: refused before anything is written.
    monkeypatch.setattr(ckpt_mod, "save_file", real_save_file)
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 4096))
    with pytest.raises(CheckpointError, match=r"\(only 0.0 MiB free\).*step_0000001 is intact"):
        _save(tmp_path, 2, model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_0000001"]


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tiny tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


def test_a_real_full_disk_is_one_error(tmp_path, monkeypatch):
    """The kernel's ENOSPC, from a 1 MiB tmpfs, reaching the write itself (the free-space check is told
    there is room, as it can be on a filesystem that others fill at the same time)."""
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "1m")
    try:
        model, opt = _trained_pair(steps=1)
        monkeypatch.setattr(ckpt_mod.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 0, 10**9))
        with pytest.raises(
            CheckpointError,
            match=r"No space left on device.*needs about [0-9.]+ MiB.*no earlier "
            r"checkpoint exists",
        ):
            _save(mount, 1, model, opt)
        assert list(mount.iterdir()) == []  # the partial step directory is gone: the space is free again
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow  # two training processes
def test_unwritable_run_directory_is_one_error_and_keeps_the_previous_checkpoint(tmp_path):
    """Through the real CLI, resuming into a run directory this user may read but not write. Root ignores
    permissions, so the run is made as root and resumed as `nobody` (setpriv)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the resume as an unprivileged user")
    shared = Path(tempfile.mkdtemp(prefix="ckpt-perm-"))  # pytest's own tmp_path is private to root
    try:
        shared.chmod(0o755)
        writable = shared / "home"
        writable.mkdir(mode=0o777)
        writable.chmod(0o777)
        run = shared / "run"
        values = {
            "data.corpus": str(corpus_path()),
            "data.tokenizer": "char",
            "data.cache_dir": str(shared / "cache"),
            "model.preset": "tiny",
            "train.micro_batch": 2,
            "train.seq_len": 16,
            "train.max_steps": 2,
            "train.warmup_steps": 1,
            "train.dtype": "float32",
            "eval.interval": 0,
            "eval.iters": 1,
            "checkpoint.dir": str(run),
            "checkpoint.interval": 0,
            "train.metrics_file": str(writable / "metrics.jsonl"),
        }
        overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
        config = shared / "train.toml"
        config.write_text("")
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(writable), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "reference_llm.train", "--config", str(config), *overrides]
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=600)  # as root
        subprocess.run(["chmod", "-R", "a+rX", str(shared)], check=True)
        before = {p.name: p.read_bytes() for p in (run / "step_0000002").iterdir()}
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        importable = subprocess.run(
            [*nobody, sys.executable, "-c", "from reference_llm.train import main"],
            capture_output=True,
            text=True,
            env=env,
        )
        if importable.returncode != 0:
            pytest.skip(f"user nobody cannot import this checkout: {importable.stderr.strip().splitlines()[-1]}")
        # Control: `nobody` really cannot write there.
        denied = subprocess.run([*nobody, "touch", str(run / "x")], capture_output=True, text=True)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr

        result = subprocess.run(
            [*nobody, *cmd, "train.max_steps=3", "--resume"], capture_output=True, text=True, env=env, timeout=600
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(
            f"error: cannot write checkpoint {run}/step_0000003 (Permission denied): a checkpoint "
            f"of this run needs about "
        ) and last.endswith("step_0000002 is intact"), last
        assert {p.name: p.read_bytes() for p in (run / "step_0000002").iterdir()} == before
        assert (run / "latest").read_text() == "step_0000002\n"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


class _FailingWrites:
    """Files opened for writing fail half-way through their first write, as on a full disk."""

    def __init__(self, monkeypatch, path: Path) -> None:
        real_open = Path.open

        def open_(self_, mode="r", *args, **kwargs):
            f = real_open(self_, mode, *args, **kwargs)
            if "w" in mode and self_.parent == path.parent:

                def write(text):
                    f.__class__.write(f, text[: len(text) // 2])
                    f.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                f.write = write
            return f

        monkeypatch.setattr(Path, "open", open_)


def test_metrics_rewrite_at_resume_loses_nothing_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": 1.0 / s} for s in range(1, 301)]
    original = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(original)
    _FailingWrites(monkeypatch, path)
    # Control: the plain rewrite this replaced truncates first, so the failure loses the history.
    with pytest.raises(OSError):
        path.write_text("".join(json.dumps(r) + "\n" for r in records[:270]))
    assert len(read_metrics(path)) < 270
    with open(path, "w", encoding="utf-8") as f:  # builtins.open: not the failing Path.open
        f.write(original)

    with pytest.raises(CheckpointError, match="cannot write the metrics file .*No space left on device"):
        MetricsFile(path, keep_through_step=270)
    assert path.read_text() == original  # every record is still there
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # and no temporary is left
    monkeypatch.undo()
    metrics = MetricsFile(path, keep_through_step=270)
    metrics.close()
    assert read_metrics(path) == records[:270]


# ----------------------------------------------------------------------------------------------------
# Sharded checkpoints (reference_llm/train/sharded_checkpoint.py), written here by one process; the
# multi-process writers and readers are in tests/distributed/test_sharded.py.
# ----------------------------------------------------------------------------------------------------


def _sharded_state(model: Transformer, opt: torch.optim.Optimizer) -> ShardedState:
    """What a rank that holds the whole model writes: every tensor as one piece, from element 0."""
    by_name = optimizer_state_by_name(opt, model)
    pieces, shapes, steps = {}, {}, {}
    for name, param in model.named_parameters():
        shapes[model_key(name)] = tuple(param.shape)
        pieces[model_key(name)] = [Piece(0, param.detach().reshape(-1))]
        for key, value in by_name["state"][name].items():
            if key == "step":
                steps[name] = float(value)
            else:
                shapes[optim_key(name, key)] = tuple(param.shape)
                pieces[optim_key(name, key)] = [Piece(0, value.reshape(-1))]
    return ShardedState(pieces, shapes, by_name["param_groups"], steps)


def _save_sharded(run_dir: Path, model: Transformer, opt: torch.optim.Optimizer, step: int = 3) -> Path:
    state = {"step": step, "config": RunConfig(model=model.config).to_dict(), "rng": capture_rng_state()}
    return save_sharded_checkpoint(run_dir, step, _sharded_state(model, opt), "fsdp", state, tokenizer=None)


def test_sharded_round_trip_and_consolidation(tmp_path, monkeypatch, capsys):
    model, opt = _trained_pair("tiny-gpt2")
    run = tmp_path / "runs" / "my-run"
    step_dir = _save_sharded(run, model, opt, step=500)
    assert (step_dir / "sharded.json").is_file() and not (step_dir / "model.safetensors").exists()
    assert list_checkpoints(run) == [step_dir] and latest_checkpoint(run) == step_dir
    loaded = load_checkpoint(run)  # gathered in this process from the shards
    assert loaded.step == 500
    assert set(loaded.weights) == set(unique_state_dict(model))
    assert all(torch.equal(loaded.weights[n], t) for n, t in unique_state_dict(model).items())
    expected = optimizer_state_by_name(opt, model)
    for name, state in expected["state"].items():
        assert all(torch.equal(loaded.optimizer_state["state"][name][k].float(), v.float()) for k, v in state.items())
    groups = [g["params"] for g in loaded.optimizer_state["param_groups"]]
    assert groups == [g["params"] for g in expected["param_groups"]]
    # The converter's two commands in docs/distributed.md, as written: the classic files appear beside
    # the shards, the optimizer's only when asked for.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, written in (
        (["runs/my-run"], ["model.safetensors"]),
        (["runs/my-run/step_0000500", "--optimizer", "--force"], ["optimizer.safetensors"]),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "reference_llm.train.consolidate", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert all((step_dir / name).is_file() for name in written)
        if written == ["model.safetensors"]:
            assert not (step_dir / "optimizer.safetensors").exists()
    consolidated = load_checkpoint(run)
    assert all(torch.equal(consolidated.weights[n], t) for n, t in loaded.weights.items())
    # An existing file is kept without --force: one line, exit code 2.
    monkeypatch.chdir(tmp_path)
    assert run_main(consolidate_main, ["runs/my-run"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "--force" in error and error.count("\n") == 1


class _Plant:
    """A pickle that creates a file when unpickled: what a hostile checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_sharded_loading_never_unpickles(tmp_path, monkeypatch):
    model, opt = _trained_pair()
    step_dir = _save_sharded(tmp_path, model, opt)
    marker = tmp_path / "pickle-ran"
    planted = pickle.dumps(_Plant(marker))
    # Negative control: DCP's default reader takes its metadata from a pickled `.metadata` file, so
    # pointing it at a directory with a planted one runs the attacker's code.
    (tmp_path / "dcp").mkdir()
    (tmp_path / "dcp" / ".metadata").write_bytes(planted)
    from torch.distributed.checkpoint import FileSystemReader

    with contextlib.suppress(Exception):  # what it unpickled is no Metadata; the harm is done by then
        FileSystemReader(str(tmp_path / "dcp")).read_metadata()
    assert marker.exists()
    marker.unlink()

    # Ours reads JSON and safetensors headers only: a planted .metadata beside the shards is refused,
    # one in the step directory is ignored, and nothing is unpickled either way.
    def forbidden(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    (step_dir / ".metadata").write_bytes(planted)
    assert load_checkpoint(step_dir).step == 3
    (step_dir / "shards" / ".metadata").write_bytes(planted)
    with pytest.raises(CheckpointError, match=r"\.metadata does not belong in a sharded checkpoint"):
        load_checkpoint(step_dir)
    assert not marker.exists()


def _rewrite(shard: Path, change) -> None:
    """Rewrite a shard file with `change(tensors, sharding)` applied (sharding: DCP's header entry)."""
    with safe_open(str(shard), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata())
    sharding = json.loads(metadata["DCP_SHARDING_INFO"])
    change(tensors, sharding)
    metadata["DCP_SHARDING_INFO"] = json.dumps(sharding)
    save_file(tensors, str(shard), metadata=metadata)


QKV = "model/blocks.0.attn.qkv.weight"
TAMPERING = {
    "a gap": lambda t, s: s[QKV].update(saved_offsets=[1]),
    "overlap": None,  # a second rank's file claiming the same pieces (below)
    "cover 0 of": lambda t, s: (t.pop(QKV), s.pop(QKV)),
    "NaN or infinite": lambda t, s: t[QKV].__setitem__(0, float("nan")),
    "negative values": lambda t, s: t["optim/blocks.0.attn.qkv.weight/exp_avg_sq"].__setitem__(0, -1.0),
    "not a float32 piece": lambda t, s: t.__setitem__(QKV, t[QKV].double()),
    "not listed in sharded.json": lambda t, s: (
        t.__setitem__("model/extra", torch.zeros(2)),
        s.__setitem__("model/extra", {"saved_offsets": [0]}),
    ),
}


@pytest.mark.parametrize("problem", list(TAMPERING) + ["corrupt or truncated"])
def test_a_tampered_shard_is_one_line_naming_the_problem(tmp_path, problem):
    model, opt = _trained_pair()
    step_dir = _save_sharded(tmp_path, model, opt)
    shard = next((step_dir / "shards").iterdir())
    if problem == "overlap":
        shutil.copy(shard, shard.with_name("shard-00002-model-00001-of-00001.safetensors"))
    elif problem == "corrupt or truncated":
        shard.write_bytes(shard.read_bytes()[:200])
    else:
        _rewrite(shard, TAMPERING[problem])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(step_dir)
    assert problem in str(err.value) and "\n" not in str(err.value)


def test_a_sharded_checkpoint_of_another_model_names_both_sides(tmp_path):
    """Bad input: a checkpoint whose layout does not fit the model. The one line names the
    checkpoint and who wrote it, the tensor on both sides, this run, and what would work."""
    model, opt = _trained_pair("tiny")
    step_dir = _save_sharded(tmp_path, model, opt)
    wider = Transformer(ModelConfig.preset("tiny", d_model=128))
    shapes = {name: tuple(p.shape) for name, p in wider.named_parameters()}
    with pytest.raises(CheckpointError) as err:
        ShardedCheckpoint.open(step_dir).check_layout(shapes, "this run: fsdp on 2 rank(s)")
    message = str(err.value)
    assert "\n" not in message and "(fsdp on 1 rank(s))" in message and "this run: fsdp on 2 rank(s)" in message
    assert "tok_emb.weight" in message and str(tuple(model.tok_emb.weight.shape)) in message
    assert str(tuple(wider.tok_emb.weight.shape)) in message and "start a new run" in message
