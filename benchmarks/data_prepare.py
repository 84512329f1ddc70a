"""Data preparation speed and memory: MB/s and peak RSS of `prepare_data` on a generated corpus.

    python benchmarks/data_prepare.py                    # ~200 MB corpus, JSON Lines and Parquet, 1 and 2 workers
    python benchmarks/data_prepare.py --quick            # ~1 MB: checks that the script runs
    python benchmarks/data_prepare.py --json             # JSON on stdout instead of tables
    python benchmarks/data_prepare.py --mb 20 --profile  # where the CPU time goes: one worker, dedup on

The corpus is synthetic prose: documents of 0.5-8 kB whose words follow a Zipf law over 50,000 made-up
words, with 2% exact copies, 2% near copies and an e-mail address in 1% (so every stage has work). It is
written once as JSON Lines and as Parquet (row groups of 10,000 documents) and reused by every row.

Each row runs prepare_data in a fresh process on one format, with 1 or 2 workers, "plain" (exact and
near dedup off) or "dedup" (both on), and the byte-level BPE tokenizer (vocab 4096). Two more rows read
the same text written as one line of one file (corpus.txt, with filters.max_mean_line_length off), with
the BPE and the char tokenizer. "text MB/s" is the corpus' text over wall time, the same work for every
format; "file MB/s" counts the file's bytes (JSON adds quoting, Parquet compresses); "MB/CPU-s" divides
by the CPU time of the process and its workers instead, which a busy machine changes less than wall
time. The whole pipeline is timed: reading, cleaning, tokenizer training on its sample, encoding,
writing shards. Peak RSS is sampled every 50 ms over the process and its workers, summed; the baseline
is the same processes idle after imports. A second measurement gives what the dedup index costs per
document: RSS growth while a Collector takes synthetic documents with distinct signatures.

`--profile` instead prepares the JSON Lines corpus once, with one worker and dedup on, in this process
under cProfile (timed in process CPU time, so other jobs on the machine do not show), and prints the
functions with the most CPU time of their own. With one worker everything runs there, BPE training
included (a fixed cost: it sees a sample of at most 16 million characters).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reference_llm.config import DataConfig  # noqa: E402
from reference_llm.data.parallel import default_workers  # noqa: E402
from reference_llm.data.pipeline import PipelineSettings  # noqa: E402

FEATURES = ("avx", "avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma", "sse4_2", "bmi2")


# ----------------------------------------------------------------------------------------------------
# The corpus
# ----------------------------------------------------------------------------------------------------


def make_corpus(folder: Path, target_bytes: int, seed: int = 0) -> dict[str, Any]:
    """corpus.jsonl and corpus.parquet of about `target_bytes` of text (reused when they exist)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl, parquet, line = folder / "corpus.jsonl", folder / "corpus.parquet", folder / "corpus.txt"
    info_path = folder / "corpus.json"
    if info_path.exists() and json.loads(info_path.read_text())["target_bytes"] == target_bytes:
        return json.loads(info_path.read_text())
    rng = np.random.default_rng(seed)
    syllables = np.array(["ka", "lo", "mi", "ten", "ar", "shu", "ve", "no", "ri", "del", "oss", "um", "pra", "ith"])
    vocab = np.array(
        [
            "".join(rng.choice(syllables, size=rng.integers(1, 4))) + str(i % 7 if i % 9 == 0 else "")
            for i in range(50_000)
        ]
    )
    cdf = np.cumsum(1.0 / np.arange(1, vocab.size + 1))  # Zipf: word k has weight 1/k
    cdf /= cdf[-1]
    docs: list[str] = []
    size = 0
    while size < target_bytes:
        n_words = int(rng.integers(80, 1300))
        words = vocab[np.searchsorted(cdf, rng.random(n_words))]
        lines = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, n_words, 12)]
        roll = rng.random()
        if roll < 0.02 and docs:
            text = docs[int(rng.integers(len(docs)))]  # an exact copy
        elif roll < 0.04 and docs:
            text = docs[int(rng.integers(len(docs)))] + "\nA line added to a near copy."
        else:
            text = "\n".join(lines)
        if rng.random() < 0.01:
            text += f"\nWrite to writer{len(docs)}@example.org for more."
        docs.append(text)
        size += len(text) + 20
    with jsonl.open("w", encoding="utf-8") as f:
        for i, text in enumerate(docs):
            f.write(json.dumps({"id": i, "text": text}) + "\n")
    pq.write_table(pa.table({"id": np.arange(len(docs)), "text": docs}), parquet, row_group_size=10_000)
    with line.open("w", encoding="utf-8") as f:  # the same text as one line: one document, no line break
        for text in docs:
            f.write(text.replace("\n", " ") + " ")
    info = {
        "target_bytes": target_bytes,
        "documents": len(docs),
        "jsonl_bytes": jsonl.stat().st_size,
        "parquet_bytes": parquet.stat().st_size,
        "txt_bytes": line.stat().st_size,
        "text_mb": round(sum(map(len, docs)) / 1e6, 2),
    }
    info_path.write_text(json.dumps(info))
    return info


