"""Bad launches and bad configs fail at once, with one line that says what to run or fix instead.

These run in the test process: every check happens before a process group is joined, so nothing waits
for a peer that will never come.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reference_llm.assets import corpus_path
from reference_llm.config import config_from_dict
from reference_llm.distributed import build_engine, ds_config
from reference_llm.errors import DistributedError
from reference_llm.model import Transformer
from reference_llm.train.optim import optimizer_factory

REPO = Path(__file__).resolve().parents[2]


def make(strategy: str, ds_path: Path | None = None, **train):
    cfg = config_from_dict(
        {
            "model": {"preset": "tiny"},
            "train": {"micro_batch": 2, "grad_accum": 2, "dtype": "float32", "device": "cpu", **train},
            "distributed": {"strategy": strategy, **({"deepspeed_config": str(ds_path)} if ds_path else {})},
        }
    )
    return cfg, Transformer(cfg.model)


@pytest.fixture
def launched_as(monkeypatch):
    """Pretend a launcher started this process as `rank` of `world` (no process group is joined)."""

    def set_env(rank: int, world: int) -> None:
        for name, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", rank)):
            monkeypatch.setenv(name, str(value))
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", "1")  # never dialled: each test fails before joining

    return set_env


@pytest.fixture
def no_launcher(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "zero1", "zero3"])
def test_multi_process_strategy_without_a_launcher_says_how_to_launch(strategy, no_launcher):
    cfg, model = make(strategy)
    with pytest.raises(DistributedError) as err:
        build_engine(cfg, model, optimizer_factory(cfg.train))
    message = str(err.value)
    assert f"distributed.strategy={strategy}" in message
    assert "scripts/train_torchrun.sh" in message and "torchrun --nproc_per_node" in message
    assert "\n" not in message


def test_inconsistent_launcher_environment_is_refused(launched_as):
    launched_as(rank=3, world=2)
    cfg, model = make("ddp")
    with pytest.raises(DistributedError, match=r"RANK=3 and WORLD_SIZE=2"):
        build_engine(cfg, model, optimizer_factory(cfg.train))


def test_offload_outside_deepspeed_is_refused(launched_as):
    launched_as(rank=0, world=2)
    cfg = config_from_dict(
        {
            "model": {"preset": "tiny"},
            "train": {"device": "cpu"},
            "distributed": {"strategy": "fsdp", "offload": "optimizer"},
        }
    )
    with pytest.raises(DistributedError, match=r"offload=optimizer is for the DeepSpeed strategies"):
        build_engine(cfg, Transformer(cfg.model), optimizer_factory(cfg.train))


def _write_ds(path: Path, cfg, world: int, **changes) -> Path:
    data = ds_config.build(cfg, world, bf16=False)
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


def test_deepspeed_config_for_another_world_size_is_refused(launched_as, tmp_path):
    launched_as(rank=0, world=2)
    ds = tmp_path / "deepspeed.json"
    cfg, model = make("zero2", ds)
    _write_ds(ds, cfg, world=4)  # written for 4 processes, launched with 2
    with pytest.raises(DistributedError) as err:
        build_engine(cfg, model, optimizer_factory(cfg.train))
    message = str(err.value)
    assert "train_batch_size=16" in message and "2 × 2 × 2 = 8" in message and "WORLD_SIZE=2" in message
    assert "llmgen check" in message and "\n" not in message


def test_missing_deepspeed_config_names_the_file(launched_as, tmp_path):
    launched_as(rank=0, world=2)
    cfg, model = make("zero3", tmp_path / "nowhere.json")
    with pytest.raises(DistributedError, match=r"nowhere\.json not found \(distributed\.deepspeed_config\)"):
        build_engine(cfg, model, optimizer_factory(cfg.train))


def test_missing_deepspeed_says_how_to_install(launched_as, tmp_path, monkeypatch):
    launched_as(rank=0, world=2)
    ds = tmp_path / "deepspeed.json"
    cfg, model = make("zero1", ds)
    _write_ds(ds, cfg, world=2)
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # what `import deepspeed` sees when it is not installed
    with pytest.raises(DistributedError, match=r"pip install 'llmgen\[deepspeed\]'"):
        build_engine(cfg, model, optimizer_factory(cfg.train))


def test_training_cli_exits_2_with_one_line_when_not_launched(tmp_path, dist_env):
    """The user-facing path: `python -m reference_llm.train` with strategy ddp and no torchrun."""
    config = tmp_path / "train.toml"
    config.write_text(f"""
[model]
preset = "tiny"
[data]
corpus = {json.dumps(str(corpus_path()))}
tokenizer = "char"
cache_dir = {json.dumps(str(tmp_path / "cache"))}
[train]
device = "cpu"
[distributed]
strategy = "ddp"
""")
    result = subprocess.run(
        [sys.executable, "-m", "reference_llm.train", "--config", str(config)],
        cwd=REPO,
        env=dist_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: distributed.strategy=ddp must be started by a launcher")
    assert "Traceback" not in result.stderr
