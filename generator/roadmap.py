"""The roadmap of a generated repository: its track's steps with per-step estimates, exercises and layout.

`build_roadmap(track, answers, hardware)` returns plain data (JSON-serialisable): the whole roadmap, which
llmgen's own writers (ROADMAP.pdf, the notebooks) read. Copier gets two parts of it instead, so that a
project's .copier-answers.yml stays short and plain `copier copy` renders the same files:

- what depends only on the track (titles, commands, graph, exercises, layout) is in the template, one
  JSON file per track (`templates/tracks/<track>.json`, written by `write_template_tracks`: run
  `python -m generator.roadmap` after editing tracks/*.toml; a test checks that they agree);
- what depends on the project's plan (the estimates, the parameter count, the compute precision, the
  measured CPU speed) is the `roadmap` answer, `compact_roadmap(roadmap)`: about twenty lines.

The template joins the two (`templates/_roadmap.jinja`) into the same roadmap `build_roadmap` returns.
`llmgen update` replays the recorded answers and merges in the recomputed ones (`roadmap_for_answers`).

Per-step estimates come from the estimator (`generator.estimate.estimate_run`) on the project's
hardware, model, parallelism and precision:

- kind "train": a training run over the step's tokens (6N FLOPs per token plus attention);
- kind "forward": the same run's cost scaled by forward / training FLOPs per token
  (`ModelConfig.flops_per_token`: 2N against 6N, plus the attention terms; PaLM, Chowdhery et al. 2022,
  appendix B), since evaluation and quantization only run forward passes;
- kind "none": no compute worth estimating; the track's note says what the step costs instead.

The graph layout (for the SVG in roadmap.html) puts each step on the row of its dependency depth: the
longest chain of prerequisites before it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import reference_llm
from generator.errors import TrackDataError
from generator.estimate import Estimate, RunSpec, estimate_run, parse_hardware
from generator.estimate.hardware import Hardware
from generator.resources import templates_dir
from generator.tracks import Step, Track, load_tracks
from generator.units import duration, si
from reference_llm.model.config import ModelConfig

# Graph layout, in SVG user units.
NODE_WIDTH, NODE_HEIGHT = 210, 44
COLUMN_GAP, ROW_GAP, MARGIN = 24, 44, 16


@dataclass(frozen=True)
class Exercise:
    """A part the learner writes in exercise mode: a stub in src/<package>/`file` until it is done."""

    step: str  # the roadmap step whose explanation it belongs to
    file: str  # relative to src/<package>/
    symbol: str  # the function or method to write
    task: str  # what it is, in a few words
    tests: tuple[str, ...]  # the checkpoint tests that fail until it is written (pytest node ids)


_TOKENIZER_TESTS = "tests/checkpoints/test_tokenizer.py"
_MODEL_TESTS = "tests/checkpoints/test_model.py"
_TRAINING_TESTS = "tests/checkpoints/test_training.py"
_GENERATE_TESTS = "tests/checkpoints/test_generate.py"

EXERCISES: tuple[Exercise, ...] = (
    Exercise(
        "tokenizer",
        "bpe.py",
        "train_merges",
        "the BPE merge loop",
        (f"{_TOKENIZER_TESTS}::test_bpe_merges_on_toy_text", f"{_TOKENIZER_TESTS}::test_bpe_compresses_held_out_text"),
    ),
    Exercise(
        "model",
        "attention.py",
        "causal_attention",
        "causal self-attention",
        (f"{_MODEL_TESTS}::test_causal_attention_matches_reference",),
    ),
    Exercise(
        "model",
        "block.py",
        "Block.forward",
        "the transformer block",
        (f"{_MODEL_TESTS}::test_block_matches_reference",),
    ),
    Exercise(
        "pretrain",
        "train_step.py",
        "train_step",
        "the training step",
        (
            f"{_TRAINING_TESTS}::test_train_step_matches_reference",
            f"{_TRAINING_TESTS}::test_overfits_one_batch",
            f"{_TRAINING_TESTS}::test_loss_decreases_on_corpus",
        ),
    ),
    Exercise(
        "generate",
        "sampling.py",
        "sample_next",
        "sampling the next token",
        (
            f"{_GENERATE_TESTS}::test_sampling_follows_the_distribution",
            f"{_GENERATE_TESTS}::test_greedy_generation_matches_reference",
        ),
    ),
    Exercise(
        "generate",
        "sampling.py",
        "generate",
        "the generation loop",
        (f"{_GENERATE_TESTS}::test_greedy_generation_matches_reference",),
    ),
)


def roadmap_for_answers(
    answers: Mapping[str, Any], tracks: Mapping[str, Track] | None = None, hardware: Hardware | None = None
) -> dict[str, Any]:
    """The roadmap for a complete set of template answers (what `llmgen new` computed, or what a
    project's .copier-answers.yml records). A CPU's measured speed is reused from an earlier roadmap
    in `answers`, so that regenerating it gives the same figures."""
    tracks = load_tracks() if tracks is None else tracks
    if answers.get("track") not in tracks:
        raise TrackDataError(f"track {answers.get('track')!r} is not one of {', '.join(tracks)}")
    if hardware is None:
        previous = answers.get("roadmap") or {}
        hardware = parse_hardware(str(answers["hardware"]), cpu_tflops=previous.get("cpu_tflops"))
    return build_roadmap(tracks[answers["track"]], answers, hardware)


def build_roadmap(track: Track, answers: Mapping[str, Any], hardware: Hardware) -> dict[str, Any]:
    """Steps in dependency order with their estimates, code pointers, exercises and graph positions."""
    model = ModelConfig.preset(answers["model_preset"])
    precision = hardware.compute_precision(str(answers["precision"]))
    run_dir = f"runs/{answers['project_name']}"
    steps = track.ordered_steps()
    ids = {step.id for step in steps}
    for exercise in EXERCISES:
        if exercise.step not in ids:
            raise TrackDataError(
                f"track {track.name}: has no step {exercise.step!r}, which the exercise "
                f"{exercise.symbol} ({exercise.file}) belongs to; add the step"
            )
    package = answers["package_name"]
    positions, width, height = layout(steps)
    out_steps, costs = [], []
    for number, step in enumerate(steps, start=1):
        x, y = positions[step.id]
        figures = step_estimate(step, model, answers, hardware, precision)
        if not step.optional:
            costs.append(figures)
        out_steps.append(
            _step_entry(
                step,
                number,
                step.command_for(run_dir, package),
                ("estimate", {"kind": figures["kind"], "text": figures["text"]}),
                f"src/{package}/",
                (x, y),
            )
        )
    return {
        "track": track.name,
        "track_title": track.title,
        "model": model.name,
        "params": model.num_params(),
        "hardware": str(hardware),
        "cpu_tflops": hardware.gpu.bf16_tflops if hardware.is_cpu else None,
        "precision": precision,
        "parallelism": answers["parallelism"],
        "exercises": bool(answers["exercises"]),
        "total": _totals_text(costs, hardware),
        "step_ids": [s["id"] for s in out_steps],  # templates test membership with `'x' in roadmap.step_ids`
        "steps": out_steps,
        "width": width,
        "height": height,
        "node_width": NODE_WIDTH,
        "node_height": NODE_HEIGHT,
    }


# ----------------------------------------------------------------------------------------------------
# Estimates
# ----------------------------------------------------------------------------------------------------


def step_estimate(
    step: Step, model: ModelConfig, answers: Mapping[str, Any], hardware: Hardware, precision: str
) -> dict[str, Any]:
    """What one step costs on the project's hardware, as numbers and as one line of text."""
    spec = step.estimate
    if spec.kind == "none":
        return {
            "kind": "none",
            "tokens": None,
            "flops": None,
            "gpu_hours": 0.0,
            "wall_hours": 0.0,
            "cost_usd": 0.0,
            "text": spec.note,
            "note": spec.note,
        }
    tokens = float(answers["tokens"]) if spec.tokens == "budget" else float(spec.tokens)  # type: ignore[arg-type]
    est = estimate_run(
        RunSpec(
            model,
            hardware,
            tokens,
            parallelism=str(answers["parallelism"]),
            micro_batch=int(answers["micro_batch"]),
            seq_len=model.block_size,
            grad_accum=int(answers["grad_accum"]),
            precision=precision,
        )
    )
    scale = 1.0
    if spec.kind == "forward":
        scale = model.flops_per_token(model.block_size, training=False) / model.flops_per_token(
            model.block_size, training=True
        )
    figures = {
        "kind": spec.kind,
        "tokens": tokens,
        "flops": est.flops_total * scale,
        "gpu_hours": est.gpu_hours * scale,
        "wall_hours": est.wall_hours * scale,
        "cost_usd": est.cost_usd * scale,
        "note": spec.note,
    }
    figures["text"] = _estimate_text(figures, est if spec.kind == "train" else None, hardware)
    return figures


def _estimate_text(figures: dict[str, Any], est: Estimate | None, hardware: Hardware) -> str:
    """One line; `est` (training steps only) adds a warning when the run does not fit in memory."""
    what = "training" if figures["kind"] == "train" else "forward passes"
    hours = "CPU-hours" if hardware.is_cpu else "GPU-hours"
    cost = "no cost (your own machine)" if hardware.is_cpu else f"${figures['cost_usd']:,.2f}"
    text = (
        f"{si(figures['tokens'])} tokens of {what}: {figures['flops']:.2g} FLOPs, "
        f"{figures['gpu_hours']:.3g} {hours}, {duration(figures['wall_hours'])} on {hardware}, {cost}"
    )
    if est is not None and not est.fits:
        text += f" (does not fit in memory as configured: {est.memory_per_gpu_gib:.1f} GiB per device)"
    if figures["note"]:
        text += f"; {figures['note']}"
    return text


def _totals_text(costs: list[dict[str, Any]], hardware: Hardware) -> str:
    """The summed cost of the required steps, as one line."""
    gpu_hours = sum(e["gpu_hours"] for e in costs)
    wall = sum(e["wall_hours"] for e in costs)
    hours = "CPU-hours" if hardware.is_cpu else "GPU-hours"
    cost = "no cost (your own machine)" if hardware.is_cpu else f"${sum(e['cost_usd'] for e in costs):,.2f}"
    return f"{gpu_hours:.3g} {hours}, {duration(wall)} on {hardware}, {cost}"


# ----------------------------------------------------------------------------------------------------
# Code pointers and layout
# ----------------------------------------------------------------------------------------------------


def module_path(module: str) -> str:
    """'reference_llm.tokenizer' -> 'reference_llm/tokenizer/', 'reference_llm.train' -> 'reference_llm/train.py'."""
    root = Path(reference_llm.__file__).resolve().parent.parent
    relative = Path(*module.split("."))
    if (root / relative / "__init__.py").is_file():
        return f"{relative.as_posix()}/"
    if (root / relative.with_suffix(".py")).is_file():
        return relative.with_suffix(".py").as_posix()
    raise TrackDataError(f"module {module} named by a track step does not exist in reference_llm")


def layout(steps: list[Step]) -> tuple[dict[str, tuple[int, int]], int, int]:
    """Top-left (x, y) of each step's box, and the canvas size. `steps` is in dependency order."""
    level: dict[str, int] = {}
    for step in steps:
        level[step.id] = 1 + max((level[d] for d in step.requires), default=-1)
    rows: dict[int, list[str]] = {}
    for step in steps:
        rows.setdefault(level[step.id], []).append(step.id)
    widest = max(len(r) for r in rows.values())
    width = 2 * MARGIN + widest * NODE_WIDTH + (widest - 1) * COLUMN_GAP
    height = 2 * MARGIN + len(rows) * NODE_HEIGHT + (len(rows) - 1) * ROW_GAP
    positions = {}
    for row, ids in rows.items():
        row_width = len(ids) * NODE_WIDTH + (len(ids) - 1) * COLUMN_GAP
        left = (width - row_width) // 2  # centre each row
        for column, step_id in enumerate(ids):
            positions[step_id] = (left + column * (NODE_WIDTH + COLUMN_GAP), MARGIN + row * (NODE_HEIGHT + ROW_GAP))
    return positions, width, height


# ----------------------------------------------------------------------------------------------------
# The two halves Copier gets: track data in the template, the project's figures in the answer
# ----------------------------------------------------------------------------------------------------

TEMPLATE_TRACKS = "tracks"  # folder of the template (beside copier.yml, not rendered) with <track>.json


def compact_roadmap(roadmap: Mapping[str, Any]) -> dict[str, Any]:
    """The `roadmap` answer: what the template cannot derive from the track and the other answers."""
    return {
        "track": roadmap["track"],
        "params": roadmap["params"],
        "precision": roadmap["precision"],
        "cpu_tflops": roadmap["cpu_tflops"],
        "total": roadmap["total"],
        "estimates": {step["id"]: step["estimate"]["text"] for step in roadmap["steps"]},
    }


def template_track(track: Track) -> dict[str, Any]:
    """A track as the template reads it: every step with its graph position, code pointers, exercises
    (files relative to src/<package>/) and command with "{run}" and "{package}" still in it."""
    steps = track.ordered_steps()
    positions, width, height = layout(steps)
    return {
        "name": track.name,
        "title": track.title,
        "width": width,
        "height": height,
        "node_width": NODE_WIDTH,
        "node_height": NODE_HEIGHT,
        "steps": [
            _step_entry(step, number, step.command, ("estimate_kind", step.estimate.kind), "", positions[step.id])
            for number, step in enumerate(steps, start=1)
        ],
    }


def _step_entry(
    step: Step, number: int, command: str, estimate: tuple[str, Any], exercise_dir: str, position: tuple[int, int]
) -> dict[str, Any]:
    """One step as the roadmap answer and the template's track data hold it (the same keys in the same
    order; they differ in the command, the estimate and where exercise files are named from)."""
    return {
        "id": step.id,
        "number": number,
        "title": step.title,
        "summary": step.summary,
        "depth": step.depth,
        "optional": step.optional,
        "requires": list(step.requires),
        "code": [module_path(m) for m in step.modules],
        "command": command,
        "checkpoint_test": step.checkpoint_test,
        "compliance": list(step.compliance),
        estimate[0]: estimate[1],
        "exercises": [
            {"file": exercise_dir + e.file, "symbol": e.symbol, "task": e.task, "tests": list(e.tests)}
            for e in EXERCISES
            if e.step == step.id
        ],
        "x": position[0],
        "y": position[1],
    }


def template_track_text(track: Track) -> str:
    return json.dumps(template_track(track), indent=1, ensure_ascii=False) + "\n"


def write_template_tracks(template_root: Path | None = None) -> list[Path]:
    """(Re)write templates/tracks/<track>.json from tracks/*.toml; returns the files that changed."""
    folder = (template_root or templates_dir()) / TEMPLATE_TRACKS
    folder.mkdir(exist_ok=True)
    changed = []
    for track in load_tracks().values():
        path = folder / f"{track.name}.json"
        text = template_track_text(track)
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


if __name__ == "__main__":
    # python -m generator.roadmap: bring the template's track data in line with tracks/*.toml.
    written = write_template_tracks()
    print("\n".join(f"wrote {p}" for p in written) or "templates/tracks/ is up to date", file=sys.stderr)
