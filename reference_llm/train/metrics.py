"""Training metrics: one JSON object per line in a file, and progress on the terminal.

The JSONL file is the record (plots, tests and resume checks read it); the display is for people: a
rich live bar with step, loss, learning rate, tokens/s, MFU and time left when stderr is a terminal,
and plain log lines when it is not (CI logs, `nohup`, pipes), so logs stay greppable.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from reference_llm.errors import CheckpointError
from reference_llm.train.files import write_text_atomic


class MetricsFile:
    """Appends records to a JSONL file. On resume, `keep_through_step` first drops the records of
    steps after the checkpoint, which the resumed run is about to log again. That rewrite goes to a
    temporary file that replaces the old one only once it is on disk, so a crash during it loses nothing."""

    def __init__(self, path: str | Path, keep_through_step: int | None = None) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if keep_through_step is None:
                write_text_atomic(self.path, "")
            elif self.path.exists():
                kept = [r for r in read_metrics(self.path) if _step(r) <= keep_through_step]
                write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise CheckpointError(
                f"cannot write the metrics file {self.path} ({exc.strerror or exc}); checkpoint.dir must be writable"
            ) from None

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # a crash must not lose what was logged before it

    # The sink interface of reference_llm.train.loggers (`train.loggers = ["jsonl"]`).
    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.write({"step": step, **metrics})

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Nothing: every checkpoint's state.json holds the run config, and the metrics file stays one
        kind of record (one per logged step) for the tools that read it."""

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file, in order. A last line cut short by a crash is skipped; any other
    line that is not a JSON object is a CheckpointError naming it."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif i != len(lines) - 1:
            raise CheckpointError(f"{path} line {i + 1} is not a JSON object; move the file away to start a new one")
    return records


def _step(record: dict[str, Any]) -> float:
    step = record.get("step", 0)
    return step if isinstance(step, (int, float)) else math.inf  # a step that is not a number: dropped


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_step(step: int, total: int, m: dict[str, Any], seconds_left: float) -> str:
    """`step 100/2000 | loss 2.3456 | lr 1.00e-03 | 12,345 tok/s | MFU 41.2% | 1m23s left`"""
    return (
        f"step {step}/{total} | loss {m['loss']:.4f} | lr {m['lr']:.2e} | {m['tokens_per_s']:,.0f} tok/s"
        f" | MFU {100 * m['mfu']:.1f}% | {format_duration(seconds_left)} left"
    )


class ProgressDisplay:
    """Live progress on stderr; `enabled=False` (ranks other than 0) prints nothing."""

    def __init__(
        self, total_steps: int, start_step: int = 0, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.progress: Progress | None = None
        if enabled and self.stream.isatty():
            console = Console(file=self.stream)
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss [cyan]{task.fields[loss]}"),
                TextColumn("lr {task.fields[lr]}"),
                TextColumn("{task.fields[speed]} tok/s"),
                TextColumn("MFU {task.fields[mfu]}"),
                TextColumn("[dim]{task.fields[left]} left"),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task(
                "train", total=total_steps, completed=start_step, loss="-", lr="-", speed="-", mfu="-", left="?"
            )
            self.progress.start()

    def update(self, step: int, metrics: dict[str, Any], seconds_left: float) -> None:
        if not self.enabled:
            return
        if self.progress is None:
            print(format_step(step, self.total, metrics, seconds_left), file=self.stream, flush=True)
            return
        self.progress.update(
            self.task,
            completed=step,
            loss=f"{metrics['loss']:.4f}",
            lr=f"{metrics['lr']:.2e}",
            speed=f"{metrics['tokens_per_s']:,.0f}",
            mfu=f"{100 * metrics['mfu']:.1f}%",
            left=format_duration(seconds_left),
        )

    def note(self, text: str) -> None:
        """A line above the live bar (evaluations, checkpoints)."""
        if not self.enabled:
            return
        if self.progress is None:
            print(text, file=self.stream, flush=True)
        else:
            self.progress.console.print(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
