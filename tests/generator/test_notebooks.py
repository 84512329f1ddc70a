"""Notebooks of a generated project (generator/notebooks): one .ipynb per roadmap step of every track, with
its .py twin; valid nbformat without outputs; code that compiles; the project's package and step in it;
ROADMAP.md linking both files. A representative subset runs with nbclient here (an exercise-mode notebook
past its stubs, a complete-mode one, the same one with a wrong learner module as the negative control of
its check cell, and a .py twin as a script); the slow tests run every notebook of every track through the
generated project's own `make notebooks`."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from generator.errors import RenderError
from generator.notebooks import STEPS, notebook_cells, notebook_stem, write_notebooks
from generator.notebooks.cells import Project
from generator.plan import plan_run
from generator.render import render_into
from generator.tracks import load_tracks

nbformat = pytest.importorskip("nbformat", reason="needs the notebooks extra: pip install -e '.[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="needs the notebooks extra: pip install -e '.[notebooks]'")

TRACKS = sorted(load_tracks())
PACKAGE = "nbproj"
MODEL_NOTEBOOK = "04_model"  # beginner: in-process only, calls two learner modules


def plan(track: str, exercises: bool) -> dict:
    """The answers `llmgen new --track <track> --yes` gives, with exercise mode on or off."""
    defaults = load_tracks()[track].defaults
    return plan_run(
        PACKAGE,
        {
            "track": track,
            "budget": defaults.budget,
            "hardware": defaults.hardware,
            "parallelism": defaults.parallelism,
            "model_preset": defaults.model_preset,
            "exercises": exercises,
        },
    ).answers


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The beginner project rendered in exercise and in complete mode, once for this module."""
    rendered = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMGEN_CPU_TFLOPS", "0.5")
        mp.setenv("LLMGEN_TEMPLATE_CACHE", str(tmp_path_factory.getbasetemp() / "llmgen-template-cache"))
        for mode, exercises in (("exercise", True), ("complete", False)):
            rendered[mode] = tmp_path_factory.mktemp(mode)
            render_into(plan("beginner", exercises), rendered[mode])
        yield rendered


