"""Every track x parallelism x (CPU, one node of GPUs, several nodes): each valid combination renders a
project with no Jinja left in any file or path, every JSON/TOML/YAML file parses, every Python file
compiles, and configs/train.toml is a valid reference_llm run config for that combination. The
combinations that make no sense (any sharding on one CPU process, `single` on many GPUs) are refused."""

from __future__ import annotations

import json
import re
import tomllib

import pytest
import yaml

from generator.errors import LLMGenError
from generator.estimate.api import PARALLELISMS
from generator.plan import plan_run
from generator.render import render_into
from generator.tracks import load_tracks
from reference_llm.config import load_config

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")

HARDWARE = {"cpu": "cpu", "one node": "8xH100", "several nodes": "4x8xH100"}
TRACKS = load_tracks()
BUDGET = "200 gpu-hours"  # valid on every hardware (a dollar budget has no price on a CPU)
# Syntax of other languages that looks like Jinja's and must stay: GitHub Actions expressions in the
# workflow, and nested shell parameter expansions (${A:-${B:-x}}) in the launch scripts.
NOT_JINJA = {
    ".github/workflows/": re.compile(r"\$\{\{ [\w.]+ \}\}"),
    "scripts/": re.compile(r"\$\{\w+:-\$\{\w+:-[^{}]*\}\}"),
}


def invalid_by_design(parallelism: str, hardware: str) -> bool:
    if hardware == "cpu":
        return parallelism not in ("auto", "single")
    return parallelism == "single"


def combos(valid: bool) -> list[tuple[str, str, str]]:
    return [(t, p, h) for t in TRACKS for p in PARALLELISMS for h in HARDWARE if invalid_by_design(p, h) != valid]


def given(track: str, parallelism: str, hardware: str) -> dict:
    defaults = TRACKS[track].defaults
    return {
        "track": track,
        "budget": BUDGET,
        "hardware": HARDWARE[hardware],
        "parallelism": parallelism,
        "model_preset": defaults.model_preset,
        "exercises": defaults.exercises,
    }


@pytest.mark.parametrize("track, parallelism, hardware", combos(valid=True))
def test_renders_clean(tmp_path, track, parallelism, hardware):
    plan = plan_run("combo", given(track, parallelism, hardware))
    files = render_into(plan.answers, tmp_path)
    assert files
    for relative in files:
        path = tmp_path / relative
        assert not re.search(r"\{\{|\{%|\}\}", relative), f"unrendered path {relative}"
        if path.suffix in (".txt", ".pdf"):  # the corpus: plain data; ROADMAP.pdf: binary
            continue
        text = path.read_text(encoding="utf-8")
        for prefix, pattern in NOT_JINJA.items():
            if relative.startswith(prefix):
                text = pattern.sub("", text)
        # What Jinja leaves when a template is not rendered: its tags, or an expression in its own spacing
        # (`{{ name }}`); Python's nested braces (`{"a": {1}}`) are not that.
        unrendered = re.search(r"\{%|\{\{\s|\s\}\}", text)  # (not %}: the end of an f-string format {x:.1%})
        assert unrendered is None, f"{relative}: unrendered {unrendered.group() if unrendered else ''!r}"
        if path.suffix == ".json":
            json.loads(text)
        elif path.suffix == ".toml":
            tomllib.loads(text)
        elif path.suffix in (".yml", ".yaml"):
            yaml.safe_load(text)
        elif path.suffix == ".py":
            compile(text, relative, "exec")

    answers = yaml.safe_load((tmp_path / ".copier-answers.yml").read_text())
    config = load_config(tmp_path / "configs" / "train.toml")
    assert config.distributed.strategy == answers["parallelism"] != "auto"
    assert config.model.name == TRACKS[track].defaults.model_preset
    assert (config.train.micro_batch, config.train.grad_accum) == (answers["micro_batch"], answers["grad_accum"])
    if hardware == "cpu":
        assert (config.train.device, config.train.compile, config.train.dtype) == ("cpu", False, "auto")
    else:
        assert (config.train.device, config.train.compile, config.train.dtype) == ("cuda", True, "bfloat16")
        assert answers["nodes"] * answers["gpus_per_node"] == (8 if hardware == "one node" else 32)
    assert (tmp_path / "configs" / "deepspeed.json").is_file() == answers["parallelism"].startswith("zero")
    assert (tmp_path / "src" / "combo").is_dir()


@pytest.mark.parametrize("track, parallelism, hardware", combos(valid=False))
def test_invalid_combination_is_refused(track, parallelism, hardware):
    with pytest.raises(LLMGenError, match="--parallelism") as err:
        plan_run("combo", given(track, parallelism, hardware))
    assert "\n" not in str(err.value)


def test_the_matrix_covers_what_the_issue_lists():
    assert len(combos(valid=True)) + len(combos(valid=False)) == 3 * 7 * 3
    assert ("beginner", "zero3", "cpu") in combos(valid=False)
