"""What every tokenizer offers, and the plumbing they share (special-token splitting, file I/O)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import regex

from reference_llm.errors import TokenizerError

EOT = "<|endoftext|>"
T = TypeVar("T")


class Tokenizer(ABC):
    """Text <-> token ids. Subclasses: `CharTokenizer`, `BPETokenizer`, `HFBPETokenizer`."""

    kind: str  # "char" | "bpe" | "hf-bpe": the `kind` that `train_tokenizer` takes

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids for `text`; special-token strings inside it become their single ids."""

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(text) for text in batch_texts(texts)]

    def encode_arrays(self, texts: Iterable[str]) -> list[np.ndarray]:
        """`encode_batch(texts)` as integer arrays (what token shards are written from)."""
        return [np.asarray(ids, dtype=np.uint32) for ids in self.encode_batch(texts)]

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text for `ids` (special tokens included as their strings)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """One more than the largest id: the embedding table size a model needs."""

    @property
    @abstractmethod
    def special_tokens(self) -> dict[str, int]:
        """Special-token string -> id."""

    @property
    def eot_id(self) -> int | None:
        """Id of "<|endoftext|>", the document separator, or None if this tokenizer has none."""
        return self.special_tokens.get(EOT)

    @abstractmethod
    def to_bytes(self) -> bytes:
        """The exact bytes `save` writes."""

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer file atomically (temp file + rename) and return its path."""
        try:
            return write_atomic(Path(path), self.to_bytes())
        except OSError as exc:
            raise TokenizerError(f"tokenizer file {path} cannot be written: {exc.strerror or exc}") from None

    def fingerprint(self) -> str:
        """sha256 of the saved form: equal fingerprints mean identical tokenization."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:  # tokenizers never change after construction: hash once
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={self.special_tokens})"


def write_atomic(path: Path, data: bytes) -> Path:
    """Write to a temp file in the same directory, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a tokenizer file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a tokenizer file; missing, unreadable or non-JSON files raise TokenizerError."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"tokenizer file {path} not found")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"tokenizer file {path} is not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise TokenizerError(f"tokenizer file {path} nests JSON deeper than Python can parse") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"tokenizer file {path}: expected a JSON object at the top level")
    return data


# bytes.join keeps a 80-byte buffer record per part while it runs, so joining the parts of a long text
# (4 Mi characters: 850k words) at once would take ~70 MB; in blocks of this many parts it takes ~5 MB.
JOIN_BLOCK = 1 << 16


def join_mapped(get: Callable[[T], bytes], items: Sequence[T]) -> bytes:
    """b"".join(map(get, items)), the loop in C, joined a block at a time (see JOIN_BLOCK)."""
    if len(items) <= JOIN_BLOCK:
        return b"".join(map(get, items))
    return b"".join([b"".join(map(get, items[i : i + JOIN_BLOCK])) for i in range(0, len(items), JOIN_BLOCK)])


def batch_texts(texts: Iterable[str]) -> Iterable[str]:
    """Guard for `encode_batch`: a bare string would otherwise be encoded character by character."""
    if isinstance(texts, str):
        raise TokenizerError("encode_batch: expected a list of strings, got one string; use encode()")
    return texts


def lookup_ids(table: dict[int, T], ids: Iterable[int], vocab_size: int) -> list[T]:
    """`table[i]` for each id, for `decode`; an unknown id raises TokenizerError naming it."""
    ids = ids if isinstance(ids, list) else list(ids)
    try:
        return [table[i] for i in ids]
    except (KeyError, TypeError):  # torch scalars hash by identity: retry with int(); or a bad id
        pass
    out = []
    for i in ids:
        try:
            out.append(table[int(i)])
        except (KeyError, TypeError, ValueError):
            raise TokenizerError(f"token id {i!r} is not in the vocabulary (0..{vocab_size - 1})") from None
    return out


def check_special_tokens(special_tokens: Iterable[str]) -> tuple[str, ...]:
    specials = tuple(special_tokens)
    for token in specials:
        if not isinstance(token, str) or not token:
            raise TokenizerError(f"special_tokens: {token!r} is not a non-empty string")
    if len(set(specials)) != len(specials):
        raise TokenizerError(f"special_tokens: {list(specials)} has duplicates; each must appear once")
    return specials


def check_texts(texts: Iterable[str]) -> list[str]:
    """Training texts as a list; empty input raises TokenizerError."""
    if isinstance(texts, str):  # a bare string would otherwise be iterated character by character
        texts = [texts]
    texts = list(texts)
    for text in texts:
        if not isinstance(text, str):
            raise TokenizerError(f"texts: expected strings, got {type(text).__name__}")
    if not any(texts):
        raise TokenizerError("texts: the training text is empty; give at least one non-empty string")
    return texts


class SpecialSplitter:
    """Cuts text into plain segments and special tokens, so that specials are never merged or split.

    Overlapping specials are resolved leftmost-longest, as HF `tokenizers` does.
    """

    def __init__(self, special_tokens: dict[str, int]) -> None:
        self.ids = dict(special_tokens)
        ordered = sorted(self.ids, key=len, reverse=True)
        self._pattern = regex.compile("|".join(map(regex.escape, ordered))) if ordered else None

    def split(self, text: str) -> list[tuple[str, int | None]]:
        """[(segment, None) for plain text | (special, id)], in order; empty segments dropped."""
        if self._pattern is None:
            return [(text, None)] if text else []
        parts: list[tuple[str, int | None]] = []
        start = 0
        for match in self._pattern.finditer(text):
            if match.start() > start:
                parts.append((text[start : match.start()], None))
            parts.append((match.group(), self.ids[match.group()]))
            start = match.end()
        if start < len(text):
            parts.append((text[start:], None))
        return parts

    def plain_segments(self, text: str) -> list[str]:
        """The text between special tokens (what training counts)."""
        if self._pattern is None:
            return [text] if text else []
        return [segment for segment in self._pattern.split(text) if segment]
