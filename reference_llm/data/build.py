"""`prepare_data`: corpus -> cleaned documents -> tokenizer (trained on the train split) -> token shards,
cached under `cache_dir/<tokenizer>-<vocab>-<key>/` where the key hashes the corpus bytes and every setting.

A second call with the same corpus and settings finds the directory and returns at once. Directories are
built under a temporary name and renamed into place, so an interrupted build leaves nothing that looks
finished, and concurrent builders (several ranks, say) cannot leave a mixed result.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reference_llm.config import CHOICES, DataConfig
from reference_llm.data.documents import Document, SourceFile, list_sources, read_documents
from reference_llm.data.pipeline import PipelineSettings, clean_documents, split_documents
from reference_llm.data.progress import Steps
from reference_llm.data.shards import FORMAT, FORMAT_VERSION, ShardWriter, read_meta, token_dtype, write_meta
from reference_llm.errors import ConfigError, DataError
from reference_llm.tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from reference_llm.tokenizer.base import EOT

PIPELINE_VERSION = 1  # bump when the same inputs would now produce different shards: old caches then miss
TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = (EOT,)
ENCODE_BATCH = 64  # documents per encode_batch call (one progress-bar tick)


@dataclass
class PreparedData:
    dir: Path  # pass to TokenLoader
    meta: dict[str, Any]  # meta.json: tokenizer, dtype, splits (tokens, bytes, shards), sources, settings, report
    tokenizer: Tokenizer
    from_cache: bool  # True when an existing directory was reused


def prepare_data(data_cfg: DataConfig, settings: PipelineSettings | None = None, *,
                 progress: bool | None = None) -> PreparedData:
    """Build (or reuse) the tokenizer and token shards for `data_cfg`. `progress=None`: bars on a terminal."""
    settings = settings or PipelineSettings()
    _check(data_cfg)
    sources = list_sources(data_cfg.corpus)
    cache_root = Path(data_cfg.cache_dir)
    final = cache_root / cache_key(data_cfg, settings, sources)
    if final.exists():
        return load_prepared(final, from_cache=True)
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        # Not tempfile.mkdtemp: its mode 0700 would survive the rename and hide the cache from other users.
        tmp = cache_root / f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        tmp.mkdir()
    except OSError as exc:
        raise DataError(f"cannot create data.cache_dir {cache_root}: {exc.strerror or exc}") from None
    try:
        with Steps(progress) as steps:
            build(sources, data_cfg, settings, tmp, steps)
        try:
            tmp.rename(final)
        except OSError:
            if not final.exists():  # not a lost race with another builder: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_prepared(final, from_cache=False)


def load_prepared(data_dir: str | Path, from_cache: bool = True) -> PreparedData:
    """Open a prepared directory; its tokenizer must be the one the shards were made with."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    # "bpe" and "hf-bpe" share one file format; ask for the kind that was trained, for the same encoder.
    tokenizer = load_tokenizer(data_dir / TOKENIZER_FILE, fast=meta["tokenizer"]["kind"] == "hf-bpe")
    if tokenizer.fingerprint() != meta["tokenizer"]["fingerprint"]:
        raise DataError(f"{data_dir / TOKENIZER_FILE} does not match the fingerprint in meta.json; "
                        f"delete {data_dir} and prepare again")
    return PreparedData(data_dir, meta, tokenizer, from_cache)


