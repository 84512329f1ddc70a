"""Token shards: dtype choice, sharding, document separators, meta checks."""

from __future__ import annotations

import numpy as np
import pytest

from reference_llm.data.build import write_split
from reference_llm.data.documents import Document
from reference_llm.data.shards import META_FILE, ShardWriter, open_shards, read_meta, token_dtype, write_meta
from reference_llm.errors import DataError


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255, end-of-text 256; `vocab_size` can be padded to force wide shards."""

    kind = "byte"

    def __init__(self, vocab_size: int = 257):
        self.vocab_size = vocab_size
        self.eot_id = 256

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]


def read_split(out_dir, meta_split, dtype) -> np.ndarray:
    return np.concatenate([np.fromfile(out_dir / s["file"], dtype=dtype) for s in meta_split["shards"]])


@pytest.mark.parametrize("vocab, dtype", [(257, np.uint16), (65536, np.uint16), (65537, np.uint32),
                                          (200_000, np.uint32)])
def test_token_dtype(vocab, dtype):
    assert token_dtype(vocab) == np.dtype(dtype)


def test_write_split_separates_documents_and_shards(tmp_path):
    docs = [Document("a", "hello"), Document("b", "wörld"), Document("c", "")]
    info = write_split(tmp_path, "train", docs, ByteTokenizer(), shard_tokens=4)
    expected = [*b"hello", 256, *"wörld".encode(), 256, 256]
    assert info["tokens"] == len(expected) == 14
    assert info["documents"] == 3 and info["bytes"] == len("hellowörld".encode())
    assert [s["tokens"] for s in info["shards"]] == [4, 4, 4, 2]
    assert [s["file"] for s in info["shards"]] == ["train_0000.bin", "train_0001.bin", "train_0002.bin",
                                                   "train_0003.bin"]
    assert read_split(tmp_path, info, np.uint16).tolist() == expected


def test_wide_vocab_writes_uint32(tmp_path):
    info = write_split(tmp_path, "val", [Document("a", "abc")], ByteTokenizer(vocab_size=70_000), shard_tokens=100)
    assert (tmp_path / "val_0000.bin").stat().st_size == 4 * 4
    assert read_split(tmp_path, info, np.uint32).tolist() == [97, 98, 99, 256]


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
    info = write_split(tmp_path, "train", [Document("a", "abcdef")], ByteTokenizer(), shard_tokens=100)
    meta = {"format": "llmgen-token-shards", "format_version": 1, "dtype": "uint16", "splits": {"train": info}}
    write_meta(tmp_path, meta)
    assert read_meta(tmp_path)["splits"]["train"]["tokens"] == 7
    with pytest.raises(DataError, match="split 'val' not in"):
        open_shards(tmp_path, meta, "val")
    (tmp_path / "train_0000.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataError, match="truncated"):
        open_shards(tmp_path, meta, "train")
