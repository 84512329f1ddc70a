"""Every benchmark script runs in its quick mode and prints well-formed JSON.

The figures themselves are not checked (speed is measured by the scripts, not asserted by tests); what
is checked is that each script still works against the current library and reports what its docstring
promises, so that a refactor cannot silently break the commands quoted in README.md and the docs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run_benchmark(tmp_path: Path, script: str, *args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
    }
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args, "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_train_throughput(tmp_path):
    report = run_benchmark(tmp_path, "train_throughput.py", "--quick", "--shapes", "nanogpt-cpu")
    rows = {row["recipe"]: row for row in report["rows"]}
    assert set(rows) == {"nanoGPT recipe", "ours"}  # --quick leaves out the compiled row
    assert rows["nanoGPT recipe"]["dtype"] == "float32" and rows["nanoGPT recipe"]["attention"] == "sdpa"
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] and row["batch"] * row["seq_len"] == 12 * 64
    assert report["machine"]["matmul_peak_gflops"]["bfloat16"] > 0
    assert report["speedup_vs_nanogpt_recipe"]["nanogpt-cpu ours"] == pytest.approx(
        rows["ours"]["tokens_per_s"] / rows["nanoGPT recipe"]["tokens_per_s"]
    )
    assert report["machine"]["cpu_features"] in ("AMX", "AVX512-BF16", "neither")


def test_train_throughput_against_an_earlier_library(tmp_path):
    """--baseline-tree runs the ours rows a second time with the library imported from another directory
    (here a copy of this one); each row names the directory its worker imported reference_llm from."""
    before = tmp_path / "before"
    shutil.copytree(REPO / "reference_llm", before / "reference_llm", ignore=shutil.ignore_patterns("__pycache__"))
    report = run_benchmark(
        tmp_path,
        "train_throughput.py",
        "--quick",
        "--shapes",
        "nanogpt-cpu",
        "--threads",
        "1",
        "--baseline-tree",
        str(before),
    )
    rows = {row["recipe"]: row for row in report["rows"]}
    assert set(rows) == {"nanoGPT recipe", "ours (before)", "ours"}
    assert rows["ours (before)"]["library"] == str(before) and rows["ours"]["library"] == str(REPO)
    ratio = report["after_over_before"]["nanogpt-cpu ours"]
    assert ratio["tokens_per_s"] == pytest.approx(rows["ours"]["tokens_per_s"] / rows["ours (before)"]["tokens_per_s"])
    assert report["machine"]["threads"] == 1


def test_profile_step(tmp_path):
    report = run_benchmark(tmp_path, "profile_step.py", "--quick", "--shapes", "nanogpt-cpu")
    (profile,) = report["profiles"]
    assert profile["shape"] == "nanogpt-cpu" and profile["top_ops"]
    assert 0 < profile["share"]["matmul"] < 1 and sum(profile["share"].values()) >= 0.99
    assert {op["category"] for op in profile["top_ops"]} >= {"matmul", "other"}


def test_generate(tmp_path):
    report = run_benchmark(tmp_path, "generate.py", "--quick")
    assert [row["new_tokens"] for row in report["rows"]] == [16, 64]
    for row in report["rows"]:
        assert row["speedup"] == pytest.approx(row["uncached_s"] / row["cached_s"])


def test_tokenizer(tmp_path):
    report = run_benchmark(tmp_path, "tokenizer.py", "--quick")
    assert report["bpe_and_hf_bpe_identical"] is True
    engines = {(row["task"].split()[0], row["engine"]) for row in report["results"]}
    assert {("train", "bpe"), ("train", "hf-bpe"), ("encode", "bpe"), ("encode", "hf-bpe")} <= engines


def test_quantize(tmp_path):
    report = run_benchmark(tmp_path, "quantize.py", "--quick")
    schemes = [row["scheme"] for row in report["rows"]]
    assert schemes[0] == "float32" and len(schemes) > 1
    ratios = [row["size_ratio"] for row in report["rows"]]  # file size over the float32 file's
    assert ratios[0] == 1.0 and all(0 < r < 1 for r in ratios[1:])


def test_render(tmp_path):
    report = run_benchmark(tmp_path, "render.py", "--quick")
    modes = [row["mode"] for row in report["results"]]
    assert modes[0] == "subprocess" and "subprocess, first on this machine" in modes
    assert all(row["median_s"] > 0 for row in report["results"])


def test_data_prepare(tmp_path):
    report = run_benchmark(tmp_path, "data_prepare.py", "--quick")
    rows = {(r["format"], r["workers"], r["dedup"]): r for r in report["rows"] if r["format"] != "txt"}
    assert set(rows) == {(f, w, d) for f in ("jsonl", "parquet") for w in (1, 2) for d in (False, True)}
    assert [r["tokenizer"] for r in report["rows"] if r["format"] == "txt"] == ["bpe", "char"]
    for (fmt, _, dedup), row in rows.items():
        assert row["mb_per_s"] > 0 and row["peak_rss_mb"] > 0
        assert row["train_tokens"] == rows[(fmt, 1, dedup)]["train_tokens"]  # workers do not change the result
        assert (row["documents_out"] < row["documents_in"]) == dedup  # the corpus has duplicates
    assert report["dedup_index"]["bytes_per_document"] > 0 and report["machine"]["cpus_usable"] >= 1


def test_demo_quality(tmp_path):
    report = run_benchmark(tmp_path, "demo_quality.py", "--steps", "3")
    rows = {row["recipe"]: row for row in report["rows"]}
    assert set(rows) == {"nanogpt", "demo"} and all(row["steps"] == 3 for row in rows.values())
    for row in rows.values():
        assert row["val_nats_per_char"] > 0 and row["val_chars"] > 100_000  # the whole held-out tenth
    assert report["demo_gain_nats_per_char"] == pytest.approx(
        rows["nanogpt"]["val_nats_per_char"] - rows["demo"]["val_nats_per_char"]
    )
