"""prepare_data end to end with the real tokenizers: meta, split, cache reuse, errors, the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reference_llm.cli import run_main
from reference_llm.config import DataConfig
from reference_llm.data import TokenLoader, prepare_data
from reference_llm.data.pipeline import PipelineSettings
from reference_llm.data.prepare import main as prepare_main
from reference_llm.errors import ConfigError, DataError

WORDS = (
    "time love king night heart death honour crown blood sword hand eye fair lord sweet word day "
    "life grace heaven soul father queen mother brother friend noble speak give make hold"
).split()


def play(seed: int, lines: int = 40) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(7)).capitalize() + "." for _ in range(lines))


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i in range(8):
        (folder / f"play{i}.txt").write_text(play(i), encoding="utf-8")
    (folder / "sub" / "copy.md").write_text(play(0) + "\n", encoding="utf-8")  # same after normalising
    (folder / "letter.txt").write_text(play(9) + "\nWrite to me at romeo@example.org", encoding="utf-8")
    (folder / "notes.rst").write_text("not a corpus file", encoding="utf-8")
    (folder / ".hidden.txt").write_text(play(10), encoding="utf-8")
    return folder


def config(corpus, tmp_path, **fields) -> DataConfig:
    return DataConfig(
        **{
            "corpus": str(corpus),
            "tokenizer": "char",
            "cache_dir": str(tmp_path / "cache"),
            "val_fraction": 0.2,
            **fields,
        }
    )


def decode_split(prepared, split: str) -> str:
    info = prepared.meta["splits"][split]
    ids = np.concatenate([np.fromfile(prepared.dir / s["file"], dtype=prepared.meta["dtype"]) for s in info["shards"]])
    assert info["tokens"] == ids.size
    return prepared.tokenizer.decode(ids.tolist())


def test_meta_split_and_cache_reuse(corpus, tmp_path):
    prepared = prepare_data(config(corpus, tmp_path), progress=False)
    meta, tok = prepared.meta, prepared.tokenizer
    assert not prepared.from_cache and prepared.dir.parent == tmp_path / "cache"
    assert meta["tokenizer"]["fingerprint"] == tok.fingerprint() and meta["tokenizer"]["kind"] == "char"
    assert meta["dtype"] == "uint16"
    names = sorted(s["name"] for s in meta["sources"])
    assert names == ["letter.txt"] + [f"play{i}.txt" for i in range(8)] + ["sub/copy.md"]
    for source in meta["sources"]:
        assert source["sha256"] == hashlib.sha256((corpus / source["name"]).read_bytes()).hexdigest()
    assert meta["settings"]["data"] == {"tokenizer": "char", "vocab_size": 1024, "val_fraction": 0.2, "skip_bad": False}
    assert meta["report"]["skipped_files"] == {"unknown format (.rst)": {"count": 1, "items": ["notes.rst"]}}
    assert meta["report"]["hidden_files"] == 1
    report = meta["report"]
    assert report["exact_dedup"]["items"] == [{"source": "sub/copy.md", "duplicate_of": "play0.txt", "similarity": 1.0}]
    assert report["pii"]["by_kind"] == {"email": 1}

    # Split by document: 9 unique documents, 2 held out; each document ends with the end-of-text token.
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert (train["documents"], val["documents"]) == (7, 2)
    eot = "<|endoftext|>"
    train_docs = decode_split(prepared, "train").split(eot)
    val_docs = decode_split(prepared, "val").split(eot)
    assert train_docs[-1] == val_docs[-1] == "" and len(train_docs) == 8 and len(val_docs) == 3
    assert not set(train_docs[:-1]) & set(val_docs[:-1])
    all_docs = train_docs[:-1] + val_docs[:-1]
    assert play(3) in all_docs and any("<EMAIL>" in d for d in all_docs)
    assert val["bytes"] == sum(len(d.encode()) for d in val_docs)

    # Second call: same directory, nothing rebuilt.
    meta_file = prepared.dir / "meta.json"
    stamp = meta_file.stat().st_mtime_ns
    again = prepare_data(config(corpus, tmp_path), progress=False)
    assert again.from_cache and again.dir == prepared.dir and again.meta == meta
    assert meta_file.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [prepared.dir.name]

    # Any change to the corpus or the settings is a different cache entry.
    (corpus / "play1.txt").write_text(play(11), encoding="utf-8")
    changed = prepare_data(config(corpus, tmp_path), progress=False)
    assert not changed.from_cache and changed.dir != prepared.dir
    other = prepare_data(
        config(corpus, tmp_path), PipelineSettings().with_overrides({"scrub_pii": False}), progress=False
    )
    assert other.dir not in (prepared.dir, changed.dir) and "pii" not in other.meta["report"]


@pytest.mark.parametrize("kind", ["bpe", "hf-bpe"])
def test_single_document_bpe_split_by_text_and_loader(tmp_path, kind):
    text = "\n".join(play(i, 20) for i in range(6)) + "\nLast line has a rare sign: Ω."
    path = tmp_path / "one.txt"
    path.write_text(text, encoding="utf-8")
    cfg = config(path, tmp_path, tokenizer=kind, vocab_size=300, val_fraction=0.1)
    prepared = prepare_data(cfg, progress=False)
    assert prepared.meta["tokenizer"]["kind"] == prepared.tokenizer.kind == kind
    assert prepared.tokenizer.vocab_size == 300
    reused = prepare_data(cfg, progress=False)
    assert reused.from_cache and reused.tokenizer.kind == kind
    train, val = decode_split(prepared, "train"), decode_split(prepared, "val")
    assert train.endswith("<|endoftext|>") and val.endswith("<|endoftext|>")
    assert train[:-13] + val[:-13] == text
    assert 0.08 < len(val) / len(text) < 0.13
    x, y = TokenLoader(prepared.dir, "train", seq_len=32, batch_size=2, seed=0).next_batch()
    assert x.shape == (2, 32) and int(x.max()) < 300


def test_char_tokenizer_learns_from_train_split_only(tmp_path):
    text = "\n".join(play(i, 20) for i in range(6)) + "\nonly validation has Ω and Ж."
    path = tmp_path / "one.txt"
    path.write_text(text, encoding="utf-8")
    prepared = prepare_data(config(path, tmp_path, val_fraction=0.1), progress=False)
    assert "Ω" not in prepared.tokenizer.chars
    assert prepared.meta["report"]["val_chars_without_id"] == 2
    assert decode_split(prepared, "val").endswith("only validation has  and .<|endoftext|>")


def test_literal_end_of_text_strings_are_removed(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text(play(1) + "\nA line with <|endoftext|> inside it.\n" + play(2), encoding="utf-8")
    prepared = prepare_data(config(path, tmp_path), progress=False)
    assert prepared.meta["report"]["special_token_strings_removed"] == 1
    assert (decode_split(prepared, "train") + decode_split(prepared, "val")).count("<|endoftext|>") == 2


@pytest.mark.parametrize(
    "setup, error, message",
    [
        (lambda d: d / "missing.txt", DataError, "corpus not found"),
        (lambda d: d, DataError, "has no files to read"),
        (lambda d: _write(d / "empty.txt", b" \n\r\n\t"), DataError, "is empty"),
        (lambda d: _write(d / "short.txt", b"too short"), DataError, "min_chars 1 of 1"),
        (lambda d: _write(d / "latin1.txt", "caf\u00e9 au lait".encode("latin-1")), DataError, "not UTF-8"),
    ],
)
def test_bad_corpus_errors(tmp_path, setup, error, message):
    corpus_dir = tmp_path / "c"
    corpus_dir.mkdir()
    with pytest.raises(error, match=message):
        prepare_data(config(setup(corpus_dir), tmp_path), progress=False)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []  # no half-built or temporary directory left


def test_unreadable_file(tmp_path, monkeypatch):
    path = _write(tmp_path / "locked.txt", b"text")

    def refuse(self, *args, **kwargs):  # chmod 0 does not stop root, who runs the tests in CI
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(DataError, match=r"cannot read corpus file .*locked.txt: Permission denied"):
        prepare_data(config(path, tmp_path), progress=False)


def test_bad_config_values(corpus, tmp_path):
    with pytest.raises(ConfigError, match="data.tokenizer"):
        prepare_data(config(corpus, tmp_path, tokenizer="words"), progress=False)
    with pytest.raises(ConfigError, match="data.val_fraction"):
        prepare_data(config(corpus, tmp_path, val_fraction=1.0), progress=False)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# -- command line --------------------------------------------------------------------------------------


def test_cli_prints_report_then_reuses(corpus, tmp_path, capsys):
    argv = [
        "--corpus",
        str(corpus),
        "--tokenizer",
        "char",
        "--out",
        str(tmp_path / "out"),
        "--set",
        "dedup.threshold=0.9",
    ]
    assert run_main(prepare_main, argv) == 0
    out = capsys.readouterr().out
    assert "(built)" in out and "exact dedup" in out and "email 1" in out and "train tokens" in out
    assert run_main(prepare_main, argv) == 0
    assert "(reused)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tokenizer", "words"], "argument --tokenizer: invalid choice"),
        (["--set", "filters.min_chars"], "must look like KEY=VALUE"),
        (["--set", "dedup.colour=1"], "unknown data pipeline setting 'dedup.colour'"),
        (["--set", "dedup.threshold=2.0"], "dedup.threshold must be in (0, 1]"),
    ],
)
def test_cli_bad_arguments(argv, message, capsys, tmp_path):
    assert run_main(prepare_main, argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_module_exit_code_and_one_line_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reference_llm.data.prepare",
            "--corpus",
            str(tmp_path / "nope.txt"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: corpus not found") and proc.stderr.count("\n") == 1
    assert proc.stdout == ""


def test_cli_strict_and_skip_bad(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(6):
        (folder / f"p{i}.txt").write_text(play(i), encoding="utf-8")
    (folder / "pic.png").write_bytes(b"\x89PNG")
    lines = [json.dumps({"text": play(20 + i)}) for i in range(4)] + ["{broken", json.dumps({"body": "x"})]
    (folder / "extra.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = ["--corpus", str(folder), "--tokenizer", "char", "--out", str(tmp_path / "out")]

    assert run_main(prepare_main, base + ["--strict"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --strict: skipped 1 file(s): unknown format (.png): 1 (pic.png)\n"

    assert run_main(prepare_main, base) == 2  # the bad JSON line stops the run, naming file and line
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "note: skipped 1 file(s): unknown format (.png): 1 (pic.png)"
    assert err[1].startswith(f"error: {folder / 'extra.jsonl'}:5: not JSON (") and len(err) == 2

    assert run_main(prepare_main, base + ["--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "1 file(s) (jsonl 1, text 6)" not in out and "7 file(s) (jsonl 1, text 6)" in out
    assert "bad records" in out and "2 left out (missing field 1, not JSON 1)" in out
    assert "unknown format (.png) 1" in out
    assert not list((tmp_path / "out").glob(".*"))  # no lock file, no unfinished build left


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("bad.jsonl", b'{"text": "fine"}\n{"text": \n', "bad.jsonl:2: not JSON"),
        (
            "bad.txt.gz",
            gzip.compress(b"some text\n" * 1000, mtime=0)[:40],
            "bad.txt.gz: truncated or corrupt gzip data",
        ),
    ],
)
def test_cli_bad_input_is_one_line_without_traceback(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "reference_llm.data.prepare",
            "--corpus",
            str(tmp_path / name),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and message in proc.stderr and proc.stderr.count("\n") == 1
    assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())  # no shard set, finished or not
