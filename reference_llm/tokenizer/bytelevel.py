"""GPT-2's byte-level conventions: the byte <-> printable-character table and the pre-tokenisation regex.

Byte-level BPE works on UTF-8 bytes, so every string can be encoded without an unknown token. GPT-2
(Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", section 2.2; code in
openai/gpt-2 `src/encoder.py`) stores tokens as text by mapping each of the 256 bytes to a printable
Unicode character; the Hugging Face `tokenizer.json` format keeps that convention, so we need it too.
"""

from __future__ import annotations

import array
import re
from functools import cached_property

import numpy as np
import regex

from reference_llm.tokenizer import unicode_classes

# GPT-2's pre-tokenisation pattern, as in openai/gpt-2 and HF's ByteLevel pre-tokenizer. It splits
# text into words: English contractions, letter runs, digit runs and punctuation runs (each optionally
# preceded by one space), and whitespace runs. `\s+(?!\S)` leaves the last space of a run to the word
# after it, which is why " the" (not "the") is a token. tiktoken's r50k pattern is an equivalent,
# possessive rewrite.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The same pattern for ASCII text, for the standard `re` module, which splits it about 3x faster than
# `regex` (measured on the prose of benchmarks/data_prepare.py and on Python source). In ASCII, letters
# are A-Z and a-z, numbers 0-9, and White_Space is tab, LF, VT, FF, CR and space in every Unicode
# version; the classes are spelled out because `re`'s `\s` also matches the separators 0x1c-0x1f, which
# are not White_Space. `'(?:s|t|...)` tries the same alternatives in the same order, and the possessive
# `++` only skips backtracking into a run that nothing after it in its alternative could use: the words
# are the same.
_S = r"\t\n\x0b\x0c\r "
GPT2_ASCII_PATTERN = (
    rf"""'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]++| ?[0-9]++| ?[^{_S}A-Za-z0-9]++|[{_S}]+(?![^{_S}])|[{_S}]+"""
)

Ranges = tuple[tuple[int, int], ...]


class GPT2Splitter:
    r"""GPT-2's pre-tokeniser, with letters, numbers and white space as one Unicode version has them.

    Which code points `\p{L}`, `\p{N}` and `\s` match depends on the regex engine's Unicode tables.
    tiktoken and HF `tokenizers` use Unicode 16.0; the `regex` module takes up each new version (its
    2026 releases count Unicode 17's CJK Extension J as letters), which would change our ids with the
    installed `regex`. The pinned tables (`unicode_classes.py`, generated) decide instead.

    Spelled out as code-point ranges, the classes make `regex` about 10x slower. So the pattern keeps
    `\p{..}`, and the few code points that the installed tables class unlike the pinned ones (none when
    the versions agree) are, for the split only, replaced by an ASCII stand-in of their pinned class:
    ASCII is classed alike in every Unicode version, and no stand-in is a literal of the pattern (the
    apostrophe, the contraction letters, the space). The text keeps its length, so the spans matched in
    the replaced text cut the original. ASCII text, most text in practice, needs none of this and is
    split by `re` with GPT2_ASCII_PATTERN.
    """

    STAND_IN = {"letter": "a", "number": "0", "space": "\t", "other": "!"}
    ENGINE_CLASS = {"letter": r"\p{L}+", "number": r"\p{N}+", "space": r"\s+"}

    def __init__(
        self,
        letters: Ranges = unicode_classes.LETTER,
        numbers: Ranges = unicode_classes.NUMBER,
        white_space: Ranges = unicode_classes.WHITE_SPACE,
    ) -> None:
        """Tables: inclusive (first, last) code-point ranges; by default Unicode 16.0's, generated."""
        self._pinned = {"letter": letters, "number": numbers, "space": white_space}
        self._regex = regex.compile(GPT2_PATTERN)
        self._ascii = re.compile(GPT2_ASCII_PATTERN)

    @cached_property
    def corrections(self) -> dict[int, str]:
        """Code point -> stand-in, for every code point that the installed `regex` classes unlike the
        pinned tables. Found on first use by matching all code points once (~0.1 s)."""
        everything = scalar_values()
        pinned = {name: {cp for a, b in table for cp in range(a, b + 1)} for name, table in self._pinned.items()}
        wrong: set[int] = set()
        for name, pattern in self.ENGINE_CLASS.items():
            matched = set(map(ord, "".join(regex.findall(pattern, everything))))
            wrong |= matched ^ pinned[name]
        return {cp: self.STAND_IN[next((n for n, cps in pinned.items() if cp in cps), "other")] for cp in wrong}

    @cached_property
    def _wrong(self) -> tuple[frozenset[str], np.ndarray]:
        """The corrected code points as a set of characters and as a lookup table over all code points."""
        table = np.zeros(0x110000, dtype=bool)
        table[list(self.corrections)] = True
        return frozenset(map(chr, self.corrections)), table

    def _tables_agree_on(self, text: str) -> bool:
        """Whether the installed tables class every character of `text` like the pinned ones."""
        chars, table = self._wrong
        if not chars:
            return True
        if len(text) < 256:
            return chars.isdisjoint(text)
        # One table lookup per code point: ~1.5 ms per MB, against ~15 for set membership (a sixth of
        # the split) and ~60 for set(text) on CJK text.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return not table.take(codes).any()

    def findall(self, text: str) -> list[str]:
        """The words of `text`, in order; they concatenate to `text`."""
        if text.isascii():  # O(1): CPython keeps the flag
            return self._ascii.findall(text)
        # Mostly ASCII text (an em dash, a name with an accent): only the stretches around non-ASCII
        # characters, between safe cuts, go to `regex`; the rest to `re`.
        words: list[str] = []
        pos = 0
        while (run := _NON_ASCII.search(text, pos)) is not None:
            start, end = _cut_before(text, pos, run.start()), _cut_after(text, run.end())
            words += self._ascii.findall(text, pos, start)  # (as if the text ended at `start`)
            words += self._findall_unicode(text[start:end])
            pos = end
        words += self._ascii.findall(text, pos)
        return words

    def _findall_unicode(self, text: str) -> list[str]:
        if self._tables_agree_on(text):  # the usual case
            return self._regex.findall(text)
        return [text[m.start() : m.end()] for m in self._regex.finditer(text.translate(self.corrections))]


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_ASCII_SPACE = frozenset(" \t\n\x0b\x0c\r")


