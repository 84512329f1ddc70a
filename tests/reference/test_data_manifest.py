"""`python -m reference_llm.data.manifest add`: entries with sha256, size and a checked SPDX licence, never a
guessed one; `llmgen compliance` then passes and scans the new formats for personal data."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from generator.compliance import check_repository
from reference_llm.cli import run_main
from reference_llm.data.licenses import check_licence, known_ids
from reference_llm.data.manifest import main as manifest_main
from reference_llm.data.pii import scan_pii

HEADER = "# Provenance of every data file (a comment that must survive).\n"
SHAKESPEARE = 'path = "plays.txt"\nsource = "bundled"\nlicense = "LicenseRef-Public-Domain"\n'


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A generated-repository layout: data/ with one listed file, configs/train.toml naming the cache."""
    (tmp_path / "data").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "train.toml").write_text('[data]\ncache_dir = "data/cache"\n')
    plays = "To be, or not to be, that is the question.\n"
    (tmp_path / "data" / "plays.txt").write_text(plays)
    import hashlib

    sha = hashlib.sha256(plays.encode()).hexdigest()
    (tmp_path / "data" / "manifest.toml").write_text(f'{HEADER}[[file]]\n{SHAKESPEARE}sha256 = "{sha}"\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def add(*argv: str) -> int:
    return run_main(manifest_main, ["add", *argv])


def manifest_entries(repo: Path) -> list[dict]:
    return tomllib.loads((repo / "data" / "manifest.toml").read_text())["file"]


def test_add_files_then_compliance_passes(repo, capsys):
    corpus = repo / "data" / "mycorpus"
    corpus.mkdir()
    (corpus / "a.jsonl").write_text(json.dumps({"text": "Some prose for training."}) + "\n")
    (corpus / "b.txt.gz").write_bytes(gzip.compress(b"More prose.\n"))
    assert not check_repository(repo).ok  # unlisted files are problems...
    assert add("data/mycorpus", "--license", "CC-BY-4.0", "--source", "written for this test") == 0
    out = capsys.readouterr().out
    assert "added mycorpus/a.jsonl (CC-BY-4.0, " in out and "added mycorpus/b.txt.gz" in out
    report = check_repository(repo)
    assert report.ok, report.problems  # ... until they are added
    entries = manifest_entries(repo)
    assert [e["path"] for e in entries] == ["plays.txt", "mycorpus/a.jsonl", "mycorpus/b.txt.gz"]
    assert entries[1]["text_field"] == "text" and "text_field" not in entries[2]
    assert entries[1]["bytes"] == (corpus / "a.jsonl").stat().st_size
    assert (repo / "data" / "manifest.toml").read_text().startswith(HEADER)
    # Adding the same files again changes nothing.
    assert add("data/mycorpus", "--license", "CC-BY-4.0", "--source", "written for this test") == 0
    assert "unchanged mycorpus/a.jsonl" in capsys.readouterr().out and len(manifest_entries(repo)) == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--source", "s"], "--license is required"),
        (["--license", "Public-Domain", "--source", "s"], "'Public-Domain' is not on the SPDX License List"),
        (["--license", "mit", "--source", "s"], "(SPDX spells it MIT)"),
        (["--license", "NOASSERTION", "--source", "s"], "says the licence is unknown"),
        (["--license", "MIT", "--source", " "], "--source is required"),
    ],
)
def test_licence_is_never_guessed(repo, capsys, argv, message):
    (repo / "data" / "x.txt").write_text("x")
    assert add("data/x.txt", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert len(manifest_entries(repo)) == 1


def test_share_alike_and_deprecated_licences_are_noted(repo, capsys):
    (repo / "data" / "wiki.txt").write_text("wiki text")
    assert add("data/wiki.txt", "--license", "CC-BY-SA-4.0 AND GPL-2.0", "--source", "a wiki dump") == 0
    err = capsys.readouterr().err
    assert "CC-BY-SA-4.0 is share-alike" in err and "GPL-2.0 is deprecated" in err
    assert check_repository(repo).warnings  # and llmgen compliance warns too
    assert add("data/wiki.txt", "--license", "LicenseRef-MyTerms", "--source", "a wiki dump") == 2
    assert "pass --force" in capsys.readouterr().err  # an entry with other values is not overwritten...
    assert add("data/wiki.txt", "--license", "LicenseRef-MyTerms", "--source", "a wiki dump", "--force") == 0
    assert manifest_entries(repo)[1]["license"] == "LicenseRef-MyTerms"  # ... unless asked


def test_paths_outside_data_are_refused(repo, capsys):
    (repo / "elsewhere.txt").write_text("x")
    assert add("elsewhere.txt", "--license", "MIT", "--source", "s") == 2
    assert "is outside data/: copy it there first" in capsys.readouterr().err


def test_compliance_scans_compressed_text_and_record_fields(repo):
    mail = "write to juliet@capulet.example\n"
    (repo / "data" / "notes.txt.gz").write_bytes(gzip.compress(b"clean line\n" + mail.encode()))
    table = pa.table({"text": ["clean", "call +44 20 7946 0958 now"], "id": ["a", "mail x@y.example"]})
    pq.write_table(table, repo / "data" / "rows.parquet")
    assert (
        run_main(
            manifest_main, ["add", "data/notes.txt.gz", "data/rows.parquet", "--license", "CC0-1.0", "--source", "s"]
        )
        == 0
    )
    report = check_repository(repo)
    found = {f.path: [(p.line, p.column, p.kind) for p in f.pii_locations] for f in report.files}
    assert found["data/notes.txt.gz"] == [(2, 10, "email")]  # line 2 of the decompressed text
    assert found["data/rows.parquet"] == [(2, 6, "phone")]  # record 2 of the text field; `id` is not trained on
    assert not report.ok and "2 finding(s)" in report.problems[0]
    # Negative control: the compressed bytes, scanned as text the way plain files are, show nothing.
    raw = (repo / "data" / "notes.txt.gz").read_bytes().decode("utf-8", errors="replace")
    assert scan_pii(raw) == []


def test_licence_list_and_checks():
    ids = known_ids()
    assert len(ids) > 700 and ids["MIT"] is False and ids["GPL-2.0"] is True and "Classpath-exception-2.0" in ids
    assert check_licence("MIT OR Apache-2.0") == ([], [])
    assert check_licence("GPL-2.0-only WITH Classpath-exception-2.0")[0] == []
    assert check_licence("LicenseRef-Shakespeare") == ([], [])


def test_module_help_example_runs_as_written(tmp_path):
    """The command in the module docstring, in a folder that holds data/mycorpus.jsonl."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mycorpus.jsonl").write_text('{"text": "hello"}\n')
    command = [
        sys.executable,
        "-m",
        "reference_llm.data.manifest",
        "add",
        "data/mycorpus.jsonl",
        "--license",
        "CC-BY-4.0",
        "--source",
        "https://example.org/corpus (downloaded 2025-01-31)",
    ]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads((tmp_path / "data" / "manifest.toml").read_text())["file"][0]["license"] == "CC-BY-4.0"
