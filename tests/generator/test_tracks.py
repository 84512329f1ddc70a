"""Track data (tracks/*.toml): the three tracks load, their graphs are sound, their defaults parse, and
every malformed file is refused with an error naming the file, the step and the key."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from generator.cli import app
from generator.errors import TrackDataError
from generator.estimate import parse_budget, parse_hardware
from generator.resources import tracks_dir
from generator.tracks import load_track, load_tracks
from reference_llm.model import ModelConfig

# The steps every track covers (issue 7): data to deployment, with distributed training as its own node.
ROADMAP = {
    "data",
    "clean",
    "tokenizer",
    "model",
    "pretrain",
    "distributed",
    "evaluate",
    "sft",
    "align",
    "quantize",
    "deploy",
}


def test_three_tracks_in_order_with_the_whole_roadmap():
    tracks = load_tracks()
    assert list(tracks) == ["beginner", "practitioner", "researcher"]
    for track in tracks.values():
        assert ROADMAP <= {s.id for s in track.steps}
        order = [s.id for s in track.ordered_steps()]
        for step in track.steps:  # every prerequisite comes before the step that needs it
            assert all(order.index(dep) < order.index(step.id) for dep in step.requires)
        for step in track.steps:  # a required step never waits on an optional one
            if not step.optional:
                assert not any(track.step(dep).optional for dep in step.requires)


def test_track_defaults_match_the_issue_and_parse(fixed_cpu):
    tracks = load_tracks()
    assert {n: t.defaults.model_preset for n, t in tracks.items()} == {
        "beginner": "demo",
        "practitioner": "gpt2-124m",
        "researcher": "llama-1b",
    }
    assert tracks["beginner"].defaults.hardware == "cpu" and tracks["beginner"].defaults.exercises
    assert not tracks["practitioner"].defaults.exercises and not tracks["researcher"].defaults.exercises
    for track in tracks.values():
        parse_hardware(track.defaults.hardware)
        parse_budget(track.defaults.budget)
        ModelConfig.preset(track.defaults.model_preset)


def test_modules_and_commands_name_code_that_exists():
    for track in load_tracks().values():
        for step in track.steps:
            for module in step.modules:
                assert importlib.util.find_spec(module) is not None, f"{track.name}/{step.id}: {module}"
            for module in re.findall(r"python -m ([\w.{}]+)", step.command):
                if module != "pytest" and not module.startswith("{package}."):  # the project's: test_exercises
                    assert importlib.util.find_spec(module) is not None, f"{track.name}/{step.id}: {module}"
            assert "{" not in step.command_for("runs/x", "x")


def test_depth_and_estimates_differ_by_track():
    tracks = load_tracks()
    assert tracks["beginner"].step("tokenizer").depth == "build"
    assert tracks["researcher"].step("tokenizer").depth == "extend"
    assert tracks["beginner"].step("distributed").optional
    assert not tracks["researcher"].step("distributed").optional
    pretrain = tracks["practitioner"].step("pretrain").estimate
    assert (pretrain.kind, pretrain.tokens) == ("train", "budget")


# ----------------------------------------------------------------------------------------------------
# Malformed files: one text edit of beginner.toml each
# ----------------------------------------------------------------------------------------------------

BEGINNER = (tracks_dir() / "beginner.toml").read_text(encoding="utf-8")

DEPLOY = (
    'id = "deploy"\ntitle = "Deployment"\n'
    'summary = "Serve the model behind a small HTTP API with streaming generation."\n'
)
BAD_EDITS = {
    "missing key": ('depth = "read"\n', "", r"steps\[0\] \(data\): missing key\(s\) depth"),
    "unknown key": (
        'id = "clean"\n',
        'id = "clean"\ncolour = "red"\n',
        r"steps\[1\] \(clean\): unknown key\(s\) colour",
    ),
    "unknown top-level key": ("schema = 1\n", "schema = 1\nversion = 2\n", r"top level: unknown key\(s\) version"),
    "missing step": (
        'requires = ["data"]',
        'requires = ["collect"]',
        r"steps \(clean\)\.requires: names missing step 'collect'",
    ),
    "cycle": (
        'requires = []\nmodules = ["reference_llm.assets"]',
        'requires = ["tokenizer"]\nmodules = ["reference_llm.assets"]',
        r"dependency cycle: data -> tokenizer -> clean -> data",
    ),
    "required after optional": (
        DEPLOY + 'depth = "read"\noptional = true\nrequires = ["sft"]',
        DEPLOY + 'depth = "read"\noptional = false\nrequires = ["quantize"]',
        r"steps \(deploy\)\.requires: required step depends on optional step 'quantize'",
    ),
    "bad depth": (
        'depth = "build"',
        'depth = "deep"',
        r"steps\[2\] \(tokenizer\)\.depth: must be one of read, build, extend",
    ),
    "bad preset": ('model_preset = "demo"', 'model_preset = "gpt5"', r"defaults\.model_preset: must be one of"),
    "bad parallelism": ('parallelism = "auto"', 'parallelism = "tp"', r"defaults\.parallelism: must be one of"),
    "train without tokens": (
        'estimate = { kind = "train", tokens = "budget" }',
        'estimate = { kind = "train" }',
        r"steps\[4\] \(pretrain\)\.estimate: missing key tokens",
    ),
    "bad tokens": ('tokens = "budget"', "tokens = -5", r"\(pretrain\)\.estimate\.tokens: must be a positive number"),
    "unknown placeholder": (
        "--checkpoint {run}",
        "--checkpoint {checkpoint}",
        r"\(generate\)\.command: unknown placeholder",
    ),
    "bad checkpoint test": (
        'checkpoint_test = "tests/checkpoints/test_model.py::test_output_shapes"',
        'checkpoint_test = "test_model"',
        r"\(model\)\.checkpoint_test: must be a pytest id",
    ),
    "duplicate id": ('id = "clean"', 'id = "data"', r"steps \(data\): id is used by more than one step"),
    "wrong schema": ("schema = 1", "schema = 2", r"schema: must be 1"),
    "not TOML": ("schema = 1", "schema = = 1", r"not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD_EDITS))
def test_malformed_track_is_refused_naming_file_step_and_key(tmp_path, case):
    old, new, expected = BAD_EDITS[case]
    assert old in BEGINNER, f"edit for {case!r} no longer matches beginner.toml"
    path = tmp_path / "beginner.toml"
    path.write_text(BEGINNER.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(TrackDataError) as err:
        load_track(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert re.search(expected, message), message


def test_file_name_must_match_track_name(tmp_path):
    path = tmp_path / "novice.toml"
    path.write_text(BEGINNER, encoding="utf-8")
    with pytest.raises(TrackDataError, match=r"novice\.toml: name: must match the file name 'novice'"):
        load_track(path)


def test_a_folder_without_tracks_is_an_error(tmp_path):
    with pytest.raises(TrackDataError, match="no track files"):
        load_tracks(tmp_path)


def test_load_tracks_reads_a_given_folder(tmp_path):
    shutil.copy(tracks_dir() / "researcher.toml", tmp_path)
    assert list(load_tracks(tmp_path)) == ["researcher"]


# ----------------------------------------------------------------------------------------------------
# `llmgen tracks`
# ----------------------------------------------------------------------------------------------------


def test_tracks_command_lists_every_track_and_step():
    result = CliRunner().invoke(app, ["tracks"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for track in load_tracks().values():
        assert track.title in result.stdout
        for step in track.steps:
            assert step.title in result.stdout


def test_tracks_json_is_the_track_data():
    result = CliRunner().invoke(app, ["tracks", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    tracks = load_tracks()
    assert [t["name"] for t in data["tracks"]] == list(tracks)
    beginner = data["tracks"][0]
    assert beginner["defaults"]["model_preset"] == "demo"
    assert [s["id"] for s in beginner["steps"]] == [s.id for s in tracks["beginner"].ordered_steps()]
    assert beginner["steps"][0]["estimate"]["kind"] == "none"


def test_tracks_one_by_name_and_unknown_name():
    runner = CliRunner()
    one = json.loads(runner.invoke(app, ["tracks", "researcher", "--json"]).stdout)
    assert [t["name"] for t in one["tracks"]] == ["researcher"]
    bad = runner.invoke(app, ["tracks", "expert"])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "error: unknown track 'expert'; tracks: beginner, practitioner, researcher"


def test_track_files_ship_where_resources_finds_them():
    assert tracks_dir() == Path(__file__).resolve().parents[2] / "tracks"
