"""The character-level tokenizer of the beginner track."""

from __future__ import annotations

import json

import pytest

from reference_llm.assets import corpus_path
from reference_llm.errors import TokenizerError
from reference_llm.tokenizer import EOT, CharTokenizer, load_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def corpus() -> str:
    return corpus_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok(corpus: str) -> CharTokenizer:
    return train_tokenizer("char", [corpus], None)


def test_vocabulary_is_sorted_characters_then_specials(tok: CharTokenizer, corpus: str) -> None:
    chars = sorted(set(corpus))
    assert tok.chars == chars
    assert tok.vocab_size == len(chars) + 1
    assert tok.special_tokens == {EOT: len(chars)} and tok.eot_id == len(chars)
    assert tok.encode("".join(chars)) == list(range(len(chars)))


def test_round_trip(tok: CharTokenizer, corpus: str) -> None:
    text = corpus[:20_000]
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text


def test_special_tokens_inside_text() -> None:
    tok = CharTokenizer.train(["ab\n"], special_tokens=(EOT, "<|pad|>"))
    assert tok.encode(f"a{EOT}b<|pad|>\n{EOT}") == [1, 3, 2, 4, 0, 3]
    assert tok.decode([1, 3, 2, 4]) == f"a{EOT}b<|pad|>"


def test_hard_characters_round_trip() -> None:
    text = "  \n\t😀 👨\u200d👩 日本語 e\u0301 \x00"
    tok = CharTokenizer.train([text])
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_special_token_strings_in_training_text_are_not_characters() -> None:
    tok = CharTokenizer.train([f"ab{EOT}ba"])
    assert tok.chars == ["a", "b"]


def test_vocab_size_is_ignored_for_char() -> None:
    assert train_tokenizer("char", ["abc"], 10_000).vocab_size == 4


def test_unknown_character_is_a_clear_error(tok: CharTokenizer) -> None:
    expected = r"character '😀' \(U\+1F600\) is not in the char tokenizer's vocabulary"
    with pytest.raises(TokenizerError, match=expected):
        tok.encode("hello 😀")


def test_unknown_id_is_a_clear_error(tok: CharTokenizer) -> None:
    with pytest.raises(TokenizerError, match=f"token id {tok.vocab_size} is not in the vocabulary"):
        tok.decode([0, tok.vocab_size])


def test_save_load(tok: CharTokenizer, tmp_path) -> None:
    path = tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, CharTokenizer) and loaded.kind == "char"
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode("To be, or not") == tok.encode("To be, or not")
    assert json.loads(path.read_text(encoding="utf-8"))["type"] == "char"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"type": "char", "version": 2, "chars": ["a"], "special_tokens": []}, "accepted: 'char'/1"),
        ({"type": "char", "version": 1, "chars": "ab", "special_tokens": []}, "must be lists"),
        ({"type": "char", "version": 1, "chars": ["a", "a"], "special_tokens": []}, "distinct single characters"),
        ({"type": "char", "version": 1, "chars": ["ab"], "special_tokens": []}, "distinct single characters"),
        ({"type": "char", "version": 1, "chars": ["a"], "special_tokens": [""]}, "non-empty string"),
    ],
)
def test_malformed_file(tmp_path, obj: dict, message: str) -> None:
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value)
