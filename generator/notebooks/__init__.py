"""One notebook per roadmap step in every generated project: notebooks/NN_<step>.ipynb and its .py twin.

Each notebook walks through its step at tiny scale on the project's own corpus, config and code: a
markdown introduction, cells that run the step (the project's commands through `run(...)`, the library
and the learner modules in src/<package>/ in-process), a "you should see" note after each result, and a
last cell that asserts what the notes say, so that a notebook that runs to the end has checked itself.
In exercise mode the cells that call a learner stub catch its NotImplementedError, print its message and
go on, so every notebook runs end to end before the exercises are written.

The cells of each step are Python data (`pipeline.py`: data to model, `training.py`: pretraining,
sampling, evaluation and distributed training, `posttrain.py`: SFT, LoRA, DPO and reward model,
`serving.py`: quantization, export and deployment, `cells.py`: what they share), rendered with the
project's answers. The files are written
by the generator after Copier renders (`generator.render.render_into`) rather than by Copier templates,
because an .ipynb is JSON holding each cell's source as a list of strings: a Jinja template of that is
unreadable, and one Python description gives both the .ipynb and the .py twin. The .ipynb is written as
plain nbformat 4.5 JSON with the standard library, so that `llmgen new` needs no Jupyter package; the
tests validate every notebook with nbformat and run them with nbclient.

`llmgen update` (Copier) does not rewrite the notebooks: like data/, they are the learner's to edit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from generator.errors import RenderError
from generator.notebooks import pipeline, posttrain, serving, training
from generator.notebooks.cells import Cell, Project, notebook_stem

NOTEBOOK_DIR = "notebooks"

# step id -> the cells of its notebook (after the shared introduction and setup).
STEPS: dict[str, Callable[[Project], list[Cell]]] = {
    **pipeline.STEPS,
    **training.STEPS,
    **posttrain.STEPS,
    **serving.STEPS,
}
# step id -> modules a notebook needs beyond llmgen's own dependencies (its tests skip without them).
REQUIRES: dict[str, list[str]] = serving.REQUIRES

__all__ = ["NOTEBOOK_DIR", "STEPS", "notebook_stem", "notebook_cells", "write_notebooks", "to_ipynb", "to_script"]


def write_notebooks(answers: Mapping[str, Any], directory: Path) -> list[Path]:
    """Write notebooks/NN_<step>.ipynb and .py for every step of `answers['roadmap']` under `directory`."""
    roadmap = answers["roadmap"]
    steps = roadmap["steps"]
    unknown = [s["id"] for s in steps if s["id"] not in STEPS]
    if unknown:
        raise RenderError(
            f"track {roadmap['track']}: no notebook for step(s) {', '.join(unknown)}; "
            "add their cells to generator/notebooks/"
        )
    out = directory / NOTEBOOK_DIR
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, step in enumerate(steps):
        project = Project.from_answers(answers, step, steps[index + 1] if index + 1 < len(steps) else None)
        cells = notebook_cells(project)
        stem = notebook_stem(step)
        metadata = {
            "step": step["id"],
            "track": roadmap["track"],
            "exercises": project.exercises,
            "requires": REQUIRES.get(step["id"], []),
        }
        notebook = out / f"{stem}.ipynb"
        notebook.write_text(
            json.dumps(to_ipynb(cells, metadata), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        script = out / f"{stem}.py"
        script.write_text(to_script(cells, project), encoding="utf-8")
        written += [notebook, script]
    return written


def notebook_cells(project: Project) -> list[Cell]:
    """Every cell of one step's notebook, in order."""
    return [*project.introduction(), *STEPS[project.step_id](project), *project.closing()]


def to_ipynb(cells: list[Cell], llmgen_metadata: dict[str, Any]) -> dict[str, Any]:
    """An nbformat 4.5 notebook without outputs (the learner's run makes them)."""
    out = []
    for number, cell in enumerate(cells):
        entry: dict[str, Any] = {
            "cell_type": cell.kind,
            "id": f"{llmgen_metadata['step']}-{number:02d}",
            "metadata": {},
            "source": cell.source.splitlines(keepends=True),
        }
        if cell.kind == "code":
            entry.update(execution_count=None, outputs=[])
        out.append(entry)
    return {
        "cells": out,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "llmgen": llmgen_metadata,
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def to_script(cells: list[Cell], project: Project) -> str:
    """The same cells as a script in jupytext's "percent" format: `# %%` starts a code cell and
    `# %% [markdown]` a markdown cell whose lines are comments. Jupyter opens it as a notebook with the
    jupytext extension; `python notebooks/<name>.py` from the project root runs it top to bottom."""
    header = (
        f"# Roadmap step {project.number} of {project.name}: {project.title}.\n"
        f"# The code of notebooks/{project.stem}.ipynb as a script; from the project root:\n"
        f"#   python notebooks/{project.stem}.py\n"
    )
    parts = [header]
    for cell in cells:
        if cell.kind == "markdown":
            lines = [f"# {line}".rstrip() for line in cell.source.splitlines()]
            parts.append("# %% [markdown]\n" + "\n".join(lines) + "\n")
        else:
            parts.append("# %%\n" + cell.source.rstrip("\n") + "\n")
    return "\n".join(parts)
