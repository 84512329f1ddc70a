"""GPT-2 pre-tokenisation equals tiktoken's and HF's on every Unicode scalar value, whatever `regex` is installed.

GPT-2's regex cuts text where letters, numbers, white space and the rest meet, so the class of each code
point decides the words. One probe per code point c shows the class our split gives it: in
"1" + c + "!" + c + "漐", c joins "1" iff it is a number, "!" iff it is neither a letter, number nor white
space, and "漐" (a CJK letter) iff it is a letter (a space joins the word after it, so " " joins "!" and
"漐"). The probes of all 1,112,064 scalar values, "\n" between them, make one text; where its words
start and end tells each code point's class.

tiktoken does not show its words, so it encodes that text with a "boundary vocabulary" whose only merges
are byte pairs across those joins: a two-byte token covers a join iff the join lies inside a word.
GPT-2's own vocabulary would not do: its merges rarely cross such a join, and ids alone would miss most
class changes (of the 17,480 code points that the `regex` module's Unicode 17 tables class differently,
266 change the GPT-2 ids of c + "漐").
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

import numpy as np
import pytest
import regex
import test_tokenizer_parity as parity

from reference_llm.tokenizer import BPETokenizer
from reference_llm.tokenizer import unicode_classes as uc
from reference_llm.tokenizer.bytelevel import GPT2_PATTERN, GPT2_SPLIT, GPT2Splitter, scalar_values

tiktoken = pytest.importorskip("tiktoken", reason="tiktoken is not installed")
tokenizers = pytest.importorskip("tokenizers", reason="HF tokenizers is not installed")

# GPT-2 from its files, ours and tiktoken's (fixtures of the parity tests)
gpt2_files, gpt2, tiktoken_gpt2 = parity.gpt2_files, parity.gpt2, parity.tiktoken_gpt2

REPO = Path(__file__).resolve().parents[2]
GENERATE = "python -m reference_llm.tokenizer._gen_unicode_classes --force reference_llm/tokenizer/unicode_classes.py"
SEP = "\n"
CJK = "\u6f50"
PROBE_LEN = 5  # "1" c "!" c "漐"
JOINS = {"number": 1, "other": 2, "letter": 4}  # the join after this many characters of the probe


def probe(c: str) -> str:
    return f"1{c}!{c}{CJK}"


# The boundary vocabulary's merges: every byte pair that can straddle a join, (c, "!") first so that
# it wins over ("!", c) in "c!c".
BOUNDARY_PAIRS = list(
    dict.fromkeys([(b, ord("!")) for b in range(256)] + [(ord("1"), b) for b in range(256)])
    | dict.fromkeys((b, CJK.encode()[0]) for b in range(256))
)

Classes = dict[str, set[int]]


def expand(table: tuple[tuple[int, int], ...]) -> set[int]:
    return {cp for first, last in table for cp in range(first, last + 1)}


def to_ranges(cps: set[int]) -> tuple[tuple[int, int], ...]:
    runs: list[tuple[int, int]] = []
    for cp in sorted(cps):
        if runs and runs[-1][1] == cp - 1:
            runs[-1] = (runs[-1][0], cp)
        else:
            runs.append((cp, cp))
    return tuple(runs)


def expected_joins(classes: Classes, codes: np.ndarray) -> dict[str, np.ndarray]:
    """Per join, whether it lies inside a word, by the tables `classes`."""
    member = {name: np.isin(codes, np.fromiter(cps, dtype=np.int64)) for name, cps in classes.items()}
    space = codes == 0x20  # GPT-2's ` ?\p{L}+` etc. take one leading space into the word
    other = ~(member["letter"] | member["number"] | member["space"])
    return {"number": member["number"], "other": other | space, "letter": member["letter"] | space}


class ProbeText:
    """The probes of code points `codes` joined by SEP, with each join's character and byte position."""

    def __init__(self, codes: np.ndarray) -> None:
        self.text = SEP.join(probe(chr(cp)) for cp in codes.tolist())
        utf8 = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
        start = np.arange(len(codes)) * (PROBE_LEN + len(SEP))
        byte_start = np.concatenate([[0], np.cumsum(2 * utf8 + 5 + len(SEP))[:-1]])
        self.joins = {name: start + offset for name, offset in JOINS.items()}
        self.byte_joins = {
            "number": byte_start + 1,  # after "1"
            "other": byte_start + 1 + utf8,  # after "1" c
            "letter": byte_start + 2 + 2 * utf8,  # after "1" c "!" c
        }


