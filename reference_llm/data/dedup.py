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
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from reference_llm.data.documents import Document
from reference_llm.errors import ConfigError

_PRIME = (1 << 31) - 1  # Mersenne prime: hash values and coefficients stay below it, products below 2**62
_WORD = re.compile(r"\w+")
_CHUNK = 1024  # shingles hashed at once: a (chunk, num_perm) temporary of 1 MiB for 128 perms


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


def exact_dedup(docs: list[Document]) -> tuple[list[Document], list[Duplicate]]:
    """Drop each document whose text equals an earlier one's (compared by sha256)."""
    first_by_hash: dict[str, str] = {}
    kept, dropped = [], []
    for doc in docs:
        digest = hashlib.sha256(doc.text.encode("utf-8")).hexdigest()
        if digest in first_by_hash:
            dropped.append(Duplicate(doc.source, first_by_hash[digest], 1.0))
        else:
            first_by_hash[digest] = doc.source
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


class MinHasher:
    """Signatures of word-shingle sets under `num_perm` universal hash functions (a*x + b) mod p."""

    def __init__(self, num_perm: int, shingle_words: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _PRIME, size=num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _PRIME, size=num_perm, dtype=np.uint64)
        self.shingle_words = shingle_words
        # Words become small integers by first appearance; the ids only need to be consistent within one
        # run, which lets shingles be hashed with numpy instead of per-string Python hashing.
        self._word_ids: dict[str, int] = {}

    def shingles(self, text: str) -> np.ndarray:
        """Distinct hashed word n-grams of a lower-cased text (the whole text when shorter than n words)."""
        ids = np.fromiter((self._word_ids.setdefault(w, len(self._word_ids)) for w in _WORD.findall(text.lower())),
                          dtype=np.uint64)
        if ids.size == 0:
            return ids
        k = min(self.shingle_words, ids.size)
        n = ids.size - k + 1
        h = np.zeros(n, dtype=np.uint64)
        for j in range(k):  # polynomial hash of each window, wrapping modulo 2**64
            h = h * np.uint64(1_000_003) + ids[j:j + n]
        return np.unique(h % np.uint64(_PRIME))

    def signature(self, text: str) -> np.ndarray | None:
        """The MinHash signature, or None for a text without words (it has no shingles to compare)."""
        x = self.shingles(text)
        if x.size == 0:
            return None
        sig = np.full(self.a.size, _PRIME, dtype=np.uint64)
        for i in range(0, x.size, _CHUNK):
            h = x[i:i + _CHUNK, None] * self.a  # in place from here: half the time of fresh temporaries
            h += self.b
            h %= np.uint64(_PRIME)
            np.minimum(sig, h.min(axis=0), out=sig)
        return sig


def near_dedup(docs: list[Document], settings: DedupSettings) -> tuple[list[Document], list[Duplicate]]:
    """Drop each document whose estimated similarity to an earlier kept one reaches `settings.threshold`."""
    hasher = MinHasher(settings.num_perm, settings.shingle_words, settings.seed)
    bands, rows = choose_bands(settings.num_perm, settings.threshold)
    buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
    kept: list[Document] = []
    kept_sigs: list[np.ndarray | None] = []
    dropped: list[Duplicate] = []
    for doc in docs:
        sig = hasher.signature(doc.text)
        if sig is not None:
            keys = [sig[band * rows:(band + 1) * rows].tobytes() for band in range(bands)]
            candidates = {j for band, key in enumerate(keys) for j in buckets[band].get(key, ())}
            best_j, best_sim = -1, 0.0
            for j in sorted(candidates):
                sim = float(np.mean(sig == kept_sigs[j]))
                if sim > best_sim:
                    best_j, best_sim = j, sim
            if best_sim >= settings.threshold:
                dropped.append(Duplicate(doc.source, kept[best_j].source, round(best_sim, 4)))
                continue
            for band, key in enumerate(keys):
                buckets[band].setdefault(key, []).append(len(kept))
        kept.append(doc)
        kept_sigs.append(sig)
    return kept, dropped
