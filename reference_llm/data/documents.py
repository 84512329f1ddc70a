"""A document of the corpus as the pipeline passes it on: its name in reports, and its text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    source: str  # where it came from: `file`, `file:line`, `file[row]`, with `#k` for the k-th piece of a long one
    text: str
