"""Character-level tokenizer for the beginner track: one id per character of the training text.

Unknown characters are an error, not an <unk> id: the vocabulary comes from the training text, so an
unknown character means the text being encoded is not the text trained on. Failing loudly shows that
at once; an <unk> id would silently lose information and break `decode(encode(text)) == text`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from reference_llm.errors import TokenizerError
from reference_llm.tokenizer.base import (
    EOT,
    SpecialSplitter,
    Tokenizer,
    check_special_tokens,
    check_texts,
    lookup_ids,
    read_json,
)
from reference_llm.tokenizer.bytelevel import fix_surrogates

FORMAT_TYPE = "char"
FORMAT_VERSION = 1


class CharTokenizer(Tokenizer):
    """Ids 0..n-1: the training text's distinct characters in code-point order; then special tokens."""

    kind = "char"

    def __init__(self, chars: Iterable[str], special_tokens: Iterable[str] = (EOT,)) -> None:
        self._chars = list(chars)
        single = all(isinstance(c, str) and len(c) == 1 for c in self._chars)
        if not single or len(set(self._chars)) != len(self._chars):
            raise TokenizerError("char tokenizer: chars must be distinct single characters")
        specials = check_special_tokens(special_tokens)
        self._stoi = {c: i for i, c in enumerate(self._chars)}
        self._specials = {s: len(self._chars) + i for i, s in enumerate(specials)}
        self._itos = {**dict(enumerate(self._chars)), **{i: s for s, i in self._specials.items()}}
        self._splitter = SpecialSplitter(self._specials)

    @classmethod
    def train(cls, texts: Iterable[str], special_tokens: Iterable[str] = (EOT,)) -> CharTokenizer:
        """Vocabulary = sorted set of characters in `texts` (special-token strings excluded)."""
        specials = check_special_tokens(special_tokens)
        splitter = SpecialSplitter({s: i for i, s in enumerate(specials)})
        chars: set[str] = set()
        for text in check_texts(texts):
            for segment in splitter.plain_segments(fix_surrogates(text)):
                chars.update(segment)
        if not chars:
            raise TokenizerError("texts: the training text has nothing but special tokens")
        return cls(sorted(chars), specials)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CharTokenizer:
        return cls.from_dict(read_json(path), path)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], source: str | os.PathLike[str]) -> CharTokenizer:
        if obj.get("type") != FORMAT_TYPE or obj.get("version") != FORMAT_VERSION:
            raise TokenizerError(
                f"tokenizer file {source}: type/version are {obj.get('type')!r}/{obj.get('version')!r}; "
                f"accepted: {FORMAT_TYPE!r}/{FORMAT_VERSION}"
            )
        chars, specials = obj.get("chars"), obj.get("special_tokens")
        if not isinstance(chars, list) or not isinstance(specials, list):
            raise TokenizerError(f"tokenizer file {source}: 'chars' and 'special_tokens' must be lists of strings")
        try:
            return cls(chars, specials)
        except TokenizerError as exc:
            raise TokenizerError(f"tokenizer file {source}: {exc}") from None

    @property
    def vocab_size(self) -> int:
        return len(self._chars) + len(self._specials)

    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    @property
    def chars(self) -> list[str]:
        return list(self._chars)

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        stoi = self._stoi
        for segment, special_id in self._splitter.split(fix_surrogates(text)):
            if special_id is not None:
                out.append(special_id)
                continue
            try:
                out += [stoi[c] for c in segment]
            except KeyError as exc:
                char = exc.args[0]
                raise TokenizerError(
                    f"character {char!r} (U+{ord(char):04X}) is not in the char tokenizer's vocabulary of "
                    f"{len(self._chars)} characters; encode only text like the training text, or retrain"
                ) from None
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(lookup_ids(self._itos, ids, self.vocab_size))

    def to_bytes(self) -> bytes:
        obj = {
            "type": FORMAT_TYPE,
            "version": FORMAT_VERSION,
            "chars": self._chars,
            "special_tokens": list(self._specials),  # ids follow the characters, in this order
        }
        return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
