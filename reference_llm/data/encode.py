"""Pass 2 of `prepare_data`: split the kept documents, weigh the sources, train the tokenizer on the train
split, and tokenise everything into shards in worker processes.

Shards are written as the encoded documents arrive, in corpus order. Each time a shard fills up, a
journal (`progress.json`) records it and where in the spill file the next shard starts; a run that was
interrupted continues from there, re-encoding at most one shard's worth per split.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reference_llm.data.collect import Collected, read_spill
from reference_llm.data.parallel import batch_chars, ordered_map
from reference_llm.data.pipeline import SPECIAL_TOKENS, PipelineSettings, split_text, validation_mask
from reference_llm.data.progress import Steps
from reference_llm.data.shards import ShardWriter, token_dtype, write_json
from reference_llm.errors import DataError
from reference_llm.tokenizer import CharTokenizer, Tokenizer, load_tokenizer, train_tokenizer
from reference_llm.tokenizer.base import read_json

JOURNAL_FILE = "progress.json"
TOKENIZER_FILE = "tokenizer.json"
ENCODE_BATCH = 64  # documents given to the tokenizer at once
SPLITS = ("train", "val")


@dataclass
class Plan:
    """Which side each kept document goes to and how often it is written (source weights)."""

    val: np.ndarray  # (n,) bool
    copies: np.ndarray  # (n,) uint32: times a train document is written (1 without weights, may be 0)
    single: bool  # one document: its text is cut, the end held out
    mixture: list[dict[str, Any]]  # per source: weight, natural and weighted train bytes


def plan(collected: Collected, val_fraction: float, weights: list[float | None], labels: list[str]) -> Plan:
    n = len(collected.sources)
    single = n == 1
    val = np.zeros(n, dtype=bool) if single else validation_mask(collected.digests, val_fraction)
    copies = np.ones(n, dtype=np.uint32)
    natural = np.bincount(collected.sources[~val], weights=collected.nbytes[~val], minlength=len(labels))
    empty = [labels[s] for s in range(len(labels)) if natural[s] == 0]
    if weights[0] is not None and empty:
        raise DataError(f"source(s) {', '.join(empty)} have a weight but no training text left after cleaning")
    if weights[0] is not None and not single:
        shares = np.asarray(weights, dtype=np.float64) / sum(w for w in weights if w is not None)
        ratio = shares * natural.sum() / natural  # repeat (ratio > 1) or subsample (ratio < 1) each source
        # floor(ratio) copies of every document, and one more for the documents that come first in an order
        # set by their text (bytes 8..16 of the digest, independent of the split's) until the fraction
        # left over is reached in bytes: the source then gets its share to within one document.
        u = collected.digests[:, 8:16].copy().view(">u8")[:, 0]
        for s in range(len(labels)):
            members = np.flatnonzero((collected.sources == s) & ~val)
            whole = np.floor(ratio[s])
            copies[members] = whole
            order = members[np.argsort(u[members], kind="stable")]
            reach = np.cumsum(collected.nbytes[order], dtype=np.float64)
            extra = np.searchsorted(reach, (ratio[s] - whole) * natural[s])  # documents that fit in the rest
            copies[order[:extra]] += 1
        copies[val] = 1
    weighted = np.bincount(
        collected.sources[~val], weights=(collected.nbytes.astype(np.float64) * copies)[~val], minlength=len(labels)
    )
    mixture = [
        {
            "source": labels[s],
            "weight": weights[s],
            "train_bytes": int(natural[s]),
            "weighted_bytes": int(weighted[s]),
            "share": round(float(weighted[s] / max(1, weighted.sum())), 6),
        }
        for s in range(len(labels))
    ]
    return Plan(val, copies, single, mixture)


def outputs(plan: Plan, val_fraction: float, index: int, text: str) -> list[tuple[int, str, int]]:
    """(split 0/1, text, copies) that spill record `index` contributes."""
    if plan.single:
        cut = split_text(text, val_fraction)
        return [(0, text[:cut], 1), (1, text[cut:], 1)]
    return [(int(plan.val[index]), text, 1 if plan.val[index] else int(plan.copies[index]))]


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------


def fit_and_save(task: tuple[Path, str, int, Plan, Collected, float, PipelineSettings]) -> None:
    """fit_tokenizer(*task), saved to `tokenizer.json` in the work directory (for run_apart)."""
    fit_tokenizer(*task).save(task[0] / TOKENIZER_FILE)


def fit_tokenizer(
    work_dir: Path,
    kind: str,
    vocab_size: int,
    plan: Plan,
    collected: Collected,
    val_fraction: float,
    settings: PipelineSettings,
) -> Tokenizer:
    """Train on the train split. A char tokenizer sees all of it (its alphabet is a set union); the BPE
    trainers hold their texts in memory, so they get every document when the train split has at most
    `tokenizer_sample_chars` characters, else a sample of about that size chosen by text hash."""
    train_chars = int(collected.nchars[~plan.val].sum())
    rate = min(1.0, settings.tokenizer_sample_chars / max(1, train_chars))
    u = collected.digests[:, 24:32].copy().view(">u8")[:, 0] / 2.0**64  # independent of split and weights
    alphabet: set[str] = set()
    sample: list[str] = []
    # The BPE sample of a larger corpus: only its documents are read (the spill holds the whole corpus).
    only = None if kind == "char" or rate >= 1.0 or plan.single else ~plan.val & (u < rate)
    for index, _, _, _, text in read_spill(work_dir, only=only):
        for split, part, _ in outputs(plan, val_fraction, index, text):
            if split != 0:
                continue
            if kind == "char":
                alphabet.update(part)
            elif rate >= 1.0 or u[index] < rate:
                sample.append(part)
    # The alphabet as one text trains the same char tokenizer as the texts it came from (a string of
    # distinct characters cannot spell a special token).
    texts = ["".join(sorted(alphabet))] if kind == "char" else sample
    return train_tokenizer(kind, texts, vocab_size, special_tokens=SPECIAL_TOKENS)


# ----------------------------------------------------------------------------------------------------
# Encoding, in any process
# ----------------------------------------------------------------------------------------------------

_tokenizers: dict[str, Tokenizer] = {}


def _quiet_threads() -> None:
    """In a worker process: one thread for HF tokenizers (the workers are the parallelism)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


