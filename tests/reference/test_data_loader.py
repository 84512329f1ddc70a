"""TokenLoader: shapes, targets, determinism, ranks, exact resume, evaluation batches, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from reference_llm.data.loader import TokenLoader, permute
from reference_llm.data.shards import FORMAT, FORMAT_VERSION, ShardWriter, write_meta
from reference_llm.errors import ConfigError, DataError

VOCAB = 1000


@pytest.fixture
def data_dir(tmp_path):
    """Train tokens 0, 1, 2, ... (mod VOCAB) over several shards, so windows can be checked by value."""
    splits = {}
    for split, n, shard_tokens in (("train", 5000, 1200), ("val", 300, 1000)):
        writer = ShardWriter(tmp_path, split, np.dtype(np.uint16), shard_tokens)
        writer.write(np.arange(n) % VOCAB)
        shards = writer.close()
        splits[split] = {"tokens": n, "shards": shards}
    write_meta(
        tmp_path,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dtype": "uint16",
            "tokenizer": {"fingerprint": "test-fingerprint", "vocab_size": VOCAB},
            "splits": splits,
        },
    )
    return tmp_path


def batches(loader: TokenLoader, n: int) -> list[torch.Tensor]:
    return [torch.stack(loader.next_batch()) for _ in range(n)]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_batch_shapes_and_shifted_targets(data_dir):
    loader = TokenLoader(data_dir, "train", seq_len=16, batch_size=4, seed=0)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal((x + 1) % VOCAB, y)  # the data counts up, so every window is contiguous


def test_windows_start_everywhere(data_dir):
    loader = TokenLoader(data_dir, "train", seq_len=8, batch_size=256, seed=3)
    firsts = set()
    for _ in range(100):
        x, y = loader.next_batch()
        assert torch.equal((x + 1) % VOCAB, y)
        firsts.update(x[:, 0].tolist())
    assert firsts == set(range(VOCAB))


def test_short_final_shard_is_never_sampled_past_its_end(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint16), 10)
    writer.write(np.arange(13))  # shards of 10 and 3 tokens: only the first holds a 5-token window
    write_meta(
        tmp_path,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dtype": "uint16",
            "tokenizer": {"fingerprint": "f"},
            "splits": {"train": {"tokens": 13, "shards": writer.close()}},
        },
    )
    loader = TokenLoader(tmp_path, "train", seq_len=4, batch_size=64, seed=0)
    x, y = loader.next_batch()
    assert loader.num_windows == 6
    assert int(y.max()) <= 9 and set(x[:, 0].tolist()) == set(range(6))


def test_same_seed_same_batches_other_seed_differs(data_dir):
    a = batches(TokenLoader(data_dir, "train", 16, 4, seed=7), 5)
    b = batches(TokenLoader(data_dir, "train", 16, 4, seed=7), 5)
    c = batches(TokenLoader(data_dir, "train", 16, 4, seed=8), 5)
    assert same(a, b)
    assert not same(a, c)


def test_ranks_get_different_deterministic_streams(data_dir):
    rank0 = batches(TokenLoader(data_dir, "train", 16, 4, seed=7, rank=0, world_size=2), 3)
    rank1 = batches(TokenLoader(data_dir, "train", 16, 4, seed=7, rank=1, world_size=2), 3)
    rank1_again = batches(TokenLoader(data_dir, "train", 16, 4, seed=7, rank=1, world_size=2), 3)
    assert not any(torch.equal(p, q) for p, q in zip(rank0, rank1, strict=True))
    assert same(rank1, rank1_again)


def test_state_round_trip_through_json_resumes_exactly(data_dir):
    original = TokenLoader(data_dir, "train", 16, 4, seed=7, rank=1, world_size=2)
    batches(original, 3)
    saved = json.loads(json.dumps(original.state_dict()))
    expected = batches(original, 4)
    restored = TokenLoader(data_dir, "train", 16, 4, seed=7, rank=1, world_size=2)
    restored.load_state_dict(saved)
    assert same(expected, batches(restored, 4))


def test_rank0_state_restores_other_ranks(data_dir):
    """Checkpoints hold rank 0's loader state; every rank continues its own stream from it."""
    r0 = TokenLoader(data_dir, "train", 16, 4, seed=7, rank=0, world_size=2)
    r1 = TokenLoader(data_dir, "train", 16, 4, seed=7, rank=1, world_size=2)
    batches(r0, 2)
    batches(r1, 2)
    saved = r0.state_dict()
    expected_r1 = batches(r1, 2)
    fresh_r1 = TokenLoader(data_dir, "train", 16, 4, seed=7, rank=1, world_size=2)
    fresh_r1.load_state_dict(saved)
    assert same(expected_r1, batches(fresh_r1, 2))


def test_mismatched_state_is_refused(data_dir):
    state = TokenLoader(data_dir, "train", 16, 4, seed=7).state_dict()
    other = TokenLoader(data_dir, "train", 16, 8, seed=7)
    with pytest.raises(DataError, match="batch_size"):
        other.load_state_dict(state)


