"""`TokenLoader`: windows of a prepared split, reproducible from a seed and resumable exactly.

sampling="random" (the default, as nanoGPT does): batch number k of rank r is drawn by a numpy Generator
seeded with (seed, rank, k), uniformly over all valid start positions of the split, with replacement.

sampling="epoch": the split is cut into non-overlapping windows (stride seq_len, each with its next-token
target), and every epoch visits each window exactly once, in an order that a keyed permutation of the
window numbers gives for (seed, epoch). Global batch k takes positions k*world*B ... (k+1)*world*B - 1 of
that sequence of epochs, rank r its r-th slice, so ranks never see the same window in an epoch.

Either way the loader's whole state is the counter k, which makes a checkpoint written by rank 0 restore
every rank. Windows lie inside one shard and are read through read-only memory maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reference_llm.data.shards import open_shards, read_meta
from reference_llm.errors import ConfigError, DataError

STATE_VERSION = 1
SAMPLINGS = ("random", "epoch")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_FEISTEL_ROUNDS = 4


class TokenLoader:
    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        sampling: str = "random",
    ):
        if sampling not in SAMPLINGS:
            raise ConfigError(f"sampling must be one of {', '.join(SAMPLINGS)}, got {sampling!r}")
        if seq_len < 1 or batch_size < 1:
            raise ConfigError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in 0..world_size-1, got rank={rank}, world_size={world_size}")
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.seed, self.rank, self.world_size, self.sampling = seed, rank, world_size, sampling
        self.step = 0  # batches drawn so far: the whole sampling state
        self._shards = open_shards(self.dir, self.meta, split)
        # A window needs seq_len + 1 tokens (inputs plus the next-token targets).
        starts = np.array([max(0, len(s) - seq_len) for s in self._shards], dtype=np.int64)
        self._cum_starts = np.cumsum(starts)
        # Epoch windows: tokens [w*seq_len, (w+1)*seq_len] of a shard, for every w that fits.
        self._cum_epoch = np.cumsum([max(0, (len(s) - 1) // seq_len) for s in self._shards], dtype=np.int64)
        self.num_tokens = int(sum(len(s) for s in self._shards))
        if self.num_windows == 0:
            raise DataError(
                f"the {split!r} split of {self.dir} has no shard longer than seq_len + 1 = "
                f"{seq_len + 1} tokens ({self.num_tokens} tokens in all); use a shorter "
                f"seq_len or more data"
            )

    @property
    def num_windows(self) -> int:
        """Distinct start positions a window can have."""
        return int(self._cum_starts[-1]) if self._cum_starts.size else 0

    @property
    def num_epoch_windows(self) -> int:
        """Windows of one epoch (sampling="epoch"): non-overlapping, seq_len + 1 tokens each."""
        return int(self._cum_epoch[-1]) if self._cum_epoch.size else 0

    @property
    def epoch(self) -> float:
        """Epochs completed so far, counting all ranks' windows (sampling="epoch" only)."""
        return self.step * self.world_size * self.batch_size / max(1, self.num_epoch_windows)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 tensors of shape (batch_size, seq_len), with y[:, t] == the token after x[:, t]."""
        if self.sampling == "epoch":
            first = (self.step * self.world_size + self.rank) * self.batch_size
            self.step += 1
            return self._gather_epoch(np.arange(first, first + self.batch_size, dtype=np.int64))
        rng = np.random.default_rng([self.seed, self.rank, self.step])
        self.step += 1
        return self._gather(rng.integers(0, self.num_windows, size=self.batch_size))

    def _gather_epoch(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows at positions of the endless sequence of epochs (position p: epoch p // N, slot p % N)."""
        n = self.num_epoch_windows  # > 0: a shard with a random window has an epoch window too
        windows = np.empty_like(positions)
        epochs = positions // n
        for epoch in np.unique(epochs):
            here = epochs == epoch
            windows[here] = permute(positions[here] % n, n, [self.seed, int(epoch)])
        shard_ids = np.searchsorted(self._cum_epoch, windows, side="right")
        offsets = (windows - np.concatenate(([0], self._cum_epoch))[shard_ids]) * self.seq_len
        rows = np.stack([self._shards[s][o : o + self.seq_len + 1] for s, o in zip(shard_ids, offsets, strict=True)])
        tokens = torch.from_numpy(rows.astype(np.int64))
        return tokens[:, :-1], tokens[:, 1:]

    def iter_eval_batches(self, n_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of `n_batches` batches whose windows are spread evenly over the split.

        The same on every call and every rank, independent of seed and of `next_batch`, so that
        validation losses of different steps and runs are comparable.
        """
        positions = np.linspace(0, self.num_windows - 1, n_batches * self.batch_size).astype(np.int64)
        for batch in positions.reshape(n_batches, self.batch_size):
            yield self._gather(batch)

    def _gather(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows at global start positions (indices into the concatenated valid starts of all shards)."""
        shard_ids = np.searchsorted(self._cum_starts, positions, side="right")
        offsets = positions - np.concatenate(([0], self._cum_starts))[shard_ids]
        rows = np.stack([self._shards[s][o : o + self.seq_len + 1] for s, o in zip(shard_ids, offsets, strict=True)])
        tokens = torch.from_numpy(rows.astype(np.int64))
        return tokens[:, :-1], tokens[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable; `load_state_dict` on a loader of the same data and shape resumes exactly."""
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "seed": self.seed,
            "split": self.split,
            "sampling": self.sampling,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "tokenizer_fingerprint": self.meta["tokenizer"]["fingerprint"],
            "num_tokens": self.num_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (typically rank 0's, saved in a checkpoint; every rank may load it)."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"loader state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("seed", "split", "seq_len", "batch_size", "tokenizer_fingerprint", "num_tokens", "sampling"):
            if state.get(key, "random" if key == "sampling" else None) != mine[key]:  # older states: random
                raise DataError(
                    f"loader state does not match this loader: {key} is {state.get(key)!r} in the "
                    f"saved state and {mine[key]!r} now; resume with the same data and batch shape"
                )
        self.step = int(state["step"])


def permute(i: np.ndarray, n: int, key: list[int]) -> np.ndarray:
    """A keyed permutation of 0..n-1 applied to `i`, without building it: a 4-round Feistel network on
    the smallest even number of bits that covers n, walked again while the result is >= n (Black and
    Rogaway 2002, "Ciphers with arbitrary finite domains"). Each value is a few vectorised numpy steps."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = np.random.default_rng(key).integers(0, 1 << 62, size=_FEISTEL_ROUNDS, dtype=np.uint64)

    def rounds(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            mixed = ((right ^ k) * _MIX) >> np.uint64(64 - half)
            left, right = right, left ^ (mixed & mask)
        result: np.ndarray = (left << np.uint64(half)) | right
        return result

    y = rounds(np.asarray(i, dtype=np.uint64))
    while (outside := y >= n).any():
        y[outside] = rounds(y[outside])
    return y.astype(np.int64)
