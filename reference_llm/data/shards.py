"""Token shards on disk: flat binary files of token ids (read back with np.memmap) and their meta.json.

A prepared directory holds `meta.json`, `tokenizer.json` and `<split>_NNNN.bin` files. Each .bin file is a
headerless array of `meta["dtype"]` ids (uint16 while the vocabulary fits in 65,536 ids, as in nanoGPT,
else uint32), documents concatenated with the end-of-text id after each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from reference_llm.errors import DataError

META_FILE = "meta.json"
FORMAT = "llmgen-token-shards"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds ids 0..vocab_size-1."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise DataError(f"vocab_size {vocab_size} does not fit in 32-bit token ids")


class ShardWriter:
    """Appends token ids to `<split>_0000.bin`, `<split>_0001.bin`, ... of at most `shard_tokens` each.

    A shard is closed and synced to disk the moment it is full, so that a journal written then can name
    it as finished; `done` continues after shards an interrupted run finished (later files are replaced).
    """

    def __init__(
        self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int, done: list[dict[str, Any]] | None = None
    ):
        self.out_dir, self.split, self.dtype, self.shard_tokens = Path(out_dir), split, np.dtype(dtype), shard_tokens
        self.shards: list[dict[str, Any]] = [dict(s) for s in done or []]
        self._file: Any = None

    def write(self, ids: np.ndarray) -> list[int]:
        """Append `ids`; returns, for each shard this call filled, how many of `ids` were written by then."""
        ids = np.asarray(ids)
        # Ids of the shards' own dtype (what encode_batch sends) fit by construction: no min/max pass.
        if ids.dtype != self.dtype:
            if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(self.dtype).max):
                raise DataError(f"token id out of range for {self.dtype} shards: {int(ids.min())}..{int(ids.max())}")
            ids = ids.astype(self.dtype)
        filled, written = [], 0
        while written < ids.size:
            if self._file is None:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part = ids[written : written + room]
            # The buffered file's write, not ndarray.tofile, which flushes the file and duplicates its
            # descriptor on every call (~10 µs a document); the same bytes, in native order.
            self._file.write(np.ascontiguousarray(part).data)
            self.shards[-1]["tokens"] += part.size
            written += part.size
            if self.shards[-1]["tokens"] == self.shard_tokens:
                self._close_file()
                filled.append(written)
        return filled

    def _open_next(self) -> None:
        name = f"{self.split}_{len(self.shards):04d}.bin"
        self._file = (self.out_dir / name).open("wb", buffering=1 << 20)
        self.shards.append({"file": name, "tokens": 0})

    def _close_file(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def close(self) -> list[dict[str, Any]]:
        """Finish the last shard; returns [{"file", "tokens"}] per shard."""
        if self._file is not None:
            self._close_file()
        return self.shards


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    write_json(Path(out_dir) / META_FILE, meta)


def write_json(path: Path, obj: Any) -> None:
    """Write through a temporary file and rename, so that a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    """Load and check `meta.json` of a prepared directory (its shard files must exist with the right sizes)."""
    path = Path(data_dir) / META_FILE
    if not path.is_file():
        raise DataError(
            f"{data_dir} is not a prepared data directory: {META_FILE} not found "
            f"(build one with python -m reference_llm.data.prepare)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{path}: not a {FORMAT} v{FORMAT_VERSION} file; delete {data_dir} and prepare again")
    return meta


def open_shards(data_dir: str | Path, meta: dict[str, Any], split: str) -> list[np.memmap]:
    """Read-only memory maps of a split's shards (nothing is read until indexed)."""
    splits = meta.get("splits", {})
    if split not in splits:
        raise DataError(f"split {split!r} not in {data_dir}; available: {', '.join(splits) or 'none'}")
    dtype = np.dtype(meta["dtype"])
    maps = []
    for shard in splits[split]["shards"]:
        path = Path(data_dir) / shard["file"]
        expected = shard["tokens"] * dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            raise DataError(
                f"shard {path} is missing or truncated (expected {expected} bytes); delete {data_dir} and prepare again"
            )
        if shard["tokens"]:
            maps.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard["tokens"],)))
    return maps
