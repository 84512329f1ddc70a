"""Exact and near-duplicate document removal.

Exact: documents whose normalised text has the same sha256 as an earlier one are dropped.

Near: MinHash (Broder 1997, "On the resemblance and containment of documents") estimates the Jaccard
similarity of two documents' sets of word n-grams ("shingles"): for a random hash function h, the
probability that min h(A) == min h(B) equals |A ∩ B| / |A ∪ B|, so the fraction of `num_perm` such minima
two signatures share estimates it. Comparing every pair would be quadratic, so signatures are cut into
`bands` bands of `rows` values (locality-sensitive hashing, Leskovec, Rajaraman & Ullman, "Mining of
Massive Datasets", ch. 3.4): documents sharing any whole band become candidates, with probability
1 - (1 - s^rows)^bands for similarity s. Candidates are then confirmed with the full signature. Lee et al.
(2022, "Deduplicating Training Data Makes Language Models Better") use the same scheme on 5-gram shingles.

Documents are taken in order and a later near-duplicate of a kept document is dropped, so the first
copy always survives, and chains A~B~C do not remove documents that are far from every kept one.

Signatures depend only on the text (words are hashed, not numbered), so worker processes compute them
independently; the index that decides lives in one process and stays compact (`LshIndex`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference_llm.data.documents import Document
from reference_llm.errors import ConfigError
from reference_llm.tokenizer.base import join_mapped

_WORD = re.compile(r"\w+")
# For ASCII text, \w is [A-Za-z0-9_]: every other byte becomes a space and bytes.split finds the words,
# in C, several times faster than the regex.
_ASCII_NON_WORD = bytes.maketrans(
    bytes(b for b in range(128) if not (chr(b).isalnum() or chr(b) == "_")),
    b" " * sum(1 for b in range(128) if not (chr(b).isalnum() or chr(b) == "_")),
)
_CHUNK = 2048  # shingles hashed at once: a (chunk, num_perm) uint64 temporary of 2 MiB for 128 perms
_WORD_CACHE_MAX = 1 << 18  # word hashes remembered per process (~30 MB) before the cache starts over
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: an odd multiplier that spreads bits


@dataclass(frozen=True)
class DedupSettings:
    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # estimated Jaccard similarity of shingle sets at or above which a doc is dropped
    num_perm: int = 128  # MinHash signature length: the estimate's standard error is ~sqrt(s(1-s)/num_perm)
    shingle_words: int = 5
    seed: int = 0  # picks the hash functions; any fixed value gives a reproducible result

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dedup.threshold must be in (0, 1], got {self.threshold}")
        if self.num_perm < 2:
            raise ConfigError(f"dedup.num_perm must be at least 2, got {self.num_perm}")
        if self.shingle_words < 1:
            raise ConfigError(f"dedup.shingle_words must be at least 1, got {self.shingle_words}")


@dataclass(frozen=True)
class Duplicate:
    source: str
    duplicate_of: str
    similarity: float  # 1.0 for exact duplicates, the MinHash estimate for near ones


def text_digest(text: str) -> bytes:
    """The exact-dedup key: 16 bytes of sha256 (a chance collision among 10^9 documents is ~10^-21)."""
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def exact_dedup(docs: list[Document]) -> tuple[list[Document], list[Duplicate]]:
    """Drop each document whose text equals an earlier one's (compared by sha256)."""
    first: dict[bytes, str] = {}
    kept, dropped = [], []
    for doc in docs:
        digest = text_digest(doc.text)
        if digest in first:
            dropped.append(Duplicate(doc.source, first[digest], 1.0))
        else:
            first[digest] = doc.source
            kept.append(doc)
    return kept, dropped


def choose_bands(num_perm: int, threshold: float, recall: float = 0.95) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm: the most rows per band (fewest spurious candidates)
    such that a pair exactly at `threshold` still becomes a candidate with probability >= `recall`.

    Candidates are confirmed with the whole signature, so a false candidate only costs a comparison
    while a missed one is a duplicate left in the data; hence the bias towards recall (MMDS ch. 3.4.3).
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


class _WordHashes(dict[str | bytes, bytes]):
    """Word (str, or bytes for ASCII text) -> 8 bytes of blake2b of its UTF-8 bytes, computed on a miss
    (`dict.__missing__`); emptied when it holds _WORD_CACHE_MAX words. Not hash(): Python salts str
    hashes per process, and signatures computed by different worker processes must agree."""

    def __missing__(self, word: str | bytes) -> bytes:
        data = word if isinstance(word, bytes) else word.encode("utf-8", "surrogatepass")
        digest = hashlib.blake2b(data, digest_size=8).digest()
        if len(self) >= _WORD_CACHE_MAX:
            self.clear()
        self[word] = digest
        return digest


