"""The data pipeline's fast paths compute what their definitions say: MinHash signatures against a plain
Python computation, the LSH index's signature file read back before and after it is flushed, the PII
scan's skips, and text normalisation against its regex-and-loop definition."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference_llm.data import clean, dedup, pii
from reference_llm.data.dedup import LshIndex, MinHasher
from reference_llm.data.pipeline import Cleaned, Collector, PipelineSettings
from reference_llm.tokenizer import base as tokenizer_base

M64 = (1 << 64) - 1
MIX = 0x9E3779B97F4A7C15


def definition_signature(hasher: MinHasher, text: str, n: int) -> list[int]:
    """MinHash as the MinHasher docstring defines it, in Python ints: blake2b of each lower-cased word,
    n-grams mixed by h = (h * MIX) ^ next word, the high half of (h * MIX) as the shingle, and per
    permutation the minimum of the high half of a * shingle + b, all modulo 2**64."""
    import re

    words = re.findall(r"\w+", text.lower())
    ids = [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") for w in words]
    k = min(n, len(ids))
    shingles = []
    for start in range(len(ids) - k + 1):
        h = ids[start]
        for j in range(1, k):
            h = ((h * MIX) & M64) ^ ids[start + j]
        shingles.append(((h * MIX) & M64) >> 32)
    return [min((((a * x + b) & M64) >> 32) for x in shingles) for a, b in zip(hasher.a.tolist(), hasher.b.tolist())]


def test_minhash_signature_matches_its_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(0)
    vocab = ["alpha", "Beta", "gamma_1", "déjà", "vu", "日本", "x"]
    texts = [
        "one two",  # fewer words than a shingle
        "The quick brown fox jumps over the lazy dog, again and again.",
        " ".join(rng.choices(vocab, k=3000)),  # more shingles than one hashing chunk
        "Ünïcode wörds mixed with ascii ones and 123 numbers",
    ]
    monkeypatch.setattr(dedup, "_WORD_CACHE_MAX", 4)  # the word-hash cache empties itself mid-text
    monkeypatch.setattr(tokenizer_base, "JOIN_BLOCK", 5)  # word hashes joined a few at a time
    hasher = MinHasher(16, 5, seed=3)
    for text in texts * 2:  # the second time partly from the cache
        sig = hasher.signature(text)
        assert sig is not None and sig.dtype == np.uint32
        assert sig.tolist() == definition_signature(hasher, text, 5)
    assert hasher.signature("... !!!") is None


def test_lsh_index_reads_back_signatures_not_yet_flushed(tmp_path) -> None:
    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 1 << 32, size=(40, 128), dtype=np.uint32)  # 512 bytes each: 16 fit the write buffer
    on_disk = LshIndex(128, 0.8, tmp_path / "signatures.bin")
    for j, sig in enumerate(sigs):
        assert on_disk.add(sig) == j
        # Read every earlier signature back at once, the newest still in the write buffer.
        for i in {0, j // 2, j}:
            assert np.array_equal(on_disk._signature(i), sigs[i])
        assert on_disk.best_match(sig, {j}) == (j, 1.0)
    on_disk.close()
    # Negative control: the file itself lags behind what was added, so a read that skipped the flush
    # would get a short or empty record.
    raw = LshIndex(128, 0.8, tmp_path / "raw.bin")
    raw.add(sigs[0])
    assert raw._sig_file is not None
    assert len(os.pread(raw._sig_file.fileno(), 512, 0)) < 512
    raw.close()


def test_collector_decides_the_same_with_signatures_on_disk(tmp_path) -> None:
    # Near copies inside one batch and across batches: a document's candidates include signatures added
    # moments before, in the same batch. The file-backed index must agree with the in-memory one.
    rng = np.random.default_rng(1)
    base = rng.integers(0, 1 << 32, size=(30, 128), dtype=np.uint32)
    sigs = []
    for i in range(120):
        sig = base[i % 30].copy()
        sig[: (i // 30) * 8] = rng.integers(0, 1 << 32, size=(i // 30) * 8)  # later rounds drift further
        sigs.append(sig)
    batches = [list(range(k, min(k + 25, 120))) for k in range(0, 120, 25)]

    def decisions(work_dir) -> list[bool]:
        collector = Collector(PipelineSettings().with_overrides({"dedup.exact": False}), work_dir)
        keep: list[bool] = []
        for batch in batches:
            results = [Cleaned(None, 100, 100, b"", sigs[i], "text") for i in batch]
            keep += collector.add_batch([f"doc{i}" for i in batch], results)
        collector.close()
        return keep

    in_memory = decisions(None)
    assert decisions(tmp_path) == in_memory
    assert 30 <= sum(in_memory) < 120  # the copies that stayed similar enough were dropped


def test_pii_digit_shapes_skip_no_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    # ASCII texts dense in digits and separators, so that every shaped rule has matches to lose.
    rng = random.Random(0)
    alphabet = "0123456789012345 .-+()\n@:xA"
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(5, 90))) for _ in range(2500)]
    texts += ["call 555-123-4567 or 020 7946 0958", "card 4111 1111 1111 1111 at 8.8.8.8", "+44 20 7946 0958"]
    shaped = [pii.scan_pii(t) for t in texts]
    kinds = {f.kind for found in shaped for f in found}
    assert {"credit_card", "ipv4", "phone"} <= kinds
    plain_rules = [rule._replace(shapes=()) for rule in pii._RULES]
    monkeypatch.setattr(pii, "_RULES", plain_rules)
    assert [pii.scan_pii(t) for t in texts] == shaped
    # Negative control: a shape that some matches lack ("00.0" misses 8.8.8.8) changes the findings.
    wrong = [rule._replace(shapes=(b"00.0",)) if rule.kind == "ipv4" else rule for rule in plain_rules]
    monkeypatch.setattr(pii, "_RULES", wrong)
    assert [pii.scan_pii(t) for t in texts] != shaped


def test_pii_whitespace_run_skip_no_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs of hex, base64 and dotted digits between every kind of ASCII white space (and \x1c, which
    # str.split() counts as white space), in ASCII texts and in texts with a non-ASCII character.
    rng = random.Random(1)
    pieces = ["8.8.8.8", "555-123-4567", "0123456789abcdef" * 2, "QUJDRE" * 7 + "1", "sk_live_a1b2c3d4e5f6g7h8i9"]
    pieces += [" ", "\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "x", "é", "-", "="]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12))) for _ in range(3000)]
    found = [pii.scan_pii(t) for t in texts]
    assert {"ipv4", "phone", "secret", "api_key"} <= {f.kind for fs in found for f in fs}
    monkeypatch.setattr(pii, "_RULES", [rule._replace(min_run=0) for rule in pii._RULES])
    assert [pii.scan_pii(t) for t in texts] == found
    # Negative control: a run longer than some matches ("8.8.8.8" is 7 characters) changes the findings.
    too_long = [rule._replace(min_run=8) if rule.kind == "ipv4" else rule for rule in pii._RULES]
    monkeypatch.setattr(pii, "_RULES", too_long)
    assert [pii.scan_pii(t) for t in texts] != found


def definition_normalize(text: str) -> str:
    """normalize_text as its docstring defines it, without the ASCII fast paths."""
    import unicodedata

    text = unicodedata.normalize("NFC", text)
    text = clean._CONTROL.sub("", clean._LINE_BREAKS.sub("\n", text))
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def test_normalize_text_matches_its_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(2)
    alphabet = list("ab \t\n\r\x00\x08\x0b\x0c\x1c\x1f\x7f") + ["  \n", "\t\n", "\r\n", "\x85", "\xa0", "e\u0301"]
    ascii_only = [ch for ch in alphabet if ch.isascii()]
    texts = ["".join(rng.choice(a) for _ in range(rng.randrange(0, 40))) for a in (alphabet, ascii_only) * 2500]
    assert [clean.normalize_text(t) for t in texts] == [definition_normalize(t) for t in texts]
    # Negative control: an ASCII control table that misses DEL (0x7f) keeps it.
    monkeypatch.setattr(clean, "_ASCII_CONTROL", clean._ASCII_CONTROL.replace(b"\x7f", b""))
    assert [clean.normalize_text(t) for t in texts] != [definition_normalize(t) for t in texts]


def test_read_spill_only_skips_unmarked_records(tmp_path) -> None:
    # The tokenizer's sample reads only its records: the same records, offsets included, as a full read.
    from reference_llm.data.collect import SPILL_FILE, _write_record, read_spill

    with (tmp_path / SPILL_FILE).open("wb") as spill:
        for i in range(50):
            _write_record(spill, f"doc{i}", i % 3, "é" * (i % 7) + f"text {i}")
    everything = list(read_spill(tmp_path))
    only = np.arange(50) % 4 == 1
    assert list(read_spill(tmp_path, only=only)) == [r for r in everything if only[r[0]]]
    assert len(everything) == 50


def test_benchmark_profile_mode_runs(tmp_path) -> None:
    # `python benchmarks/data_prepare.py --mb 20 --profile` (its docstring), at a tiny size.
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "data_prepare.py"), "--mb", "0.1", "--profile", "--json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["cpu_s"] > 0 and report["corpus"]["documents"] > 10
    own = [f["own_s"] for f in report["functions"]]
    assert len(own) == 25 and own == sorted(own, reverse=True)