def _safe_cut(text: str, p: int) -> bool:
    """Whether the words of `text` are those of text[:p] followed by those of text[p:].

    True at a space that follows an ASCII character other than white space: no word runs over it (only
    white-space runs hold a space other than at their start), every alternative stops at a space the
    way it stops at the end of a text, and the pattern never looks behind, so text[p:] is split alike."""
    return text[p] == " " and text[p - 1] not in _ASCII_SPACE and text[p - 1] < "\x80"


def _cut_before(text: str, lo: int, hi: int) -> int:
    """The last safe cut in (lo, hi], else `lo` (itself a cut: the start, or where the last piece ended)."""
    p = text.rfind(" ", lo + 1, hi + 1)
    while p > lo and not _safe_cut(text, p):
        p = text.rfind(" ", lo + 1, p)
    return max(p, lo)


def _cut_after(text: str, lo: int) -> int:
    """The first safe cut at or after `lo`, else the text's length."""
    p = text.find(" ", lo)
    while p != -1 and not _safe_cut(text, p):
        p = text.find(" ", p + 1)
    return len(text) if p == -1 else p


def scalar_values() -> str:
    """Every Unicode scalar value (all code points but the surrogates), in order, as one string.

    Built through UTF-32: joining 1.1M chr() results is 5x slower."""
    return "".join(
        array.array("I", codes).tobytes().decode("utf-32-le") for codes in (range(0xD800), range(0xE000, 0x110000))
    )


GPT2_SPLIT = GPT2Splitter()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte value to a printable character.

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, soft hyphen, ...) map to
    chr(256), chr(257), ... in byte order, so no token ever contains whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR: dict[int, str] = bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}

# Hugging Face's BPE trainer numbers the initial alphabet in code-point order of these characters;
# training in the same order makes our ids (and tie-breaks) line up with theirs.
ALPHABET_BYTES: list[int] = sorted(range(256), key=lambda b: BYTE_TO_CHAR[b])


def token_to_str(token: bytes) -> str:
    """A token's bytes as the printable string stored in vocab files ("Ġthe" for b" the")."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def str_to_token(text: str) -> bytes:
    """Inverse of `token_to_str`; raises KeyError for a character outside the 256-character table."""
    return bytes(CHAR_TO_BYTE[c] for c in text)


def fix_surrogates(text: str) -> str:
    """Make `text` encodable as UTF-8 the way tiktoken does.

    A Python str can hold UTF-16 surrogates (from JSON "\\ud83d\\ude00" escapes or surrogateescape).
    tiktoken round-trips through UTF-16: a valid high/low pair becomes the character it encodes and a
    lone surrogate becomes U+FFFD. Strings without surrogates are returned unchanged.
    """
    if text.isascii():  # O(1), and the usual case: no surrogates
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
