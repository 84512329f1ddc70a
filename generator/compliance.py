"""Compliance checks of a generated repository's data: provenance, licences and personal data.

`check_repository(root)` reads `data/manifest.toml` and checks, for the files under `data/`:

- every entry names a `path` (relative to `data/`), a `source`, an SPDX `license` and a `sha256`, and the
  file exists with that sha256;
- no data file is missing from the manifest (the tokenized-data cache, `data.cache_dir` of
  configs/train.toml, and hidden files are not data);
- a PII scan (`reference_llm.data.scan_pii`: e-mail addresses, phone numbers, IP addresses, Luhn-valid
  card numbers, API keys and other secrets) finds at most `max_pii` items over all files; each finding is
  reported as file, line, column and kind, never with the text itself. Compressed files are scanned
  decompressed; JSON Lines, JSON arrays, CSV, Parquet and Arrow files in the field that training reads
  (the entry's `text_field`, default `text`), where "line" is the record's line or 1-based number;
- licences: share-alike and copyleft licences (CC-BY-SA-*, GPL-*, AGPL-*, ODbL-*, ...), non-commercial
  and no-derivatives terms give warnings, since they constrain how a model trained on the data may be
  shared; two different share-alike licences warn that they may not be combinable. A missing or
  `NOASSERTION` licence is a problem.

Problems fail the check (`llmgen compliance` exits 2, one line per problem); warnings do not. This is
a checklist that catches omissions, not legal advice: COMPLIANCE.md lists what a person must decide.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import re
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generator.errors import ComplianceError
from reference_llm.data import scan_pii  # loads only the PII module, not torch (reference_llm.data is lazy)
from reference_llm.data.licenses import licence_note, parse_spdx
from reference_llm.data.readers import BadRecords, iter_records, open_binary
from reference_llm.data.sources import SourceFile, infer_format

__all__ = ["ComplianceError", "ComplianceReport", "DataFile", "check_repository", "licence_note", "parse_spdx"]

MANIFEST = Path("data") / "manifest.toml"
TRAIN_CONFIG = Path("configs") / "train.toml"
REQUIRED_KEYS = ("path", "source", "license", "sha256")
MAX_LOCATIONS_PER_FILE = 100  # findings listed per file in the report; the counts are always complete
SCAN_CHUNK_CHARS = 4 << 20  # the PII scan reads a file in pieces of whole lines of about this size

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
RECORD_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "arrow")  # scanned record by record, in text_field


@dataclass(frozen=True)
class PIIFinding:
    path: str  # relative to the repository root
    line: int  # 1-based
    column: int  # 1-based, in characters
    kind: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.kind}"


@dataclass
class DataFile:
    """One manifest entry as checked."""

    path: str  # relative to the repository root, e.g. data/shakespeare.txt
    source: str
    license: str
    sha256_expected: str
    sha256_actual: str | None = None  # None when the file is missing
    listed: bool = True  # False: found under data/ but not in the manifest (still scanned)
    text_field: str = "text"  # records (JSON Lines, Parquet, ...): the field scanned for personal data
    pii_counts: dict[str, int] = field(default_factory=dict)
    pii_locations: list[PIIFinding] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "listed": self.listed,
            "source": self.source,
            "license": self.license,
            "sha256_expected": self.sha256_expected,
            "sha256_actual": self.sha256_actual,
            "sha256_ok": self.sha256_actual == self.sha256_expected,
            "pii_counts": dict(self.pii_counts),
            "pii_locations": [{"line": f.line, "column": f.column, "kind": f.kind} for f in self.pii_locations],
        }


@dataclass
class ComplianceReport:
    root: Path
    files: list[DataFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # each one line; any problem fails the check
    warnings: list[str] = field(default_factory=list)
    max_pii: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def pii_total(self) -> int:
        return sum(sum(f.pii_counts.values()) for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "root": str(self.root),
            "max_pii": self.max_pii,
            "pii_total": self.pii_total,
            "files": [f.to_dict() for f in self.files],
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


# ----------------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------------


def check_repository(root: Path, max_pii: int = 0) -> ComplianceReport:
    """Run every check on the repository at `root`; raises ComplianceError only when it cannot start."""
    if max_pii < 0:
        raise ComplianceError(f"--max-pii must be 0 or more, got {max_pii}")
    root = root.resolve()
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ComplianceError(
            f"{manifest_path} not found: run `llmgen compliance` in a repository made by "
            f"`llmgen new` (or pass --dir), whose data files are listed in {MANIFEST}"
        )
    report = ComplianceReport(root=root, max_pii=max_pii)
    entries = _read_manifest(manifest_path, report)
    data_dir = manifest_path.parent
    listed: set[Path] = set()
    for index, entry in enumerate(entries):
        data_file = _check_entry(entry, index, data_dir, root, report)
        if data_file is not None:
            listed.add((root / data_file.path).resolve())
            report.files.append(data_file)
    for path in _data_files(root, data_dir):
        if path.resolve() not in listed:
            report.problems.append(
                f"{_rel(path, root)}: not listed in {MANIFEST}; add an entry with its source, "
                f"SPDX licence and sha256, or remove the file"
            )
            report.files.append(
                DataFile(
                    path=_rel(path, root),
                    source="",
                    license="",
                    sha256_expected="",
                    sha256_actual=_sha256(path),
                    listed=False,
                )
            )
    _check_licences(report)
    for data_file in report.files:
        if data_file.sha256_actual is not None:
            _scan_file(root / data_file.path, data_file, report)
    if report.pii_total > max_pii:
        counts: Counter[str] = Counter()
        for data_file in report.files:
            counts.update(data_file.pii_counts)
        summary = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
        report.problems.append(
            f"personal data scan: {report.pii_total} finding(s) ({summary}), more than the "
            f"{max_pii} allowed by --max-pii; scrub them (reference_llm.data.scrub_pii) or "
            f"remove the files"
        )
    return report


def _read_manifest(path: Path, report: ComplianceReport) -> list[Any]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ComplianceError(f"{path}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ComplianceError(f"{path}: not valid TOML ({exc})") from None
    entries = raw.get("file", [])
    if not isinstance(entries, list):
        raise ComplianceError(f"{path}: `file` must be an array of [[file]] tables")
    if not entries:
        report.problems.append(f"{MANIFEST}: lists no data files ([[file]] tables with path, source, license, sha256)")
    return entries


def _check_entry(entry: Any, index: int, data_dir: Path, root: Path, report: ComplianceReport) -> DataFile | None:
    where = f"{MANIFEST} [[file]] #{index + 1}"
    if not isinstance(entry, dict):
        report.problems.append(f"{where}: must be a table with keys {', '.join(REQUIRED_KEYS)}")
        return None
    if isinstance(entry.get("path"), str):
        where = f"{MANIFEST} [[file]] {entry['path']!r}"
    missing = [k for k in REQUIRED_KEYS if not isinstance(entry.get(k), str) or not entry[k].strip()]
    if missing:
        report.problems.append(
            f"{where}: missing or empty key(s) {', '.join(missing)} (every entry needs {', '.join(REQUIRED_KEYS)})"
        )
        if "path" in missing:
            return None
    relative = Path(entry["path"])
    target = (data_dir / relative).resolve()
    if relative.is_absolute() or not target.is_relative_to(data_dir.resolve()):
        report.problems.append(f"{where}: path must be relative to data/ and stay inside it")
        return None
    sha = str(entry.get("sha256", "")).strip().lower()
    if sha and not _SHA256.match(sha):
        report.problems.append(f"{where}: sha256 must be 64 hexadecimal digits, got {entry['sha256']!r}")
    data_file = DataFile(
        path=_rel(target, root),
        source=str(entry.get("source", "")),
        license=str(entry.get("license", "")).strip(),
        sha256_expected=sha,
        text_field=str(entry.get("text_field", "text")),
    )
    if not target.is_file():
        report.problems.append(f"{data_file.path}: listed in {MANIFEST} but missing")
        return data_file
    data_file.sha256_actual = _sha256(target)
    if _SHA256.match(sha) and data_file.sha256_actual != sha:
        report.problems.append(
            f"{data_file.path}: sha256 is {data_file.sha256_actual}, the manifest says {sha}; "
            f"the file changed since it was recorded: check it and update the manifest"
        )
    return data_file


def _data_files(root: Path, data_dir: Path) -> Iterator[Path]:
    """Files under data/ that must be listed: all but the manifest, hidden files and the token cache."""
    excluded = {(root / MANIFEST).resolve()}
    cache = _cache_dir(root)
    for path in sorted(data_dir.rglob("*")):
        relative = path.relative_to(data_dir)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        resolved = path.resolve()
        if resolved in excluded or (cache is not None and resolved.is_relative_to(cache)):
            continue
        yield path


def _cache_dir(root: Path) -> Path | None:
    """configs/train.toml's data.cache_dir (tokenized shards, rebuilt from the data): not data itself."""
    try:
        config = tomllib.loads((root / TRAIN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    cache = config.get("data", {}).get("cache_dir")
    return (root / cache).resolve() if isinstance(cache, str) and cache else None


def _check_licences(report: ComplianceReport) -> None:
    share_alike: dict[str, list[str]] = {}
    for data_file in report.files:
        if not data_file.license:
            continue  # already reported: a missing key, or a file missing from the manifest
        ids, error = parse_spdx(data_file.license)
        if error:
            report.problems.append(f"{data_file.path}: license {data_file.license!r} {error}")
            continue
        for spdx_id in ids:
            note = licence_note(spdx_id)
            if note is None:
                continue
            report.warnings.append(
                f"{data_file.path}: {spdx_id} is {note}: record in COMPLIANCE.md whether and "
                f"how a model trained on it may be shared"
            )
            if "share-alike" in note or "copyleft" in note:
                share_alike.setdefault(spdx_id, []).append(data_file.path)
    if len(share_alike) > 1:
        report.warnings.append(
            f"data licences {', '.join(sorted(share_alike))} each require derived works to keep "
            f"their own terms and may not be combinable: check their compatibility"
        )


# ----------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _scan_file(path: Path, data_file: DataFile, report: ComplianceReport) -> None:
    """PII counts and locations. Records (JSON Lines, Parquet, ...) are scanned in their text field, a
    finding's line being the record's line (JSON Lines, CSV) or its 1-based number (the others) and its
    column counted in that field; text is scanned decompressed, undecodable bytes replaced."""
    counts: Counter[str] = Counter()
    fmt, compression = infer_format(path.name)
    if fmt in RECORD_FORMATS:
        bad = BadRecords(skip=True)
        src = SourceFile(path, data_file.path, "", 0, fmt, compression, data_file.text_field)
        scanned = _scan_chunks(_record_texts(src, bad), data_file, counts, records=True)
        if bad.total and scanned:
            report.warnings.append(
                f"{data_file.path}: {bad.total} record(s) could not be read and were not scanned ({bad.items[0]})"
            )
        if bad.total and not scanned:  # not records at all (dataset_info.json, say): scanned as text
            _scan_chunks(_line_chunks(path, compression), data_file, counts, records=False)
    else:
        _scan_chunks(_line_chunks(path, compression), data_file, counts, records=False)
    data_file.pii_counts = dict(sorted(counts.items()))


def _scan_chunks(chunks: Iterator[tuple[int, str]], data_file: DataFile, counts: Counter[str], records: bool) -> int:
    """Scan (first line, text) chunks into `counts` and `data_file.pii_locations`; returns how many."""
    n = 0
    for first_line, text in chunks:
        n += 1
        findings = scan_pii(text)
        if not findings:
            continue
        line_starts = [0] if records else [0] + [m.end() for m in re.finditer("\n", text)]
        for finding in findings:
            counts[finding.kind] += 1
            if len(data_file.pii_locations) < MAX_LOCATIONS_PER_FILE:
                line = bisect.bisect_right(line_starts, finding.start) - 1
                data_file.pii_locations.append(
                    PIIFinding(data_file.path, first_line + line, finding.start - line_starts[line] + 1, finding.kind)
                )
    return n


def _record_texts(src: SourceFile, bad: BadRecords) -> Iterator[tuple[int, str]]:
    """(line, or 1-based record number, text) of each record: `where` is `name:line` or `name[row]`."""
    for where, text in iter_records(src, SCAN_CHUNK_CHARS * 4, bad):
        if where.endswith("]"):
            yield int(where[where.rindex("[") + 1 : -1]) + 1, text
        else:
            yield int(where.rpartition(":")[2]), text


def _line_chunks(path: Path, compression: str = "") -> Iterator[tuple[int, str]]:
    """(number of the first line, text) pieces of whole lines, so that a large file never sits in memory."""
    with io.TextIOWrapper(open_binary(path, compression), encoding="utf-8", errors="replace") as f:
        first_line, lines, size = 1, [], 0
        for line in f:
            lines.append(line)
            size += len(line)
            if size >= SCAN_CHUNK_CHARS:
                yield first_line, "".join(lines)
                first_line += len(lines)
                lines, size = [], 0
        if lines:
            yield first_line, "".join(lines)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return str(path)