def inside(lengths: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Whether each position lies strictly inside one of consecutive pieces of these lengths."""
    ends = np.zeros(int(lengths.sum()) + 1, dtype=bool)
    ends[np.cumsum(lengths)] = True
    ends[0] = True
    return ~ends[positions]


def split_joins(findall: Callable[[str], list[str]], text: ProbeText) -> dict[str, np.ndarray]:
    words = findall(text.text)
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    assert lengths.sum() == len(text.text)  # the words cover the text
    return {name: inside(lengths, at) for name, at in text.joins.items()}


def id_joins(ids: np.ndarray, text: ProbeText) -> dict[str, np.ndarray]:
    """The same from ids of the boundary vocabulary: ids >= 256 are two bytes, merged across a join."""
    lengths = np.where(np.asarray(ids, dtype=np.int64) >= 256, 2, 1)
    return {name: inside(lengths, at) for name, at in text.byte_joins.items()}


def differences(codes: np.ndarray, got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> np.ndarray:
    return np.logical_or.reduce([got[name] != want[name] for name in JOINS])


def report(codes: np.ndarray, bad: np.ndarray) -> str:
    return f"{int(bad.sum())} code points differ, e.g. " + ", ".join(f"U+{cp:04X}" for cp in codes[bad][:8])


@pytest.fixture(scope="module")
def chars() -> str:
    return scalar_values()


@pytest.fixture(scope="module")
def codes(chars: str) -> np.ndarray:
    return np.fromiter(map(ord, chars), dtype=np.int64, count=len(chars))


@pytest.fixture(scope="module")
def pinned() -> Classes:
    return {"letter": expand(uc.LETTER), "number": expand(uc.NUMBER), "space": expand(uc.WHITE_SPACE)}


@pytest.fixture(scope="module")
def probes(codes: np.ndarray) -> ProbeText:
    return ProbeText(codes)


@pytest.fixture(scope="module")
def our_joins(probes: ProbeText) -> dict[str, np.ndarray]:
    return split_joins(GPT2_SPLIT.findall, probes)


@pytest.fixture(scope="module")
def boundary_tokenizer() -> BPETokenizer:
    tokens = {b: bytes([b]) for b in range(256)}
    for a, b in BOUNDARY_PAIRS:
        tokens[len(tokens)] = bytes([a, b])
    return BPETokenizer(tokens, BOUNDARY_PAIRS, {})


@pytest.fixture(scope="module")
def tiktoken_joins(probes: ProbeText, tiktoken_boundary) -> dict[str, np.ndarray]:
    return id_joins(tiktoken_boundary.encode_to_numpy(probes.text), probes)


@pytest.fixture(scope="module")
def tiktoken_boundary(boundary_tokenizer: BPETokenizer):
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = {boundary_tokenizer.token_bytes(i): i for i in range(boundary_tokenizer.vocab_size)}
    return tiktoken.Encoding("boundary", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={})


# ---- the pinned tables are the reference implementations' tables -----------------------------------------


@pytest.mark.parametrize(("name", "pattern"), [("letter", r"\p{L}"), ("number", r"\p{N}"), ("space", r"\s")])
def test_pinned_tables_are_tiktoken_and_hf_classes(name: str, pattern: str, chars: str, pinned: Classes) -> None:
    # tiktoken encodes only what its pattern matches: a one-class pattern and a byte vocabulary give
    # back exactly the code points its engine (Rust `regex` crate) puts in the class.
    byte_ranks = {bytes([b]): b for b in range(256)}
    enc = tiktoken.Encoding("probe", pat_str=pattern, mergeable_ranks=byte_ranks, special_tokens={})
    tiktoken_class = set(map(ord, enc.decode_bytes(enc.encode_ordinary(chars)).decode()))
    # HF (Oniguruma, as in its ByteLevel pre-tokenizer): what a "removed" split leaves is outside the class.
    split = tokenizers.pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="removed")
    hf_class = set(map(ord, chars)) - {ord(c) for piece, _ in split.pre_tokenize_str(chars) for c in piece}
    hint = f"pinned Unicode {uc.UNICODE_VERSION}; if a new release moved to another version, see docs/tokenizer.md"
    assert tiktoken_class == pinned[name], f"tiktoken: {sorted(tiktoken_class ^ pinned[name])[:8]} ({hint})"
    assert hf_class == pinned[name], f"HF tokenizers: {sorted(hf_class ^ pinned[name])[:8]} ({hint})"


# ---- our split follows the pinned tables, not the installed `regex` -----------------------------------


def test_split_follows_pinned_tables_on_every_code_point(our_joins, codes, pinned: Classes) -> None:
    bad = differences(codes, our_joins, expected_joins(pinned, codes))
    assert not bad.any(), report(codes, bad)


def test_split_does_not_use_regex_module_tables(probes, codes, pinned: Classes) -> None:
    # Negative control: the bare pattern, with the installed `regex` tables, errs on exactly the code
    # points the splitter corrects: 17,480 with regex 2026.12 (Unicode 17 tables), none with Unicode 16.
    plain = regex.compile(GPT2_PATTERN)
    bad = differences(codes, split_joins(plain.findall, probes), expected_joins(pinned, codes))
    assert set(codes[bad].tolist()) == set(GPT2_SPLIT.corrections)


def test_split_follows_whatever_tables_it_is_given(probes, codes, pinned: Classes) -> None:
    # Tables no `regex` release has: Unicode 17's CJK Extension J block (unassigned in 16) as letters,
    # Hangul syllables as "other", Arabic-Indic digits as letters, circled numbers as "other". The
    # splitter must follow them on every code point, and the probes must show every moved one.
    moved = {
        **{cp: "letter" for cp in range(0x323B0, 0x33480)},
        **{cp: "other" for cp in range(0xAC00, 0xD7A4)},
        **{cp: "letter" for cp in range(0x660, 0x66A)},
        **{cp: "other" for cp in range(0x2460, 0x2474)},
    }
    changed = {name: cps - moved.keys() for name, cps in pinned.items()}
    for cp, name in moved.items():
        if name != "other":
            changed[name].add(cp)
    splitter = GPT2Splitter(*(to_ranges(changed[name]) for name in ("letter", "number", "space")))
    joins = split_joins(splitter.findall, probes)
    bad = differences(codes, joins, expected_joins(changed, codes))
    assert not bad.any(), report(codes, bad)
    seen = differences(codes, joins, expected_joins(pinned, codes))
    assert set(codes[seen].tolist()) == set(moved)  # every moved code point shows, and no other


def test_short_long_and_ascii_texts_take_the_right_path() -> None:
    # The splitter checks short texts with a set, long ones with a lookup table, ASCII not at all.
    splitter = GPT2Splitter(letters=to_ranges(expand(uc.LETTER) - set(range(0xAC00, 0xD7A4))))  # Hangul: other
    assert 0xAC00 in splitter.corrections  # the installed tables call it a letter
    assert splitter.findall("a\uac00" + CJK) == ["a", "\uac00", CJK]
    assert splitter.findall("a\u00e9" + CJK) == ["a\u00e9" + CJK]
    assert splitter.findall("x " * 200 + "a\uac00" + CJK)[-3:] == [" a", "\uac00", CJK]
    assert splitter.findall("x " * 200 + "a\u00e9" + CJK)[-1] == " a\u00e9" + CJK
    assert splitter.findall("don't stop" * 50) == GPT2_SPLIT.findall("don't stop" * 50)


def test_joins_are_the_same_without_separators(our_joins, tiktoken_joins, codes, tiktoken_boundary) -> None:
    # The separator must not change a probe's words: for a sample (ASCII, white space, the code points
    # the splitter corrects, every 61st scalar value) each probe alone gives the joins the whole text gave.
    pick = (codes < 0x80) | (np.arange(len(codes)) % 61 == 0)
    pick |= np.isin(codes, [*GPT2_SPLIT.corrections, *expand(uc.WHITE_SPACE)])
    alone = [probe(chr(cp)) for cp in codes[pick].tolist()]
    ours_alone = [set(accumulate(map(len, GPT2_SPLIT.findall(p)))) for p in alone]
    theirs_alone = [
        set(accumulate(np.where(np.array(ids) >= 256, 2, 1).tolist()))
        for ids in tiktoken_boundary.encode_ordinary_batch(alone)
    ]
    for name, offset in JOINS.items():
        assert (our_joins[name][pick] == [offset not in ends for ends in ours_alone]).all(), name
        offsets = [len(p[:offset].encode()) for p in alone]
        assert (tiktoken_joins[name][pick] == [o not in ends for o, ends in zip(offsets, theirs_alone)]).all(), name


# ---- same words and ids as tiktoken and HF -------------------------------------------------------------


def test_tiktoken_splits_like_us_on_every_code_point(our_joins, tiktoken_joins, codes) -> None:
    bad = differences(codes, our_joins, tiktoken_joins)
    assert not bad.any(), report(codes, bad)


def test_boundary_vocabulary_encodes_alike(probes, boundary_tokenizer, tiktoken_boundary) -> None:
    # The reading of joins from ids assumes our BPE and tiktoken's merge the boundary pairs alike.
    text = probes.text[:600_000]
    assert boundary_tokenizer.encode(text) == tiktoken_boundary.encode_ordinary(text)


def test_hf_loads_our_file_and_splits_like_us(our_joins, codes, boundary_tokenizer, tmp_path: Path) -> None:
    # Our tokenizer.json names the ByteLevel pre-tokenizer; HF applies its own tables to it. HF is
    # slower, so: the BMP, plane 3 (where Unicode 17 added letters) and every 13th code point elsewhere.
    hf = tokenizers.Tokenizer.from_file(str(boundary_tokenizer.save(tmp_path / "tokenizer.json")))
    pick = (codes < 0x10000) | ((codes >= 0x30000) & (codes < 0x40000)) | (np.arange(len(codes)) % 13 == 0)
    sample = ProbeText(codes[pick])
    theirs = id_joins(np.array(hf.encode(sample.text, add_special_tokens=False).ids), sample)
    bad = differences(codes[pick], {name: joins[pick] for name, joins in our_joins.items()}, theirs)
    assert not bad.any(), report(codes[pick], bad)


@pytest.mark.slow
def test_gpt2_ids_equal_tiktoken_on_every_code_point(gpt2: BPETokenizer, tiktoken_gpt2, chars: str) -> None:
    assert gpt2.encode("\U000323b6\u6f50") == tiktoken_gpt2.encode_ordinary("\U000323b6\u6f50")  # the case
    for make in (str, lambda c: c + CJK):
        probes = [make(c) for c in chars]
        for start in range(0, len(probes), 65_536):
            chunk = probes[start : start + 65_536]
            text = SEP.join(chunk)
            if gpt2.encode(text) != tiktoken_gpt2.encode_ordinary(text):
                bad = [p for p in chunk if gpt2.encode(p) != tiktoken_gpt2.encode_ordinary(p)]
                pytest.fail(f"{len(bad)} probes encode differently from tiktoken, e.g. {bad[:5]!r}")


# ---- the generated tables ------------------------------------------------------------------------------


def test_generated_module_is_what_the_generator_writes(tmp_path: Path) -> None:
    pytest.importorskip("unicodedata2", reason="unicodedata2 (the parity extra) is not installed")
    assert GENERATE in (REPO / "docs" / "tokenizer.md").read_text(encoding="utf-8")
    (tmp_path / "reference_llm" / "tokenizer").mkdir(parents=True)
    argv = [sys.executable, *GENERATE.split()[1:]]  # run as written, by this interpreter
    done = subprocess.run(
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": ""}
    )
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "reference_llm" / "tokenizer" / "unicode_classes.py").read_text(encoding="utf-8")
    assert written == Path(uc.__file__).read_text(encoding="utf-8")
    again = subprocess.run(
        argv[:-2] + argv[-1:],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_generator_without_the_pinned_database_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from reference_llm.errors import ConfigError
    from reference_llm.tokenizer import _gen_unicode_classes as gen

    monkeypatch.setattr(gen, "UNICODE_VERSION", "99.0.0")
    with pytest.raises(ConfigError, match=r"pip install unicodedata2==99\.0\.0"):
        gen.unicode_database()


def test_tables_are_disjoint_sorted_ranges(pinned: Classes) -> None:
    for table in (uc.LETTER, uc.NUMBER, uc.WHITE_SPACE):
        flat = [cp for pair in table for cp in pair]
        assert flat == sorted(flat) and all(a <= b for a, b in table)
        assert all(b + 1 < a for (_, b), (a, _) in zip(table, table[1:]))  # runs are maximal
    assert not (pinned["letter"] & pinned["number"]) and not (pinned["space"] & (pinned["letter"] | pinned["number"]))
    assert len(pinned["space"]) == 25 and {0x20, 0x85, 0xA0, 0x3000} <= pinned["space"]
