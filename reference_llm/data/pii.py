"""Find and scrub personal data and secrets in text.

`scan_pii(text)` is usable on its own (the compliance checks of generated repositories call it); the data
pipeline calls `scrub_pii`, which replaces each finding with a placeholder such as `<EMAIL>`.

The patterns are heuristics tuned to flag little that is neither personal data nor a secret: IP addresses
count only when globally routable (not 127.0.0.1, 10.x.x.x, or the documentation ranges of RFC 5737 and
RFC 3849), card numbers only when they pass the Luhn check (ISO/IEC 7812-1 annex B), phone numbers only in
common written layouts, long hex or base64 strings only when they look random and are not introduced as a
hash (`sha256 = ...`). Expect some misses and false alarms: this cleans training data, it proves nothing.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True)
class Finding:
    kind: str  # one of PII_KINDS
    start: int  # text[start:end] is what was found
    end: int


def placeholder(kind: str) -> str:
    return f"<{kind.upper()}>"


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum: double every second digit from the right, sum the digits, divisible by 10."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def shannon_entropy(s: str) -> float:
    """Bits per character of the string's own character distribution."""
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _card(s: str) -> bool:
    digits = _digits(s)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def _global_ip(s: str) -> bool:
    try:
        return ipaddress.ip_address(s).is_global
    except ValueError:
        return False


def _ipv6(s: str) -> bool:
    # At least three written groups: shorter forms like "1::2" are mostly Python slices.
    return sum(1 for g in s.split(":") if g) >= 3 and _global_ip(s)


def _phone(s: str) -> bool:
    # E.164 allows at most 15 digits; a last group of one digit is a decimal number (+352.5), not a phone
    return 8 <= len(_digits(s)) <= 15 and not re.search(r"[ .-]\d$", s)


def _has_digit(s: str) -> bool:
    return any(ch.isdigit() for ch in s)


def _random_hex(s: str) -> bool:
    # Random hex carries ~3.6 bits per character over 32 characters; 0b1111... literals far less.
    return _has_digit(s) and any(ch.isalpha() for ch in s) and shannon_entropy(s) >= 3.0


def _random_base64(s: str) -> bool:
    s = s.rstrip("=")
    mixed = any(ch.isupper() for ch in s) and any(ch.islower() for ch in s) and _has_digit(s)
    # 40 random base64 characters measure ~4.8 bits per character (98% of them above 4.5, more when
    # longer); mixed-case paths and identifiers measured 4.1-4.46.
    return mixed and shannon_entropy(s) >= 4.5


# A hex/base64 run on a line that names a digest before it is a checksum, not a secret.
_HASH_WORDS = re.compile(
    r"(?<![a-z])(?:sha\d*|md5|hash(?:es)?|digest|checksum|commit|integrity)(?![a-z])", re.IGNORECASE
)


class _Rule(NamedTuple):
    kind: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None  # extra test of the matched text
    needle: str | None = None  # a substring every match contains: texts without it skip the regex
    min_run: int = 0  # every match is a run of this many characters without whitespace
    digits: bool = False  # every match holds a digit
    # For ASCII text: substrings one of which every match holds, written with each digit as 0 ("0.0" for
    # a dotted quad); an ASCII text whose digits-as-0 copy holds none of them skips the regex.
    shapes: tuple[bytes, ...] = ()


def _rule(
    kind: str,
    pattern: str,
    check: Callable[[str], bool] | None = None,
    needle: str | None = None,
    min_run: int = 0,
    digits: bool = False,
    shapes: tuple[bytes, ...] = (),
) -> _Rule:
    return _Rule(kind, re.compile(pattern), check, needle, min_run, digits, shapes)


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
# ASCII whitespace as str.split() sees it (str.isspace) -> " ", any other byte -> "x".
_RUN_MARKS = bytes(32 if chr(b).isspace() and b < 128 else 120 for b in range(256))


