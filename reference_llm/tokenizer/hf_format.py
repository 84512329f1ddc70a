"""Reading and writing the Hugging Face `tokenizer.json` format for byte-level BPE.

Only the subset that byte-level BPE uses is accepted: model type BPE without dropout, unknown token,
subword prefix/suffix or byte fallback; no normalizer, truncation or padding; a ByteLevel
pre-tokenizer with GPT-2's regex and no prefix space; no post-processor that adds ids. Anything else
raises a TokenizerError that names the key and what is accepted, so a file is never loaded into
something that would tokenize differently from HF.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from reference_llm.errors import TokenizerError
from reference_llm.tokenizer.bytelevel import str_to_token, token_to_str


@dataclass
class BPEData:
    """A byte-level BPE tokenizer in plain data: what the tokenizer classes are built from."""

    tokens: dict[int, bytes]  # regular tokens: id -> bytes
    merges: list[tuple[int, int]]  # (left id, right id), highest priority first
    special_tokens: dict[str, int]  # added tokens: split out of the text before pre-tokenisation
    ignore_merges: bool = False  # HF option: a word that is itself a token skips the merges


_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def to_json(data: BPEData) -> bytes:
    """The canonical tokenizer.json bytes (compact, ids in order), loadable by HF `tokenizers`."""
    vocab = {token_to_str(token): i for i, token in data.tokens.items()}
    vocab.update(data.special_tokens)  # HF lists added tokens in the model vocab as well
    obj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for content, i in sorted(data.special_tokens.items(), key=lambda item: item[1])
        ],
        "normalizer": None,
        "pre_tokenizer": _BYTE_LEVEL,
        "post_processor": None,
        "decoder": {**_BYTE_LEVEL, "add_prefix_space": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": data.ignore_merges,
            "vocab": dict(sorted(vocab.items(), key=lambda item: item[1])),
            "merges": [[token_to_str(data.tokens[a]), token_to_str(data.tokens[b])] for a, b in data.merges],
        },
    }
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def from_json(obj: dict[str, Any], source: str | os.PathLike[str]) -> BPEData:
    """Validate a parsed tokenizer.json and turn it into BPEData; `source` names the file in errors."""

    def fail(key: str, accepted: str) -> TokenizerError:
        return TokenizerError(f"tokenizer file {source}: {key} is {_show(obj, key)}; accepted: {accepted}")

    if not isinstance(obj.get("model"), dict):
        raise fail("model", "an object with type 'BPE'")

    model = obj["model"]
    if model.get("type") != "BPE":
        raise fail("model.type", "'BPE'")
    for key in ("dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) not in (None, ""):
            raise fail(f"model.{key}", "null")
    if model.get("byte_fallback", False):
        raise fail("model.byte_fallback", "false")
    for key in ("normalizer", "truncation", "padding"):
        if obj.get(key) is not None:
            raise fail(key, "null")
    post = obj.get("post_processor")
    if post is not None and (not isinstance(post, dict) or post.get("type") != "ByteLevel"):
        raise fail("post_processor", "null or ByteLevel (a template would add ids)")
    pre = obj.get("pre_tokenizer")
    if not isinstance(pre, dict) or pre.get("type") != "ByteLevel":
        raise fail("pre_tokenizer.type", "'ByteLevel'")
    if pre.get("add_prefix_space", True) or not pre.get("use_regex", True):
        raise fail("pre_tokenizer", "ByteLevel with add_prefix_space=false and use_regex=true")

    vocab = model.get("vocab")
    merges = model.get("merges")
    added = obj.get("added_tokens", [])
    if not isinstance(vocab, dict):
        raise fail("model.vocab", "an object mapping token strings to ids")
    if not isinstance(merges, list):
        raise fail("model.merges", "a list")
    if not isinstance(added, list):
        raise fail("added_tokens", "a list")

    special_tokens: dict[str, int] = {}
    for entry in added:
        well_formed = isinstance(entry, dict) and isinstance(entry.get("content"), str)
        if not well_formed or not isinstance(entry.get("id"), int):
            raise fail("added_tokens", "a list of {id: int, content: str, ...} objects")
        for flag in ("single_word", "lstrip", "rstrip"):
            if entry.get(flag):
                raise TokenizerError(
                    f"tokenizer file {source}: added token {entry['content']!r} has {flag}=true; accepted: false"
                )
        special_tokens[entry["content"]] = entry["id"]

    special_ids = set(special_tokens.values())
    tokens: dict[int, bytes] = {}
    for text, i in vocab.items():
        if not isinstance(i, int) or i < 0:
            raise TokenizerError(f"tokenizer file {source}: model.vocab[{text!r}] is {i!r}; accepted: an id >= 0")
        if i in special_ids:
            continue
        try:
            tokens[i] = str_to_token(text)
        except KeyError:
            raise TokenizerError(
                f"tokenizer file {source}: model.vocab entry {text!r} has a character outside the "
                "byte-level alphabet; accepted: byte-level BPE vocabularies"
            ) from None
    if len(set(vocab.values())) != len(vocab) or len(set(tokens.values())) != len(tokens):
        raise TokenizerError(f"tokenizer file {source}: model.vocab repeats an id or a token; accepted: distinct ones")
    ids = {token: i for i, token in tokens.items()}
    missing = [b for b in range(256) if bytes([b]) not in ids]
    if missing:
        raise TokenizerError(
            f"tokenizer file {source}: model.vocab lacks {len(missing)} single-byte tokens "
            f"(e.g. byte {missing[0]}); accepted: byte-level BPE with all 256 bytes"
        )

    pairs: list[tuple[int, int]] = []
    for merge in merges:
        # tokenizers >= 0.20 writes ["a", "b"]; older files (and GPT-2's vocab.bpe) use "a b".
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not isinstance(parts, list) or len(parts) != 2 or not all(isinstance(p, str) for p in parts):
            raise fail("model.merges", 'a list of ["left", "right"] pairs or "left right" strings')
        try:
            left, right = (ids[str_to_token(p)] for p in parts)
        except KeyError:
            raise TokenizerError(
                f"tokenizer file {source}: merge {parts} uses a token missing from model.vocab"
            ) from None
        if tokens[left] + tokens[right] not in ids:
            raise TokenizerError(f"tokenizer file {source}: merge {parts} makes a token missing from model.vocab")
        pairs.append((left, right))
    return BPEData(tokens, pairs, special_tokens, bool(model.get("ignore_merges", False)))


def _show(obj: dict[str, Any], dotted: str) -> str:
    """The value at a dotted key, shortened, for error messages."""
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    shown = json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= 60 else shown[:57] + "..."
