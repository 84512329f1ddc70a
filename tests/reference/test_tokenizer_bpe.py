"""The from-scratch byte-level BPE: training (against a naive reference), encoding, files."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from reference_llm.assets import corpus_path
from reference_llm.errors import TokenizerError
from reference_llm.tokenizer import EOT, BPETokenizer, load_tokenizer
from reference_llm.tokenizer import bpe as bpe_module
from reference_llm.tokenizer.bpe_train import count_words
from reference_llm.tokenizer.bytelevel import BYTE_TO_CHAR

HARD_TEXTS = [
    "",
    " ",
    "   ",
    "\n",
    "\n\n\n",
    " \t \n  \r\n\x0b\x0c",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\n\nlines\n",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇫🇷",
    "CJK 日本語のテキスト 中文 한국어",
    "combining e\u0301 a\u0308\u0308 \u0915\u094d\u0937 \u0301 alone",
    "RTL עברית العربية",
    "zero width \u200b\u200d\ufeff marks",
    "numbers 123 4.56e-7 1,000,000 ٣٤",
    "contractions don't I'll we've THEY'RE",
    "def f(x):\n    return x ** 2  # square\n\n\n\tpass\n",
    EOT,
    f"a{EOT}b{EOT}",
    f"twice{EOT}{EOT} and at the end {EOT}",
    "\x00\x01\x1f\x7f control bytes",
    "ÿ\u0100 \u00ad soft hyphen",
    "x" * 300,
    " " * 200 + "end",
    "\n" * 100,
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return corpus_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok(corpus: str) -> BPETokenizer:
    return BPETokenizer.train([corpus[:200_000]], 256 + 1 + 400)


# ---- training ---------------------------------------------------------------------------------------


def naive_bpe(
    texts: list[str], vocab_size: int, specials: tuple[str, ...]
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Textbook BPE: recount every pair of every word before each merge.

    Same conventions as the library: specials take ids 0..k-1, bytes follow in the order of GPT-2's
    printable characters, ties go to the smallest (left id, right id), and a merge that spells an
    existing token reuses its id.
    """
    vocab = [s.encode() for s in specials] + [bytes([b]) for b in sorted(range(256), key=lambda b: BYTE_TO_CHAR[b])]
    words = {tuple(vocab.index(bytes([b])) for b in w.encode()): f for w, f in count_words(texts, specials).items()}
    merges = []
    while len(vocab) < vocab_size:
        pairs: Counter[tuple[int, int]] = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merged = vocab[best[0]] + vocab[best[1]]
        if merged in vocab[len(specials) :]:
            new = vocab.index(merged, len(specials))
        else:
            new = len(vocab)
            vocab.append(merged)
        merges.append(best)
        rewritten = {}
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            rewritten[tuple(out)] = rewritten.get(tuple(out), 0) + freq
        words = rewritten
    return vocab, merges


def test_incremental_training_equals_naive_recount(corpus: str) -> None:
    texts = [
        corpus[:6000],
        "aaaa aaaaa abab ababab aaabbb ba ba ba " * 5,  # overlapping and repeated pairs
        f"special {EOT} tokens {EOT}{EOT} are not counted",
        "日本語 😀😀 ünïcödé",
    ]
    specials = (EOT, "<|pad|>")
    vocab_size = 256 + len(specials) + 250
    vocab, merges = naive_bpe(texts, vocab_size, specials)
    tok = BPETokenizer.train(texts, vocab_size, specials)
    assert tok.merges == merges
    assert [tok.token_bytes(i) for i in range(tok.vocab_size)] == vocab
    assert tok.special_tokens == {EOT: 0, "<|pad|>": 1}


def test_training_stops_when_no_pair_is_left() -> None:
    tok = BPETokenizer.train(["abcabc"], 10_000)
    # words: "abcabc" -> merges (a,b) (ab,c) (abc,abc): after that every word is one token
    assert len(tok.merges) == 3
    assert tok.vocab_size == 256 + 1 + 3
    assert tok.encode("abcabc") == [tok.vocab_size - 1]


def test_training_is_deterministic(corpus: str) -> None:
    a = BPETokenizer.train([corpus[:30_000]], 400)
    b = BPETokenizer.train([corpus[:30_000]], 400)
    assert a.to_bytes() == b.to_bytes()


