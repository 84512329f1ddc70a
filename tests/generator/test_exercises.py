"""Exercise mode: the learner's parts (BPE merge loop, causal attention, transformer block, training step,
sampling) are stubs with hints whose checkpoint tests are skipped with a pointer to their ROADMAP step
and a progress line until written; complete mode renders the reference solution into the same files;
every exercise is solvable (the complete mode's files copied over the stubs make those tests pass); each
test names the mistake a first attempt most often makes; the project's train and sample commands run
the learner's code once it is written; CI is green on the first push and reports the progress; and the
README's way to switch modes works."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from generator.plan import plan_run
from generator.render import render_into
from generator.roadmap import EXERCISES
from generator.tracks import load_tracks

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")

PACKAGE = "learner"
EXERCISE_TESTS = sorted({test for exercise in EXERCISES for test in exercise.tests})
LEARNER_FILES = sorted({f"src/{PACKAGE}/{e.file}" for e in EXERCISES})
TINY = (
    '[model]\npreset = "tiny"\n[data]\nvocab_size = 320\n[train]\nmax_steps = 3\nmicro_batch = 2\n'
    'grad_accum = 2\ndtype = "float32"\n[eval]\niters = 1\n'
)


def render(tmp_path: Path, exercises: bool, git: bool = False) -> Path:
    plan = plan_run(
        PACKAGE,
        {
            "track": "beginner",
            "budget": "laptop",
            "hardware": "cpu",
            "parallelism": "auto",
            "model_preset": "demo",
            "exercises": exercises,
        },
    )
    project = tmp_path / ("exercise" if exercises else "complete")
    project.mkdir()
    render_into(plan.answers, project)
    if git:
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "generated"]):
            subprocess.run(
                ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                cwd=project,
                check=True,
                capture_output=True,
            )
    return project


def solve(exercise: Path, complete: Path) -> None:
    for path in LEARNER_FILES:
        shutil.copyfile(complete / path, exercise / path)


def project_env(env: dict[str, str], project: Path, overlay: Path | None = None) -> dict[str, str]:
    """As `pip install -e .` leaves it: the project's package importable; the overlay for tiny runs."""
    out = {**env, "PYTHONPATH": os.pathsep.join([str(project / "src"), env.get("PYTHONPATH", "")])}
    if overlay is not None:
        out["REFERENCE_LLM_OVERLAY"] = str(overlay)
    return out


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
        assert message.startswith("exercise: ")  # what the tests turn into a skip
        assert f'see ROADMAP.md, step "{step_title(item.step)}"' in message and str(path) in message
        assert "Hints:" in ast.get_docstring(stub) and "Hints:" not in ast.get_docstring(solution)
        assert raises_not_implemented(solution) is None and len(solution.body) > 1, f"{item.symbol}: no solution"
    # Besides the learner's files, only what describes the mode differs.
    differing = {
        p.relative_to(exercise).as_posix()
        for p in exercise.rglob("*")
        if p.is_file() and (complete / p.relative_to(exercise)).read_bytes() != p.read_bytes()
    }
    described = {
        ".copier-answers.yml",
        "ROADMAP.md",
        "ROADMAP.pdf",
        "roadmap.html",
        "README.md",
        ".github/workflows/ci.yml",
        f"src/{PACKAGE}/exercises.py",
        f"src/{PACKAGE}/__init__.py",
        "tests/checkpoints/conftest.py",
    }
    assert (
        set(LEARNER_FILES)
        <= differing
        <= set(LEARNER_FILES) | described | {p for p in differing if p.startswith("notebooks/")}
    )