class MinHasher:
    """Signatures of word-shingle sets under `num_perm` hash functions h(x) = (a*x + b) >> 32.

    Multiply-shift (Dietzfelbinger et al. 1997) is a universal family on 32-bit keys and needs no
    modulo, which makes it about twice as fast as (a*x + b) mod p in numpy. Signatures are uint32.
    """

    def __init__(self, num_perm: int, shingle_words: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        self.shingle_words = shingle_words
        self._words = _WordHashes()
        self._buffer = np.empty((_CHUNK, num_perm), dtype=np.uint64)  # reused: a fresh one costs page faults

    def _word_hashes(self, words: Sequence[str | bytes]) -> np.ndarray:
        # One C-level pass over the words; only a word not seen before runs Python (_WordHashes.__missing__).
        return np.frombuffer(join_mapped(self._words.__getitem__, words), dtype="<u8")

    def words(self, text: str) -> list[str] | list[bytes]:
        """The lower-cased words (\\w+ runs) of `text`; as bytes when it is ASCII."""
        lower = text.lower()
        if lower.isascii():
            return lower.encode("ascii").translate(_ASCII_NON_WORD).split()
        return _WORD.findall(lower)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit hashes of the lower-cased word n-grams (the whole text when shorter than n words). Repeats
        are kept: they cannot change a minimum, and removing them costs more than hashing them."""
        ids = self._word_hashes(self.words(text))
        if ids.size == 0:
            return ids.astype(np.uint32)
        k = min(self.shingle_words, ids.size)
        n = ids.size - k + 1
        h = ids[:n].copy()
        for j in range(1, k):  # h = (h * MIX) ^ next word, wrapping modulo 2**64
            h *= _MIX
            h ^= ids[j : j + n]
        h *= _MIX  # the high half depends on every bit of the n-gram
        return (h >> np.uint64(32)).astype(np.uint32)

    def signature(self, text: str) -> np.ndarray | None:
        """The MinHash signature (uint32), or None for a text without words (nothing to compare)."""
        x = self.shingles(text).astype(np.uint64)
        if x.size == 0:
            return None
        sig = np.full(self.a.size, np.iinfo(np.uint64).max, dtype=np.uint64)
        for i in range(0, x.size, _CHUNK):
            part = x[i : i + _CHUNK]
            h = self._buffer[: part.size]  # in place: half the time of fresh temporaries
            np.multiply(part[:, None], self.a, out=h)
            h += self.b
            np.minimum(sig, h.min(axis=0), out=sig)
        return (sig >> np.uint64(32)).astype(np.uint32)


class LshIndex:
    """Banded MinHash signatures of kept documents: which earlier ones may be near-duplicates of a new one.

    Band keys are 64-bit hashes of each band's rows (a chance collision only adds a candidate, which the
    full signature then rejects). Keys are kept as sorted numpy runs (uint64 key, uint32 document: 12 bytes
    a key), one run per batch, merged with runs of similar size so that there are O(log n) of them.
    Documents are decided a batch at a time, with no Python work per key: `candidates` finds, for every
    row of the batch at once, the indexed documents sharing a band key (binary searches with the queries
    sorted) and the earlier rows of the batch sharing one; `add` numbers and stores a kept document's
    signature; `commit` adds the kept rows' keys as a run. Signatures go to a file when `sig_path` is
    given (they are read back only to confirm candidates), else stay in memory.
    """

    def __init__(self, num_perm: int, threshold: float, sig_path: Path | None = None):
        self.bands, self.rows = choose_bands(num_perm, threshold)
        self.num_perm, self.threshold = num_perm, threshold
        self.count = 0
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._seeds = (np.arange(self.bands, dtype=np.uint64) + np.uint64(1)) * _MIX
        self._sig_file = open(sig_path, "w+b") if sig_path is not None else None  # noqa: SIM115 (closed in close())
        self._sigs: list[np.ndarray] = []

    def band_keys(self, sigs: np.ndarray) -> np.ndarray:
        """(n, bands) uint64 keys of (n, num_perm) signatures."""
        bands = sigs[:, : self.bands * self.rows].reshape(len(sigs), self.bands, self.rows).astype(np.uint64)
        h = np.broadcast_to(self._seeds, bands.shape[:2]).copy()
        for r in range(self.rows):
            h ^= bands[:, :, r]
            h *= _MIX
            h ^= h >> np.uint64(29)
        return h

    def candidates(self, keys: np.ndarray) -> tuple[list[set[int]], list[list[int]]]:
        """For each row of a batch's (n, bands) keys: the indexed documents that share a key with it, and
        the earlier rows of the batch that do (candidates too, if they are kept)."""
        n = len(keys)
        flat = keys.ravel()
        order = np.argsort(flat, kind="stable")  # sorted queries: each binary search starts near the last
        queries = flat[order]
        indexed: list[set[int]] = [set() for _ in range(n)]
        for run_keys, run_docs in self._runs:
            lo = np.searchsorted(run_keys, queries, "left")
            found = lo < len(run_keys)
            found[found] = run_keys[lo[found]] == queries[found]
            for q in np.flatnonzero(found):
                end = np.searchsorted(run_keys, queries[q], "right")
                indexed[order[q] // self.bands].update(run_docs[lo[q] : end].tolist())
        earlier: list[list[int]] = [[] for _ in range(n)]
        repeats = np.flatnonzero(queries[1:] == queries[:-1])  # rare: equal keys within the batch
        if repeats.size:
            starts = repeats[np.concatenate(([True], np.diff(repeats) > 1))]
            for start in starts.tolist():
                end = start + 1
                while end < len(queries) and queries[end] == queries[start]:
                    end += 1
                rows = (order[start:end] // self.bands).tolist()  # ascending: the sort was stable
                for k, row in enumerate(rows):
                    earlier[row] += [r for r in rows[:k] if r != row]
        return indexed, earlier

    def best_match(self, sig: np.ndarray, candidates: set[int]) -> tuple[int, float]:
        """(document, estimated similarity) of the most similar candidate (smallest index on ties), or (-1, 0)."""
        best_j, best_sim = -1, 0.0
        for j in sorted(candidates):
            sim = float(np.mean(sig == self._signature(j)))
            if sim > best_sim:
                best_j, best_sim = j, sim
        return best_j, best_sim

    def add(self, sig: np.ndarray) -> int:
        """Number and store a kept document's signature; its keys follow with `commit`."""
        if self._sig_file is not None:  # appended: signature j starts at j * num_perm * 4
            self._sig_file.write(sig.astype(np.uint32).tobytes())
        else:
            self._sigs.append(sig)
        self.count += 1
        return self.count - 1

    def commit(self, keys: np.ndarray, docs: list[int]) -> None:
        """Index the (m, bands) keys of kept documents numbered `docs`."""
        if not docs:
            return
        ids = np.repeat(np.asarray(docs, dtype=np.uint32), self.bands)
        self._runs.append(_sorted_run(keys.ravel(), ids))
        # Merge while the newer run is at least half the size of the one before: O(log n) runs.
        while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]):
            (k2, d2), (k1, d1) = self._runs.pop(), self._runs.pop()
            self._runs.append(_sorted_run(np.concatenate([k1, k2]), np.concatenate([d1, d2])))

    def memory_bytes(self) -> int:
        """Bytes held by the sorted runs (and by signatures, when they are not in a file)."""
        return sum(k.nbytes + d.nbytes for k, d in self._runs) + sum(s.nbytes for s in self._sigs)

    def close(self) -> None:
        if self._sig_file is not None:
            self._sig_file.close()

    def _signature(self, j: int) -> np.ndarray:
        if self._sig_file is None:
            return self._sigs[j]
        size = self.num_perm * 4
        self._sig_file.flush()
        data = os.pread(self._sig_file.fileno(), size, j * size)
        return np.frombuffer(data, dtype=np.uint32)