# Rules in priority order: where two matches overlap, the one earlier in this list wins, so a specific
# secret format is not also reported as a generic base64 string.
# Speed: `re` finds a pattern's first character quickly only when the pattern starts with a literal or a
# character class, not with a lookbehind. So "not preceded by X" is written after the first character,
# as a two-character lookbehind: `[2-6](?<![\d-].)` is `(?<![\d-])[2-6]`, about four times faster.
_RULES: list[_Rule] = [
    _rule("private_key", r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?:[\s\S]*?-----END[A-Z ]*PRIVATE KEY-----)?"),
    _rule(
        "aws_key",  # access key ids: a four-letter type prefix and 16 more characters
        r"A(?<![A-Za-z0-9]A)(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|PKA|ROA|SCA)[A-Z0-9]{16}(?![A-Za-z0-9])",
    ),
    _rule(
        "github_token",
        r"g(?<![A-Za-z0-9_]g)(?:h[pousr]_[A-Za-z0-9]{36,255}|ithub_pat_[A-Za-z0-9_]{22,255})(?![A-Za-z0-9_])",
        needle="_",  # a one-character needle is a memchr, ~3x quicker than the regex's scan for "g"
    ),
    # OpenAI/Anthropic-style sk-..., Stripe secret and restricted keys, Slack tokens, Google API keys
    _rule("api_key", r"s(?<![\w-]s)k-[A-Za-z0-9_-]{20,}(?![\w-])", _has_digit, min_run=23),
    _rule("api_key", r"[sr](?<![\w-].)k_(?:live|test)_[A-Za-z0-9]{16,}(?![\w-])", needle="k_", min_run=24),
    _rule("api_key", r"x(?<![\w-]x)ox[abposr]-[A-Za-z0-9-]{10,}(?![\w-])", _has_digit),
    _rule("api_key", r"A(?<![\w-]A)Iza[A-Za-z0-9_-]{35}(?![\w-])"),
    _rule(
        "email",
        r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
        r"[A-Za-z]{2,}(?![\w-])",
        needle="@",
    ),
    _rule(
        "credit_card",  # 13-19 digits, optionally grouped; the major networks' numbers start with 2-6
        r"[2-6](?<![\d-].)\d(?:[ -]?\d){11,17}(?![ -]?\d)",
        _card,
        digits=True,
        shapes=(b"00",),
    ),
    _rule(
        "ipv6",
        r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|\d{1,3}(?:\.\d{1,3}){3})?"
        r"(?![0-9A-Za-z:])",
        _ipv6,
        needle=":",
    ),
    _rule(
        "ipv4",
        r"\d(?<![\d.]\d)\d{0,2}(?:\.\d{1,3}){3}(?!\d|\.\d)",
        _global_ip,  # checks the octets too
        needle=".",
        min_run=7,
        digits=True,
        shapes=(b"0.0",),
    ),
    _rule(
        "phone",  # international: +CC then groups, e.g. +44 20 7946 0958, +1 (555) 123-4567
        r"\+(?<![\w+]\+)[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}(?!\w|[.,]\d)",
        _phone,
        needle="+",
    ),
    _rule("phone", r"\((?<![\w+.-]\()\d{3}\) ?\d{3}[-. ]\d{4}(?![\w-]|\.\d)", needle="("),  # (555) 123-4567
    _rule(
        "phone",  # 555-123-4567
        r"\d(?<![\w+.-]\d)\d{2}(?P<sep>[-.])\d{3}(?P=sep)\d{4}(?![\w-]|\.\d)",
        min_run=12,
        digits=True,
        shapes=(b"000-000-0000", b"000.000.0000"),
    ),
    _rule(
        "phone",  # national numbers with trunk prefix 0: 020 7946 0958, 030-1234-5678
        r"0(?<![\w+.-]0)\d{1,4}[ -]\d{3,4}[ -]\d{3,4}(?![\w-]|\.\d)",
        _phone,
        shapes=(b"0 000", b"0-000"),
    ),
    _rule(
        "secret", r"[0-9A-Fa-f](?<![0-9A-Za-z_].)[0-9A-Fa-f]{31,}(?![0-9A-Za-z_])", _random_hex, min_run=32, digits=True
    ),
    # No lookbehind needed: a match starts at the beginning of a run, since one starting later would be
    # shorter and the run was already too short. "=" may precede it (KEY=...) but only ends base64.
    _rule("secret", r"[A-Za-z0-9+/_-]{40,}={0,2}(?![A-Za-z0-9+/=_-])", _random_base64, min_run=40, digits=True),
]

PII_KINDS: tuple[str, ...] = tuple(dict.fromkeys(rule.kind for rule in _RULES))


def scan_pii(text: str, kinds: Iterable[str] | None = None) -> list[Finding]:
    """Every non-overlapping finding in `text`, sorted by position. `kinds` restricts the search."""
    wanted = set(PII_KINDS if kinds is None else kinds)
    unknown = wanted - set(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kind(s) {sorted(unknown)}; known: {', '.join(PII_KINDS)}")
    starts: list[int] = []  # accepted spans, sorted by start, for the overlap test
    ends: list[int] = []
    findings: list[Finding] = []
    # Cheap tests that let a rule skip its regex (which tries a character class at every position) when no
    # match is possible: whether there is a digit at all, and a run of min_run characters without whitespace.
    has_digit = any(d in text for d in "0123456789")
    data = text.encode("ascii") if text.isascii() else None
    # In ASCII, \d is 0-9, so digits-as-0 substrings are a test a match cannot escape (memchr speed).
    shaped = data.translate(_DIGITS_AS_ZERO) if has_digit and data is not None else None
    marks: bytes | None = None
    longest = -1

    def has_run(n: int) -> bool:
        """A run of n characters without whitespace? Found, the first time it is asked, in ASCII as a
        substring of a copy with whitespace as " " and everything else as "x" (~8x quicker than splitting
        the text into words), else as the longest word of text.split()."""
        nonlocal marks, longest
        if data is not None:
            if marks is None:
                marks = data.translate(_RUN_MARKS)
            return b"x" * n in marks
        if longest < 0:
            longest = max(map(len, text.split()), default=0)
        return longest >= n

    for kind, pattern, check, needle, min_run, digits, shapes in _RULES:
        if (
            kind not in wanted
            or (needle is not None and needle not in text)
            or (digits and not has_digit)
            or (shapes and shaped is not None and not any(shape in shaped for shape in shapes))
            or (min_run and not has_run(min_run))
        ):
            continue
        for m in pattern.finditer(text):
            start, end = m.span()
            if check is not None and not check(m.group()):
                continue
            if kind == "secret" and _HASH_WORDS.search(text, text.rfind("\n", 0, start) + 1, start):
                continue
            i = bisect.bisect_left(starts, start)
            if (i > 0 and ends[i - 1] > start) or (i < len(starts) and starts[i] < end):
                continue  # overlaps a finding of a higher-priority kind
            starts.insert(i, start)
            ends.insert(i, end)
            findings.append(Finding(kind, start, end))
    return sorted(findings, key=lambda f: f.start)


def scrub_pii(text: str, kinds: Iterable[str] | None = None) -> tuple[str, list[Finding]]:
    """`text` with every finding replaced by its placeholder, and the findings (offsets into `text`)."""
    findings = scan_pii(text, kinds)
    parts, pos = [], 0
    for f in findings:
        parts += [text[pos : f.start], placeholder(f.kind)]
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), findings
