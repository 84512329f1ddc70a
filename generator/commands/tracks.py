"""`llmgen tracks [NAME] [--json]`: the learning tracks and their roadmaps, read from tracks/*.toml.

Commands are shown as a project's ROADMAP.md shows them, with the project's names left as <project> (its
directory and run folder runs/<project>) and <package> (its Python package: the name with - as _)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from generator.errors import AnswerError
from generator.tracks import Step, Track, load_tracks

PROJECT, PACKAGE = "<project>", "<package>"


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
        typer.echo(json.dumps({"tracks": [track_json(t) for t in chosen]}, indent=2))
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
    console.print(
        f"  Defaults: model {d.model_preset}, hardware {d.hardware}, budget {d.budget}, "
        f"parallelism {d.parallelism}, exercises {'on' if d.exercises else 'off'}"
    )
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 2))
    for column in ("step", "depth", "after", "command", "checkpoint test"):
        table.add_column(column, style="bold" if column == "step" else None)
    for step in track.ordered_steps():
        title = step.title + (" [dim](optional)[/dim]" if step.optional else "")
        table.add_row(
            title,
            step.depth,
            ", ".join(step.requires) or "-",
            shown_command(step),
            step.checkpoint_test.removeprefix("tests/checkpoints/"),
        )
    console.print(table)
    console.print(
        f"  [dim]In a project, {PROJECT} is its name and {PACKAGE} its Python package (ROADMAP.md "
        f"shows the commands with them filled in).[/dim]"
    )
    console.print()


def track_json(track: Track) -> dict:
    """The track's data, each step with its command also as shown (`shown_command`)."""
    data = track.to_dict()
    for step, shown in zip(data["steps"], track.ordered_steps()):
        step["command_shown"] = shown_command(shown)
    return data


def shown_command(step: Step) -> str:
    """The step's command as ROADMAP.md shows it, with the project's names as placeholders."""
    return step.command_for(f"runs/{PROJECT}", PACKAGE)
