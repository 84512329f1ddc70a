"""Fixtures for the `llmgen new` / `llmgen tracks` tests (the estimator's tests bring their own)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from generator.plan import plan_run
from generator.render import render_into

REPO = Path(__file__).resolve().parents[2]

Snapshot = dict[str, tuple[int, str]]


@pytest.fixture
def fixed_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed CPU peak instead of a measured one, so that 'laptop' budgets give repeatable token counts."""
    monkeypatch.setenv("LLMGEN_CPU_TFLOPS", "0.5")


@pytest.fixture
def template_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """llmgen's versioned template repository in a folder of this test session, not in ~/.cache; shared
    by the tests so that it is materialised once."""
    cache = tmp_path_factory.getbasetemp() / "llmgen-template-cache"
    monkeypatch.setenv("LLMGEN_TEMPLATE_CACHE", str(cache))
    return cache


@pytest.fixture
def snapshot() -> Callable[[Path], Snapshot]:
    """path -> (mode, sha256) of everything under a directory (directories too), to prove nothing changed."""

    def take(root: Path) -> Snapshot:
        state: Snapshot = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
                state[str(path.relative_to(root))] = (path.stat().st_mode, digest)
        return state

    return take


@pytest.fixture
def subprocess_env(fixed_cpu: None, template_cache: Path) -> dict[str, str]:
    """Environment for running llmgen (or a generated project) in a subprocess: this checkout importable
    even where llmgen is not installed, and no colour codes in the output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return env


@pytest.fixture(scope="session")
def render_projects(tmp_path_factory: pytest.TempPathFactory) -> Callable[[dict[str, dict]], dict[str, Path]]:
    """Render practitioner projects, name -> the answers `llmgen new` is given, each into a folder of this
    session; the CPU peak is fixed so that the CPU project's plan does not measure matmuls."""

    def render(projects: dict[str, dict]) -> dict[str, Path]:
        rendered = {}
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LLMGEN_CPU_TFLOPS", "0.5")
            for name, given in projects.items():
                plan = plan_run(
                    f"proj-{name}",
                    {"track": "practitioner", "budget": "200 gpu-hours", "exercises": False, "tokens": 10**9, **given},
                )
                rendered[name] = tmp_path_factory.mktemp(name)
                render_into(plan.answers, rendered[name])
        return rendered

    return render
