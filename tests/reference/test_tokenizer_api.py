"""`train_tokenizer` / `load_tokenizer` and bad input: one-line TokenizerErrors that name the problem."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reference_llm.errors import TokenizerError
from reference_llm.tokenizer import (
    EOT,
    KINDS,
    BPETokenizer,
    CharTokenizer,
    HFBPETokenizer,
    Tokenizer,
    load_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife.\n"
] * 20


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_trains_saves_and_loads(kind: str, tmp_path) -> None:
    tok = train_tokenizer(kind, TEXTS, 300)
    assert isinstance(tok, Tokenizer) and tok.kind == kind
    assert tok.eot_id is not None and tok.special_tokens == {EOT: tok.eot_id}
    text = f"a single man{EOT}in want"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert max(ids) < tok.vocab_size
    loaded = load_tokenizer(tok.save(tmp_path / "tokenizer.json"))
    assert loaded.encode(text) == ids
    assert loaded.fingerprint() == tok.fingerprint()
    expected = CharTokenizer if kind == "char" else BPETokenizer
    assert type(loaded) is expected


def test_load_fast_gives_the_hf_engine(tmp_path) -> None:
    path = train_tokenizer("bpe", TEXTS, 300).save(tmp_path / "tokenizer.json")
    assert type(load_tokenizer(path, fast=True)) is HFBPETokenizer


def test_no_special_tokens_means_no_eot() -> None:
    tok = train_tokenizer("bpe", TEXTS, 300, special_tokens=())
    assert tok.eot_id is None and tok.special_tokens == {}
    assert tok.decode(tok.encode(EOT)) == EOT  # plain text now


@pytest.mark.parametrize(
    ("kind", "texts", "vocab_size", "specials", "message"),
    [
        ("wordpiece", TEXTS, 300, (EOT,), "tokenizer kind 'wordpiece' is unknown; accepted: char, bpe, hf-bpe"),
        ("bpe", TEXTS, 200, (EOT,), r"vocab_size 200 is too small .* integer >= 257"),
        ("hf-bpe", TEXTS, 257, (EOT, "<a>"), r"vocab_size 257 is too small .* integer >= 258"),
        ("bpe", TEXTS, None, (EOT,), "vocab_size is required for tokenizer kind 'bpe'"),
        ("bpe", TEXTS, "300", (EOT,), "vocab_size '300' is too small"),
        ("bpe", [], 300, (EOT,), "the training text is empty"),
        ("char", ["", ""], None, (EOT,), "the training text is empty"),
        ("hf-bpe", [EOT * 3], 300, (EOT,), "nothing but special tokens"),
        ("bpe", [EOT], 300, (EOT,), "nothing but special tokens"),
        ("char", [EOT], None, (EOT,), "nothing but special tokens"),
        ("bpe", TEXTS, 300, (EOT, EOT), "has duplicates"),
        ("char", TEXTS, None, ("",), "is not a non-empty string"),
        ("bpe", [b"bytes"], 300, (EOT,), "texts: expected strings, got bytes"),
    ],
)
def test_bad_training_input(kind, texts, vocab_size, specials, message) -> None:
    with pytest.raises(TokenizerError, match=message):
        train_tokenizer(kind, texts, vocab_size, special_tokens=specials)


def test_bare_string_is_one_training_text() -> None:
    assert train_tokenizer("char", "abc", None).chars == ["a", "b", "c"]


def test_encode_batch_refuses_a_bare_string() -> None:
    tok = train_tokenizer("bpe", TEXTS, 300)
    with pytest.raises(TokenizerError, match="encode_batch: expected a list of strings"):
        tok.encode_batch("abc")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(TokenizerError, match=f"tokenizer file {tmp_path / 'nope.json'} not found"):
        load_tokenizer(tmp_path / "nope.json")


def test_save_to_an_unwritable_place(tmp_path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenizerError, match="cannot be written"):
        train_tokenizer("char", TEXTS, None).save(tmp_path / "file" / "tokenizer.json")


def test_from_gpt2_missing_files(tmp_path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        BPETokenizer.from_gpt2(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


@pytest.fixture(scope="module")
def good_json() -> dict:
    return json.loads(train_tokenizer("bpe", TEXTS, 300).to_bytes())


def edit(obj: dict, dotted: str, value) -> dict:
    obj = json.loads(json.dumps(obj))
    *parents, last = dotted.split(".")
    target = obj
    for key in parents:
        target = target[key]
    target[last] = value
    return obj


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("model.type", "WordPiece", "model.type is \"WordPiece\"; accepted: 'BPE'"),
        ("model.dropout", 0.1, "model.dropout is 0.1; accepted: null"),
        ("model.unk_token", "<unk>", "model.unk_token"),
        ("model.byte_fallback", True, "model.byte_fallback is true; accepted: false"),
        ("normalizer", {"type": "NFC"}, "normalizer"),
        ("truncation", {"max_length": 5}, "truncation"),
        ("post_processor", {"type": "TemplateProcessing"}, "post_processor"),
        ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer.type is \"Whitespace\"; accepted: 'ByteLevel'"),
        ("pre_tokenizer.add_prefix_space", True, "add_prefix_space=false"),
        ("model.vocab", [], "model.vocab is \\[\\]; accepted: an object"),
        ("model.merges", {}, "model.merges"),
        ("model.merges", [["a", "b", "c"]], "model.merges"),
        ("model.merges", [["a", "zzz"]], "uses a token missing from model.vocab"),
        ("model.merges", [["a", "b"]], "makes a token missing from model.vocab"),
        ("model.vocab", {"a": 5}, "lacks 255 single-byte tokens"),
        ("model.vocab", {"a": 5, "b": 5}, "repeats an id or a token"),
        ("model.vocab", {"a b": 5}, "outside the byte-level alphabet"),
        ("added_tokens", [{"id": 0, "content": EOT, "lstrip": True}], "has lstrip=true; accepted: false"),
        ("added_tokens", [{"content": EOT}], "added_tokens"),
        ("model", None, "model"),
    ],
)
def test_malformed_tokenizer_json(good_json: dict, tmp_path, dotted: str, value, message: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(edit(good_json, dotted, value)), encoding="utf-8")
    with pytest.raises(TokenizerError, match=message) as info:
        load_tokenizer(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not valid UTF-8 JSON"),
        (b"\xff\xfe", "is not valid UTF-8 JSON"),
        (b"[1, 2]", "a JSON object"),
        (b'{"hello": 1}', "is neither a char tokenizer"),
    ],
)
def test_not_a_tokenizer_file(tmp_path, content: bytes, message: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(path)


def test_special_token_spelled_like_a_regular_token() -> None:
    with pytest.raises(TokenizerError, match="special token 'ab' is spelled like regular token"):
        BPETokenizer({i: bytes([i]) for i in range(256)} | {256: b"ab"}, [(97, 98)], {"ab": 257})


def test_error_reaches_the_user_as_one_line(tmp_path) -> None:
    # What the project's entry points do with it: `error: <message>` on stderr, exit code 2.
    code = (
        "import sys\n"
        "from reference_llm.cli import run_main\n"
        "from reference_llm.tokenizer import load_tokenizer\n"
        f"sys.exit(run_main(lambda argv: load_tokenizer({str(tmp_path / 'missing.json')!r})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: tokenizer file {tmp_path / 'missing.json'} not found"
