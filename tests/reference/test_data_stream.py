"""prepare_data as a stream: several workers give the same bytes as one, an interrupted build continues
without redoing finished shards, source weights set the mixture, memory does not grow with the corpus."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from reference_llm.config import DataConfig, DataSource, load_config
from reference_llm.data import encode, pipeline, prepare_data
from reference_llm.data.pipeline import PipelineSettings
from reference_llm.errors import DataError

WORDS = (
    "time love king night heart death honour crown blood sword hand eye fair lord sweet word day "
    "life grace heaven soul father queen mother brother friend noble speak give make hold"
).split()


def prose(seed: int, lines: int = 12) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)).capitalize() + "." for _ in range(lines))


def mixed_corpus(root: Path, n: int = 400) -> Path:
    """Text files and JSON Lines records, with exact and near duplicates and some PII, far apart."""
    root.mkdir()
    for i in range(20):
        (root / f"t{i:02d}.txt").write_text(prose(i, 40), encoding="utf-8")
    with (root / "records.jsonl").open("w", encoding="utf-8") as f:
        for i in range(n):
            text = prose(1000 + i)
            if i % 50 == 7:
                text = prose(1000 + i - 5)  # an exact copy of an earlier record
            if i % 50 == 9:
                text = prose(1000 + i - 8) + "\nAnd one more line."  # a near copy
            if i % 60 == 3:
                text += f"\nmail me at person{i}@example.org"
            f.write(json.dumps({"text": text}) + "\n")
    return root


def cfg(corpus: Path, tmp_path: Path, **fields) -> DataConfig:
    return DataConfig(
        **{
            "corpus": str(corpus),
            "tokenizer": "bpe",
            "vocab_size": 300,
            "cache_dir": str(tmp_path / "cache"),
            "chunk_mb": 0.05,
            **fields,
        }
    )


def shard_bytes(prepared) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(prepared.dir.glob("*.bin"))}


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_two_workers_write_the_same_bytes_as_one(tmp_path, kind):
    corpus = mixed_corpus(tmp_path / "corpus")
    small = PipelineSettings(shard_tokens=20_000)
    one = prepare_data(cfg(corpus, tmp_path / "a", workers=1, tokenizer=kind), small, progress=False)
    two = prepare_data(cfg(corpus, tmp_path / "b", workers=2, tokenizer=kind), small, progress=False)
    assert one.meta == two.meta and shard_bytes(one) == shard_bytes(two)
    assert one.dir.name == two.dir.name  # workers and chunk size are not part of the cache key
    report = one.meta["report"]
    assert report["exact_dedup"]["dropped"] == 8 and report["near_dedup"]["dropped"] >= 8
    assert report["pii"]["by_kind"] == {"email": 7}
    assert len(one.meta["splits"]["train"]["shards"]) > 2


def test_interrupted_build_continues_without_redoing_finished_shards(tmp_path, monkeypatch, capsys):
    corpus = mixed_corpus(tmp_path / "corpus")
    small = PipelineSettings(shard_tokens=10_000)
    reference = prepare_data(cfg(corpus, tmp_path / "ref"), small, progress=False)
    assert len(reference.meta["splits"]["train"]["shards"]) >= 4

    real_write = encode.write_json
    calls = {"n": 0}

    def stop_after_two_shards(path, obj):
        real_write(path, obj)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C after the second shard

    monkeypatch.setattr(encode, "write_json", stop_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg(corpus, tmp_path), small, progress=False)
    cache = tmp_path / "cache"
    [work] = [p for p in cache.iterdir() if p.name.endswith(".partial")]
    assert not any(p.is_dir() and not p.name.startswith(".") for p in cache.iterdir())  # nothing looks finished
    journal = json.loads((work / encode.JOURNAL_FILE).read_text())
    finished = {s["file"]: (work / s["file"]).stat() for s in journal["train"]["shards"]}
    assert sorted(finished) == ["train_0000.bin", "train_0001.bin"]
    assert (work / "train_0002.bin").exists()  # begun, not finished: written again on resume

    monkeypatch.setattr(encode, "write_json", real_write)
    resumed = prepare_data(cfg(corpus, tmp_path), small, progress=False)
    assert "continuing the interrupted build" in capsys.readouterr().err
    assert resumed.meta == reference.meta and shard_bytes(resumed) == shard_bytes(reference)
    for name, before in finished.items():  # the finished shards were kept, not written again
        after = (resumed.dir / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in cache.iterdir()) == [resumed.dir.name]


def test_interrupted_first_pass_leaves_nothing(tmp_path, monkeypatch):
    corpus = mixed_corpus(tmp_path / "corpus")

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Collector, "add_batch", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg(corpus, tmp_path), progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_source_weights_set_the_mixture(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    for i in range(30):
        (books / f"b{i}.txt").write_text(prose(i, 30), encoding="utf-8")
    web = tmp_path / "web.jsonl"
    web.write_text("".join(json.dumps({"body": {"text": prose(500 + i, 10)}}) + "\n" for i in range(60)))
    toml = tmp_path / "train.toml"
    toml.write_text(f'''[data]
tokenizer = "char"
cache_dir = "{tmp_path / "cache"}"

[[data.sources]]
path = "{books}"
name = "books"
weight = 1.0

[[data.sources]]
path = "{web}"
name = "web"
text_field = "body.text"
weight = 3.0
''')
    data_cfg = load_config(toml).data
    assert [s.label for s in data_cfg.sources] == ["books", "web"]
    prepared = prepare_data(data_cfg, progress=False)
    mixture = {m["source"]: m for m in prepared.meta["mixture"]}
    natural = mixture["books"]["train_bytes"] / (mixture["books"]["train_bytes"] + mixture["web"]["train_bytes"])
    assert natural > 0.55  # books are the larger source...
    assert mixture["web"]["share"] == pytest.approx(0.75, abs=0.04)  # ... but web gets 3 parts of 4
    tokens = prepared.meta["splits"]["train"]["tokens_by_source"]
    assert tokens["web"] / (tokens["web"] + tokens["books"]) == pytest.approx(0.75, abs=0.04)
    assert prepared.meta["settings"]["data"]["weights"] == {"books": 1.0, "web": 3.0}
    assert {s["source"] for s in prepared.meta["sources"]} == {"books", "web"}

    natural_cfg = DataConfig(
        tokenizer="char",
        cache_dir=str(tmp_path / "cache"),
        sources=[DataSource(str(books)), DataSource(str(web), text_field="body.text")],
    )
    plain = prepare_data(natural_cfg, progress=False)
    shares = [m["share"] for m in plain.meta["mixture"]]
    assert shares[0] == pytest.approx(natural, abs=0.01) and plain.dir != prepared.dir


def test_a_weighted_source_with_nothing_left_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text(prose(1, 30))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tiny.txt").write_text("too short")
    data_cfg = DataConfig(
        tokenizer="char",
        cache_dir=str(tmp_path / "cache"),
        sources=[
            DataSource(str(tmp_path / "a"), weight=1.0, name="a"),
            DataSource(str(tmp_path / "b"), weight=1.0, name="b"),
        ],
    )
    with pytest.raises(DataError, match="source.s. b have a weight but no training text"):
        prepare_data(data_cfg, progress=False)


def test_memory_does_not_grow_with_a_long_single_line(tmp_path):
    """A file without line breaks is read in pieces: 4x the text, about the same peak of allocations."""
    rng = random.Random(0)
    peaks = []
    for size in (1_000_000, 4_000_000):
        path = tmp_path / f"line{size}.txt"
        with path.open("w") as f:
            while f.tell() < size:
                f.write(" ".join(rng.choice(WORDS) for _ in range(1000)) + " ")
        settings = PipelineSettings(piece_chars=100_000).with_overrides({"filters.max_mean_line_length": 0.0})
        tracemalloc.start()
        prepared = prepare_data(
            cfg(path, tmp_path, tokenizer="char", workers=1, chunk_mb=0.5), settings, progress=False
        )
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert prepared.meta["report"]["documents_in"] >= size // 100_000  # pieces, each a document
    assert peaks[1] < 1.25 * peaks[0], peaks


def test_tokenizer_sample_is_bounded_and_content_chosen(tmp_path):
    corpus = mixed_corpus(tmp_path / "corpus")
    settings = PipelineSettings(tokenizer_sample_chars=20_000)
    a = prepare_data(cfg(corpus, tmp_path / "a"), settings, progress=False)
    b = prepare_data(cfg(corpus, tmp_path / "b", workers=2), settings, progress=False)
    assert a.meta["tokenizer"]["fingerprint"] == b.meta["tokenizer"]["fingerprint"]
    full = prepare_data(cfg(corpus, tmp_path / "c"), progress=False)
    assert full.meta["tokenizer"]["fingerprint"] != a.meta["tokenizer"]["fingerprint"]
    assert np.array_equal(np.fromfile(a.dir / "val_0000.bin", dtype=np.uint16)[-1:], [a.tokenizer.eot_id])
