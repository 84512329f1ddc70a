"""Exercise mode: the learner's parts (BPE merge loop, causal attention, transformer block, training step,
sampling) are stubs with hints whose checkpoint tests fail with a pointer to their ROADMAP step; complete
mode renders the reference solution into the same files; and every exercise is solvable: the complete
mode's files copied over the stubs make those tests pass."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from generator.plan import plan_run
from generator.render import render_into
from generator.roadmap import EXERCISES
from generator.tracks import load_tracks

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")

PACKAGE = "learner"
EXERCISE_TESTS = sorted({test for exercise in EXERCISES for test in exercise.tests})


def render(tmp_path: Path, exercises: bool) -> Path:
    plan = plan_run(PACKAGE, {"track": "beginner", "budget": "laptop", "hardware": "cpu", "parallelism": "auto",
                              "model_preset": "demo", "exercises": exercises})
    project = tmp_path / ("exercise" if exercises else "complete")
    project.mkdir()
    render_into(plan.answers, project)
    return project


def step_title(step_id: str) -> str:
    return load_tracks()["beginner"].step(step_id).title


def definition(source: str, symbol: str) -> ast.FunctionDef:
    """The function `name` or method `Class.name` defined in `source`."""
    tree = ast.parse(source)
    *owner, name = symbol.split(".")
    scope = tree.body
    if owner:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == owner[0]).body
    return next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name)


def raises_not_implemented(function: ast.FunctionDef) -> str | None:
    """The message of a `raise NotImplementedError("...")` that is the function's whole body, else None."""
    body = function.body[1:] if ast.get_docstring(function) else function.body
    if len(body) == 1 and isinstance(body[0], ast.Raise) and isinstance(body[0].exc, ast.Call):
        call = body[0].exc
        if getattr(call.func, "id", "") == "NotImplementedError":
            return ast.literal_eval(call.args[0])
    return None


def test_stubs_in_exercise_mode_solutions_in_complete_mode(tmp_path):
    exercise, complete = render(tmp_path, True), render(tmp_path, False)
    for item in EXERCISES:
        path = Path("src") / PACKAGE / item.file
        stub = definition((exercise / path).read_text(), item.symbol)
        solution = definition((complete / path).read_text(), item.symbol)
        message = raises_not_implemented(stub)
        assert message is not None, f"{item.symbol} is not a stub in exercise mode"
        assert f'see ROADMAP.md, step "{step_title(item.step)}"' in message and str(path) in message
        assert "Hints:" in ast.get_docstring(stub) and "Hints:" not in ast.get_docstring(solution)
        assert raises_not_implemented(solution) is None and len(solution.body) > 1, f"{item.symbol}: no solution"
    # Everything else is the same in both modes: only the learner's files differ.
    differing = {p.relative_to(exercise).as_posix() for p in exercise.rglob("*") if p.is_file()
                 and (complete / p.relative_to(exercise)).read_bytes() != p.read_bytes()}
    assert differing == {".copier-answers.yml", "ROADMAP.md", "roadmap.html", "ROADMAP.pdf"} | {
        f"src/{PACKAGE}/{e.file}" for e in EXERCISES}


def run_tests(project: Path, report: Path, env: dict[str, str]) -> dict[str, str | None]:
    """Each exercise test's failure message (None when it passed), from a pytest run in the project."""
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                    *EXERCISE_TESTS], cwd=project, capture_output=True, text=True, timeout=600, env=env)
    outcome = {}
    for case in ET.parse(report).iter("testcase"):
        failure = case.find("failure")
        nodeid = f"tests/checkpoints/{case.get('classname').split('.')[-1]}.py::{case.get('name')}"
        outcome[nodeid] = None if failure is None else (failure.get("message", "") + (failure.text or ""))
    return outcome


@pytest.mark.slow
def test_exercises_fail_with_pointers_then_pass_once_solved(tmp_path, subprocess_env):
    exercise, complete = render(tmp_path, True), render(tmp_path, False)
    failing = run_tests(exercise, tmp_path / "before.xml", subprocess_env)
    assert sorted(failing) == EXERCISE_TESTS
    for item in EXERCISES:
        pointer = f'see ROADMAP.md, step "{step_title(item.step)}"'
        for test in item.tests:
            assert failing[test] is not None and "not written yet" in failing[test], f"{test} did not fail on the stub"
            assert "see ROADMAP.md, step" in failing[test], f"{test}: its failure names no ROADMAP step"
        assert any(pointer in failing[test] for test in item.tests), f"{item.symbol}: no test points at {pointer}"

    for item in EXERCISES:  # solve every exercise with the reference implementation
        path = Path("src") / PACKAGE / item.file
        shutil.copyfile(complete / path, exercise / path)
    solved = run_tests(exercise, tmp_path / "after.xml", subprocess_env)
    assert {test: message for test, message in solved.items() if message is not None} == {}
    assert sorted(solved) == EXERCISE_TESTS
