"""Load and validate the track files in tracks/ (beginner.toml, practitioner.toml, researcher.toml).

A track is data: its defaults for `llmgen new` and its roadmap, a graph of steps. Every file is checked
against the schema below on load; an error names the file, the step and the key.

    schema = 1                     # version of this schema
    name = "beginner"              # must match the file name
    order = 1                      # position in `llmgen tracks`
    title, summary, audience       # one-line texts

    [defaults]                     # what `llmgen new --track NAME` proposes
    model_preset = "demo"          # a reference_llm preset
    hardware = "cpu"               # e.g. "cpu", "1xRTX4090", "8xH100", "4x8xH100"
    budget = "laptop"              # e.g. "laptop", "$500", "200 gpu-hours", "8xH100 for 3 days"
    parallelism = "auto"           # auto, or a reference_llm.config.Strategy: single, ddp, fsdp, zero1-3
    exercises = true               # generate learner stubs (exercise mode) by default

    [[steps]]                      # one table per roadmap step
    id = "tokenizer"               # lower-case identifier, unique in the file
    title, summary                 # a name and a short explanation
    depth = "build"                # read | build | extend: how far this track goes into the step
    optional = false               # a required step may not depend on an optional one
    requires = ["clean"]           # prerequisite step ids (the dependency graph; no cycles)
    modules = ["reference_llm.tokenizer"]
    command = "..."                # shell command; "{run}" stands for the run (checkpoint) directory,
                                   # "{package}" for the project's package (src/<package>/)
    checkpoint_test = "tests/checkpoints/test_tokenizer.py::test_round_trip"   # pytest node id
    compliance = ["..."]           # notes for COMPLIANCE.md (may be empty)
    estimate = { kind = "train", tokens = "budget", note = "..." }
        # kind: none (negligible or CPU-only; explained by note) | train (6N FLOPs per token)
        #       | forward (2N FLOPs per token); tokens: a positive number or "budget" (the run's tokens)
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from generator.errors import TrackDataError
from generator.estimate.api import PARALLELISMS
from generator.resources import tracks_dir
from reference_llm.model.config import PRESETS

SCHEMA_VERSION = 1
DEPTHS = ("read", "build", "extend")
ESTIMATE_KINDS = ("none", "train", "forward")
COMMAND_PLACEHOLDERS = ("run", "package")

_ID = re.compile(r"^[a-z][a-z0-9_-]*$")
_MODULE = re.compile(r"^reference_llm(\.[a-z_][a-z0-9_]*)*$")
_TEST_ID = re.compile(r"^tests/checkpoints/test_[a-z0-9_]+\.py::test_[a-z0-9_]+$")


@dataclass(frozen=True)
class StepEstimate:
    """What the estimator needs to cost one step: FLOPs per token follow from `kind` and the model."""

    kind: str
    tokens: float | str | None  # a count, "budget", or None when kind is "none"
    note: str = ""


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    summary: str
    depth: str
    optional: bool
    requires: tuple[str, ...]
    modules: tuple[str, ...]
    command: str
    checkpoint_test: str
    compliance: tuple[str, ...]
    estimate: StepEstimate

    def command_for(self, run_dir: str, package: str) -> str:
        """The command with "{run}" replaced by the run directory (configs/train.toml checkpoint.dir) and
        "{package}" by the project's Python package."""
        return self.command.format(run=run_dir, package=package)


@dataclass(frozen=True)
class TrackDefaults:
    model_preset: str
    hardware: str
    budget: str
    parallelism: str
    exercises: bool


@dataclass(frozen=True)
class Track:
    name: str
    order: int
    title: str
    summary: str
    audience: str
    defaults: TrackDefaults
    steps: tuple[Step, ...]  # in file order; `ordered_steps()` gives a dependency order

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def ordered_steps(self) -> list[Step]:
        """Steps in dependency order; among steps that are ready together, file order decides."""
        done: set[str] = set()
        ordered: list[Step] = []
        while len(ordered) < len(self.steps):  # terminates: the loader rejected cycles
            ready = next(s for s in self.steps if s.id not in done and set(s.requires) <= done)
            ordered.append(ready)
            done.add(ready.id)
        return ordered

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["steps"] = [asdict(step) for step in self.ordered_steps()]
        return data


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------


