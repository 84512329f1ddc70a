"""Run configs: TOML files, overrides and the errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from reference_llm.config import load_config
from reference_llm.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(text)
    return path


def test_file_and_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[model]\npreset = "tiny"\nn_layer = 3\n[train]\nlr = 3e-4\nmax_steps = 50\n[distributed]\nstrategy = "ddp"\n',
    )
    config = load_config(path, ["train.max_steps=7", "train.compile=true", "data.tokenizer=char"])
    assert config.model.name == "tiny" and config.model.n_layer == 3
    assert config.train.lr == pytest.approx(3e-4)
    assert config.train.max_steps == 7 and config.train.compile is True
    assert config.data.tokenizer == "char"
    assert config.distributed.strategy == "ddp"
    assert config.seq_len == config.model.block_size


def test_ints_are_accepted_for_floats(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[train]\nlr = 1\nmin_lr = 0\n"))
    assert isinstance(config.train.lr, float) and config.train.lr == 1.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("[train]\nmax_steps = 'ten'\n", "train.max_steps must be int"),
        ("[train]\nlearning_rate = 1e-3\n", r"unknown key\(s\) in \[train\]: learning_rate"),
        ("[optimizer]\nlr = 1\n", r"unknown config section\(s\): optimizer"),
        ("[model]\npreset = 'gpt9'\n", "unknown model preset 'gpt9'"),
        ("[model]\nwidth = 3\n", r"unknown key\(s\) in \[model\]: width"),
        ("[train]\ncompile = 1\n", "train.compile must be bool"),
        ("[train]\nseq_len = 100000\n", "train.seq_len"),
        ("[train]\nmicro_batch = 0\n", "train.micro_batch must be positive"),
        ("[distributed]\nstrategy = 'zero4'\n", "distributed.strategy must be one of"),
        ("[train\n", "not valid TOML"),
        ("train = 3\n", r"\[train\] must be a table"),
    ],
)
def test_bad_config_files_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_and_malformed_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["max_steps=3"])
