"""Byte-level BPE, from scratch: GPT-2's scheme, stored in Hugging Face's tokenizer.json format.

Encoding a text: cut out special tokens, split the rest with GPT-2's regex into words, and turn each
word's UTF-8 bytes into ids by applying learned merges, lowest rank first (leftmost on ties), one at a
time, until none applies. That is the rule of HF `tokenizers` and tiktoken, so ids match theirs. Real
text repeats words, so word results are cached; that cache is what makes pure Python fast enough.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

import numpy as np

from reference_llm.errors import TokenizerError
from reference_llm.tokenizer.base import (
    EOT,
    SpecialSplitter,
    Tokenizer,
    batch_texts,
    check_special_tokens,
    check_texts,
    join_mapped,
    lookup_ids,
    read_json,
)
from reference_llm.tokenizer.bpe_train import SHIFT, count_words, train_bpe
from reference_llm.tokenizer.bytelevel import GPT2_SPLIT, fix_surrogates, str_to_token
from reference_llm.tokenizer.hf_format import BPEData, from_json, to_json

# Words longer than this many bytes (long whitespace runs, base64, minified code) are merged with a
# heap, O(n log n), instead of rescanning all pairs after every merge, O(n^2).
LONG_WORD = 48
# The encode cache holds at most CACHE_SIZE distinct words, of at most CACHE_CHARS characters in all,
# and is emptied when either would be exceeded: ~30 MB full of ordinary words, ~110 MB at worst (measured
# in tests/reference/test_tokenizer_speedups.py). Words longer than MAX_CACHED_WORD characters are encoded
# each time: they rarely repeat, and one could otherwise fill the cache alone.
CACHE_SIZE = 200_000
CACHE_CHARS = 4_000_000
MAX_CACHED_WORD = 1024
ID_DTYPE = np.dtype(np.uint32)  # ids as the cache stores them: encode_array returns this dtype


class WordCache(dict[str, bytes]):
    """Word -> its ids as packed ID_DTYPE bytes, filled on a miss by `encode_word` (`dict.__missing__`).

    So the ids of a text's words are `b"".join(map(cache.__getitem__, words))`: the loop over words
    runs in C, Python code runs only on a miss, and the result is an array's buffer, with no Python
    int per token. `chars` counts the characters of the words held.
    """

    def __init__(self, encode_word: Callable[[str], list[int]]) -> None:
        super().__init__()
        self._encode_word = encode_word
        self.chars = 0

    def __missing__(self, word: str) -> bytes:
        ids = np.asarray(self._encode_word(word), dtype=ID_DTYPE).tobytes()
        if len(word) <= MAX_CACHED_WORD:
            if len(self) >= CACHE_SIZE or self.chars + len(word) > CACHE_CHARS:
                self.clear()
                self.chars = 0
            self[word] = ids
            self.chars += len(word)
        return ids


class BPETokenizer(Tokenizer):
    """Byte-level BPE tokenizer. Build it with `train`, `load` or `from_gpt2`."""

    kind = "bpe"

    def __init__(
        self,
        tokens: dict[int, bytes],
        merges: list[tuple[int, int]],
        special_tokens: dict[str, int],
        ignore_merges: bool = False,
    ) -> None:
        """`tokens`: id -> bytes of every regular token (all 256 single bytes among them);
        `merges`: (left id, right id) pairs, highest priority first; `special_tokens`: text -> id."""
        self._data = BPEData(dict(tokens), list(merges), dict(special_tokens), ignore_merges)
        self._token_ids = {token: i for i, token in tokens.items()}
        for special, i in special_tokens.items():
            if i in tokens:
                raise TokenizerError(f"special token {special!r} has id {i}, already used by a regular token")
            try:
                clash = self._token_ids.get(str_to_token(special))
            except KeyError:  # has characters outside the byte alphabet: cannot look like a token
                clash = None
            if clash is not None:
                raise TokenizerError(f"special token {special!r} is spelled like regular token {clash}; rename it")
        try:
            self._byte_ids = [self._token_ids[bytes([b])] for b in range(256)]
            self._merged = [self._token_ids[tokens[a] + tokens[b]] for a, b in merges]
        except KeyError as exc:
            raise TokenizerError(
                f"BPE vocabulary is incomplete: {exc.args[0]!r} is missing; accepted: all 256 single bytes, "
                "and for each merge both parts and their concatenation"
            ) from None
        self._ranks = {a << SHIFT | b: rank for rank, (a, b) in enumerate(merges)}
        self._decoder = {**tokens, **{i: s.encode("utf-8") for s, i in special_tokens.items()}}
        self._vocab_size = max(self._decoder) + 1
        self._splitter = SpecialSplitter(special_tokens)
        self._cache = WordCache(self._encode_word)
        self._special_bytes = {i: np.asarray([i], dtype=ID_DTYPE).tobytes() for i in special_tokens.values()}

    # ---- building -------------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str] = (EOT,)) -> BPETokenizer:
        """Learn a vocabulary of `vocab_size` ids (256 bytes + special tokens + merges) from `texts`.

        Special tokens take ids 0..k-1. Training stops early if no pair is left to merge.
        """
        specials, texts = check_training_args(texts, vocab_size, special_tokens)
        counts = count_words(texts, specials)
        if not counts:
            raise TokenizerError("texts: the training text has nothing but special tokens")
        vocab, merges = train_bpe(counts, vocab_size, specials)
        tokens = {i: token for i, token in enumerate(vocab) if i >= len(specials)}
        return cls(tokens, merges, {s: i for i, s in enumerate(specials)})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BPETokenizer:
        """Load a byte-level BPE tokenizer.json (ours or one written by HF `tokenizers`)."""
        return cls.from_dict(read_json(path), path)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], source: str | os.PathLike[str]) -> Self:
        """Build from a parsed tokenizer.json; `source` names the file in error messages."""
        data = from_json(obj, source)
        return cls(data.tokens, data.merges, data.special_tokens, data.ignore_merges)

    @classmethod
    def from_gpt2(cls, encoder_json: str | os.PathLike[str], vocab_bpe: str | os.PathLike[str]) -> BPETokenizer:
        """GPT-2's tokenizer from its original `encoder.json` and `vocab.bpe` files."""
        encoder = read_json(encoder_json)
        merge_path = Path(vocab_bpe)
        if not merge_path.is_file():
            raise TokenizerError(f"merges file {merge_path} not found")
        # Line 1 is "#version: 0.2"; the file ends with a newline.
        lines = merge_path.read_text(encoding="utf-8").split("\n")
        merges = [line for line in lines[1:] if line]
        specials = {EOT: encoder[EOT]} if EOT in encoder else {}
        obj = {
            "model": {"type": "BPE", "vocab": encoder, "merges": merges},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
            "added_tokens": [{"id": i, "content": s} for s, i in specials.items()],
        }
        return cls.from_dict(obj, f"{encoder_json} + {vocab_bpe}")

    # ---- Tokenizer interface ----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._data.special_tokens)

    @property
    def merges(self) -> list[tuple[int, int]]:
        return list(self._data.merges)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (UTF-8 of the string for special tokens)."""
        return lookup_ids(self._decoder, [token_id], self._vocab_size)[0]

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.encode_array(text).tolist()
        return ids

    def encode_arrays(self, texts: Iterable[str]) -> list[np.ndarray]:
        return [self.encode_array(text) for text in batch_texts(texts)]

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as a read-only uint32 array, without making a Python int per token."""
        pieces = [
            self._encode_plain(segment) if special_id is None else self._special_bytes[special_id]
            for segment, special_id in self._splitter.split(fix_surrogates(text))
        ]
        return np.frombuffer(b"".join(pieces), dtype=ID_DTYPE)

    def decode(self, ids: Iterable[int]) -> str:
        pieces: list[bytes] = lookup_ids(self._decoder, ids, self._vocab_size)
        data = b"".join(pieces)
        # Ids cut mid-character (e.g. half of an emoji) decode to U+FFFD, as in HF and tiktoken.
        return data.decode("utf-8", errors="replace")

    def to_bytes(self) -> bytes:
        return to_json(self._data)

    # ---- encoding internals -------------------------------------------------------------------------

    def _encode_plain(self, text: str) -> bytes:
        """The ids of text without special tokens, packed as in WordCache."""
        return join_mapped(self._cache.__getitem__, GPT2_SPLIT.findall(text))

    def _encode_word(self, word: str) -> list[int]:
        data = word.encode("utf-8")
        if self._data.ignore_merges and data in self._token_ids:
            return [self._token_ids[data]]
        ids = [self._byte_ids[b] for b in data]
        return self._merge_long(ids) if len(ids) > LONG_WORD else self._merge_short(ids)

    def _merge_short(self, ids: list[int]) -> list[int]:
        """Apply the lowest-rank merge (leftmost on ties) until none applies, rescanning each time."""
        ranks, merged = self._ranks, self._merged
        no_merge = len(merged)
        while len(ids) > 1:
            best, pos = no_merge, -1
            for i in range(len(ids) - 1):
                rank = ranks.get(ids[i] << SHIFT | ids[i + 1], no_merge)
                if rank < best:
                    best, pos = rank, i
            if pos < 0:
                break
            ids[pos : pos + 2] = [merged[best]]
        return ids

    def _merge_long(self, ids: list[int]) -> list[int]:
        """Same result as `_merge_short`, with a heap of (rank, position) over a linked list of symbols."""
        ranks, merged = self._ranks, self._merged
        n = len(ids)
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get(ids[i] << SHIFT | ids[i + 1])) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            # Stale if i was absorbed, or if the pair at i changed since this entry was pushed.
            if not alive[i] or j >= n or ranks.get(ids[i] << SHIFT | ids[j]) != rank:
                continue
            ids[i] = merged[rank]
            alive[j] = False
            nxt[i] = nxt[j]
            if nxt[i] < n:
                prv[nxt[i]] = i
            if prv[i] >= 0 and (r := ranks.get(ids[prv[i]] << SHIFT | ids[i])) is not None:
                heapq.heappush(heap, (r, prv[i]))
            if nxt[i] < n and (r := ranks.get(ids[i] << SHIFT | ids[nxt[i]])) is not None:
                heapq.heappush(heap, (r, i))
        return [token for token, keep in zip(ids, alive) if keep]


def check_training_args(
    texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str]
) -> tuple[tuple[str, ...], list[str]]:
    """Shared by both BPE trainers: validated special tokens and texts; vocab_size must fit them."""
    specials = check_special_tokens(special_tokens)
    needed = 256 + len(specials)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < needed:
        raise TokenizerError(
            f"vocab_size {vocab_size!r} is too small for byte-level BPE: it needs an integer >= {needed} "
            f"(256 bytes + {len(specials)} special tokens)"
        )
    return specials, check_texts(texts)
