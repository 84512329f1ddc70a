"""Document quality filters: cheap heuristics that drop junk before it reaches the tokenizer.

The measures follow the rules Rae et al. (2021, "Scaling Language Models: Methods, Analysis & Insights
from Training Gopher", appendix A.1.1) used for MassiveText, with thresholds loosened so that source
code and verse pass: Python files repeat short lines like `return None` far more than web prose does.
A threshold of 0 switches its filter off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from reference_llm.data.documents import Document
from reference_llm.errors import ConfigError


@dataclass(frozen=True)
class FilterSettings:
    min_chars: int = 20  # shorter documents carry almost no signal (empty ones are always dropped)
    max_chars: int = 0  # longer documents are dropped (0: no limit)
    min_alpha_fraction: float = 0.5  # letters among non-whitespace characters; drops tables of numbers
    max_repeated_line_fraction: float = 0.5  # characters in lines that repeat an earlier line (Gopher: 0.2)
    min_mean_line_length: float = 0.0  # mean length of non-empty lines, in characters (0: off)
    max_mean_line_length: float = 2000.0  # drops minified code and base64 blobs

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) < 0:
                raise ConfigError(f"filters.{f.name} must be >= 0, got {getattr(self, f.name)}")
        for name in ("min_alpha_fraction", "max_repeated_line_fraction"):
            if getattr(self, name) > 1:
                raise ConfigError(f"filters.{name} must be between 0 and 1, got {getattr(self, name)}")


def alpha_fraction(text: str) -> float:
    """Fraction of non-whitespace characters that are letters (any script)."""
    visible = [ch for ch in text if not ch.isspace()]
    return sum(ch.isalpha() for ch in visible) / len(visible) if visible else 0.0


def repeated_line_fraction(text: str) -> float:
    """Fraction of the characters of non-empty lines that belong to a line seen earlier in the text."""
    seen: set[str] = set()
    repeated = total = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        total += len(line)
        if line in seen:
            repeated += len(line)
        seen.add(line)
    return repeated / total if total else 0.0


def mean_line_length(text: str) -> float:
    lengths = [len(line) for line in text.split("\n") if line.strip()]
    return sum(lengths) / len(lengths) if lengths else 0.0


def active_filters(s: FilterSettings) -> list[tuple[str, Callable[[str], bool]]]:
    """(name, keep?) pairs in the order they run; a document is dropped by the first that rejects it."""
    checks: list[tuple[str, float, Callable[[str], bool]]] = [
        ("empty", 1, lambda t: bool(t.strip())),
        ("min_chars", s.min_chars, lambda t: len(t) >= s.min_chars),
        ("max_chars", s.max_chars, lambda t: len(t) <= s.max_chars),
        ("min_alpha_fraction", s.min_alpha_fraction, lambda t: alpha_fraction(t) >= s.min_alpha_fraction),
        ("max_repeated_line_fraction", s.max_repeated_line_fraction,
         lambda t: repeated_line_fraction(t) <= s.max_repeated_line_fraction),
        ("min_mean_line_length", s.min_mean_line_length, lambda t: mean_line_length(t) >= s.min_mean_line_length),
        ("max_mean_line_length", s.max_mean_line_length, lambda t: mean_line_length(t) <= s.max_mean_line_length),
    ]
    return [(name, keep) for name, threshold, keep in checks if threshold]


def apply_filters(docs: list[Document], settings: FilterSettings) -> tuple[list[Document], dict[str, list[str]]]:
    """Keep the documents that pass every filter; also return, per filter, the sources it dropped."""
    filters = active_filters(settings)
    dropped: dict[str, list[str]] = {name: [] for name, _ in filters}
    kept = []
    for doc in docs:
        rejected_by = next((name for name, keep in filters if not keep(doc.text)), None)
        if rejected_by is None:
            kept.append(doc)
        else:
            dropped[rejected_by].append(doc.source)
    return kept, dropped
