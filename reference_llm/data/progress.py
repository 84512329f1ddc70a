"""Progress bars for the slow steps of data preparation, shown on stderr only when it is a terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

T = TypeVar("T")


class Steps:
    """`with Steps(enabled) as steps:` then `steps.track(items, "what")` or `with steps.step("what"):`.

    `enabled=None` means: on when stderr is a terminal (so never in tests, CI logs or pipes).
    """

    def __init__(self, enabled: bool | None = None):
        console = Console(stderr=True)
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not (console.is_terminal if enabled is None else enabled),
        )

    def __enter__(self) -> Steps:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def track(self, items: Sequence[T], description: str) -> Iterator[T]:
        yield from self._progress.track(items, total=len(items), description=description)

    @contextmanager
    def bar(self, description: str, total: float | None) -> Iterator[Callable[[float], None]]:
        """A bar advanced by hand: `with steps.bar("reading", total=bytes) as advance: advance(n)`."""
        task = self._progress.add_task(description, total=total)
        yield lambda n: self._progress.advance(task, n)
        self._progress.update(task, total=total or 1, completed=total or 1)

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        """A bar for one long call that reports no progress of its own (e.g. training a tokenizer)."""
        task = self._progress.add_task(description, total=None)
        yield
        self._progress.update(task, total=1, completed=1)