def _sorted_run(keys: np.ndarray, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    return keys[order], docs[order]


def near_dedup(docs: list[Document], settings: DedupSettings) -> tuple[list[Document], list[Duplicate]]:
    """Drop each document whose estimated similarity to an earlier kept one reaches `settings.threshold`."""
    hasher = MinHasher(settings.num_perm, settings.shingle_words, settings.seed)
    index = LshIndex(settings.num_perm, settings.threshold)
    signed = [(i, sig) for i, doc in enumerate(docs) if (sig := hasher.signature(doc.text)) is not None]
    keys = index.band_keys(np.stack([sig for _, sig in signed])) if signed else np.zeros((0, 1), np.uint64)
    indexed, earlier = index.candidates(keys)
    numbers: dict[int, int] = {}  # row of `signed` -> number of the kept document in the index
    names: list[str] = []  # of the kept documents, by number
    dropped_ids: set[int] = set()
    dropped: list[Duplicate] = []
    for row, (i, sig) in enumerate(signed):
        j, sim = index.best_match(sig, indexed[row] | {numbers[r] for r in earlier[row] if r in numbers})
        if sim >= settings.threshold:
            dropped.append(Duplicate(docs[i].source, names[j], round(sim, 4)))
            dropped_ids.add(i)
        else:
            numbers[row] = index.add(sig)
            names.append(docs[i].source)
    index.commit(keys[list(numbers)], list(numbers.values()))
    return [doc for i, doc in enumerate(docs) if i not in dropped_ids], dropped
