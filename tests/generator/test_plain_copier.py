"""Plain Copier works: `copier copy` and `copier update` of templates/ with an answers file give the same
project as `llmgen new` and `llmgen update`, data included, from a short answers file; and the answers
file's roadmap is llmgen's compact form, which the template joins with its own track data.

Copier runs here as a user runs it, through its command line, without --trust (the template uses no
unsafe feature: no _tasks, no _jinja_extensions).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from generator.commands.update import update_project
from generator.plan import plan_run
from generator.render import add_corpus, corpus_manifest_text, render_into
from generator.resources import templates_dir
from generator.roadmap import TEMPLATE_TRACKS, compact_roadmap, template_track_text
from generator.template_repo import ensure_template_repo
from generator.tracks import load_tracks
from reference_llm.assets import corpus_path

pytestmark = pytest.mark.usefixtures("fixed_cpu")

COPIER = [sys.executable, "-m", "copier"]
# Written by llmgen's own Python after Copier renders (generator/render.py): not Copier's to make.
LLMGEN_ONLY = ("ROADMAP.pdf", "notebooks/")


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def same_project(ours: dict[str, bytes], theirs: dict[str, bytes]) -> list[str]:
    """Paths that differ, leaving out llmgen's Python-made files and the answers' template location."""
    keep = {k for k in ours.keys() | theirs.keys() if not k.startswith(LLMGEN_ONLY)}
    differ = sorted(k for k in keep - {".copier-answers.yml"} if ours.get(k) != theirs.get(k))
    strip = ("_src_path", "_commit")
    a, b = (yaml.safe_load(x[".copier-answers.yml"]) for x in (ours, theirs))
    if {k: v for k, v in a.items() if k not in strip} != {k: v for k, v in b.items() if k not in strip}:
        differ.append(".copier-answers.yml")
    return differ


def answers_file(project: Path, out: Path, **changes) -> Path:
    """The project's recorded answers without Copier's own keys: what a user passes with --data-file."""
    answers = {
        k: v for k, v in yaml.safe_load((project / ".copier-answers.yml").read_text()).items() if not k.startswith("_")
    }
    out.write_text(yaml.safe_dump({**answers, **changes}))
    return out


@pytest.fixture
def versions(tmp_path):
    """A private copy of the template (to change between versions) and a private template cache."""
    source = tmp_path / "template"
    shutil.copytree(templates_dir(), source)
    return source, tmp_path / "cache"


def llmgen_project(tmp_path: Path, ref, track: str = "beginner", **given) -> Path:
    defaults = load_tracks()[track].defaults
    plan = plan_run(
        "proj",
        {
            "track": track,
            "budget": defaults.budget,
            "hardware": defaults.hardware,
            "parallelism": defaults.parallelism,
            "model_preset": defaults.model_preset,
            "exercises": defaults.exercises,
            **given,
        },
    )
    project = tmp_path / "llmgen" / "proj"
    project.mkdir(parents=True)
    render_into(plan.answers, project, template=ref)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "generated")
    return project


@pytest.mark.slow
@pytest.mark.parametrize("track", list(load_tracks()))
def test_copier_copy_gives_the_llmgen_project(tmp_path, versions, track):
    source, cache = versions
    ref = ensure_template_repo("1.0.0", source=source, cache_dir=cache)
    ours = llmgen_project(tmp_path, ref, track)
    recorded = (ours / ".copier-answers.yml").read_text()
    assert len(recorded.splitlines()) < 80 and "steps" not in yaml.safe_load(recorded)["roadmap"]
    theirs = tmp_path / "copier" / "proj"
    result = subprocess.run(
        [
            *COPIER,
            "copy",
            "--defaults",
            "--vcs-ref",
            ref.tag,
            "--data-file",
            str(answers_file(ours, tmp_path / "answers.yml")),
            str(ref.path),
            str(theirs),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert same_project(files(ours), files(theirs)) == []
    assert (theirs / "data" / "shakespeare.txt").read_bytes() == corpus_path().read_bytes()
    add_corpus(theirs / "data")  # the corpus and its manifest are reference_llm's, checked by sha256
    compliance = subprocess.run(
        [str(Path(sys.executable).parent / "llmgen"), "compliance", "--path", str(theirs)],
        capture_output=True,
        text=True,
    )
    assert compliance.returncode == 0, compliance.stdout + compliance.stderr


@pytest.mark.slow
def test_copier_update_gives_the_llmgen_update(tmp_path, versions):
    source, cache = versions
    ref = ensure_template_repo("1.0.0", source=source, cache_dir=cache)
    ours = llmgen_project(tmp_path, ref)
    theirs = tmp_path / "copier" / "proj"
    subprocess.run(
        [
            *COPIER,
            "copy",
            "--defaults",
            "--vcs-ref",
            ref.tag,
            "--data-file",
            str(answers_file(ours, tmp_path / "answers.yml")),
            str(ref.path),
            str(theirs),
        ],
        check=True,
        capture_output=True,
    )
    git(theirs, "init", "-q")
    git(theirs, "add", "-A")
    git(theirs, "commit", "-qm", "generated")
    readme = source / "project" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\nA section added in llmgen 1.1.\n")
    update_project(ours, version="1.1.0", source=source)
    result = subprocess.run(
        [*COPIER, "update", "--defaults", "--vcs-ref", "v1.1.0"], cwd=theirs, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "A section added in llmgen 1.1." in (theirs / "README.md").read_text()
    assert same_project(files(ours), files(theirs)) == []


def planned_answers(out: Path, **changes) -> Path:
    """A beginner project's answers as llmgen records them (compact roadmap), as a --data-file."""
    answers = plan_run(
        "proj",
        {
            "track": "beginner",
            "budget": "laptop",
            "hardware": "cpu",
            "parallelism": "auto",
            "model_preset": "demo",
            "exercises": True,
        },
    ).answers
    out.write_text(yaml.safe_dump({**answers, "roadmap": compact_roadmap(answers["roadmap"]), **changes}))
    return out


