"""A generated repository works on its own: its checkpoint tests pass in a subprocess (one combination per
track), and its configs/train.toml trains with reference_llm and samples from the checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from generator.plan import plan_run
from generator.render import render_project

pytestmark = pytest.mark.usefixtures("fixed_cpu", "template_cache")

PER_TRACK = {  # CPU for the beginner; the others keep their GPU configs (their tests run on any CPU)
    "beginner": {"hardware": "cpu", "budget": "laptop", "parallelism": "auto", "model_preset": "demo"},
    "practitioner": {"hardware": "8xH100", "budget": "$100", "parallelism": "auto", "model_preset": "gpt2-124m"},
    "researcher": {
        "hardware": "4x8xH100",
        "budget": "500 gpu-hours",
        "parallelism": "zero3",
        "model_preset": "llama-1b",
    },
}


def generate(tmp_path: Path, track: str, exercises: bool = False) -> Path:
    plan = plan_run(f"{track}-llm", {"track": track, "exercises": exercises, **PER_TRACK[track]})
    project = tmp_path / f"{track}-llm"
    render_project(plan.answers, project, git=False)
    return project


@pytest.mark.slow
@pytest.mark.parametrize("track", list(PER_TRACK))
def test_generated_checkpoint_tests_pass(tmp_path, subprocess_env, track):
    """The project's `python -m pytest tests` (its `make test`). With the notebooks extra installed, as here,
    that also collects tests/notebooks, the tests `make notebooks` runs: tests/generator/test_notebooks.py
    runs those for every track, so they are deselected here rather than run twice (about 2 minutes a track)."""
    project = generate(tmp_path, track)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not notebooks", "tests"],
        cwd=project,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


@pytest.mark.slow
def test_generated_config_trains_and_samples(tmp_path, subprocess_env):
    """The generated config, cut to a tiny model and two steps, runs reference_llm.train end to end and
    reference_llm.deploy.generate samples from the checkpoint it wrote (the commands of the generated Makefile)."""
    project = generate(tmp_path, "beginner")
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "reference_llm.train",
            "--config",
            "configs/train.toml",
            "model.preset=tiny",
            "train.max_steps=2",
            "train.micro_batch=2",
            "eval.iters=1",
        ],
        cwd=project,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = project / "runs" / "beginner-llm"
    assert (run_dir / "latest").is_file()
    sample = subprocess.run(
        [
            sys.executable,
            "-m",
            "reference_llm.deploy.generate",
            "--checkpoint",
            str(run_dir),
            "--prompt",
            "ROMEO:",
            "--max-new-tokens",
            "8",
            "--seed",
            "0",
        ],
        cwd=project,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sample.returncode == 0, sample.stderr[-3000:]
    assert sample.stdout.startswith("ROMEO:")
