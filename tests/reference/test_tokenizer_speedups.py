"""The BPE encoder's fast paths give the ids of the plain algorithm: the ASCII pre-tokeniser (`re`
instead of `regex`, also for the ASCII stretches of mostly ASCII text) and the word cache (looked up in
C, bounded in entries and characters)."""

from __future__ import annotations

import itertools
import json
import random
import re
import tracemalloc

import numpy as np
import pytest
import regex

from reference_llm.tokenizer import EOT, BPETokenizer, bytelevel
from reference_llm.tokenizer import base as tokenizer_base
from reference_llm.tokenizer import bpe as bpe_module
from reference_llm.tokenizer.bytelevel import GPT2_ASCII_PATTERN, GPT2_PATTERN, GPT2_SPLIT

UNICODE_SPLIT = regex.compile(GPT2_PATTERN)  # for ASCII text, its classes are the pinned ones
# Characters that steer the pattern: the contraction letters, each ASCII White_Space character, the
# separators 0x1c-0x1f that `re`'s \s (but not White_Space) matches, a digit, punctuation, a control.
STEERING = "'strevmldaZ09 \t\n\x0b\x0c\r\x1c\x1f!_~\x00\x7f"


def test_ascii_split_equals_the_unicode_pattern() -> None:
    texts = ["".join(p) for n in range(1, 4) for p in itertools.product(STEERING, repeat=n)]
    rng = random.Random(0)
    texts += ["".join(rng.choice(STEERING) for _ in range(rng.randrange(5, 60))) for _ in range(3000)]
    texts += ["".join(map(chr, rng.choices(range(128), k=200))) for _ in range(300)]
    texts += [" don't  stop\n\n  'll 're x''y  \t\n", "".join(map(chr, range(128)))]
    assert all(t.isascii() for t in texts)
    wrong = [t for t in texts if GPT2_SPLIT.findall(t) != UNICODE_SPLIT.findall(t)]
    assert not wrong, wrong[:5]
    # Negative control: with `re`'s own \s (which takes 0x1c-0x1f for white space) the test finds errors.
    careless = re.compile(GPT2_ASCII_PATTERN.replace(r"\t\n\x0b\x0c\r ", r"\s"))
    assert any(careless.findall(t) != UNICODE_SPLIT.findall(t) for t in texts)


def whole_text_split(text: str) -> list[str]:
    """The splitter's path for text that is not ASCII, on the whole text (what it did before it cut text
    with a few non-ASCII characters into stretches)."""
    return GPT2_SPLIT._findall_unicode(text)


def test_mostly_ascii_text_is_cut_only_where_the_words_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    # Non-ASCII letters, marks, white space (no-break space, ideographic space, line separator) and
    # symbols next to ASCII letters, spaces, white space, apostrophes and punctuation.
    pieces = [
        *"ab 'st\n\t.,0",
        "  ",
        " \n",
        "\u2014",
        "\u00e9",
        "\u00a0",
        "\u3000",
        "\u65e5",
        "\u0301",
        "\U0001f600",
        "\u2028",
    ]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 40))) for _ in range(6000)]
    texts = [t for t in texts if not t.isascii()]
    wrong = [t for t in texts if GPT2_SPLIT.findall(t) != whole_text_split(t)]
    assert not wrong, wrong[:5]
    # Negative control: cutting at every space (a space after white space included) changes words.
    monkeypatch.setattr(bytelevel, "_safe_cut", lambda text, p: text[p] == " ")
    assert any(GPT2_SPLIT.findall(t) != whole_text_split(t) for t in texts)


def naive_encode(tok: BPETokenizer, text: str) -> list[int]:
    """Ids by the textbook rule, no cache: split with `regex`, then in each word merge the pair of lowest
    rank (leftmost on ties) until none is left. Specials are cut out first."""
    ids_of = {tok.token_bytes(i): i for i in range(tok.vocab_size) if i not in tok.special_tokens.values()}
    rank = {(tok.token_bytes(a), tok.token_bytes(b)): r for r, (a, b) in enumerate(tok.merges)}
    out: list[int] = []
    for k, part in enumerate(text.split(EOT)):
        if k:
            out.append(tok.special_tokens[EOT])
        for word in UNICODE_SPLIT.findall(part):
            pieces = [bytes([b]) for b in word.encode("utf-8")]
            while len(pieces) > 1:
                pairs = [(rank.get(pair, len(rank)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
                best, i = min(pairs)
                if best == len(rank):
                    break
                pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
            out += [ids_of[p] for p in pieces]
    return out


@pytest.fixture(scope="module")
def corpus_texts() -> list[str]:
    """Documents mixing frequent words (Zipf), words seen once, punctuation, digits, white-space runs,
    non-ASCII text, a word longer than MAX_CACHED_WORD and end-of-text markers."""
    rng = random.Random(1)
    common = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randrange(2, 9))) for _ in range(300)]
    weights = [1 / (k + 1) for k in range(len(common))]
    texts = []
    for d in range(60):
        words = rng.choices(common, weights, k=rng.randrange(50, 400))
        words += [f"unique{d}x{i}q" for i in range(5)] + ["42", "3.14", "don't", "naïve", "日本語", "😀"]
        rng.shuffle(words)
        texts.append(" ".join(words) + ("\n\n    " if d % 3 else f". {EOT} ") + "end")
    texts.append("z" * (bpe_module.MAX_CACHED_WORD + 10) + " " + " " * 2000 + "tail")
    return texts


