"""Document quality filters: cheap heuristics that drop junk before it reaches the tokenizer.

The measures follow the rules Rae et al. (2021, "Scaling Language Models: Methods, Analysis & Insights
from Training Gopher", appendix A.1.1) used for MassiveText, with thresholds loosened so that source
code and verse pass: Python files repeat short lines like `return None` far more than web prose does.
A threshold of 0 switches its filter off.
"""

from __future__ import annotations

import dataclasses
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


# ASCII bytes that str.isspace() accepts, and those that are not letters: ASCII text (most corpora) is
# measured with bytes.translate, in C, instead of a Python loop over characters.
_ASCII_SPACE = bytes([9, 10, 11, 12, 13, 28, 29, 30, 31, 32])
_ASCII_NON_LETTERS = bytes(b for b in range(128) if not chr(b).isalpha())


def alpha_fraction(text: str) -> float:
    """Fraction of non-whitespace characters that are letters (any script)."""
    if text.isascii():
        data = text.encode("ascii")
        visible = len(data.translate(None, _ASCII_SPACE))
        letters = len(data.translate(None, _ASCII_NON_LETTERS))
    else:
        visible = len(text) - sum(map(str.isspace, text))
        letters = sum(map(str.isalpha, text))
    return letters / visible if visible else 0.0


def _line_stats(text: str) -> tuple[float, float]:
    """(repeated line fraction, mean line length) in one pass over the lines; see the functions below."""
    seen: set[str] = set()
    repeated = total = length = lines = 0
    for line in text.split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        lines += 1
        length += len(line)
        total += len(stripped)
        if stripped in seen:
            repeated += len(stripped)
        seen.add(stripped)
    return (repeated / total if total else 0.0), (length / lines if lines else 0.0)


def repeated_line_fraction(text: str) -> float:
    """Fraction of the characters of non-empty lines that belong to a line seen earlier in the text."""
    return _line_stats(text)[0]


def mean_line_length(text: str) -> float:
    """Mean length of the non-empty lines, in characters."""
    return _line_stats(text)[1]


def first_rejection(text: str, s: FilterSettings) -> str | None:
    """The name of the first filter (in the table's order) that drops `text`, or None if it passes all.

    Each measure is computed at most once, and only when a filter that needs it is on.
    """
    if not text.strip():
        return "empty"
    if s.min_chars and len(text) < s.min_chars:
        return "min_chars"
    if s.max_chars and len(text) > s.max_chars:
        return "max_chars"
    if s.min_alpha_fraction and alpha_fraction(text) < s.min_alpha_fraction:
        return "min_alpha_fraction"
    if s.max_repeated_line_fraction or s.min_mean_line_length or s.max_mean_line_length:
        repeated, mean = _line_stats(text)
        if s.max_repeated_line_fraction and repeated > s.max_repeated_line_fraction:
            return "max_repeated_line_fraction"
        if s.min_mean_line_length and mean < s.min_mean_line_length:
            return "min_mean_line_length"
        if s.max_mean_line_length and mean > s.max_mean_line_length:
            return "max_mean_line_length"
    return None


def filter_names(s: FilterSettings) -> list[str]:
    """The filters that are on, in the order they run ("empty" always is)."""
    return ["empty"] + [f.name for f in dataclasses.fields(s) if getattr(s, f.name)]


def apply_filters(docs: list[Document], settings: FilterSettings) -> tuple[list[Document], dict[str, list[str]]]:
    """Keep the documents that pass every filter; also return, per filter, the sources it dropped."""
    dropped: dict[str, list[str]] = {name: [] for name in filter_names(settings)}
    kept = []
    for doc in docs:
        rejected_by = first_rejection(doc.text, settings)
        if rejected_by is None:
            kept.append(doc)
        else:
            dropped[rejected_by].append(doc.source)
    return kept, dropped
