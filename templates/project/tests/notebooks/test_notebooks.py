"""Every notebook in notebooks/ runs from top to bottom; each ends with a cell that checks its results.

They run in roadmap order in one copy of the project, as a learner runs them: later notebooks reuse the
tiny checkpoints that earlier ones wrote to runs/notebooks/. A notebook runs in a few seconds to half a
minute on a CPU, so these tests need the notebooks extra (`pip install -e '.[test,notebooks]'`) and are
skipped without it; `make notebooks` runs only them, `pytest -m "not notebooks"` leaves them out.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need the notebooks extra: "
                                                   "pip install -e '.[notebooks]'")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need the notebooks extra: "
                                                  "pip install -e '.[notebooks]'")
pytest.importorskip("ipykernel", reason="the notebook tests need the notebooks extra: pip install -e '.[notebooks]'")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds; a cell runs at most one tiny training run

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project without its runs, so that the notebooks start from nothing and leave the
    project's own runs/notebooks/ alone."""
    copy = tmp_path_factory.mktemp("project")
    skip = shutil.ignore_patterns(".git", ".venv", "runs", "cache", "__pycache__", ".ipynb_checkpoints")
    shutil.copytree(ROOT, copy, dirs_exist_ok=True, ignore=skip)
    return copy


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Expected: every cell runs without an error, the last one ending in "all checks passed"."""
    notebook = nbformat.read(workspace / "notebooks" / name, as_version=4)
    for module in notebook.metadata.get("llmgen", {}).get("requires", []):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{name} needs {module}, which is not installed (its first cells say which extra has it)")
    # Tiny models are as fast on one thread, and one thread is immune to a busy machine's oversubscription.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(workspace / "notebooks")}})
    client.execute()
    checks = [c for c in notebook.cells if c.cell_type == "code"][-1]
    printed = "".join(o.get("text", "") for o in checks.outputs if o.get("output_type") == "stream")
    assert "all checks passed" in printed, f"{name}: the last code cell printed {printed!r}"
