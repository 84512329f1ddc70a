"""PII and secret detection: each pattern on crafted examples, and look-alikes that must not be flagged."""

from __future__ import annotations

import pytest

from reference_llm.assets import corpus_path
from reference_llm.data.pii import PII_KINDS, Finding, luhn_valid, scan_pii, scrub_pii

# Well-known public test values: Visa test card, AWS's documented example keys, example.com's address.
FLAGGED = [
    ("email", "jane.doe+news@mail.example.co.uk"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "+1 (415) 555-0132"),
    ("phone", "(415) 555-0132"),
    ("phone", "415-555-0132"),
    ("phone", "020 7946 0958"),
    ("credit_card", "4111 1111 1111 1111"),
    ("credit_card", "5555-5555-5555-4444"),
    ("credit_card", "378282246310005"),
    ("ipv4", "93.184.216.34"),
    ("ipv6", "2606:4700:4700::1111"),
    ("aws_key", "AKIAIOSFODNN7EXAMPLE"),
    ("github_token", "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5"),
    ("github_token", "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"),
    ("api_key", "sk-proj-4fT9xQ2mL8vR1kZ7pW3nB6yH0cJ5"),
    ("api_key", "sk_live_51HxYzAbCdEf0123456789"),
    ("secret", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
    ("secret", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END RSA PRIVATE KEY-----"),
]

NOT_FLAGGED = [
    "4111 1111 1111 1112",  # 16 digits that fail the Luhn check
    "1234567890123456",  # fails Luhn too
    "127.0.0.1 and 10.0.0.7 and 192.168.1.20",  # loopback and private addresses
    "192.0.2.44 and 2001:db8::1",  # documentation ranges (RFC 5737, RFC 3849)
    "300.1.2.3",  # not an address
    "x[1::2] at 12:30:45 on 2024-01-15",  # slices, times, dates
    "pi is 3.14159 and 1234567 people",
    'sha256 = "7afde072eadc22cfbd316eba499e4a5b25b22603dbaf33c5e29615a899dee776"',  # a checksum, named
    "see the deeply_nested_module_name_that_is_quite_long_indeed for details",  # identifier, low entropy
    "@property decorators and user@localhost",
]


@pytest.mark.parametrize("kind, value", FLAGGED)
def test_each_pattern_is_found_in_context(kind, value):
    text = f"Contact: {value}, thanks."
    start = text.index(value)
    assert scan_pii(text) == [Finding(kind, start, start + len(value))]


@pytest.mark.parametrize("text", NOT_FLAGGED)
def test_look_alikes_are_not_flagged(text):
    assert scan_pii(text) == []


def test_luhn():
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_scrub_replaces_with_placeholders_and_reports_offsets():
    text = "mail bob@example.org or call 415-555-0132; card 4111111111111111."
    scrubbed, findings = scrub_pii(text)
    assert scrubbed == "mail <EMAIL> or call <PHONE>; card <CREDIT_CARD>."
    assert [text[f.start : f.end] for f in findings] == ["bob@example.org", "415-555-0132", "4111111111111111"]


def test_specific_kind_wins_over_generic_secret():
    token = "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF3hJ5"
    assert [f.kind for f in scan_pii(f"token={token}")] == ["github_token"]


def test_kinds_filter():
    text = "bob@example.org 93.184.216.34"
    assert [f.kind for f in scan_pii(text, kinds=["ipv4"])] == ["ipv4"]
    with pytest.raises(ValueError, match="unknown PII kind"):
        scan_pii(text, kinds=["ssn"])
    assert set(PII_KINDS) >= {kind for kind, _ in FLAGGED}


def test_bundled_corpus_has_no_findings():
    assert scan_pii(corpus_path().read_text(encoding="utf-8")) == []


def test_secrets_in_assignments_are_found():
    b64 = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    hex_key = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    text = f"AWS_SECRET_ACCESS_KEY={b64}\nSHARED_KEY={hex_key}\n"  # "SHARED" does not name a hash
    assert [text[f.start : f.end] for f in scan_pii(text)] == [b64, hex_key]


@pytest.mark.parametrize(
    "text", ["Decimal('+35236450.6')", "x = 0b1111111111111111111111111111111111111", "'+000000120'"]
)
def test_numbers_in_code_are_not_flagged(text):
    assert scan_pii(text) == []
