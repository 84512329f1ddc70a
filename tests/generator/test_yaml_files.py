"""Answers files are read bounded and plain: a device, a huge file, binary bytes, an alias bomb or deep
nesting is one line and exit 2, and nothing is written (issue 13: `--answers /dev/zero` used to read until
the machine ran out of memory; an alias bomb and binary bytes gave tracebacks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from generator.cli import app
from generator.errors import LLMGenError
from generator.yaml_files import MAX_YAML_BYTES, read_yaml

# Nine levels of nine aliases each: 9**9 (387 million) strings once expanded, from under 1 KB of text.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def _answers(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "answers.yml"
    path.write_bytes(content)
    return path


def test_the_alias_bomb_is_what_the_plain_loader_refuses() -> None:
    # Negative control: yaml's own safe loader builds the structure (shared lists, so it parses; what
    # explodes is anything that walks it, e.g. dumping it back: 9**9 leaves).
    data = yaml.safe_load("a: &a [1, 2]\nb: [*a, *a]\n")
    assert data["b"] == [[1, 2], [1, 2]]
    assert len(ALIAS_BOMB) < 1024


@pytest.mark.parametrize(
    "content, words",
    [
        (ALIAS_BOMB.encode(), "YAML alias"),
        (b"project_name: \xff\xfe\x00binary\n", "not UTF-8"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "answers"),
        (b"a: [unclosed\n", "not valid YAML"),
    ],
    ids=["alias-bomb", "binary", "deep", "broken"],
)
def test_hostile_answers_are_one_line(tmp_path: Path, content: bytes, words: str) -> None:
    with pytest.raises(LLMGenError, match=words) as info:
        read_yaml(_answers(tmp_path, content), "--answers answers.yml")
    assert "\n" not in str(info.value)


def test_a_file_over_the_cap_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "big.yml"
    with path.open("wb") as f:  # sparse: 64 MiB that costs no disk
        f.truncate(64 * MAX_YAML_BYTES)
    with pytest.raises(LLMGenError, match="larger than"):
        read_yaml(path, "--answers big.yml")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_new_with_answers_from_a_device_is_one_line_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["new", "proj", "--answers", "/dev/zero", "--no-git"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "/dev/zero" in lines[0] and "not a regular file" in lines[0]
    assert not (tmp_path / "proj").exists()


def test_new_with_an_alias_bomb_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _answers(tmp_path, ALIAS_BOMB.encode())
    result = CliRunner().invoke(app, ["new", "proj", "--answers", str(path), "--no-git"])
    assert result.exit_code == 2 and "YAML alias" in result.output
    assert not (tmp_path / "proj").exists()