def copier_copy(ref, answers: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*COPIER, "copy", "--defaults", "--vcs-ref", ref.tag, "--data-file", str(answers), str(ref.path), str(out)],
        capture_output=True,
        text=True,
    )


def test_missing_roadmap_is_copiers_one_line_question_error(tmp_path, versions):
    source, cache = versions
    ref = ensure_template_repo("1.0.0", source=source, cache_dir=cache)
    answers = yaml.safe_load(planned_answers(tmp_path / "a.yml").read_text())
    del answers["roadmap"]
    (tmp_path / "a.yml").write_text(yaml.safe_dump(answers))
    result = copier_copy(ref, tmp_path / "a.yml", tmp_path / "out")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last == 'ValueError: Question "roadmap" is required'
    assert "jinja2" not in result.stderr


def test_empty_roadmap_is_a_one_line_validation_error(tmp_path, versions):
    source, cache = versions
    ref = ensure_template_repo("1.0.0", source=source, cache_dir=cache)
    result = copier_copy(ref, planned_answers(tmp_path / "a.yml", roadmap={}), tmp_path / "out")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last.startswith("ValueError: Validation error for question 'roadmap'")
    assert "llmgen" in last and "jinja2" not in result.stderr


def test_template_data_is_llmgens():
    """The template's copies of the track data and of the corpus are what llmgen would write now
    (after editing tracks/*.toml, run `python -m generator.roadmap`)."""
    for name, track in load_tracks().items():
        path = templates_dir() / TEMPLATE_TRACKS / f"{name}.json"
        assert path.read_text(encoding="utf-8") == template_track_text(track), (
            f"{path} is out of date: run python -m generator.roadmap"
        )
    data = templates_dir() / "project" / "data"
    assert (data / "shakespeare.txt").read_bytes() == corpus_path().read_bytes()
    assert (data / "manifest.toml").read_text(encoding="utf-8") == corpus_manifest_text()