def load_tracks(directory: Path | None = None) -> dict[str, Track]:
    """Every `*.toml` track in `directory` (default: the bundled tracks/), keyed by name, in `order`."""
    directory = tracks_dir() if directory is None else directory
    tracks = [load_track(path) for path in sorted(directory.glob("*.toml"))]
    if not tracks:
        raise TrackDataError(f"{directory}: no track files (*.toml) found")
    return {t.name: t for t in sorted(tracks, key=lambda t: (t.order, t.name))}


def load_track(path: Path) -> Track:
    """Parse and validate one track file; any problem raises TrackDataError naming file and key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TrackDataError(f"{path}: cannot read track file ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrackDataError(f"{path}: not valid TOML ({exc})") from None
    return _Reader(path).track(raw)


class _Reader:
    """Typed access to a parsed file, so that every error message carries the file and key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> TrackDataError:
        return TrackDataError(f"{self.path}: {where}: {message}")

    def keys(
        self, table: Any, where: str, required: set[str], optional: set[str] | frozenset[str] = frozenset()
    ) -> dict:
        if not isinstance(table, dict):
            raise self.fail(where, f"must be a table, got {type(table).__name__}")
        missing = sorted(required - set(table))
        if missing:
            raise self.fail(where, f"missing key(s) {', '.join(missing)}")
        unknown = sorted(set(table) - required - optional)
        if unknown:
            raise self.fail(
                where, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(required | optional))}"
            )
        return table

    def text(self, table: dict, key: str, where: str, allow_empty: bool = False) -> str:
        value = table[key]
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            raise self.fail(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        return value

    def choice(self, table: dict, key: str, where: str, allowed: tuple[str, ...] | list[str]) -> str:
        value = table[key]
        if value not in allowed:
            raise self.fail(f"{where}.{key}", f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def flag(self, table: dict, key: str, where: str) -> bool:
        value = table[key]
        if not isinstance(value, bool):
            raise self.fail(f"{where}.{key}", f"must be true or false, got {value!r}")
        return value

    def texts(self, table: dict, key: str, where: str, pattern: re.Pattern[str] | None = None) -> tuple[str, ...]:
        value = table[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise self.fail(f"{where}.{key}", f"must be a list of non-empty strings, got {value!r}")
        for item in value:
            if pattern is not None and not pattern.match(item):
                raise self.fail(f"{where}.{key}", f"{item!r} does not match {pattern.pattern}")
        if len(set(value)) != len(value):
            raise self.fail(f"{where}.{key}", f"has duplicates: {value!r}")
        return tuple(value)

    # -- sections --------------------------------------------------------------------------------------

    def track(self, raw: dict) -> Track:
        self.keys(raw, "top level", {"schema", "name", "order", "title", "summary", "audience", "defaults", "steps"})
        if raw["schema"] != SCHEMA_VERSION:
            raise self.fail("schema", f"must be {SCHEMA_VERSION} (this llmgen's track schema); got {raw['schema']!r}")
        name = self.text(raw, "name", "top level")
        if name != self.path.stem:
            raise self.fail("name", f"must match the file name {self.path.stem!r}; got {name!r}")
        order = raw["order"]
        if not isinstance(order, int) or isinstance(order, bool):
            raise self.fail("order", f"must be an integer, got {order!r}")
        steps_raw = raw["steps"]
        if not isinstance(steps_raw, list) or not steps_raw:
            raise self.fail("steps", "must be a non-empty array of [[steps]] tables")
        steps = tuple(self.step(s, i) for i, s in enumerate(steps_raw))
        self.check_graph(steps)
        return Track(
            name=name,
            order=order,
            title=self.text(raw, "title", "top level"),
            summary=self.text(raw, "summary", "top level"),
            audience=self.text(raw, "audience", "top level"),
            defaults=self.defaults(raw["defaults"]),
            steps=steps,
        )

    def defaults(self, table: Any) -> TrackDefaults:
        where = "defaults"
        self.keys(table, where, {"model_preset", "hardware", "budget", "parallelism", "exercises"})
        # hardware and budget are free text; the estimator parses them (tests check every track's).
        return TrackDefaults(
            model_preset=self.choice(table, "model_preset", where, list(PRESETS)),
            hardware=self.text(table, "hardware", where),
            budget=self.text(table, "budget", where),
            parallelism=self.choice(table, "parallelism", where, PARALLELISMS),
            exercises=self.flag(table, "exercises", where),
        )

    def step(self, table: Any, index: int) -> Step:
        where = f"steps[{index}]"
        if isinstance(table, dict) and isinstance(table.get("id"), str):
            where = f"steps[{index}] ({table['id']})"
        self.keys(
            table,
            where,
            {
                "id",
                "title",
                "summary",
                "depth",
                "optional",
                "requires",
                "modules",
                "command",
                "checkpoint_test",
                "compliance",
                "estimate",
            },
        )
        step_id = self.text(table, "id", where)
        if not _ID.match(step_id):
            raise self.fail(f"{where}.id", f"must be lower-case letters, digits, - or _; got {step_id!r}")
        command = self.text(table, "command", where)
        self.check_placeholders(command, f"{where}.command")
        test = self.text(table, "checkpoint_test", where)
        if not _TEST_ID.match(test):
            raise self.fail(
                f"{where}.checkpoint_test",
                f"must be a pytest id like tests/checkpoints/test_x.py::test_y; got {test!r}",
            )
        return Step(
            id=step_id,
            title=self.text(table, "title", where),
            summary=self.text(table, "summary", where),
            depth=self.choice(table, "depth", where, DEPTHS),
            optional=self.flag(table, "optional", where),
            requires=self.texts(table, "requires", where),
            modules=self.texts(table, "modules", where, _MODULE),
            command=command,
            checkpoint_test=test,
            compliance=self.texts(table, "compliance", where),
            estimate=self.estimate(table["estimate"], f"{where}.estimate"),
        )

    def estimate(self, table: Any, where: str) -> StepEstimate:
        self.keys(table, where, {"kind"}, {"tokens", "note"})
        kind = self.choice(table, "kind", where, ESTIMATE_KINDS)
        note = self.text(table, "note", where) if "note" in table else ""
        if kind == "none":
            if "tokens" in table:
                raise self.fail(f"{where}.tokens", 'only applies to kind "train" or "forward"')
            if not note:
                raise self.fail(f"{where}.note", 'is required for kind "none" (say what the step costs)')
            return StepEstimate(kind=kind, tokens=None, note=note)
        if "tokens" not in table:
            raise self.fail(where, f'missing key tokens (a positive number or "budget") for kind {kind!r}')
        tokens = table["tokens"]
        valid = tokens == "budget" or (isinstance(tokens, (int, float)) and not isinstance(tokens, bool) and tokens > 0)
        if not valid:
            raise self.fail(f"{where}.tokens", f'must be a positive number or "budget"; got {tokens!r}')
        return StepEstimate(kind=kind, tokens=tokens if tokens == "budget" else float(tokens), note=note)

    def check_placeholders(self, command: str, where: str) -> None:
        try:
            command.format(**{name: "" for name in COMMAND_PLACEHOLDERS})
        except (KeyError, IndexError, ValueError) as exc:
            raise self.fail(
                where,
                f"unknown placeholder or stray brace ({exc}); "
                f"allowed: {', '.join('{' + p + '}' for p in COMMAND_PLACEHOLDERS)}",
            ) from None

    def check_graph(self, steps: tuple[Step, ...]) -> None:
        """Unique ids, prerequisites that exist, no required step after an optional one, no cycles."""
        by_id: dict[str, Step] = {}
        for step in steps:
            if step.id in by_id:
                raise self.fail(f"steps ({step.id})", "id is used by more than one step")
            by_id[step.id] = step
        for step in steps:
            for dep in step.requires:
                if dep not in by_id:
                    raise self.fail(
                        f"steps ({step.id}).requires", f"names missing step {dep!r}; steps are: {', '.join(by_id)}"
                    )
                if dep == step.id:
                    raise self.fail(f"steps ({step.id}).requires", "a step cannot require itself")
                if by_id[dep].optional and not step.optional:
                    raise self.fail(
                        f"steps ({step.id}).requires",
                        f"required step depends on optional step {dep!r}; make one of them match",
                    )
        cycle = _find_cycle(by_id)
        if cycle:
            raise self.fail(f"steps ({cycle[0]}).requires", f"dependency cycle: {' -> '.join(cycle)}")


def _find_cycle(by_id: dict[str, Step]) -> list[str] | None:
    """A cycle as a closed path of ids (first == last), or None. Depth-first search with three colours."""
    state: dict[str, int] = {}  # missing: unvisited, 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in by_id[node].requires:
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in by_id:
        if node not in state and (found := visit(node)):
            return found
    return None
