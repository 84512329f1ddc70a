"""Corpus discovery and the streaming readers: every format, compression, what is skipped and why, bad
input named by file and line or row, long documents in bounded pieces."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from reference_llm.config import DataSource
from reference_llm.data import readers
from reference_llm.data.readers import BadRecords, cut_pieces, iter_documents
from reference_llm.data.sources import SourceFile, discover, infer_format
from reference_llm.errors import DataError


def docs(
    path: Path,
    text_field: str = "text",
    fmt: str = "",
    skip: bool = False,
    piece_chars: int = 1 << 20,
    limit: int = 1 << 20,
) -> tuple[list[tuple[str, str]], BadRecords]:
    """(name, text) of every document of the corpus at `path`, and the bad-record counter."""
    bad = BadRecords(skip=skip)
    found = discover([DataSource(str(path), text_field=text_field, format=fmt)], skip_bad=skip)
    out = [d for src in found.files for d in iter_documents(src, piece_chars, limit, bad)]
    return out, bad


def jsonl(path: Path, records: list, compress=None) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(compress(data) if compress else data)
    return path


# -- formats -------------------------------------------------------------------------------------------


def test_infer_format():
    assert infer_format("a/b.jsonl.zst") == ("jsonl", "zstd")
    assert infer_format("B.TXT.GZ") == ("text", "gzip")
    assert infer_format("part.parquet") == ("parquet", "")
    assert infer_format("x.png") == (None, "")
    assert infer_format("x.data", forced="jsonl") == ("jsonl", "")


@pytest.mark.parametrize(
    "name, compress",
    [
        ("r.jsonl", None),
        ("r.jsonl.gz", gzip.compress),
        ("r.jsonl.zst", zstandard.ZstdCompressor().compress),
        ("r.jsonl.bz2", bz2.compress),
        ("r.ndjson.xz", lzma.compress),
    ],
)
def test_json_lines_plain_and_compressed(tmp_path, name, compress):
    jsonl(tmp_path / name, [{"text": "first"}, {"text": "second", "id": 2}], compress)
    (tmp_path / name).with_suffix(".keep").write_text("")  # unknown format: reported, not read
    out, _ = docs(tmp_path / name)
    assert out == [(f"{name}:1", "first"), (f"{name}:2", "second")]


def test_dotted_fields_blank_lines_and_byte_order_mark(tmp_path):
    path = tmp_path / "nested.jsonl"
    rows = [
        json.dumps({"meta": {"body": "one"}, "turns": [{"text": "t0"}]}),
        "",
        json.dumps({"meta": {"body": "two"}, "turns": [{"text": "t1"}]}),
    ]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode())
    assert docs(path, "meta.body")[0] == [("nested.jsonl:1", "one"), ("nested.jsonl:3", "two")]
    assert [t for _, t in docs(path, "turns.0.text")[0]] == ["t0", "t1"]


def test_json_array_is_streamed_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK", 7)  # elements, strings and numbers straddle block boundaries
    records = [{"text": f"record {i} " + "é" * i, "n": 12345678} for i in range(20)]
    (tmp_path / "a.json").write_text(json.dumps(records, indent=2), encoding="utf-8")
    out, _ = docs(tmp_path / "a.json")
    assert out == [(f"a.json[{i}]", r["text"]) for i, r in enumerate(records)]
    (tmp_path / "a.json").write_text(" [ ] ")
    assert docs(tmp_path / "a.json")[0] == []
    (tmp_path / "a.json").write_text('{"text": "a .json file of JSON Lines"}\n{"text": "b"}\n')
    assert [t for _, t in docs(tmp_path / "a.json")[0]] == ["a .json file of JSON Lines", "b"]


def test_csv_and_tsv(tmp_path):
    (tmp_path / "a.csv").write_text('id,text\n1,"with, comma\nand a line break"\n2,plain\n', encoding="utf-8")
    (tmp_path / "b.tsv").write_text("text\tid\ntab separated\t1\n", encoding="utf-8")
    out, _ = docs(tmp_path)
    assert out == [("a.csv:3", "with, comma\nand a line break"), ("a.csv:4", "plain"), ("b.tsv:2", "tab separated")]


def test_parquet_reads_one_column_by_row_group(tmp_path):
    table = pa.table(
        {
            "id": list(range(10)),
            "content": [f"row {i}" for i in range(10)],
            "meta": [{"lang": "en", "body": f"b{i}"} for i in range(10)],
        }
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3)
    assert docs(tmp_path / "t.parquet", "content")[0] == [(f"t.parquet[{i}]", f"row {i}") for i in range(10)]
    assert [t for _, t in docs(tmp_path / "t.parquet", "meta.body")[0]] == [f"b{i}" for i in range(10)]


def test_arrow_file_and_stream_and_a_datasets_folder(tmp_path):
    table = pa.table({"text": ["a", "b", "c"], "label": [0, 1, 0]})
    with pa.OSFile(str(tmp_path / "f.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    assert [t for _, t in docs(tmp_path / "f.arrow")[0]] == ["a", "b", "c"]
    # A `datasets` save_to_disk folder: .arrow files in the IPC stream format, listed in state.json.
    hf = tmp_path / "hf"
    hf.mkdir()
    for i, part in enumerate((table.slice(0, 2), table.slice(2))):
        with (
            pa.OSFile(str(hf / f"data-0000{i}-of-00002.arrow"), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(part)
    (hf / "state.json").write_text(
        json.dumps(
            {"_data_files": [{"filename": "data-00000-of-00002.arrow"}, {"filename": "data-00001-of-00002.arrow"}]}
        )
    )
    (hf / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}))
    out, _ = docs(hf)
    assert out == [
        ("data-00000-of-00002.arrow[0]", "a"),
        ("data-00000-of-00002.arrow[1]", "b"),
        ("data-00001-of-00002.arrow[0]", "c"),
    ]
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    (tmp_path / "dd" / "train").mkdir()
    (tmp_path / "dd" / "train" / "state.json").write_text("{}")
    with pytest.raises(DataError, match=r"DatasetDict with splits train: point the corpus at one split"):
        docs(tmp_path / "dd")


# -- what is read and what is skipped ------------------------------------------------------------------


def test_a_folder_of_every_kind_reports_what_it_skips(tmp_path):
    (tmp_path / "t0.txt").write_text("text file")
    jsonl(tmp_path / "extra.jsonl", [{"text": "record"}])
    (tmp_path / "pic.png").write_bytes(b"\x89PNG")
    (tmp_path / "weights.bin").write_bytes(b"\0\1")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "self").symlink_to("self")  # a link to itself
    (tmp_path / "gone.txt").symlink_to("missing.txt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")  # a folder link back up the tree
    found = discover([DataSource(str(tmp_path))])
    assert [(f.name, f.format) for f in found.files] == [("extra.jsonl", "jsonl"), ("t0.txt", "text")]
    loops = sorted(found.skipped.pop("symlink loop"))
    assert loops == ["self", "sub/up/"]
    assert found.skipped == {
        "unknown format (.png)": ["pic.png"],
        "unknown format (.bin)": ["weights.bin"],
        "broken symlink": ["gone.txt"],
    }
    assert found.hidden == 1
    summary = discover([DataSource(str(tmp_path))]).skip_summary()
    assert summary.startswith("skipped 5 file(s): ") and "unknown format (.png): 1 (pic.png)" in summary
    with pytest.raises(DataError, match=r"--strict: skipped 5 file\(s\)"):
        discover([DataSource(str(tmp_path))], strict=True)


def test_globs_single_files_and_missing_paths(tmp_path):
    for name in ("a.jsonl", "b.jsonl", "c.txt"):
        jsonl(tmp_path / name, [{"text": name}])
    found = discover([DataSource(str(tmp_path / "*.jsonl"))])
    assert [f.path.name for f in found.files] == ["a.jsonl", "b.jsonl"]
    (tmp_path / "notes.data").write_text("plain text under any name")
    assert docs(tmp_path / "notes.data")[0] == [("notes.data", "plain text under any name")]
    with pytest.raises(DataError, match="corpus not found"):
        discover([DataSource(str(tmp_path / "nope.txt"))])
    with pytest.raises(DataError, match="matches no file"):
        discover([DataSource(str(tmp_path / "*.parquet"))])
    with pytest.raises(DataError, match="compressed parquet"):
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "x.parquet.gz").write_bytes(b"")
        discover([DataSource(str(tmp_path / "d"))])


def test_several_sources_prefix_their_names(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.txt").write_text("a")
    (tmp_path / "b" / "x.txt").write_text("b")
    found = discover([DataSource(str(tmp_path / "a"), name="books"), DataSource(str(tmp_path / "b"))])
    assert [(f.name, f.source) for f in found.files] == [("books/x.txt", 0), (f"{tmp_path / 'b'}/x.txt", 1)]


@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="macOS refuses file names that are not UTF-8")
def test_file_name_that_is_not_utf8(tmp_path):
    (Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.txt"))).write_text("latin-1 name")
    (tmp_path / "ok.txt").write_text("fine")
    with pytest.raises(DataError, match=r"caf\\xe9.txt is not valid UTF-8: rename it"):
        discover([DataSource(str(tmp_path))])
    found = discover([DataSource(str(tmp_path))], skip_bad=True)
    assert [f.name for f in found.files] == ["ok.txt"]
    assert found.skipped == {"file name not UTF-8": ["caf\\xe9.txt"]}


# -- bad input -----------------------------------------------------------------------------------------


def test_bad_records_name_file_and_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b'{"text": "good"}\n{not json}\n{"body": "x"}\n{"text": 5}\n[1, 2]\n{"text": "caf\xe9"}\n{"text": "last"}\n'
    )
    with pytest.raises(DataError) as err:
        docs(path)
    assert str(err.value) == (
        f"{path}:2: not JSON (Expecting property name enclosed in double quotes at column 2) "
        f"(or pass --skip-bad to leave it out)"
    )
    out, bad = docs(path, skip=True)
    assert [t for _, t in out] == ["good", "last"]
    assert bad.counts == {"not JSON": 1, "missing field": 2, "field not text": 1, "not UTF-8": 1}
    assert bad.items[1] == "r.jsonl:3: no field 'text' (fields: body)"
    assert bad.items[2] == "r.jsonl:4: field 'text' is a number, not a string"
    assert bad.items[3].startswith("r.jsonl:5: no field 'text' (the record is a JSON array")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda d: (d / "t.txt").write_bytes(b"line one\nline two caf\xe9\n"),
            r"t.txt: not UTF-8 text \(bad byte near offset 21, line 2\)",
        ),
        (
            lambda d: pq.write_table(pa.table({"body": ["x"]}), d / "t.parquet"),
            r"t.parquet: no column 'text' \(columns: body\)",
        ),
        (
            lambda d: pq.write_table(pa.table({"text": [1]}), d / "t.parquet"),
            "t.parquet: column 'text' holds int64, not text",
        ),
        (lambda d: (d / "t.parquet").write_bytes(b"PAR1 not really"), "t.parquet: not a readable Parquet file"),
        (lambda d: (d / "t.csv").write_text("a,b\n1,2\n"), r"t.csv: no column 'text' \(columns: a, b\)"),
        (lambda d: (d / "t.json").write_text('[{"text": "a"}, {"text": "b"'), r"t.json\[1\]: not JSON"),
        (
            lambda d: (d / "t.json").write_text('"just a string"'),
            "t.json: neither a JSON array of records nor JSON Lines",
        ),
        (
            lambda d: (d / "t.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:60]),
            "t.jsonl.gz: truncated or corrupt gzip data",
        ),
        (
            lambda d: (d / "t.jsonl.zst").write_bytes(
                zstandard.ZstdCompressor().compress(b'{"text": "a"}\n' * 1000)[:20]
            ),
            "t.jsonl.zst: truncated or corrupt zstd data",
        ),
    ],
)
def test_bad_files_are_one_line_errors_or_skipped(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message) as err:
        docs(tmp_path)
    assert "\n" not in str(err.value)
    _, bad = docs(tmp_path, skip=True)
    assert bad.total >= 1


def test_record_longer_than_the_limit(tmp_path):
    jsonl(tmp_path / "r.jsonl", [{"text": "x" * 500}, {"text": "short"}])
    with pytest.raises(DataError, match=r"r.jsonl:1: line is longer than"):
        docs(tmp_path, limit=100)
    assert [t for _, t in docs(tmp_path, skip=True, limit=100)[0]] == ["short"]


# -- long documents ------------------------------------------------------------------------------------


def test_long_text_comes_in_bounded_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK", 1000)
    words = " ".join(f"w{i}" for i in range(5000))  # one line of ~29 kB
    lines = "\n".join(f"line {i}" for i in range(3000))
    (tmp_path / "one_line.txt").write_text(words)
    (tmp_path / "lines.txt").write_text(lines)
    out, _ = docs(tmp_path, piece_chars=4000)
    pieces = {name: [t for n, t in out if n.startswith(name)] for name in ("lines.txt", "one_line.txt")}
    assert "".join(pieces["one_line.txt"]) == words and "".join(pieces["lines.txt"]) == lines
    assert all(len(p) <= 4000 for ps in pieces.values() for p in ps)
    assert all(p.endswith("\n") for p in pieces["lines.txt"][:-1])  # cut after a line break
    assert all(p.startswith(" ") for p in pieces["one_line.txt"][1:])  # else before a space
    assert [n for n, _ in out if n.startswith("one_line")][:2] == ["one_line.txt#1", "one_line.txt#2"]


def test_cut_pieces_never_separates_a_combining_mark():
    text = "e\u0301" * 100  # no line break, no space: hard cuts
    pieces = cut_pieces(text, 7)
    assert "".join(pieces) == text and all(not p.startswith("\u0301") for p in pieces)
    assert cut_pieces("short", 7) == ["short"]


def test_source_file_fields_default_to_text():
    src = SourceFile(Path("a.txt"), "a.txt", "0" * 64, 1)
    assert (src.format, src.compression, src.text_field, src.source) == ("text", "", "text", 0)