def code_cells(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def script_cells(text: str) -> tuple[list[str], list[str]]:
    """(code cells, markdown cells) of a jupytext "percent" script."""
    code, markdown = [], []
    for chunk in re.split(r"^# %%", text, flags=re.M)[1:]:
        marker, _, body = chunk.partition("\n")
        if marker.strip() == "[markdown]":
            markdown.append("\n".join(line[2:] for line in body.rstrip("\n").splitlines()))
        else:
            code.append(body.rstrip("\n"))
    return code, markdown


def execute(project: Path, name: str, monkeypatch: pytest.MonkeyPatch):
    """Run notebooks/<name>.ipynb of `project` in a fresh kernel; returns the executed notebook."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: one thread is as fast and immune to load
    notebook = nbformat.read(project / "notebooks" / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(project / "notebooks")}}
    ).execute()
    return notebook


def printed(notebook) -> str:
    return "".join(
        o.get("text", "")
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") == "stream"
    )


@pytest.mark.parametrize("exercises", [True, False], ids=["exercises", "complete"])
@pytest.mark.parametrize("track", TRACKS)
def test_one_notebook_and_script_per_step(track, exercises, tmp_path, fixed_cpu):
    """Expected: notebooks/NN_<step>.ipynb and .py for exactly the track's steps; each notebook valid
    nbformat 4 without outputs, its cells compiling, the .py twin holding the same cells; the project's
    package imported in the setup cell, a "you should see" note after the results and a last cell that
    asserts; in exercise mode (only) the cells calling a stub catch NotImplementedError."""
    answers = plan(track, exercises)
    steps = answers["roadmap"]["steps"]
    write_notebooks(answers, tmp_path)
    stems = [notebook_stem(step) for step in steps]
    assert sorted(p.name for p in (tmp_path / "notebooks").iterdir()) == sorted(
        f"{stem}{suffix}" for stem in stems for suffix in (".ipynb", ".py")
    )
    for step, stem in zip(steps, stems):
        notebook = nbformat.read(tmp_path / "notebooks" / f"{stem}.ipynb", as_version=4)
        nbformat.validate(notebook)
        assert notebook.metadata.llmgen.step == step["id"] and notebook.metadata.llmgen.exercises == exercises
        assert notebook.cells[0].source.startswith(f"# {step['number']}. {step['title']}\n")
        codes = code_cells(notebook)
        assert all(not c.outputs and c.execution_count is None for c in notebook.cells if c.cell_type == "code")
        for source in codes:
            ast.parse(source)
        text = json.dumps(notebook)
        assert "<package>" not in text and "<project>" not in text
        assert f"from {PACKAGE}.config import load_run_config" in codes[0]
        assert "You should see" in text
        assert codes[-1].startswith("# Check:") and "assert " in codes[-1] and "all checks passed" in codes[-1]
        script = (tmp_path / "notebooks" / f"{stem}.py").read_text(encoding="utf-8")
        script_code, script_markdown = script_cells(script)
        assert script_code == codes
        assert script_markdown == [c.source for c in notebook.cells if c.cell_type == "markdown"]
        assert f"python notebooks/{stem}.py" in script.splitlines()[2]
        catches = "except NotImplementedError" in "\n".join(codes)
        assert catches == (exercises and bool(step["exercises"])), (stem, catches)


def test_every_step_of_every_track_has_cells():
    """Expected: the notebook writer knows every step id that a track names (a new step needs its cells)."""
    ids = {step.id for track in load_tracks().values() for step in track.ordered_steps()}
    assert ids <= set(STEPS), sorted(ids - set(STEPS))


def test_a_step_without_cells_is_one_clear_error(tmp_path, fixed_cpu):
    """Expected: a roadmap step the writer has no cells for is a RenderError naming it, and nothing is written."""
    answers = plan("beginner", True)
    answers["roadmap"]["steps"][2] = {**answers["roadmap"]["steps"][2], "id": "telepathy"}
    with pytest.raises(RenderError, match="no notebook for step.*telepathy"):
        write_notebooks(answers, tmp_path)
    assert not (tmp_path / "notebooks").exists()


def test_multi_node_project_runs_its_launcher_on_one_machine(fixed_cpu):
    """Expected: the distributed notebook of a multi-node project sets NNODES=1 and a local MASTER_ADDR for
    the torchrun script, which would otherwise wait for other nodes; a single-node project's does not."""
    for track, nodes in (("researcher", 4), ("practitioner", 1)):
        answers = plan(track, False)
        assert answers["nodes"] == nodes
        step = next(s for s in answers["roadmap"]["steps"] if s["id"] == "distributed")
        code = "\n".join(
            c.source for c in notebook_cells(Project.from_answers(answers, step, None)) if c.kind == "code"
        )
        assert ("NNODES=1 MASTER_ADDR=127.0.0.1" in code) == (nodes > 1)
        assert "NPROC_PER_NODE=2" in code


def test_rendered_project_links_its_notebooks(projects):
    """Expected: `render_into` writes the notebooks; ROADMAP.md links each step's .ipynb and .py, and each
    link resolves; the Makefile runs them (`make notebooks`), the notebooks extra installs what they need,
    and the project's notebook test is there."""
    project = projects["complete"]
    roadmap = (project / "ROADMAP.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((notebooks/[^)]+)\)", roadmap)
    steps = load_tracks()["beginner"].ordered_steps()
    assert links == [
        f"notebooks/{number:02d}_{step.id}{suffix}"
        for number, step in enumerate(steps, start=1)
        for suffix in (".ipynb", ".py")
    ]
    assert all((project / link).is_file() for link in links)
    assert "\nnotebooks:\n\t$(PYTHON) -m pytest -q tests/notebooks\n" in (project / "Makefile").read_text()
    assert "llmgen[notebooks," in (project / "pyproject.toml").read_text()
    assert (project / "tests" / "notebooks" / "test_notebooks.py").is_file()


def test_exercise_mode_notebook_runs_past_the_stubs(projects, monkeypatch):
    """Expected: the tokenizer notebook of an exercise-mode project runs to its end: the cells calling the
    unwritten train_merges print the stub's message, the library part and the prepare command run, and the
    check cell says which checks wait for the exercise."""
    out = printed(execute(projects["exercise"], "03_tokenizer", monkeypatch))
    assert "not written yet: exercise: write the BPE merge loop" in out
    assert "skipped until you write train_merges" in out and out.rstrip().endswith("all checks passed")


def test_complete_mode_notebook_checks_the_learner_code(projects, monkeypatch):
    """Expected: the model notebook of a complete-mode project compares the learner's attention and block
    with the reference ones and passes every check, with nothing skipped."""
    out = printed(execute(projects["complete"], MODEL_NOTEBOOK, monkeypatch))
    assert "your causal_attention vs PyTorch's fused kernel" in out and "not written yet" not in out
    assert "skipped" not in out and out.rstrip().endswith("all checks passed")


def test_check_cell_fails_on_wrong_learner_code(projects, tmp_path, monkeypatch):
    """Negative control: the same notebook in a copy of the project whose attention lost its causal mask
    stops at its check cell with an AssertionError."""
    copy = tmp_path / "broken"
    shutil.copytree(projects["complete"], copy)
    attention = copy / "src" / PACKAGE / "attention.py"
    source = attention.read_text(encoding="utf-8")
    masked = '    scores = scores.masked_fill(~allowed, float("-inf"))\n'
    assert masked in source
    attention.write_text(source.replace(masked, ""), encoding="utf-8")
    with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
        execute(copy, MODEL_NOTEBOOK, monkeypatch)
    assert "AssertionError" in str(failure.value) and "# Check:" in str(failure.value)


def test_script_twin_runs_as_its_header_says(projects):
    """Expected: `python notebooks/04_model.py`, from the project root as the script's header says, runs
    the same cells and ends with "all checks passed"."""
    project = projects["complete"]
    command = (project / "notebooks" / f"{MODEL_NOTEBOOK}.py").read_text().splitlines()[2].removeprefix("#").strip()
    assert command == f"python notebooks/{MODEL_NOTEBOOK}.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *command.split()[1:]], cwd=project, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.rstrip().endswith("all checks passed")


def notebook_code(project: Path, stem: str) -> list[str] | None:
    path = project / "notebooks" / f"{stem}.ipynb"
    return code_cells(nbformat.read(path, as_version=4)) if path.is_file() else None


@pytest.mark.slow
@pytest.mark.parametrize("track", TRACKS)
def test_every_notebook_runs_with_make_notebooks(track, tmp_path, fixed_cpu, template_cache):
    """Expected: in a complete-mode project of each track, `make notebooks` (the project's own
    tests/notebooks: every notebook top to bottom in roadmap order, each ending in its checks) passes.

    The researcher's notebooks are the practitioner's, cell for cell, except where the track changes their
    code (the distributed step): those run here, after the notebooks whose outputs they read; the others are
    checked to be the cells the practitioner's run executes and are not run a second time (it would add
    about 4 minutes of CI for no line of code not already run)."""
    if shutil.which("make") is None:
        pytest.skip("needs make")
    answers = plan(track, False)
    project = tmp_path / track
    render_into(answers, project)
    stems = [notebook_stem(step) for step in answers["roadmap"]["steps"]]
    command = ["make", "notebooks"]
    if track == "researcher":
        reference = tmp_path / "practitioner"
        render_into(plan("practitioner", False), reference)
        differ = [stem for stem in stems if notebook_code(project, stem) != notebook_code(reference, stem)]
        assert differ, "the researcher's notebooks equal the practitioner's: this track needs no run of its own"
        stems = stems[: stems.index(differ[-1]) + 1]
        command = [sys.executable, "-m", "pytest", "-q", "tests/notebooks", "-k", " or ".join(stems)]
    env = {**os.environ, "PYTHON": sys.executable, "PYTEST_ADDOPTS": "--durations=0"}  # each notebook's time
    start = time.perf_counter()
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) == len(stems), result.stdout[-2000:]
    print(f"{track}: {passed.group(1)} notebooks in {time.perf_counter() - start:.0f} s")
    print("\n".join(line for line in result.stdout.splitlines() if " call " in line))


@pytest.mark.slow
def test_exercise_notebooks_run_past_every_stub(tmp_path, fixed_cpu, template_cache):
    """Expected: in an exercise-mode beginner project, each notebook of a step with exercises runs to its
    end through the project's own notebook test: its cells catch the stubs' NotImplementedError."""
    answers = plan("beginner", True)
    render_into(answers, tmp_path)
    stems = [notebook_stem(step) for step in answers["roadmap"]["steps"] if step["exercises"]]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "tests/notebooks", "-k", " or ".join(stems)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0 and f"{len(stems)} passed" in result.stdout, result.stdout[-4000:]
    for stem in stems:
        notebook = nbformat.read(tmp_path / "notebooks" / f"{stem}.ipynb", as_version=4)
        assert "except NotImplementedError" in "\n".join(code_cells(notebook)), stem
