"""Tokenizers: character-level, byte-level BPE from scratch, and byte-level BPE through HF `tokenizers`.

    tok = train_tokenizer("bpe", texts, 8192)          # kind: "char" | "bpe" | "hf-bpe"
    ids = tok.encode(text); text = tok.decode(ids)
    tok.save("tokenizer.json"); tok = load_tokenizer("tokenizer.json")

See docs/tokenizer.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from reference_llm.errors import TokenizerError
from reference_llm.tokenizer.base import EOT, Tokenizer, read_json
from reference_llm.tokenizer.bpe import BPETokenizer
from reference_llm.tokenizer.char import CharTokenizer
from reference_llm.tokenizer.hf import HFBPETokenizer

KINDS = ("char", "bpe", "hf-bpe")

__all__ = [
    "EOT",
    "KINDS",
    "BPETokenizer",
    "CharTokenizer",
    "HFBPETokenizer",
    "Tokenizer",
    "load_tokenizer",
    "train_tokenizer",
]


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    vocab_size: int | None,
    special_tokens: Iterable[str] = (EOT,),
) -> Tokenizer:
    """Train a tokenizer of `kind` on `texts`.

    `vocab_size` counts every id (bytes, merges and special tokens). It is required for "bpe" and
    "hf-bpe"; "char" ignores it (its vocabulary is the text's alphabet) and accepts None.
    """
    if kind == "char":
        return CharTokenizer.train(texts, special_tokens)
    if kind == "bpe":
        trainer = BPETokenizer
    elif kind == "hf-bpe":
        trainer = HFBPETokenizer
    else:
        raise TokenizerError(f"tokenizer kind {kind!r} is unknown; accepted: {', '.join(KINDS)}")
    if vocab_size is None:
        raise TokenizerError(f"vocab_size is required for tokenizer kind {kind!r}")
    return trainer.train(texts, vocab_size, special_tokens)


def load_tokenizer(path: str | os.PathLike[str], *, fast: bool = False) -> Tokenizer:
    """Load any tokenizer file this package saves (the kind is read from the file).

    BPE files ("bpe" and "hf-bpe" write the same tokenizer.json) load as `BPETokenizer`, or as
    `HFBPETokenizer` with `fast=True` for Rust-speed encoding; the ids are the same either way.
    """
    obj = read_json(path)
    if obj.get("type") == "char":
        return CharTokenizer.from_dict(obj, path)
    if "model" in obj:
        return (HFBPETokenizer if fast else BPETokenizer).from_dict(obj, path)
    raise TokenizerError(
        f'tokenizer file {path} is neither a char tokenizer ("type": "char") nor a tokenizer.json '
        '("model": {...}); accepted: files written by Tokenizer.save or HF tokenizers'
    )