def test_the_project_tells_which_files_are_exercises(tmp_path):
    """README.md, ROADMAP.md and roadmap.html name every exercise file, what `make test` shows until it is
    written, that make demo / train / sample run it once written, and how to switch modes."""
    project = render(tmp_path, True)
    readme = (project / "README.md").read_text()
    html = (project / "roadmap.html").read_text()
    roadmap = (project / "ROADMAP.md").read_text()
    for item in EXERCISES:
        where = f"src/{PACKAGE}/{item.file}"
        assert f"`{item.symbol}` | `{where}`" in readme
        assert where in html and f"`{item.symbol}` in `{where}`" in roadmap
    for phrase in (
        "exercise not written yet",
        "exercises: 0 of 6 written",
        "make demo",
        "make train",
        f"python -m {PACKAGE}.train",
        "--no-exercises",
        "exercises=false",
    ):
        assert phrase in readme, phrase
    assert "paths and config helpers" not in readme
    assert html.count('class="tag exercise"') >= len({e.step for e in EXERCISES})
    assert all(
        f'id="node-{e.step}"' in html and "exercise" in html.split(f'id="node-{e.step}"')[0].rsplit("<a ", 1)[1]
        for e in EXERCISES
    )


def run_tests(project: Path, report: Path, env: dict[str, str], *tests: str) -> tuple[dict[str, str | None], str]:
    """Each test's outcome ("passed", "skipped: ..." or the failure message), and pytest's output."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            *(tests or EXERCISE_TESTS),
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    outcome = {}
    for case in ET.parse(report).iter("testcase"):
        nodeid = f"tests/checkpoints/{case.get('classname').split('.')[-1]}.py::{case.get('name')}"
        failure, skipped = case.find("failure"), case.find("skipped")
        outcome[nodeid] = (
            "passed"
            if failure is None and skipped is None
            else f"skipped: {skipped.get('message', '')}"
            if skipped is not None
            else failure.get("message", "") + (failure.text or "")
        )
    return outcome, result.stdout


@pytest.mark.slow
def test_exercises_skip_with_pointers_then_pass_once_solved(tmp_path, subprocess_env):
    exercise, complete = render(tmp_path, True), render(tmp_path, False)
    before, output = run_tests(exercise, tmp_path / "before.xml", subprocess_env)
    assert sorted(before) == EXERCISE_TESTS
    for item in EXERCISES:
        for test in item.tests:
            assert before[test].startswith("skipped: exercise not written yet"), f"{test}: {before[test]}"
        pointer = f'see ROADMAP.md, step "{step_title(item.step)}"'
        assert any(pointer in before[test] for test in item.tests), f"{item.symbol}: no test points at {pointer}"
    assert f"exercises: 0 of {len(EXERCISES)} written; next: {EXERCISES[0].task}" in output

    solve(exercise, complete)
    after, output = run_tests(exercise, tmp_path / "after.xml", subprocess_env)
    assert after == dict.fromkeys(EXERCISE_TESTS, "passed")
    assert f"exercises: {len(EXERCISES)} of {len(EXERCISES)} written" in output


# What a first attempt most often gets wrong, as an edit of the solution, and what its test must say.
# Two rounds: generate calls sample_next, so the cropping slip is planted with a correct sample_next.
MISTAKES = [
    {
        "attention.py": [('    scores = scores.masked_fill(~allowed, float("-inf"))\n', "")],
        "block.py": [
            ("        x = x + self.attn(self.attn_norm(x), rope)\n", "        x = self.attn(self.attn_norm(x), rope)\n")
        ],
        "train_step.py": [("    optimizer.zero_grad(set_to_none=True)\n", "")],
        "sampling.py": [("    if temperature == 0:\n        return logits.argmax(dim=-1)\n", "")],
    },
    {
        "sampling.py": [("logits, _ = model(idx[:, -block_size:])", "logits, _ = model(idx)")],
        "bpe.py": [
            ("    ids = list(ids)\n", ""),  # no copy, and the list merged in place: the caller's changes
            ("        ids = merge(ids, pair, new_id)\n", "        ids[:] = merge(ids, pair, new_id)\n"),
        ],
    },
]
SAYS = [
    {
        "test_model.py::test_causal_attention_matches_reference": (
            "attention sees the future: the output at position 0 changed when token 5 changed; apply the causal mask"
        ),
        "test_model.py::test_block_matches_reference": "must be added to the residual stream",
        "test_training.py::test_train_step_matches_reference": "gradients are left in .grad",
        "test_generate.py::test_sampling_follows_the_distribution": "before dividing by the temperature",
    },
    {
        "test_generate.py::test_greedy_generation_matches_reference": "feed the model idx[:, -block_size:]",
        "test_tokenizer.py::test_bpe_merges_on_toy_text": "train_merges changed the list it was given",
    },
]


@pytest.mark.slow
def test_each_test_names_the_likely_mistake_first(tmp_path, subprocess_env):
    """Causality before numerics: each exercise test, given the solution with its most common slip, fails
    with the message that names the slip; the unchanged solution passes (test above)."""
    exercise, complete = render(tmp_path, True), render(tmp_path, False)
    for round_, (mistakes, says) in enumerate(zip(MISTAKES, SAYS)):
        solve(exercise, complete)
        for name, edits in mistakes.items():
            path = exercise / "src" / PACKAGE / name
            for old, new in edits:
                assert old in path.read_text(), f"{name}: the solution changed; update MISTAKES"
                path.write_text(path.read_text().replace(old, new))
        outcome, _ = run_tests(
            exercise, tmp_path / f"wrong{round_}.xml", subprocess_env, *(f"tests/checkpoints/{test}" for test in says)
        )
        for test, message in says.items():
            got = outcome[f"tests/checkpoints/{test}"]
            assert message in got, f"{test}: expected {message!r} in:\n{got[:1500]}"


@pytest.mark.slow
def test_train_and_sample_run_your_code_once_written(tmp_path, subprocess_env):
    """`python -m learner.train` and `.sample` (make demo, make train, make sample) run the learner's Block
    and generate once written, and reference_llm's before; `python -m reference_llm.train` never runs
    them (the negative control)."""
    exercise, complete = render(tmp_path, True), render(tmp_path, False)
    overlay = tmp_path / "tiny.toml"
    overlay.write_text(TINY)
    env = project_env(subprocess_env, exercise, overlay)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", *args], cwd=exercise, env=env, capture_output=True, text=True, timeout=600
        )

    stubs = run(f"{PACKAGE}.train", "--config", "configs/train.toml", "checkpoint.dir=runs/stubs")
    assert stubs.returncode == 0, stubs.stderr[-3000:]
    assert "reference_llm's: the transformer block (yours is not written yet" in stubs.stderr

    solve(exercise, complete)
    marker = exercise / "ran.txt"  # each call of the learner's Block.forward and generate appends a line
    for name, anchor, tag in (
        ("block.py", "        x = x + self.attn(", "block"),
        ("sampling.py", "    block_size = model.config.block_size", "generate"),
    ):
        path = exercise / "src" / PACKAGE / name
        indent = anchor[: len(anchor) - len(anchor.lstrip())]
        path.write_text(
            path.read_text().replace(anchor, f"{indent}open({str(marker)!r}, 'a').write('{tag}\\n')\n{anchor}", 1)
        )
    reference = run("reference_llm.train", "--config", "configs/train.toml", "checkpoint.dir=runs/reference")
    assert reference.returncode == 0 and not marker.exists(), reference.stderr[-3000:]
    yours = run(f"{PACKAGE}.train", "--config", "configs/train.toml")
    assert yours.returncode == 0, yours.stderr[-3000:]
    for task in ("causal self-attention", "the transformer block", "the training step"):
        assert f"yours: {task}" in yours.stderr
    assert "block" in marker.read_text().split()
    # The same run as reference_llm's (same init, data, schedule; accumulation as one batch): the same losses.
    losses = [float(re.search(r"done: step 3 \| loss ([\d.]+)", r.stdout).group(1)) for r in (reference, yours)]
    assert abs(losses[0] - losses[1]) <= 2e-3, losses  # printed to 4 significant digits
    sample = run(
        f"{PACKAGE}.sample",
        "--checkpoint",
        "runs/learner",
        "--prompt",
        "ROMEO:",
        "--max-new-tokens",
        "4",
        "--seed",
        "0",
    )
    assert sample.returncode == 0 and sample.stdout.startswith("ROMEO:"), sample.stderr[-3000:]
    assert "yours: the generation loop" in sample.stderr and "generate" in marker.read_text().split()


def workflow_steps(project: Path) -> list[dict]:
    return yaml.safe_load((project / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["test"]["steps"]


def run_workflow(project: Path, env: dict[str, str], spec: str) -> list[tuple[str, subprocess.CompletedProcess]]:
    """The job's `run` steps in order, as the runner would, with LLMGEN_SPEC set to `spec`. The install
    step is not run (offline; `env` already has llmgen, and the project on PYTHONPATH as pip -e would)."""
    results = []
    summary = project.parent / f"summary-{bool(spec)}.md"
    for step in workflow_steps(project):
        condition = step.get("if")
        if "run" not in step or (condition == "env.LLMGEN_SPEC == ''") != (not spec) and condition:
            continue
        if "pip install" in step["run"]:
            continue
        result = subprocess.run(
            ["bash", "-e", "-c", step["run"]],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=900,
            env={**env, "LLMGEN_SPEC": spec, "GITHUB_STEP_SUMMARY": str(summary)},
        )
        results.append((step["name"], result))
    return results


@pytest.mark.slow
def test_ci_is_green_on_the_first_push_and_reports_progress(tmp_path, subprocess_env):
    project = render(tmp_path, True)
    # CI installs the project's `test` extra: llmgen on PATH, no Jupyter (the notebook tests skip there).
    no_jupyter = tmp_path / "ci-site"
    (no_jupyter / "nbclient").mkdir(parents=True)
    (no_jupyter / "nbclient" / "__init__.py").write_text("raise ModuleNotFoundError('not in the test extra')\n")
    env = project_env(subprocess_env, project)
    env["PYTHONPATH"] = os.pathsep.join([str(no_jupyter), env["PYTHONPATH"]])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    unset = run_workflow(project, env, "")
    assert [name for name, _ in unset] == ["Exercise progress (needs nothing installed)", "Tests need LLMGEN_SPEC"]
    assert all(r.returncode == 0 for _, r in unset), [r.stderr for _, r in unset]
    assert f"exercises: 0 of {len(EXERCISES)} written" in unset[0][1].stdout
    assert "::warning::the tests did not run" in unset[1][1].stdout
    assert "| causal self-attention (`causal_attention`)" in (tmp_path / "summary-False.md").read_text()
    set_ = run_workflow(project, env, "llmgen @ git+https://example.org/llmgen")
    assert [name for name, _ in set_][-2:] == [
        "Data compliance (manifest, sha256, personal data, licences; see COMPLIANCE.md)",
        "Checkpoint tests",
    ]
    for name, result in set_:
        assert result.returncode == 0, f"{name}:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
    tests = set_[-1][1].stdout
    assert re.search(r"\d+ passed, \d+ skipped", tests) and " failed" not in tests
    assert f"exercises: 0 of {len(EXERCISES)} written" in tests


@pytest.mark.slow
def test_switching_to_complete_mode_as_the_readme_says(tmp_path, subprocess_env):
    """README: `copier update --defaults --data exercises=false` (after committing) turns the stubs into
    the reference solutions."""
    project = render(tmp_path, True, git=True)
    result = subprocess.run(
        [sys.executable, "-m", "copier", "update", "--defaults", "--data", "exercises=false"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    complete = render(tmp_path, False)
    for path in LEARNER_FILES:
        assert (project / path).read_text() == (complete / path).read_text(), path
    progress = subprocess.run(
        [sys.executable, "-m", f"{PACKAGE}.exercises"],
        cwd=project,
        capture_output=True,
        text=True,
        env=project_env(subprocess_env, project),
    )
    assert f"exercises: {len(EXERCISES)} of {len(EXERCISES)} written" in progress.stdout


def test_every_exercise_has_a_quick_check(tmp_path):
    """train.py and sample.py check a written part before using it (src/<package>/checks.py)."""
    project = render(tmp_path, True)
    source = (project / "src" / PACKAGE / "checks.py").read_text()
    table = source[source.index("CHECKS") :]
    assert sorted(re.findall(r'"([\w.]+)": check_', table)) == sorted(e.symbol for e in EXERCISES)
