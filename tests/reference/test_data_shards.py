"""Token shards: dtype choice, sharding, document separators, meta checks."""

from __future__ import annotations

import numpy as np
import pytest

from reference_llm.data.shards import META_FILE, ShardWriter, open_shards, read_meta, token_dtype, write_meta
from reference_llm.errors import DataError


def write_split(out_dir, split, texts, shard_tokens, dtype=np.uint16) -> dict:
    """UTF-8 bytes as ids, end-of-text 256 after each text, through a ShardWriter."""
    writer = ShardWriter(out_dir, split, np.dtype(dtype), shard_tokens)
    for text in texts:
        writer.write(np.array([*text.encode("utf-8"), 256]))
    shards = writer.close()
    return {"tokens": sum(s["tokens"] for s in shards), "shards": shards}


def read_split(out_dir, meta_split, dtype) -> np.ndarray:
    return np.concatenate([np.fromfile(out_dir / s["file"], dtype=dtype) for s in meta_split["shards"]])


@pytest.mark.parametrize(
    "vocab, dtype", [(257, np.uint16), (65536, np.uint16), (65537, np.uint32), (200_000, np.uint32)]
)
def test_token_dtype(vocab, dtype):
    assert token_dtype(vocab) == np.dtype(dtype)


def test_shard_writer_fills_shards_in_order(tmp_path):
    info = write_split(tmp_path, "train", ["hello", "wörld", ""], shard_tokens=4)
    expected = [*b"hello", 256, *"wörld".encode(), 256, 256]
    assert info["tokens"] == len(expected) == 14
    assert [s["tokens"] for s in info["shards"]] == [4, 4, 4, 2]
    assert [s["file"] for s in info["shards"]] == [
        "train_0000.bin",
        "train_0001.bin",
        "train_0002.bin",
        "train_0003.bin",
    ]
    assert read_split(tmp_path, info, np.uint16).tolist() == expected


def test_wide_vocab_writes_uint32(tmp_path):
    info = write_split(tmp_path, "val", ["abc"], shard_tokens=100, dtype=np.uint32)
    assert (tmp_path / "val_0000.bin").stat().st_size == 4 * 4
    assert read_split(tmp_path, info, np.uint32).tolist() == [97, 98, 99, 256]


def test_shard_writer_reports_filled_shards_and_continues_after_finished_ones(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint16), 4)
    assert writer.write(np.arange(3)) == []
    assert writer.write(np.arange(10, 20)) == [1, 5, 9]  # ids written when each shard filled
    done = [s for s in writer.shards if s["tokens"] == 4]
    assert [s["file"] for s in done] == ["train_0000.bin", "train_0001.bin", "train_0002.bin"]
    # An interrupted run continues after the finished shards: the next file is train_0003.bin.
    resumed = ShardWriter(tmp_path, "train", np.dtype(np.uint16), 4, done)
    resumed.write(np.array([7, 8]))
    assert [s["file"] for s in resumed.close()][-1] == "train_0003.bin"
    assert np.fromfile(tmp_path / "train_0003.bin", dtype=np.uint16).tolist() == [7, 8]


def test_shard_writer_rejects_ids_that_do_not_fit(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint16), 10)
    with pytest.raises(DataError, match="out of range"):
        writer.write(np.array([1, 70_000]))


def test_read_meta_and_open_shards_check_files(tmp_path):
    with pytest.raises(DataError, match="meta.json not found"):
        read_meta(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_meta(tmp_path)
    info = write_split(tmp_path, "train", ["abcdef"], shard_tokens=100)
    meta = {"format": "llmgen-token-shards", "format_version": 1, "dtype": "uint16", "splits": {"train": info}}
    write_meta(tmp_path, meta)
    assert read_meta(tmp_path)["splits"]["train"]["tokens"] == 7
    with pytest.raises(DataError, match="split 'val' not in"):
        open_shards(tmp_path, meta, "val")
    (tmp_path / "train_0000.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="truncated"):
        open_shards(tmp_path, meta, "train")