def test_eval_batches_are_fixed_and_spread(data_dir):
    loader = TokenLoader(data_dir, "val", seq_len=16, batch_size=2, seed=1)
    first = [torch.stack(b) for b in loader.iter_eval_batches(3)]
    loader.next_batch()
    again = [torch.stack(b) for b in TokenLoader(data_dir, "val", 16, 2, seed=99).iter_eval_batches(3)]
    assert len(first) == 3 and same(first, again)
    starts = [int(x[i, 0]) for x, _ in loader.iter_eval_batches(3) for i in range(2)]
    assert starts[0] == 0 and starts[-1] == 300 - 17 and starts == sorted(starts)


def test_bad_arguments(data_dir):
    with pytest.raises(DataError, match="no shard longer than seq_len"):
        TokenLoader(data_dir, "val", seq_len=300, batch_size=1, seed=0)
    with pytest.raises(DataError, match="split 'test' not in"):
        TokenLoader(data_dir, "test", seq_len=8, batch_size=1, seed=0)
    with pytest.raises(ConfigError, match="rank"):
        TokenLoader(data_dir, "train", seq_len=8, batch_size=1, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="seq_len"):
        TokenLoader(data_dir, "train", seq_len=0, batch_size=1, seed=0)


# -- epoch mode ----------------------------------------------------------------------------------------


@pytest.fixture
def counting_dir(tmp_path):
    """Train tokens 0..4999 in shards of 1200: a window's first token says where it starts."""
    writer = ShardWriter(tmp_path, "train", np.dtype(np.uint16), 1200)
    writer.write(np.arange(5000))
    write_meta(
        tmp_path,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "dtype": "uint16",
            "tokenizer": {"fingerprint": "f", "vocab_size": 5000},
            "splits": {"train": {"tokens": 5000, "shards": writer.close()}},
        },
    )
    return tmp_path


def global_order(data_dir, seq_len: int, batch: int, world: int, steps: int, seed: int = 5) -> list[int]:
    """First token of every window drawn, in global order: step k, then rank r, then batch slot."""
    loaders = [
        TokenLoader(data_dir, "train", seq_len, batch, seed, rank=r, world_size=world, sampling="epoch")
        for r in range(world)
    ]
    per_step = [[loader.next_batch()[0][:, 0].tolist() for loader in loaders] for _ in range(steps)]
    return [t for step in per_step for rank in step for t in rank]


@pytest.mark.parametrize("world", [1, 2])
def test_epoch_visits_every_window_once_per_epoch(counting_dir, world):
    seq_len, batch = 16, 4
    loader = TokenLoader(counting_dir, "train", seq_len, batch, seed=5, sampling="epoch")
    n = loader.num_epoch_windows
    # Non-overlapping windows of 17 tokens at stride 16 inside each shard (1200, 1200, 1200, 1200, 200).
    windows = {shard * 1200 + w * 16 for shard in range(4) for w in range(1199 // 16)} | {
        4800 + w * 16 for w in range(199 // 16)
    }
    assert n == len(windows) == 4 * 74 + 12
    steps = 2 * n // (world * batch) + 3  # two whole epochs and the start of a third
    order = global_order(counting_dir, seq_len, batch, world, steps)
    first, second = order[:n], order[n : 2 * n]
    assert sorted(first) == sorted(second) == sorted(windows)  # each window exactly once per epoch...
    assert first != second  # ... in a different order each epoch
    assert global_order(counting_dir, seq_len, batch, world, steps) == order  # and reproducibly


def test_epoch_windows_are_contiguous(counting_dir):
    x, y = TokenLoader(counting_dir, "train", seq_len=16, batch_size=8, seed=0, sampling="epoch").next_batch()
    assert torch.equal(x + 1, y) and torch.equal(x[:, 1:], x[:, :-1] + 1)
    assert all(int(start) % 1200 % 16 == 0 for start in x[:, 0])


def test_epoch_state_resumes_exactly_and_seed_changes_order(counting_dir):
    original = TokenLoader(counting_dir, "train", 16, 4, seed=7, rank=1, world_size=2, sampling="epoch")
    batches(original, 50)  # past the first epoch boundary (308 windows, 8 per global step)
    saved = json.loads(json.dumps(original.state_dict()))
    assert saved["sampling"] == "epoch" and original.epoch > 1
    expected = batches(original, 5)
    restored = TokenLoader(counting_dir, "train", 16, 4, seed=7, rank=1, world_size=2, sampling="epoch")
    restored.load_state_dict(saved)
    assert same(expected, batches(restored, 5))
    assert global_order(counting_dir, 16, 4, 1, 3, seed=7) != global_order(counting_dir, 16, 4, 1, 3, seed=8)
    random_mode = TokenLoader(counting_dir, "train", 16, 4, seed=7, rank=1, world_size=2)
    with pytest.raises(DataError, match="sampling"):
        random_mode.load_state_dict(saved)
    with pytest.raises(ConfigError, match="sampling"):
        TokenLoader(counting_dir, "train", 16, 4, seed=7, sampling="shuffle")


def test_permutation_is_a_bijection_for_any_size():
    for n in (1, 2, 3, 17, 1000, 4097):
        assert sorted(permute(np.arange(n), n, [3, 0]).tolist()) == list(range(n))
