"""GPT-2's byte-level conventions: the byte <-> printable-character table and the pre-tokenisation regex.

Byte-level BPE works on UTF-8 bytes, so every string can be encoded without an unknown token. GPT-2
(Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", section 2.2; code in
openai/gpt-2 `src/encoder.py`) stores tokens as text by mapping each of the 256 bytes to a printable
Unicode character; the Hugging Face `tokenizer.json` format keeps that convention, so we need it too.
"""

from __future__ import annotations

import regex

# GPT-2's pre-tokenisation pattern, as in openai/gpt-2 and HF's ByteLevel pre-tokenizer. It splits
# text into words: English contractions, letter runs, digit runs and punctuation runs (each optionally
# preceded by one space), and whitespace runs. `\s+(?!\S)` leaves the last space of a run to the word
# after it, which is why " the" (not "the") is a token. tiktoken's r50k pattern is an equivalent,
# possessive rewrite; the `regex` module's `\s` is Unicode White_Space, as in the Rust crates.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_SPLIT = regex.compile(GPT2_PATTERN)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte value to a printable character.

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, soft hyphen, ...) map to
    chr(256), chr(257), ... in byte order, so no token ever contains whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR: dict[int, str] = bytes_to_unicode()
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_CHAR.items()}

# Hugging Face's BPE trainer numbers the initial alphabet in code-point order of these characters;
# training in the same order makes our ids (and tie-breaks) line up with theirs.
ALPHABET_BYTES: list[int] = sorted(range(256), key=lambda b: BYTE_TO_CHAR[b])


def token_to_str(token: bytes) -> str:
    """A token's bytes as the printable string stored in vocab files ("Ġthe" for b" the")."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def str_to_token(text: str) -> bytes:
    """Inverse of `token_to_str`; raises KeyError for a character outside the 256-character table."""
    return bytes(CHAR_TO_BYTE[c] for c in text)


def fix_surrogates(text: str) -> str:
    """Make `text` encodable as UTF-8 the way tiktoken does.

    A Python str can hold UTF-16 surrogates (from JSON "\\ud83d\\ude00" escapes or surrogateescape).
    tiktoken round-trips through UTF-16: a valid high/low pair becomes the character it encodes and a
    lone surrogate becomes U+FFFD. Strings without surrogates are returned unchanged.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
