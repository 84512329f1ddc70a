"""Byte-level BPE training with incremental pair counts (Sennrich et al. 2016, arXiv:1508.07909).

The corpus is reduced to its unique pre-tokenised words with frequencies (as GPT-2 and HF `tokenizers`
do), so the work depends on the vocabulary of words, not the corpus length. Each word is a list of
token ids. One merge step:

1. take the most frequent adjacent pair (a, b) from a max-heap (ties: smallest (a, b) ids, which is
   HF's rule too);
2. rewrite only the words that contain it (an index pair -> word ids says which), and change only the
   counts of pairs that touch a merged position: (left, a) -> (left, ab) and (b, right) -> (ab, right).

Heap entries go stale when counts drop; a popped entry is used only if its count is still current,
otherwise it is pushed back with the true count. Increased counts are pushed when they happen, so the
top valid entry is always the exact maximum: the result equals a full recount after every merge.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable

from reference_llm.tokenizer.base import SpecialSplitter
from reference_llm.tokenizer.bytelevel import ALPHABET_BYTES, GPT2_SPLIT, fix_surrogates

# A pair (a, b) of ids is stored as one int, a << SHIFT | b: ints hash faster than tuples, and the
# int order equals the tuple order, which the deterministic tie-break relies on.
SHIFT = 32


def count_words(texts: Iterable[str], special_tokens: Iterable[str]) -> Counter[str]:
    """Pre-tokenised words and their frequencies; special tokens are cut out and never counted."""
    splitter = SpecialSplitter({token: i for i, token in enumerate(special_tokens)})
    counts: Counter[str] = Counter()
    for text in texts:
        for segment in splitter.plain_segments(fix_surrogates(text)):
            counts.update(GPT2_SPLIT.findall(segment))
    return counts


def initial_vocab(special_tokens: tuple[str, ...]) -> list[bytes]:
    """Ids 0..k-1: the special tokens; then the 256 single bytes in HF's alphabet order."""
    return [token.encode("utf-8") for token in special_tokens] + [bytes([b]) for b in ALPHABET_BYTES]


def train_bpe(
    word_counts: dict[str, int], vocab_size: int, special_tokens: tuple[str, ...]
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Learn merges until the vocabulary has `vocab_size` entries or no pair occurs any more.

    Returns (vocab, merges): vocab[i] is the bytes of token i (specials first, as UTF-8), merges are
    (a, b) id pairs in the order learned. Should a merge spell a token that already exists, its id is
    reused, as HF's trainer does; a vocabulary must not hold the same bytes twice.
    """
    vocab = initial_vocab(special_tokens)
    # Special tokens are excluded: only regular byte strings may be reused by a merge.
    token_ids = {token: i for i, token in enumerate(vocab) if i >= len(special_tokens)}
    byte_id = {token[0]: i for token, i in token_ids.items()}

    words: list[list[int]] = []
    freqs: list[int] = []
    for text, freq in word_counts.items():
        ids = [byte_id[b] for b in text.encode("utf-8")]
        if len(ids) > 1:  # one-symbol words hold no pair
            words.append(ids)
            freqs.append(freq)

    pair_counts: dict[int, int] = defaultdict(int)
    where: dict[int, set[int]] = defaultdict(set)  # pair -> words that contain (or once contained) it
    for wi, (word, freq) in enumerate(zip(words, freqs)):
        for a, b in zip(word, word[1:]):
            key = a << SHIFT | b
            pair_counts[key] += freq
            where[key].add(wi)
    heap = [(-count, key) for key, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    while len(vocab) < vocab_size:
        best = _pop_best(heap, pair_counts)
        if best is None:
            break
        a, b = best >> SHIFT, best & ((1 << SHIFT) - 1)
        merged = vocab[a] + vocab[b]
        new = token_ids.get(merged)
        if new is None:
            new = token_ids[merged] = len(vocab)
            vocab.append(merged)
        merges.append((a, b))
        increased = _apply_merge(a, b, new, where.pop(best), words, freqs, pair_counts, where)
        del pair_counts[best]  # every occurrence was merged
        for key in increased:
            heapq.heappush(heap, (-pair_counts[key], key))
    return vocab, merges


def _pop_best(heap: list[tuple[int, int]], pair_counts: dict[int, int]) -> int | None:
    """The pair with the highest current count (smallest pair on ties), or None if none is left."""
    while heap:
        neg_count, key = heapq.heappop(heap)
        current = pair_counts.get(key, 0)
        if current == -neg_count and current > 0:
            return key
        if 0 < current < -neg_count:  # count dropped since the push: requeue at its true value
            heapq.heappush(heap, (-current, key))
        # current > stored: a fresher entry is already queued; current == 0: the pair is gone
    return None


def _apply_merge(
    a: int,
    b: int,
    new: int,
    candidates: set[int],
    words: list[list[int]],
    freqs: list[int],
    pair_counts: dict[int, int],
    where: dict[int, set[int]],
) -> set[int]:
    """Replace (a, b) by `new` in the candidate words, updating only the neighbouring pairs' counts.

    Returns the pairs whose count went up (they need a fresh heap entry). Occurrences are merged left
    to right without overlap; the left neighbour is read from the rewritten word, so for "a b a b" the
    second merge sees `new` on its left and the count of (new, a) added by the first one is taken back.
    """
    increased: set[int] = set()
    for wi in candidates:
        word = words[wi]
        n = len(word)
        if n < 2:
            continue
        freq = freqs[wi]
        out: list[int] = []
        i = 0
        changed = False
        while i < n:
            if word[i] == a and i + 1 < n and word[i + 1] == b:
                changed = True
                if out:
                    left = out[-1]
                    pair_counts[left << SHIFT | a] -= freq
                    key = left << SHIFT | new
                    pair_counts[key] += freq
                    where[key].add(wi)
                    increased.add(key)
                if i + 2 < n:
                    right = word[i + 2]
                    pair_counts[b << SHIFT | right] -= freq
                    key = new << SHIFT | right
                    pair_counts[key] += freq
                    where[key].add(wi)
                    increased.add(key)
                out.append(new)
                i += 2
            else:
                out.append(word[i])
                i += 1
        if changed:  # `where` is never pruned, so some candidates no longer hold the pair
            words[wi] = out
    return increased