def encode_batch(task: tuple[str, bool, list[tuple[int, str]]]) -> list[tuple[np.ndarray, int, int]]:
    """(ids with the end-of-text id appended, characters dropped, UTF-8 bytes encoded) for each
    (split, text) of the task. A char tokenizer has no id for a character seen only in validation: such
    characters are dropped."""
    path, fast, items = task
    key = f"{path}@{os.stat(path).st_mtime_ns}"  # a rebuilt tokenizer at the same path is another one
    tokenizer = _tokenizers.get(key)
    if tokenizer is None:
        tokenizer = _tokenizers[key] = load_tokenizer(path, fast=fast)
    dtype = token_dtype(tokenizer.vocab_size)
    known = set(tokenizer.chars) if isinstance(tokenizer, CharTokenizer) else None
    texts, dropped = [], []
    for split, text in items:
        if known is not None and split == 1:
            kept = "".join(ch for ch in text if ch in known)
            dropped.append(len(text) - len(kept))
            text = kept
        else:
            dropped.append(0)
        texts.append(text)
    eot = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    out = []
    # A few documents at a time: a list of Python ints (what a tokenizer without its own encode_arrays
    # makes) costs ~36 bytes a token, the array 2 or 4.
    for i in range(0, len(texts), ENCODE_BATCH):
        part = texts[i : i + ENCODE_BATCH]
        for ids, d, t in zip(tokenizer.encode_arrays(part), dropped[i : i + ENCODE_BATCH], part):
            row = np.empty(ids.size + len(eot), dtype=dtype)
            row[: ids.size] = ids
            row[ids.size :] = eot
            out.append((row, d, len(t) if t.isascii() else len(t.encode("utf-8"))))
    return out


# ----------------------------------------------------------------------------------------------------
# Writing, in corpus order, with a journal
# ----------------------------------------------------------------------------------------------------