# ----------------------------------------------------------------------------------------------------
# Measuring a process tree
# ----------------------------------------------------------------------------------------------------


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc; 0 elsewhere)."""
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * page
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


class PeakSampler:
    """Samples tree_rss(os.getpid()) every 50 ms in a thread; `.peak` is the largest sample."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(os.getpid()))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def one_run(corpus: Path, workers: int, dedup: bool, chunk_mb: float, cache: Path, tokenizer: str) -> dict[str, Any]:
    """In a fresh process: prepare `corpus` once, report wall time and memory."""
    from reference_llm.data import prepare_data
    from reference_llm.data.parallel import ordered_map

    # Baseline: this process and `workers` idle workers with the pipeline's modules imported.
    with PeakSampler() as idle:
        list(ordered_map(_import_pipeline, range(workers), workers))
        time.sleep(0.2)
    overrides: dict[str, Any] = {"dedup.exact": dedup, "dedup.near": dedup}
    if corpus.suffix == ".txt":  # one line of hundreds of MB: the line-length filter would drop all of it
        overrides["filters.max_mean_line_length"] = 0.0
    settings = PipelineSettings().with_overrides(overrides)
    data_cfg = DataConfig(
        corpus=str(corpus),
        tokenizer=tokenizer,
        vocab_size=4096,
        cache_dir=str(cache),
        workers=workers,
        chunk_mb=chunk_mb,
    )
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with PeakSampler() as sampler:
        prepared = prepare_data(data_cfg, settings, progress=False)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    report = prepared.meta["report"]
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(sampler.peak / 1e6, 1),
        "idle_rss_mb": round(idle.peak / 1e6, 1),
        "documents_in": report["documents_in"],
        "documents_out": report["documents_out"],
        "train_tokens": prepared.meta["splits"]["train"]["tokens"],
        "dedup_index_mb": round(report.get("index_bytes", 0) / 1e6, 1),
    }


