"""Text stages of the data pipeline: normalisation, quality filters, exact and near dedup, the split."""

from __future__ import annotations

import random

import pytest

from reference_llm.data.clean import normalize_text
from reference_llm.data.dedup import DedupSettings, MinHasher, choose_bands, exact_dedup, near_dedup
from reference_llm.data.documents import Document
from reference_llm.data.filters import FilterSettings, apply_filters
from reference_llm.data.pipeline import PipelineSettings, clean_documents, split_documents
from reference_llm.errors import ConfigError

WORDS = (
    "time love king night heart death honour crown blood sword hand eye fair lord sweet word day "
    "life grace heaven soul father queen mother brother friend noble speak give make hold"
).split()


def prose(seed: int, n_words: int = 200) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n_words // 8):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + ".")
    return "\n".join(lines)


# -- normalisation -------------------------------------------------------------------------------------


def test_normalize_nfc_newlines_controls_trailing_space():
    decomposed = "Cafe\u0301"  # e + combining acute accent
    text = f"\n\n{decomposed}  \r\nline two\t \rthird\x00\x07 line\u2028fourth\x0cfifth\n\n\n"
    out = normalize_text(text)
    assert out == "Caf\u00e9\nline two\nthird line\nfourth\nfifth"


def test_normalize_keeps_indentation_tabs_and_inner_blank_lines():
    text = "def f():\n\treturn 1\n\n    x = 2"
    assert normalize_text(text) == text


# -- filters -------------------------------------------------------------------------------------------


def run_filter(text: str, **settings) -> str | None:
    """The name of the filter that drops `text` under `settings` (other filters off), or None."""
    base = dict(
        min_chars=0,
        max_chars=0,
        min_alpha_fraction=0,
        max_repeated_line_fraction=0,
        min_mean_line_length=0,
        max_mean_line_length=0,
    )
    kept, dropped = apply_filters([Document("doc", text)], FilterSettings(**{**base, **settings}))
    names = [name for name, sources in dropped.items() if sources]
    assert len(kept) + len(names) == 1
    return names[0] if names else None


@pytest.mark.parametrize(
    "text, settings, dropped_by",
    [
        ("   \n  ", {}, "empty"),
        ("short", {"min_chars": 20}, "min_chars"),
        ("long enough text here", {"min_chars": 20}, None),
        ("x" * 101, {"max_chars": 100}, "max_chars"),
        ("x" * 100, {"max_chars": 100}, None),
        ("1234 5678 9012 3456 | 77 | 88 | 99", {"min_alpha_fraction": 0.5}, "min_alpha_fraction"),
        ("Plain words with 1 digit.", {"min_alpha_fraction": 0.5}, None),
        (
            "buy now\nbuy now\nbuy now\nbuy now\nhello",
            {"max_repeated_line_fraction": 0.5},
            "max_repeated_line_fraction",
        ),
        ("one line\nanother line\na third one\none line", {"max_repeated_line_fraction": 0.5}, None),
        ("a\nb\nc\nd", {"min_mean_line_length": 3}, "min_mean_line_length"),
        ("word " * 500, {"max_mean_line_length": 1000}, "max_mean_line_length"),
        ("word " * 100 + "\n" + "word " * 100, {"max_mean_line_length": 1000}, None),
    ],
)
def test_each_filter(text, settings, dropped_by):
    assert run_filter(text, **settings) == dropped_by


def test_filters_report_sources_under_the_first_filter_that_rejects():
    docs = [Document("good.txt", prose(1)), Document("tiny.txt", "hi"), Document("digits.txt", "12345 " * 20)]
    kept, dropped = apply_filters(docs, FilterSettings())
    assert [d.source for d in kept] == ["good.txt"]
    assert dropped["min_chars"] == ["tiny.txt"]
    assert dropped["min_alpha_fraction"] == ["digits.txt"]


def test_bad_filter_setting_names_the_key():
    with pytest.raises(ConfigError, match="filters.min_alpha_fraction"):
        FilterSettings(min_alpha_fraction=1.5)


# -- dedup ---------------------------------------------------------------------------------------------