class _Split:
    """One split's writer and counters, continued from the journal of an interrupted run if there is one.

    `record`, `offset`, `skip`: the spill record (and its byte offset) inside which the last finished shard
    ended, and how many tokens of that record's output it holds.
    """

    def __init__(self, work_dir: Path, name: str, dtype: np.dtype, shard_tokens: int, state: dict[str, Any]):
        self.name = name
        self.record, self.offset, self.skip = state.get("record", 0), state.get("offset", 0), state.get("skip", 0)
        self.documents, self.bytes = state.get("documents", 0), state.get("bytes", 0)
        self.dropped_chars = state.get("dropped_chars", 0)
        self.source_tokens: dict[str, int] = dict(state.get("source_tokens", {}))
        done = state.get("shards", [])
        for path in work_dir.glob(f"{name}_*.bin"):  # an unfinished shard of an interrupted run
            if path.name not in {s["file"] for s in done}:
                path.unlink()
        self.writer = ShardWriter(work_dir, name, dtype, shard_tokens, done)

    def add(self, ids: np.ndarray, copies: int, skip: int) -> Iterator[int]:
        """Write `copies` times `ids`, less the first `skip` tokens; yields the tokens of this output
        written each time a shard fills."""
        total, pos = copies * ids.size, skip
        while pos < total:  # (an empty `ids` has total 0)
            k = pos % ids.size
            for filled in self.writer.write(ids[k:]):
                yield pos + filled
            pos += ids.size - k

    def state(self, record: int, offset: int, skip: int) -> dict[str, Any]:
        return {
            "shards": [s for s in self.writer.shards if s["tokens"] == self.writer.shard_tokens],
            "record": record,
            "offset": offset,
            "skip": skip,
            "documents": self.documents,
            "bytes": self.bytes,
            "dropped_chars": self.dropped_chars,
            "source_tokens": self.source_tokens,
        }


def encode_all(
    work_dir: Path,
    collected: Collected,
    plan: Plan,
    tokenizer_path: Path,
    fast: bool,
    dtype: np.dtype,
    val_fraction: float,
    settings: PipelineSettings,
    labels: list[str],
    workers: int,
    chunk_mb: float,
    steps: Steps,
) -> tuple[dict[str, Any], int]:
    """Tokenise every kept document into `<split>_NNNN.bin`: meta's "splits" entry, and the characters
    dropped from validation (a char tokenizer's unknown characters)."""
    journal_path = work_dir / JOURNAL_FILE
    journal = read_json(journal_path) if journal_path.is_file() else {}
    splits = [_Split(work_dir, name, dtype, settings.shard_tokens, journal.get(name, {})) for name in SPLITS]
    first = min(splits, key=lambda s: s.record)
    size_limit = batch_chars(chunk_mb, workers)
    pending: deque[list[tuple[int, int, int, int, int]]] = deque()  # (record, offset, split, copies, source)

    def tasks() -> Iterator[tuple[str, bool, list[tuple[int, str]]]]:
        items: list[tuple[int, str]] = []
        where: list[tuple[int, int, int, int, int]] = []
        size = records = 0
        for index, offset, source, _, text in read_spill(work_dir, first.offset, first.record):
            for split, part, copies in outputs(plan, val_fraction, index, text):
                if index >= splits[split].record and copies:
                    items.append((split, part))
                    where.append((index, offset, split, copies, source))
                    size += len(part)
            records += 1
            if size >= size_limit:
                pending.append(where)
                advance(records)  # per batch: rich's advance takes a lock and a timestamp, ~5 µs a call
                records = 0
                yield str(tokenizer_path), fast, items
                items, where, size = [], [], 0
        if items:
            pending.append(where)
            yield str(tokenizer_path), fast, items
        advance(records)

    with steps.bar("tokenising", len(collected.sources) - first.record) as advance:
        for results in ordered_map(encode_batch, tasks(), workers, initializer=_quiet_threads if workers > 1 else None):
            for (index, offset, split_id, copies, source), (ids, dropped, nbytes) in zip(pending.popleft(), results):
                split = splits[split_id]
                skip = split.skip if index == split.record else 0
                if not skip:  # count an output once, before its first token is written
                    split.documents += copies
                    split.bytes += copies * nbytes
                    split.dropped_chars += dropped
                    split.source_tokens[labels[source]] = split.source_tokens.get(labels[source], 0) + copies * ids.size
                for done in split.add(ids, copies, skip):
                    journal[split.name] = split.state(index, offset, done)
                    write_json(journal_path, journal)
    _tokenizers.clear()  # with one worker they lived in this process, word caches and all
    result: dict[str, Any] = {}
    for split in splits:
        shards = split.writer.close()
        result[split.name] = {
            "tokens": sum(s["tokens"] for s in shards),
            "bytes": split.bytes,
            "documents": split.documents,
            "shards": shards,
            "tokens_by_source": dict(sorted(split.source_tokens.items())),
        }
    return result, sum(s.dropped_chars for s in splits)
