"""The text stages of data preparation: normalise -> quality filters -> exact and near dedup -> PII scrub,
then the train/validation split. Every stage records what it removed in a JSON-serialisable report.

The work is divided so that it can run in several processes with the same result as in one:
`clean_batch` (any process) normalises, filters, hashes, signs and scrubs a batch of documents, each on
its own; `Collector` (one process, documents in corpus order) makes the order-dependent decisions: which
copy of a duplicate is the first, and what the report says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reference_llm.data.clean import normalize_text
from reference_llm.data.dedup import DedupSettings, Duplicate, LshIndex, MinHasher, choose_bands, text_digest
from reference_llm.data.documents import Document
from reference_llm.data.filters import FilterSettings, filter_names, first_rejection
from reference_llm.data.pii import scrub_pii
from reference_llm.errors import ConfigError
from reference_llm.tokenizer.base import EOT

MAX_REPORT_ITEMS = 100  # per list in the report; counts are always complete
SPECIAL_TOKENS = (EOT,)


@dataclass(frozen=True)
class PipelineSettings:
    """Everything besides DataConfig that changes the prepared data (and therefore its cache key)."""

    filters: FilterSettings = field(default_factory=FilterSettings)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    scrub_pii: bool = True
    shard_tokens: int = 100_000_000  # tokens per shard file (nanoGPT's FineWeb shards hold 1e8)
    piece_chars: int = 4 << 20  # longer documents are cut into pieces of at most this many characters
    tokenizer_sample_chars: int = 16_000_000  # BPE tokenizers train on about this much of a larger train split

    def __post_init__(self) -> None:
        for name in ("shard_tokens", "piece_chars", "tokenizer_sample_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: dict[str, Any]) -> PipelineSettings:
        """Copy with dotted keys replaced, e.g. {"filters.min_chars": 50, "scrub_pii": False}."""
        values: dict[str, dict[str, Any]] = {"filters": {}, "dedup": {}, "": {}}
        for key, value in overrides.items():
            if key not in setting_keys():
                raise ConfigError(f"unknown data pipeline setting {key!r}; known: {', '.join(setting_keys())}")
            section, _, name = key.rpartition(".")
            current = getattr(getattr(self, section) if section else self, name)
            if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(current):
                raise ConfigError(f"{key} must be {type(current).__name__}, got {value!r}")
            values[section][name] = value
        return dataclasses.replace(
            self,
            filters=dataclasses.replace(self.filters, **values["filters"]),
            dedup=dataclasses.replace(self.dedup, **values["dedup"]),
            **values[""],
        )


def setting_keys() -> list[str]:
    """The dotted names `PipelineSettings.with_overrides` accepts."""
    keys = []
    for f in dataclasses.fields(PipelineSettings):
        if f.name in ("filters", "dedup"):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(getattr(PipelineSettings(), f.name))]
        else:
            keys.append(f.name)
    return keys


# ----------------------------------------------------------------------------------------------------
# Per document, in any process
# ----------------------------------------------------------------------------------------------------


@dataclass
class Cleaned:
    """What `clean_batch` found out about one document."""

    rejected_by: str | None  # the filter that dropped it, or None
    chars_in: int
    chars_normalised: int
    digest: bytes = b""  # exact-dedup key of the normalised text
    signature: np.ndarray | None = None  # MinHash of the normalised text (None: no words, or near dedup off)
    text: str = ""  # the text to keep: PII replaced, literal end-of-text strings deleted
    findings: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, start, end) in the normalised text
    special_removed: int = 0


_hashers: dict[DedupSettings, MinHasher] = {}  # one per process: it caches word hashes across batches


def clean_batch(task: tuple[PipelineSettings, list[str]]) -> list[Cleaned]:
    """Normalise, filter, hash and scrub each text on its own (no decision depends on another text)."""
    settings, texts = task
    hasher = None
    if settings.dedup.near:
        hasher = _hashers.get(settings.dedup)
        if hasher is None:
            d = settings.dedup
            hasher = _hashers[settings.dedup] = MinHasher(d.num_perm, d.shingle_words, d.seed)
    out = []
    for raw in texts:
        text = normalize_text(raw)
        rejected = first_rejection(text, settings.filters)
        result = Cleaned(rejected, len(raw), len(text))
        if rejected is None:
            result.digest = text_digest(text) if settings.dedup.exact else b""
            result.signature = hasher.signature(text) if hasher is not None else None
            if settings.scrub_pii:
                scrubbed, found = scrub_pii(text)
                result.findings = [(f.kind, f.start, f.end) for f in found]
                text = scrubbed
            for special in SPECIAL_TOKENS:
                if special in text:
                    result.special_removed += text.count(special)
                    text = text.replace(special, "")
            result.text = text
        out.append(result)
    return out


# ----------------------------------------------------------------------------------------------------
# Decisions in corpus order, in one process
# ----------------------------------------------------------------------------------------------------


class _Capped:
    """A report list that keeps its first MAX_REPORT_ITEMS entries and counts the rest."""

    def __init__(self) -> None:
        self.count = 0
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        self.count += 1
        if len(self.items) < MAX_REPORT_ITEMS:
            self.items.append(item)

    def to_dict(self, count_key: str = "dropped") -> dict[str, Any]:
        out: dict[str, Any] = {count_key: self.count, "items": self.items}
        if self.count > len(self.items):
            out["not_listed"] = self.count - len(self.items)
        return out


class _Names:
    """Names of the documents that reached dedup, by number: in memory, or in a file when `path` is given
    (only the few that a report lists are ever read back)."""

    def __init__(self, path: Path | None) -> None:
        self._file = open(path, "w+b") if path is not None else None  # noqa: SIM115 (closed in close())
        self._offsets = array("q", [0])
        self._list: list[str] = []

    def add(self, name: str) -> int:
        if self._file is None:
            self._list.append(name)
            return len(self._list) - 1
        data = name.encode("utf-8", "surrogateescape")
        self._file.write(data)  # the position is always the end: no seek, which would flush the buffer
        self._offsets.append(self._offsets[-1] + len(data))
        return len(self._offsets) - 2

    def __getitem__(self, i: int) -> str:
        if self._file is None:
            return self._list[i]
        self._file.flush()
        start, end = self._offsets[i], self._offsets[i + 1]
        return os.pread(self._file.fileno(), end - start, start).decode("utf-8", "surrogateescape")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Collector:
    """Takes `clean_batch` results in corpus order; decides which documents stay; builds the report.

    Memory grows with the documents that pass the filters, not with their text: 16-byte digests for
    exact dedup, ~12 bytes per band for the LSH index, an offset per name (see docs/data.md).
    """

    def __init__(self, settings: PipelineSettings, work_dir: Path | None = None):
        self.settings = settings
        self.documents_in = self.chars_in = self.chars_normalised = self.documents_out = self.chars_out = 0
        self.special_removed = 0
        self.filtered = {name: _Capped() for name in filter_names(settings.filters)}
        self.exact_dups, self.near_dups = _Capped(), _Capped()
        self.pii = _Capped()
        self.pii_by_kind: dict[str, int] = {}
        self.pii_documents = 0
        self._names = _Names(work_dir / "names.bin" if work_dir else None)
        self._exact: dict[bytes, int] = {}
        d = settings.dedup
        self._index = (
            LshIndex(d.num_perm, d.threshold, work_dir / "signatures.bin" if work_dir else None) if d.near else None
        )
        self._index_names = array("I")  # LSH document -> number in _names

    def add_batch(self, names: list[str], results: list[Cleaned]) -> list[bool]:
        """Which documents of the batch stay; the report counts all of them."""
        index = self._index
        rows = {i: row for row, i in enumerate(i for i, r in enumerate(results) if r.signature is not None)}
        keys = indexed = earlier = None
        if index is not None and rows:
            keys = index.band_keys(np.stack([r.signature for r in results if r.signature is not None]))
            indexed, earlier = index.candidates(keys)
        numbers: dict[int, int] = {}  # row -> number in the index, for the rows kept
        keep = []
        for i, (name, r) in enumerate(zip(names, results)):
            self.documents_in += 1
            self.chars_in += r.chars_in
            self.chars_normalised += r.chars_normalised
            candidates = None
            if indexed is not None and earlier is not None and i in rows:
                row = rows[i]
                candidates = indexed[row] | {numbers[q] for q in earlier[row] if q in numbers}
            number = self._decide(name, r, candidates)
            if number is not None and i in rows:
                numbers[rows[i]] = number
            keep.append(number is not None)
        if index is not None and keys is not None:
            index.commit(keys[list(numbers)], list(numbers.values()))
        return keep

    def _decide(self, name: str, r: Cleaned, candidates: set[int] | None) -> int | None:
        """None if the document goes; else its number in the LSH index (-1 when it is not indexed)."""
        if r.rejected_by is not None:
            self.filtered[r.rejected_by].add(name)
            return None
        if self.settings.dedup.exact:
            first = self._exact.get(r.digest)
            if first is not None:
                self.exact_dups.add(dataclasses.asdict(Duplicate(name, self._names[first], 1.0)))
                return None
        number = self._names.add(name)
        if self.settings.dedup.exact:
            self._exact[r.digest] = number
        indexed = -1
        if self._index is not None and candidates is not None and r.signature is not None:
            j, sim = self._index.best_match(r.signature, candidates)
            if sim >= self.settings.dedup.threshold:
                original = self._names[self._index_names[j]]
                self.near_dups.add(dataclasses.asdict(Duplicate(name, original, round(sim, 4))))
                return None
            indexed = self._index.add(r.signature)
            self._index_names.append(number)
        self.documents_out += 1
        self.chars_out += len(r.text)
        self.special_removed += r.special_removed
        if r.findings:
            self.pii_documents += 1
            for kind, start, end in r.findings:
                self.pii_by_kind[kind] = self.pii_by_kind.get(kind, 0) + 1
                self.pii.add({"source": name, "kind": kind, "start": start, "end": end})
        return indexed

    def index_bytes(self) -> int:
        """Memory of the dedup index now (exact-dedup dict and LSH runs), approximately."""
        exact = len(self._exact) * 120  # a 16-byte bytes key, an int and a dict slot (measured: ~115)
        return exact + len(self._names._offsets) * 8 + (self._index.memory_bytes() if self._index else 0)

    def report(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {
            "documents_in": self.documents_in,
            "chars_in": self.chars_in,
            "chars_after_normalising": self.chars_normalised,
            "filters": {name: c.to_dict() for name, c in self.filtered.items()},
        }
        if s.dedup.exact:
            out["exact_dedup"] = self.exact_dups.to_dict()
        if s.dedup.near:
            bands, rows = choose_bands(s.dedup.num_perm, s.dedup.threshold)
            out["near_dedup"] = {
                "dropped": self.near_dups.count,
                "threshold": s.dedup.threshold,
                "bands": bands,
                "rows": rows,
                **{k: v for k, v in self.near_dups.to_dict().items() if k != "dropped"},
            }
        if s.scrub_pii:
            out["pii"] = {
                "replaced": self.pii.count,
                "by_kind": dict(sorted(self.pii_by_kind.items())),
                "documents": self.pii_documents,
                **{k: v for k, v in self.pii.to_dict().items() if k != "dropped"},
            }
        out["special_token_strings_removed"] = self.special_removed
        out["documents_out"] = self.documents_out
        out["chars_out"] = self.chars_out
        return out

    def close(self) -> None:
        self._names.close()
        if self._index is not None:
            self._index.close()


def clean_documents(docs: list[Document], settings: PipelineSettings) -> tuple[list[Document], dict[str, Any]]:
    """Run the text stages over an in-memory list; return the surviving documents and the report."""
    collector = Collector(settings)
    results = clean_batch((settings, [d.text for d in docs]))
    keep = collector.add_batch([d.source for d in docs], results)
    collector.close()
    kept = [Document(d.source, r.text) for d, r, k in zip(docs, results, keep) if k]
    return kept, collector.report()


# ----------------------------------------------------------------------------------------------------
# Train/validation split
# ----------------------------------------------------------------------------------------------------


def split_digest(text: str) -> bytes:
    """What decides a document's side of the split: the sha256 of its final text."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def validation_mask(digests: np.ndarray, val_fraction: float) -> np.ndarray:
    """Which of n >= 2 documents, given their (n, 32) uint8 split digests, are held out: the
    round(n * val_fraction) smallest digests (at least one, and at least one left for training)."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    n = len(digests)
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    words = np.ascontiguousarray(digests).view(">u8")  # (n, 4) big-endian words sort like the bytes
    order = np.lexsort(words.T[::-1])
    mask = np.zeros(n, dtype=bool)
    mask[order[:n_val]] = True
    return mask


def split_text(text: str, val_fraction: float) -> int:
    """Where a single document is cut: the first line break after (1 - val_fraction) of its characters."""
    cut = int(len(text) * (1.0 - val_fraction))
    newline = text.find("\n", cut)
    return newline + 1 if newline != -1 else cut


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents for validation; a single document is split by text, its last part held out.

    With several documents, the held-out ones are picked by the sha256 of their text: a stable choice that
    does not depend on file names or order, and that stays put when other documents are added. At least
    one document goes to each side. A single document is cut at the first line break after
    (1 - val_fraction) of its characters, as nanoGPT cuts its Shakespeare file.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    if len(docs) == 1:
        (doc,) = docs
        cut = split_text(doc.text, val_fraction)
        return [Document(doc.source, doc.text[:cut])], [Document(doc.source, doc.text[cut:])]
    digests = np.frombuffer(b"".join(split_digest(d.text) for d in docs), dtype=np.uint8).reshape(-1, 32)
    val = validation_mask(digests, val_fraction)
    return [d for d, v in zip(docs, val) if not v], [d for d, v in zip(docs, val) if v]