def test_exact_dedup_keeps_first_copy():
    docs = [Document("a", "same text"), Document("b", "other"), Document("c", "same text")]
    kept, dups = exact_dedup(docs)
    assert [d.source for d in kept] == ["a", "b"]
    assert [(d.source, d.duplicate_of) for d in dups] == [("c", "a")]


def test_near_dedup_drops_near_copies_and_keeps_distinct_docs():
    original = prose(1, 400)
    edited = original.replace("king", "prince", 1) + "\nOne more line at the end."
    docs = [
        Document("a", original),
        Document("b", prose(2, 400)),
        Document("a-edited", edited),
        Document("c", prose(3, 400)),
        Document("a-again", original + "\nThe end."),
    ]
    kept, dups = near_dedup(docs, DedupSettings(threshold=0.8))
    assert [d.source for d in kept] == ["a", "b", "c"]
    assert sorted((d.source, d.duplicate_of) for d in dups) == [("a-again", "a"), ("a-edited", "a")]
    assert all(0.8 <= d.similarity <= 1.0 for d in dups)


def test_minhash_estimate_tracks_jaccard():
    hasher = MinHasher(num_perm=256, shingle_words=1, seed=0)
    a = " ".join(f"w{i}" for i in range(100))
    b = " ".join(f"w{i}" for i in range(50, 150))  # 50 shared of 150 distinct: Jaccard 1/3
    estimate = float((hasher.signature(a) == hasher.signature(b)).mean())
    assert abs(estimate - 1 / 3) < 0.1  # about 3 standard errors at 256 permutations
    assert hasher.signature("!!! ...") is None


def test_choose_bands_gives_high_recall_at_threshold():
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = choose_bands(128, threshold)
        assert bands * rows <= 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.95


def test_clean_documents_report():
    letter = prose(1) + "\nmail me: someone@example.org"
    docs = [
        Document("a.txt", letter),
        Document("b.txt", letter),
        Document("c.txt", "tiny"),
        Document("d.txt", prose(4)),
    ]
    kept, report = clean_documents(docs, PipelineSettings())
    assert [d.source for d in kept] == ["a.txt", "d.txt"]
    assert report["documents_in"] == 4 and report["documents_out"] == 2
    assert report["filters"]["min_chars"] == {"dropped": 1, "items": ["c.txt"]}
    assert report["exact_dedup"]["items"] == [{"source": "b.txt", "duplicate_of": "a.txt", "similarity": 1.0}]
    assert report["pii"]["by_kind"] == {"email": 1}
    (finding,) = report["pii"]["items"]
    assert finding["source"] == "a.txt" and finding["kind"] == "email"
    assert "<EMAIL>" in kept[0].text and "someone@example.org" not in kept[0].text


def test_pipeline_overrides():
    s = PipelineSettings().with_overrides({"filters.min_chars": 5, "dedup.threshold": 1, "scrub_pii": False})
    assert (s.filters.min_chars, s.dedup.threshold, s.scrub_pii) == (5, 1.0, False)
    with pytest.raises(ConfigError, match="filters.nope"):
        PipelineSettings().with_overrides({"filters.nope": 1})
    with pytest.raises(ConfigError, match="scrub_pii must be bool"):
        PipelineSettings().with_overrides({"scrub_pii": "yes"})


# -- split ---------------------------------------------------------------------------------------------


def test_split_by_document_is_content_determined():
    docs = [Document(f"d{i}", prose(i)) for i in range(10)]
    train, val = split_documents(docs, 0.2)
    assert len(val) == 2 and len(train) == 8
    assert {d.source for d in train} | {d.source for d in val} == {d.source for d in docs}
    train2, val2 = split_documents(list(reversed(docs)), 0.2)  # order does not change the choice
    assert {d.source for d in val2} == {d.source for d in val}


def test_split_keeps_a_document_on_each_side():
    docs = [Document("a", prose(1)), Document("b", prose(2))]
    train, val = split_documents(docs, 0.01)
    assert len(train) == 1 and len(val) == 1


def test_split_single_document_by_text_at_a_line_break():
    text = "\n".join(f"line {i:03d}" for i in range(100))
    train, val = split_documents([Document("one", text)], 0.1)
    assert train[0].text + val[0].text == text
    assert train[0].text.endswith("\n")
    assert val[0].text.startswith("line 09")
    assert 0.08 < len(val[0].text) / len(text) < 0.12