def cache_key(data_cfg: DataConfig, settings: PipelineSettings, sources: list[SourceFile]) -> str:
    """`<tokenizer>-<vocab>-<16 hex>`: a hash of the corpus bytes, file names and every setting."""
    blob = json.dumps({
        "pipeline_version": PIPELINE_VERSION,
        "sources": [[s.name, s.sha256] for s in sources],
        "data": _data_settings(data_cfg),
        "pipeline": settings.to_dict(),
    }, sort_keys=True)
    vocab = "alphabet" if data_cfg.tokenizer == "char" else str(data_cfg.vocab_size)
    return f"{data_cfg.tokenizer}-{vocab}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def build(sources: list[SourceFile], data_cfg: DataConfig, settings: PipelineSettings, out_dir: Path,
          steps: Steps) -> dict[str, Any]:
    """Run the whole pipeline into `out_dir`: tokenizer.json, shards and meta.json. Returns the meta."""
    docs = read_documents(sources)
    docs, report = clean_documents(docs, settings, steps)
    if not docs:
        raise DataError(_nothing_left_message(data_cfg.corpus, report))
    docs, report["special_token_strings_removed"] = _remove_special_strings(docs)
    train, val = split_documents(docs, data_cfg.val_fraction)

    with steps.step(f"training {data_cfg.tokenizer} tokenizer"):
        tokenizer = train_tokenizer(data_cfg.tokenizer, [d.text for d in train], data_cfg.vocab_size,
                                    special_tokens=SPECIAL_TOKENS)
    tokenizer.save(out_dir / TOKENIZER_FILE)
    if tokenizer.kind == "char":
        # The alphabet comes from the train split only; characters seen only in validation have no id.
        val, report["val_chars_without_id"] = _drop_unknown_chars(val, set(tokenizer.chars))

    splits = {name: write_split(out_dir, name, split_docs, tokenizer, settings.shard_tokens, steps)
              for name, split_docs in (("train", train), ("val", val))}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
                      "fingerprint": tokenizer.fingerprint(), "file": TOKENIZER_FILE},
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "splits": splits,
        "sources": [{"name": s.name, "sha256": s.sha256, "bytes": s.size} for s in sources],
        "settings": {"data": _data_settings(data_cfg), "pipeline": settings.to_dict()},
        "report": report,
    }
    write_meta(out_dir, meta)
    return meta


def write_split(out_dir: Path, split: str, docs: list[Document], tokenizer: Tokenizer, shard_tokens: int,
                steps: Steps | None = None) -> dict[str, Any]:
    """Tokenise `docs` into `<split>_NNNN.bin` shards, the end-of-text id (if any) after each document.

    Returns the split's meta entry: tokens, bytes (UTF-8 bytes of the text, for bits per byte),
    documents and shards.
    """
    steps = steps or Steps(enabled=False)
    writer = ShardWriter(out_dir, split, token_dtype(tokenizer.vocab_size), shard_tokens)
    eot = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    batches = [docs[i:i + ENCODE_BATCH] for i in range(0, len(docs), ENCODE_BATCH)]
    for batch in steps.track(batches, f"tokenising {split}"):
        for ids in tokenizer.encode_batch([d.text for d in batch]):
            writer.write(np.asarray(ids + eot, dtype=np.int64))
    shards = writer.close()
    return {"tokens": sum(s["tokens"] for s in shards), "bytes": sum(len(d.text.encode("utf-8")) for d in docs),
            "documents": len(docs), "shards": shards}


def _check(data_cfg: DataConfig) -> None:
    kinds = CHOICES["data.tokenizer"]
    if data_cfg.tokenizer not in kinds:
        raise ConfigError(f"data.tokenizer must be one of {', '.join(kinds)}; got {data_cfg.tokenizer!r}")
    if not 0.0 < data_cfg.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {data_cfg.val_fraction}")


def _data_settings(data_cfg: DataConfig) -> dict[str, Any]:
    """The DataConfig fields that shape the result (not where the corpus or the cache live)."""
    return {"tokenizer": data_cfg.tokenizer, "vocab_size": data_cfg.vocab_size,
            "val_fraction": data_cfg.val_fraction}


def _remove_special_strings(docs: list[Document]) -> tuple[list[Document], int]:
    """Delete literal "<|endoftext|>" text: encoded, it would become a document boundary mid-document."""
    removed = sum(d.text.count(s) for d in docs for s in SPECIAL_TOKENS)
    if removed:
        docs = [Document(d.source, _strip_all(d.text)) for d in docs]
    return docs, removed


def _strip_all(text: str) -> str:
    for s in SPECIAL_TOKENS:
        text = text.replace(s, "")
    return text


def _drop_unknown_chars(docs: list[Document], alphabet: set[str]) -> tuple[list[Document], int]:
    dropped = sum(1 for d in docs for ch in d.text if ch not in alphabet)
    if dropped:
        docs = [Document(d.source, "".join(ch for ch in d.text if ch in alphabet)) for d in docs]
    return docs, dropped


def _nothing_left_message(corpus: str, report: dict[str, Any]) -> str:
    if report["chars_after_normalising"] == 0:
        return f"corpus {corpus} is empty (no text after normalisation)"
    removed = [f"{name} {info['dropped']}" for name, info in report["filters"].items() if info["dropped"]]
    removed += [f"{stage} {report[stage]['dropped']}" for stage in ("exact_dedup", "near_dedup")
                if report.get(stage, {}).get("dropped")]
    return (f"every document of corpus {corpus} was removed ({', '.join(removed)} of {report['documents_in']}); "
            f"loosen the filters (e.g. --set filters.min_chars=0)")
