"""Roadmap step "Tokenizer": the tokenizer turns text into ids and back without losing anything."""

from __future__ import annotations

import pytest

from reference_llm.config import RunConfig
from reference_llm.tokenizer import Tokenizer

# Characters beyond the corpus' alphabet: a byte-level BPE must still round-trip them.
UNSEEN = "naïve café — “quoted” 日本語 🙂\ttabs\r\nand Windows line ends"


def test_round_trip(tokenizer: Tokenizer, run_config: RunConfig, corpus: str) -> None:
    """Expected: decode(encode(text)) == text for held-out corpus text and, for byte-level BPE, for
    text in scripts the tokenizer never saw. If not, read ROADMAP.md, step "Tokenizer"."""
    samples = [corpus[-20_000:]]
    if run_config.data.tokenizer != "char":
        samples.append(UNSEEN)
    for text in samples:
        ids = tokenizer.encode(text)
        decoded = tokenizer.decode(ids)
        assert decoded == text, (f"round trip changed the text: expected {text[:60]!r}..., got {decoded[:60]!r}...; "
                                 "see ROADMAP.md, step Tokenizer")
        assert all(0 <= i < tokenizer.vocab_size for i in ids), "an id is outside the vocabulary"


def test_compression(tokenizer: Tokenizer, run_config: RunConfig, corpus: str) -> None:
    """Expected: with 512 ids, byte-level BPE packs held-out Shakespeare into about 2 bytes per token
    (at least 1.5). If not, read ROADMAP.md, step "Tokenizer"."""
    if run_config.data.tokenizer == "char":
        pytest.skip("a character tokenizer does not compress: one id per character by design")
    held_out = corpus[-50_000:]
    ratio = len(held_out.encode("utf-8")) / len(tokenizer.encode(held_out))
    assert ratio >= 1.5, f"expected at least 1.5 bytes per token, got {ratio:.2f}; see ROADMAP.md, step Tokenizer"


def test_end_of_text_is_one_token(tokenizer: Tokenizer) -> None:
    """Expected: the special token <|endoftext|> encodes to its single reserved id, never to pieces."""
    eot = tokenizer.eot_id
    assert eot is not None, "the tokenizer has no <|endoftext|> token"
    ids = tokenizer.encode("The end.<|endoftext|>A new document")
    assert ids.count(eot) == 1, f"expected the id {eot} exactly once in {ids}; see ROADMAP.md, step Tokenizer"
