"""`prepare_data`: corpus -> cleaned documents -> tokenizer (trained on the train split) -> token shards,
cached under `cache_dir/<tokenizer>-<vocab>-<key>/` where the key hashes the corpus bytes and every setting.

A second call with the same corpus and settings finds the directory and returns at once. A build runs in
`.<name>.partial/` and is renamed into place when meta.json is written, so nothing unfinished looks
finished. It runs in two passes (reference_llm.data.collect, then reference_llm.data.encode); an
interrupted build continues where it stopped: after pass 1 it is not redone, and finished shards are
kept. A lock on the cache directory makes concurrent builders (several ranks, say) wait for one another.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reference_llm.config import CHOICES, DataConfig
from reference_llm.data.collect import Collected, collect
from reference_llm.data.encode import TOKENIZER_FILE, encode_all, fit_and_save, plan
from reference_llm.data.parallel import default_workers, run_apart
from reference_llm.data.pipeline import PipelineSettings
from reference_llm.data.progress import Steps
from reference_llm.data.shards import FORMAT, FORMAT_VERSION, read_meta, token_dtype, write_json, write_meta
from reference_llm.data.sources import Discovery, SourceFile, discover
from reference_llm.errors import ConfigError, DataError
from reference_llm.tokenizer import Tokenizer, load_tokenizer

PIPELINE_VERSION = 2  # bump when the same inputs would now produce different shards: old caches then miss
STATE_FILE = "state.json"  # in the work directory: which passes are done
SCRATCH = (
    "documents.bin",
    "names.bin",
    "signatures.bin",
    "collected.npz",
    "collected.json",
    "progress.json",
    STATE_FILE,
)


@dataclass
class PreparedData:
    dir: Path  # pass to TokenLoader
    meta: dict[str, Any]  # meta.json: tokenizer, dtype, splits (tokens, bytes, shards), sources, settings, report
    tokenizer: Tokenizer
    from_cache: bool  # True when an existing directory was reused


def prepare_data(
    data_cfg: DataConfig, settings: PipelineSettings | None = None, *, progress: bool | None = None
) -> PreparedData:
    """Build (or reuse) the tokenizer and token shards for `data_cfg`. `progress=None`: bars on a terminal.

    Files of the corpus that are not read (unknown format, broken links, ...) are listed on stderr.
    """
    settings = settings or PipelineSettings()
    _check(data_cfg)
    found = discover(data_cfg.source_list(), strict=data_cfg.strict, skip_bad=data_cfg.skip_bad)
    if summary := found.skip_summary():
        print(f"note: {summary}", file=sys.stderr)
    cache_root = Path(data_cfg.cache_dir)
    final = cache_root / cache_key(data_cfg, settings, found.files)
    if final.exists():
        return load_prepared(final, from_cache=True)
    work = cache_root / f".{final.name}.partial"
    with _exclusive(cache_root):
        if final.exists():  # another process built it while this one waited
            return load_prepared(final, from_cache=True)
        try:
            work.mkdir(exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create {work}: {exc.strerror or exc}") from None
        with Steps(progress) as steps:
            build(found, data_cfg, settings, work, steps)
        for name in SCRATCH:
            (work / name).unlink(missing_ok=True)
        work.rename(final)
    return load_prepared(final, from_cache=False)


def load_prepared(data_dir: str | Path, from_cache: bool = True) -> PreparedData:
    """Open a prepared directory; its tokenizer must be the one the shards were made with."""
    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    # "bpe" and "hf-bpe" share one file format; ask for the kind that was trained, for the same encoder.
    tokenizer = load_tokenizer(data_dir / TOKENIZER_FILE, fast=meta["tokenizer"]["kind"] == "hf-bpe")
    if tokenizer.fingerprint() != meta["tokenizer"]["fingerprint"]:
        raise DataError(
            f"{data_dir / TOKENIZER_FILE} does not match the fingerprint in meta.json; "
            f"delete {data_dir} and prepare again"
        )
    return PreparedData(data_dir, meta, tokenizer, from_cache)


def cache_key(data_cfg: DataConfig, settings: PipelineSettings, files: list[SourceFile]) -> str:
    """`<tokenizer>-<vocab>-<16 hex>`: a hash of the corpus bytes, file names and every setting."""
    blob = json.dumps(
        {
            "pipeline_version": PIPELINE_VERSION,
            "sources": [[f.name, f.sha256, f.format, f.compression, f.text_field, f.source] for f in files],
            "data": _data_settings(data_cfg),
            "pipeline": settings.to_dict(),
        },
        sort_keys=True,
    )
    vocab = "alphabet" if data_cfg.tokenizer == "char" else str(data_cfg.vocab_size)
    return f"{data_cfg.tokenizer}-{vocab}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def build(
    found: Discovery, data_cfg: DataConfig, settings: PipelineSettings, work: Path, steps: Steps
) -> dict[str, Any]:
    """Run (or continue) the whole pipeline in `work`: tokenizer.json, shards and meta.json. Returns the meta."""
    workers = data_cfg.workers or default_workers()
    if sum(f.size for f in found.files) < data_cfg.chunk_mb * 1e6 / 4:
        workers = 1  # starting processes would cost more than the work they share
    state = _read_state(work)
    if state.get("collected"):
        collected = Collected.load(work)
        print(f"note: continuing the interrupted build in {work}", file=sys.stderr)
    else:
        for path in work.iterdir():  # scraps of a pass 1 that did not finish: it starts over
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        try:
            collected = collect(found, data_cfg, settings, work, workers, steps)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        collected.save(work)
        _write_state(work, {"collected": True})

    sources = data_cfg.source_list()
    labels = [s.label for s in sources]
    split_plan = plan(collected, data_cfg.val_fraction, [s.weight for s in sources], labels)
    tokenizer_path = work / TOKENIZER_FILE
    fast = data_cfg.tokenizer == "hf-bpe"
    if not _read_state(work).get("tokenizer"):
        task = (work, data_cfg.tokenizer, data_cfg.vocab_size, split_plan, collected, data_cfg.val_fraction, settings)
        with steps.step(f"training {data_cfg.tokenizer} tokenizer"):
            # With workers to spare, in a process of its own: the training texts' memory then goes back to
            # the system instead of staying with this process while the workers tokenise.
            if workers > 1:
                run_apart(fit_and_save, task)
            else:
                fit_and_save(task)
        _write_state(work, {"collected": True, "tokenizer": True})
    tokenizer = load_tokenizer(tokenizer_path, fast=fast)

    splits, dropped = encode_all(
        work,
        collected,
        split_plan,
        tokenizer_path,
        fast,
        token_dtype(tokenizer.vocab_size),
        data_cfg.val_fraction,
        settings,
        labels,
        workers,
        data_cfg.chunk_mb,
        steps,
    )
    report = dict(collected.report)
    if tokenizer.kind == "char":
        report["val_chars_without_id"] = dropped
    report["skipped_files"] = {
        reason: {"count": len(paths), "items": paths[:100]} for reason, paths in sorted(found.skipped.items())
    }
    report["hidden_files"] = found.hidden
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "pipeline_version": PIPELINE_VERSION,
        "tokenizer": {
            "kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id,
            "fingerprint": tokenizer.fingerprint(),
            "file": TOKENIZER_FILE,
        },
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "splits": splits,
        "sources": [
            {
                "name": f.name,
                "sha256": f.sha256,
                "bytes": f.size,
                "format": f.format,
                "compression": f.compression,
                "source": labels[f.source],
            }
            for f in found.files
        ],
        "mixture": split_plan.mixture,
        "settings": {"data": _data_settings(data_cfg), "pipeline": settings.to_dict()},
        "report": report,
    }
    write_meta(work, meta)
    return meta


@contextmanager
def _exclusive(cache_root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache directory itself (waiting, with a note, while another process
    builds there). A lock file could not be removed safely, and the directory outlives every build."""
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache_root, os.O_RDONLY)
    except OSError as exc:
        raise DataError(f"cannot create data.cache_dir {cache_root}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"note: waiting for another process that is preparing data in {cache_root}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a file system without locks: builders must not run at once
            print(
                f"note: cannot lock {cache_root} ({exc.strerror}); do not prepare the same data from several "
                f"processes at once",
                file=sys.stderr,
            )
        yield
    finally:
        os.close(fd)


def _read_state(work: Path) -> dict[str, Any]:
    path = work / STATE_FILE
    result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return result


def _write_state(work: Path, state: dict[str, Any]) -> None:
    write_json(work / STATE_FILE, state)


def _check(data_cfg: DataConfig) -> None:
    kinds = CHOICES["data.tokenizer"]
    if data_cfg.tokenizer not in kinds:
        raise ConfigError(f"data.tokenizer must be one of {', '.join(kinds)}; got {data_cfg.tokenizer!r}")
    if not 0.0 < data_cfg.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {data_cfg.val_fraction}")


def _data_settings(data_cfg: DataConfig) -> dict[str, Any]:
    """The DataConfig fields that shape the result (not where the corpus or the cache live, nor how many
    workers or how much memory it took)."""
    out: dict[str, Any] = {
        "tokenizer": data_cfg.tokenizer,
        "vocab_size": data_cfg.vocab_size,
        "val_fraction": data_cfg.val_fraction,
        "skip_bad": data_cfg.skip_bad,
    }
    weights = [s.weight for s in data_cfg.source_list()]
    if weights[0] is not None:
        out["weights"] = {s.label: s.weight for s in data_cfg.source_list()}
    return out