@pytest.fixture(scope="module")
def tok(corpus_texts: list[str]) -> BPETokenizer:
    return BPETokenizer.train(corpus_texts[:30], 400)


def fresh(tok: BPETokenizer) -> BPETokenizer:
    return BPETokenizer.from_dict(json.loads(tok.to_bytes()), "copy")


def test_cache_gives_the_ids_of_the_plain_algorithm(
    tok: BPETokenizer, corpus_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = [naive_encode(tok, t) for t in corpus_texts]
    cold = fresh(tok)
    assert [cold.encode(t) for t in corpus_texts] == expected  # filling the cache
    assert [cold.encode(t) for t in corpus_texts] == expected  # from the cache
    assert [a.tolist() for a in cold.encode_arrays(corpus_texts)] == expected
    assert all(a.dtype == np.uint32 for a in cold.encode_arrays(corpus_texts[:3]))
    long_word = "z" * (bpe_module.MAX_CACHED_WORD + 10)
    assert long_word not in cold._cache and " " * 2000 not in cold._cache  # too long to keep
    # A cache emptied every few words, by count and by characters, and ids joined a few words at a
    # time (as for very long texts), change nothing either.
    monkeypatch.setattr(bpe_module, "CACHE_SIZE", 7)
    monkeypatch.setattr(bpe_module, "CACHE_CHARS", 40)
    monkeypatch.setattr(tokenizer_base, "JOIN_BLOCK", 3)
    small = fresh(tok)
    assert [small.encode(t) for t in corpus_texts] == expected


def test_cache_memory_is_bounded(tok: BPETokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Limits small enough to be reached here, then memory measured as the cache keeps filling and emptying.
    monkeypatch.setattr(bpe_module, "CACHE_SIZE", 1000)
    monkeypatch.setattr(bpe_module, "CACHE_CHARS", 10_000)
    rng = random.Random(2)
    short = " ".join(f"w{i}" for i in range(3000))  # 3000 distinct words: the count limit bites
    long = " ".join("".join(rng.choices("abcdef", k=300)) for _ in range(60))  # 18k characters: the char limit
    small = fresh(tok)
    sizes = []
    for text in (short, long):
        small.encode(text)
        sizes.append((len(small._cache), small._cache.chars))
    assert sizes[0][0] <= 1000 and sizes[1][1] <= 10_000
    assert sizes[1][0] < 1000  # emptied for characters before it held 1000 words

    # At the real limits the words that fill the cache cost about this much (measured, not assumed):
    monkeypatch.undo()
    cache = fresh(tok)._cache
    words = [f" word{i}" for i in range(5000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for w in words:
        cache[w]  # noqa: B018 (fills the cache)
    per_word = (tracemalloc.get_traced_memory()[0] - before) / len(words)
    tracemalloc.stop()
    per_char = 4 + 4 * 4  # worst case: a 4-byte character in the key, 4 UTF-8 bytes each its own uint32 id
    worst = bpe_module.CACHE_SIZE * per_word + bpe_module.CACHE_CHARS * per_char
    assert per_word < 250, per_word
    assert worst < 120e6, worst  # ~30 MB full of typical words; this bound holds for any text


def test_hf_tokenizer_arrays_come_from_hf(tok: BPETokenizer, corpus_texts: list[str], tmp_path, monkeypatch) -> None:
    pytest.importorskip("tokenizers")
    from reference_llm.tokenizer import HFBPETokenizer, load_tokenizer

    tok.save(tmp_path / "tokenizer.json")
    fast = load_tokenizer(tmp_path / "tokenizer.json", fast=True)
    assert isinstance(fast, HFBPETokenizer)
    expected = [tok.encode(t) for t in corpus_texts[:10]]

    def python_encoder(*_: object) -> bytes:
        raise AssertionError("the Python encoder ran")

    monkeypatch.setattr(BPETokenizer, "_encode_plain", python_encoder)
    assert [a.tolist() for a in fast.encode_arrays(corpus_texts[:10])] == expected
    assert fast.encode_array(corpus_texts[0]).tolist() == expected[0]
    with pytest.raises(AssertionError, match="Python encoder"):  # the guard itself works
        tok.encode_array(corpus_texts[0])