def _cpu_seconds() -> float:
    """User and system CPU time of this process and of its finished children (the workers, once joined)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _import_pipeline(_: int) -> int:
    import reference_llm.data.encode  # noqa: F401 (what a worker imports)

    return os.getpid()


def index_cost(documents: int) -> dict[str, Any]:
    """In a fresh process: RSS growth per document of the dedup index (exact and near), with distinct docs."""
    from reference_llm.data.pipeline import Cleaned, Collector

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        collector = Collector(PipelineSettings(), Path(work))
        before = tree_rss(os.getpid())
        start = time.perf_counter()
        for first in range(0, documents, 10_000):
            n = min(10_000, documents - first)
            sigs = rng.integers(0, 1 << 32, size=(n, 128), dtype=np.uint32)
            digests = rng.bytes(16 * n)
            results = [Cleaned(None, 1, 1, digests[16 * i : 16 * i + 16], sigs[i], "") for i in range(n)]
            collector.add_batch([f"corpus.jsonl:{first + i}" for i in range(n)], results)
        seconds = time.perf_counter() - start
        grown = tree_rss(os.getpid()) - before
        collector.close()
    return {
        "documents": documents,
        "rss_growth_mb": round(grown / 1e6, 1),
        "bytes_per_document": round(grown / documents),
        "mb_per_million": round(grown / documents * 1e6 / 1e6),
        "us_per_document": round(seconds / documents * 1e6, 1),
    }


# ----------------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    flags: set[str] = set()
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "cpu": name,
        "cpus_usable": default_workers(),
        "features": [f for f in FEATURES if f in flags],
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def child(args: list[str]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"error: benchmark run {args} failed: {result.stderr.strip().splitlines()[-1:]}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def run(target: int, workdir: Path, chunk_mb: float) -> dict[str, Any]:
    corpus = make_corpus(workdir, target)
    before = machine()
    runs = [
        (fmt, workers, dedup, "bpe") for fmt in ("jsonl", "parquet") for dedup in (False, True) for workers in (1, 2)
    ]
    runs += [("txt", 2, True, tokenizer) for tokenizer in ("bpe", "char")]  # the whole corpus as one line
    rows = []
    for fmt, workers, dedup, tokenizer in runs:
        with tempfile.TemporaryDirectory(dir=workdir) as cache:
            row = child(
                [
                    "--one",
                    str(workdir / f"corpus.{fmt}"),
                    str(workers),
                    str(int(dedup)),
                    str(chunk_mb),
                    cache,
                    tokenizer,
                ]
            )
        size = corpus[f"{fmt}_bytes"]
        rows.append(
            {
                "format": fmt,
                "workers": workers,
                "dedup": dedup,
                "tokenizer": tokenizer,
                "file_mb": round(size / 1e6, 1),
                "file_mb_per_s": round(size / 1e6 / row["wall_s"], 2),
                "mb_per_s": round(corpus["text_mb"] / row["wall_s"], 2),
                "mb_per_cpu_s": round(corpus["text_mb"] / row["cpu_s"], 2),
                **row,
            }
        )
    index = child(["--index", str(20_000 if target < 10_000_000 else 1_000_000)])
    return {
        "machine": before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "corpus": corpus,
        "chunk_mb": chunk_mb,
        "rows": rows,
        "dedup_index": index,
    }


def print_tables(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    m = report["machine"]
    console = Console()
    console.print(
        f"{m['cpu']}, {m['cpus_usable']} CPUs usable, features {' '.join(m['features'])}, Python "
        f"{m['python']}; load average {m['load_average']} before, {report['load_average_after']} after"
    )
    c = report["corpus"]
    console.print(
        f"corpus: {c['documents']:,} documents, {c['text_mb']} MB of text; JSON Lines "
        f"{c['jsonl_bytes'] / 1e6:.1f} MB, Parquet {c['parquet_bytes'] / 1e6:.1f} MB; chunk_mb "
        f"{report['chunk_mb']:g}"
    )
    table = Table(
        "file",
        "tokenizer",
        "workers",
        "dedup",
        "text MB/s",
        "file MB/s",
        "MB/CPU-s",
        "wall s",
        "peak RSS MB",
        "idle RSS MB",
        "index MB",
    )
    for r in report["rows"]:
        table.add_row(
            f"corpus.{r['format']}",
            r["tokenizer"],
            str(r["workers"]),
            "on" if r["dedup"] else "off",
            f"{r['mb_per_s']:.2f}",
            f"{r['file_mb_per_s']:.2f}",
            f"{r['mb_per_cpu_s']:.2f}",
            f"{r['wall_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['idle_rss_mb']:.0f}",
            f"{r['dedup_index_mb']:.1f}",
        )
    console.print(table)
    i = report["dedup_index"]
    console.print(
        f"dedup index: {i['bytes_per_document']} bytes per document ({i['mb_per_million']} MB per "
        f"million), {i['us_per_document']} µs per document, measured over {i['documents']:,} documents"
    )


def profile(workdir: Path, target_bytes: int, chunk_mb: float, top: int = 25) -> dict[str, Any]:
    """CPU profile of one prepare_data run (JSON Lines, one worker, dedup on) in this process."""
    import cProfile
    import pstats

    from reference_llm.data import prepare_data

    corpus = make_corpus(workdir, target_bytes)
    with tempfile.TemporaryDirectory(dir=workdir) as cache:
        data_cfg = DataConfig(
            corpus=str(workdir / "corpus.jsonl"),
            tokenizer="bpe",
            vocab_size=4096,
            cache_dir=cache,
            workers=1,
            chunk_mb=chunk_mb,
        )
        profiler = cProfile.Profile(time.process_time)
        cpu_start = _cpu_seconds()
        profiler.runcall(prepare_data, data_cfg, PipelineSettings(), progress=False)
        cpu = _cpu_seconds() - cpu_start
    stats = pstats.Stats(profiler)
    # Stats.stats (undocumented in typeshed): (file, line, name) -> (calls, primitive calls, own, total, callers)
    rows = sorted(stats.stats.items(), key=lambda item: -item[1][2])[:top]  # type: ignore[attr-defined]
    return {
        "machine": machine(),
        "corpus": corpus,
        "cpu_s": round(cpu, 2),
        "mb_per_cpu_s": round(corpus["text_mb"] / cpu, 2),
        "functions": [
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": calls,
                "own_s": round(own, 3),
                "total_s": round(total, 3),
            }
            for (file, line, name), (_, calls, own, total, _) in rows
        ],
    }


def print_profile(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = report["corpus"]
    console = Console()
    console.print(
        f"{c['text_mb']} MB of JSON Lines, 1 worker, dedup on: {report['cpu_s']} CPU s, "
        f"{report['mb_per_cpu_s']} MB per CPU-s (load average {report['machine']['load_average']})"
    )
    table = Table("function", "calls", "own CPU s", "with callees s")
    for f in report["functions"]:
        table.add_row(f["function"], str(f["calls"]), f"{f['own_s']:.3f}", f"{f['total_s']:.3f}")
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~1 MB corpus: checks that the script runs")
    parser.add_argument("--json", action="store_true", help="JSON on stdout instead of tables")
    parser.add_argument("--workdir", type=Path, help="where the corpus is generated and kept (default: a temp dir)")
    parser.add_argument(
        "--chunk-mb",
        type=float,
        help=f"data.chunk_mb for every run (default "
        f"{DataConfig().chunk_mb:g}; 0.25 with --quick, so that "
        f"2 workers have several chunks to share)",
    )
    parser.add_argument("--mb", type=float, help="corpus size in MB of text (default 200; 1 with --quick)")
    parser.add_argument("--profile", action="store_true", help="profile one run (JSON Lines, 1 worker, dedup on)")
    parser.add_argument("--one", nargs=6, help=argparse.SUPPRESS)  # internal: one row, in a fresh process
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)  # internal: the dedup index's cost
    args = parser.parse_args()
    if args.one:
        corpus, workers, dedup, chunk_mb, cache, tokenizer = args.one
        print(json.dumps(one_run(Path(corpus), int(workers), dedup == "1", float(chunk_mb), Path(cache), tokenizer)))
        return 0
    if args.index:
        print(json.dumps(index_cost(args.index)))
        return 0
    chunk_mb = args.chunk_mb or (0.25 if args.quick else DataConfig().chunk_mb)
    target = int((args.mb or (1 if args.quick else 200)) * 1e6)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = profile(workdir, target, chunk_mb) if args.profile else run(target, workdir, chunk_mb)
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.profile:
        print_profile(report)
    else:
        print_tables(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
