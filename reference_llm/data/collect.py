"""Pass 1 of `prepare_data`: read every source, clean in worker processes, decide in corpus order, and
write the documents that stay to a spill file that pass 2 (reference_llm.data.encode) tokenises.

Memory: documents travel in batches (parallel.batch_chars) sized so that the text in flight, with all its
copies, stays near 2 * chunk_mb whatever the corpus size; what grows with the corpus is the dedup index
(`Collector`) and 42 bytes per kept document (the arrays of `Collected`).
"""

from __future__ import annotations

import json
import os
import struct
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from reference_llm.config import DataConfig
from reference_llm.data.parallel import batch_chars, ordered_map
from reference_llm.data.pipeline import Collector, PipelineSettings, clean_batch, split_digest
from reference_llm.data.progress import Steps
from reference_llm.data.readers import BadRecords, iter_documents
from reference_llm.data.sources import Discovery
from reference_llm.errors import DataError

SPILL_FILE = "documents.bin"
COLLECTED_FILE = "collected.npz"
REPORT_FILE = "collected.json"
_RECORD = struct.Struct("<IIH")  # text bytes, name bytes, source index


@dataclass
class Collected:
    """The kept documents of pass 1, as columns (row i: the i-th record of the spill file)."""

    digests: np.ndarray  # (n, 32) uint8: sha256 of the final text, which decides the split
    sources: np.ndarray  # (n,) uint16: index of the source each came from
    nbytes: np.ndarray  # (n,) uint32: UTF-8 bytes of the text
    nchars: np.ndarray  # (n,) uint32: characters
    report: dict[str, Any]

    def save(self, work_dir: Path) -> None:
        np.savez(
            work_dir / COLLECTED_FILE,
            digests=self.digests,
            sources=self.sources,
            nbytes=self.nbytes,
            nchars=self.nchars,
        )
        (work_dir / REPORT_FILE).write_text(json.dumps(self.report), encoding="utf-8")

    @classmethod
    def load(cls, work_dir: Path) -> Collected:
        with np.load(work_dir / COLLECTED_FILE) as z:
            return cls(
                z["digests"],
                z["sources"],
                z["nbytes"],
                z["nchars"],
                json.loads((work_dir / REPORT_FILE).read_text(encoding="utf-8")),
            )


def collect(
    found: Discovery, data_cfg: DataConfig, settings: PipelineSettings, work_dir: Path, workers: int, steps: Steps
) -> Collected:
    """Run pass 1 into `work_dir`: the spill file, and the kept documents' columns and report."""
    chunk = int(data_cfg.chunk_mb * 1e6)
    size_limit = batch_chars(data_cfg.chunk_mb, workers)
    bad = BadRecords(skip=data_cfg.skip_bad)
    collector = Collector(settings, work_dir)
    pending: deque[tuple[list[str], list[int]]] = deque()  # names and sources of the batches in flight

    def batches() -> Iterator[tuple[PipelineSettings, list[str]]]:
        names: list[str] = []
        sources: list[int] = []
        texts: list[str] = []
        size = 0
        for src in found.files:
            for name, text in iter_documents(src, settings.piece_chars, chunk, bad):
                names.append(name)
                sources.append(src.source)
                texts.append(text)
                size += len(text)
                if size >= size_limit:
                    pending.append((names, sources))
                    yield settings, texts
                    names, sources, texts, size = [], [], [], 0
            advance(src.size)
        if texts:
            pending.append((names, sources))
            yield settings, texts

    digests = bytearray()
    kept_sources, nbytes, nchars = array("H"), array("I"), array("I")
    total = sum(f.size for f in found.files)
    with (
        steps.bar("cleaning and deduplicating", total) as advance,
        (work_dir / SPILL_FILE).open("wb", buffering=1 << 20) as spill,
    ):
        try:
            for results in ordered_map(clean_batch, batches(), workers):
                names, sources = pending.popleft()
                keep = collector.add_batch(names, results)
                for name, source, result, kept in zip(names, sources, results, keep):
                    if kept:
                        data = _write_record(spill, name, source, result.text)
                        digests += split_digest(result.text)
                        kept_sources.append(source)
                        nbytes.append(data)
                        nchars.append(len(result.text))
            report = collector.report()
            report["index_bytes"] = collector.index_bytes()
        finally:
            collector.close()
    if data_cfg.skip_bad:
        report["bad_records"] = bad.to_report()
    if not kept_sources:
        raise DataError(_nothing_left_message(data_cfg, report))
    return Collected(
        np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 32),
        np.asarray(kept_sources, dtype=np.uint16),
        np.asarray(nbytes, dtype=np.uint32),
        np.asarray(nchars, dtype=np.uint32),
        report,
    )


def _write_record(spill: BinaryIO, name: str, source: int, text: str) -> int:
    data = text.encode("utf-8")
    label = name.encode("utf-8", "surrogateescape")
    spill.write(_RECORD.pack(len(data), len(label), source))
    spill.write(label)
    spill.write(data)
    return len(data)


def read_spill(
    work_dir: Path, start_offset: int = 0, start_index: int = 0, only: np.ndarray | None = None
) -> Iterator[tuple[int, int, int, str, str]]:
    """(index, byte offset, source, name, text) of each spilled document, from a given record on;
    with `only` (a bool per record), just the records it marks: the others are skipped, not decoded."""
    with (work_dir / SPILL_FILE).open("rb", buffering=1 << 20) as f:
        f.seek(start_offset)
        index, offset = start_index, start_offset
        while header := f.read(_RECORD.size):
            size, label_size, source = _RECORD.unpack(header)
            if only is not None and not only[index]:
                f.seek(label_size + size, os.SEEK_CUR)
            else:
                name = f.read(label_size).decode("utf-8", "surrogateescape")
                text = f.read(size).decode("utf-8")
                yield index, offset, source, name, text
            index += 1
            offset += _RECORD.size + label_size + size


def _nothing_left_message(data_cfg: DataConfig, report: dict[str, Any]) -> str:
    corpus = ", ".join(s.path for s in data_cfg.source_list())
    if report["chars_after_normalising"] == 0:
        return f"corpus {corpus} is empty (no text after normalisation)"
    removed = [f"{name} {info['dropped']}" for name, info in report["filters"].items() if info["dropped"]]
    removed += [
        f"{stage} {report[stage]['dropped']}"
        for stage in ("exact_dedup", "near_dedup")
        if report.get(stage, {}).get("dropped")
    ]
    return (
        f"every document of corpus {corpus} was removed ({', '.join(removed)} of {report['documents_in']}); "
        f"loosen the filters (e.g. --set filters.min_chars=0)"
    )
