"""`llmgen tracks [NAME] [--json]`: the learning tracks and their roadmaps, read from tracks/*.toml."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from generator.errors import AnswerError
from generator.tracks import Track, load_tracks


def tracks(
    name: Annotated[str | None, typer.Argument(help="Show only this track.", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout, nothing else.")] = False,
) -> None:
    """List the tracks: who each is for, its defaults for `llmgen new`, and its roadmap steps."""
    available = load_tracks()
    if name is not None and name not in available:
        raise AnswerError(f"unknown track {name!r}; tracks: {', '.join(available)}")
    chosen = [available[name]] if name is not None else list(available.values())
    if as_json:
        typer.echo(json.dumps({"tracks": [t.to_dict() for t in chosen]}, indent=2))
        return
    console = Console(highlight=False)
    for track in chosen:
        print_track(console, track)


def register(app: typer.Typer) -> None:
    app.command("tracks")(tracks)


def print_track(console: Console, track: Track) -> None:
    d = track.defaults
    console.print(f"[bold]{track.name}[/bold]: {track.title}")
    console.print(f"  {track.summary}")
    console.print(f"  [dim]For: {track.audience}[/dim]")
    console.print(f"  Defaults: model {d.model_preset}, hardware {d.hardware}, budget {d.budget}, "
                  f"parallelism {d.parallelism}, exercises {'on' if d.exercises else 'off'}")
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2))
    for column in ("step", "depth", "after", "command", "checkpoint test"):
        table.add_column(column, style="bold" if column == "step" else None)
    for step in track.ordered_steps():
        title = step.title + (" [dim](optional)[/dim]" if step.optional else "")
        table.add_row(title, step.depth, ", ".join(step.requires) or "-", step.command,
                      step.checkpoint_test.removeprefix("tests/checkpoints/"))
    console.print(table)
    console.print()