def test_special_tokens_are_never_merged() -> None:
    text = f"{EOT}hello{EOT}" * 200
    tok = BPETokenizer.train([text], 300)
    learned = [tok.token_bytes(i) for i in range(257, tok.vocab_size)]
    # only "hello" is counted: 4 merges build it (ties go to the smallest ids: e < h < l < o)
    assert learned == [b"el", b"hel", b"lo", b"hello"]
    assert tok.encode(text) == [0, tok.vocab_size - 1, 0] * 200


# ---- encoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", HARD_TEXTS, ids=range(len(HARD_TEXTS)))
def test_round_trip_hard_text(tok: BPETokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_round_trip_corpus_and_compression(tok: BPETokenizer, corpus: str) -> None:
    text = corpus[200_000:260_000]  # not trained on
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # merges learned on Shakespeare compress Shakespeare


def test_special_tokens_in_text_become_single_ids(tok: BPETokenizer) -> None:
    ids = tok.encode(f"one{EOT}two")
    assert ids == tok.encode("one") + [tok.eot_id] + tok.encode("two")
    assert tok.eot_id == 0


def test_surrogates_are_replaced_like_tiktoken(tok: BPETokenizer) -> None:
    # a valid UTF-16 pair becomes its character; a lone surrogate becomes U+FFFD
    assert tok.encode("\ud83d\ude00") == tok.encode("😀")
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"


def test_cut_characters_decode_to_replacement(tok: BPETokenizer) -> None:
    ids = tok.encode("😀")
    assert len(ids) > 1  # an emoji unseen in training stays as its 4 bytes
    assert tok.decode(ids[:1]) == "\ufffd"


def test_encode_batch_matches_encode(tok: BPETokenizer) -> None:
    assert tok.encode_batch(HARD_TEXTS) == [tok.encode(t) for t in HARD_TEXTS]


def fresh_copy(tok: BPETokenizer) -> BPETokenizer:
    """The same tokenizer with an empty encode cache."""
    return BPETokenizer.from_dict(json.loads(tok.to_bytes()), "copy")


def test_cache_does_not_change_results(tok: BPETokenizer, corpus: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = corpus[:50_000]
    first = tok.encode(text)
    assert tok.encode(text) == first  # now from the cache
    monkeypatch.setattr(bpe_module, "CACHE_SIZE", 10)  # cleared every 10 distinct words
    small_cache = fresh_copy(tok)
    assert small_cache.encode(text) == first
    assert len(small_cache._cache) <= 10


def test_heap_merge_path_equals_scan_path(tok: BPETokenizer, corpus: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(0)
    texts = [corpus[:20_000], *HARD_TEXTS]
    texts += ["".join(rng.choice("ab c\n") for _ in range(rng.randrange(1, 200))) for _ in range(50)]
    expected = [tok.encode(t) for t in texts]
    monkeypatch.setattr(bpe_module, "LONG_WORD", 0)  # every word takes the heap path
    fresh = fresh_copy(tok)
    assert [fresh.encode(t) for t in texts] == expected


# ---- files --------------------------------------------------------------------------------------------


def test_save_load_round_trip(tok: BPETokenizer, tmp_path) -> None:
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = BPETokenizer.load(path)
    assert loaded.fingerprint() == tok.fingerprint()
    assert path.read_bytes() == tok.to_bytes()
    assert isinstance(load_tokenizer(path), BPETokenizer)
    for text in HARD_TEXTS:
        assert loaded.encode(text) == tok.encode(text)


def test_fingerprint_changes_with_the_tokenizer(corpus: str) -> None:
    a = BPETokenizer.train([corpus[:20_000]], 300)
    b = BPETokenizer.train([corpus[:20_000]], 301)
    assert len(a.fingerprint()) == 64
    assert a.fingerprint() != b.fingerprint()


def test_decode_unknown_id_is_a_tokenizer_error(tok: BPETokenizer) -> None:
    with pytest.raises(TokenizerError, match=f"token id {tok.vocab_size} is not in the vocabulary"):
        tok.decode([1, tok.vocab_size])
    with pytest.raises(TokenizerError, match="token id -1"):
        tok.decode([-1])


def test_decode_accepts_numpy_and_torch_ids(tok: BPETokenizer) -> None:
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    ids = tok.encode("Hello there")
    assert tok.decode(np.array(ids)) == "Hello there"
    assert tok.decode(torch.tensor(ids)) == "Hello there"
