"""Finding the files of a corpus: a file, a folder, a glob or a Hugging Face `save_to_disk` directory, each
file with its format (text, JSON Lines, JSON array, CSV, Parquet, Arrow) and compression.

Nothing is skipped silently: every file that is not read is counted under a reason (unknown format, broken
symlink, symlink loop, ...) and `Discovery.skip_summary()` says so; `strict=True` turns any skip into an
error. Hidden files and folders (names starting with '.') are not part of a corpus and are only counted.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from reference_llm.config import DataSource
from reference_llm.errors import DataError

FORMATS = ("text", "jsonl", "json", "csv", "tsv", "parquet", "arrow")
SUFFIX_FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".text": "text",
    ".markdown": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2", ".xz": "xz"}
SEEKABLE_ONLY = ("parquet",)  # formats that need random access: a compressed copy cannot be streamed
HF_STATE = "state.json"  # written by datasets' save_to_disk next to dataset_info.json and the .arrow files
HF_INFO = "dataset_info.json"
HF_DICT = "dataset_dict.json"
SKIP_EXAMPLES = 5  # paths shown per skip reason


@dataclass(frozen=True)
class SourceFile:
    """One file of the corpus: where it is, its name in reports, content hash, and how to read it."""

    path: Path
    name: str  # path relative to its source folder (posix), or the file name; prefixed when several sources
    sha256: str
    size: int
    format: str = "text"
    compression: str = ""  # "" or a value of COMPRESSIONS
    text_field: str = "text"
    source: int = 0  # index of its DataSource in DataConfig.source_list()


@dataclass
class Discovery:
    files: list[SourceFile]
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> display paths
    hidden: int = 0

    def skip_summary(self) -> str | None:
        """One line: how many files were not read, per reason, with the first few paths; None if none."""
        if not self.skipped:
            return None
        total = sum(len(paths) for paths in self.skipped.values())
        parts = []
        for reason, paths in sorted(self.skipped.items()):
            shown = ", ".join(paths[:SKIP_EXAMPLES]) + (", ..." if len(paths) > SKIP_EXAMPLES else "")
            parts.append(f"{reason}: {len(paths)} ({shown})")
        return f"skipped {total} file(s): " + "; ".join(parts)


def infer_format(name: str, forced: str = "") -> tuple[str | None, str]:
    """(format or None if unknown, compression) from a file name such as `part-0.jsonl.zst`."""
    lower = name.lower()
    compression = ""
    for suffix, kind in COMPRESSIONS.items():
        if lower.endswith(suffix):
            compression, lower = kind, lower[: -len(suffix)]
            break
    if forced:
        return forced, compression
    return SUFFIX_FORMATS.get(os.path.splitext(lower)[1]), compression


def discover(specs: list[DataSource], *, strict: bool = False, skip_bad: bool = False) -> Discovery:
    """Every file of every source, sorted by name within a source, hashed; what was not read and why."""
    if not specs:
        raise DataError("no corpus given: set data.corpus or add [[data.sources]]")
    for spec in specs:
        if spec.format and spec.format not in FORMATS:
            raise DataError(f"source {spec.label}: format {spec.format!r} is unknown; known: {', '.join(FORMATS)}")
    found = Discovery(files=[])
    for index, spec in enumerate(specs):
        prefix = f"{spec.label}/" if len(specs) > 1 else ""
        for path, rel in _expand(spec, found, skip_bad):
            fmt, compression = infer_format(path.name, spec.format)
            if fmt is None and rel == path.name and Path(spec.path) == path:
                fmt = "text"  # a single file named explicitly is text unless its suffix says otherwise
            if fmt is None:
                _skip(found, f"unknown format ({_suffix(path)})", prefix + rel)
                continue
            if compression and fmt in SEEKABLE_ONLY:
                _skip(found, f"compressed {fmt} (decompress it first)", prefix + rel)
                continue
            digest, size = hash_file(path)
            found.files.append(SourceFile(path, prefix + rel, digest, size, fmt, compression, spec.text_field, index))
    if not found.files:
        where = ", ".join(spec.path for spec in specs)
        kinds = ", ".join(sorted(SUFFIX_FORMATS))
        raise DataError(
            f"corpus {where} has no files to read (known: {kinds}, optionally .gz/.zst compressed)"
            + (f"; {found.skip_summary()}" if found.skipped else "")
        )
    if strict and found.skipped:
        raise DataError(f"--strict: {found.skip_summary()}")
    return found


def _expand(spec: DataSource, found: Discovery, skip_bad: bool) -> list[tuple[Path, str]]:
    """(path, name relative to the source) of the candidate files of one source, sorted by name."""
    root = Path(spec.path)
    if root.is_dir():
        return _walk(root, found, skip_bad)
    if root.is_file():
        return [(root, root.name)]
    if glob.has_magic(spec.path):
        matches = sorted(glob.glob(spec.path, recursive=True))
        if not matches:
            raise DataError(f"corpus pattern {spec.path} matches no file")
        out: list[tuple[Path, str]] = []
        for match in matches:
            path = Path(match)
            if path.is_dir():
                out += [(p, f"{path.as_posix()}/{rel}") for p, rel in _walk(path, found, skip_bad)]
            elif _check_entry(path, path.as_posix(), found, skip_bad):
                out.append((path, path.as_posix()))
        return out
    if os.path.islink(root):
        try:
            os.stat(root)
        except OSError as exc:
            raise DataError(f"corpus {display(root)} cannot be read: {exc.strerror or exc}") from None
    raise DataError(f"corpus not found: {root} (data.corpus must be a file, a folder or a glob pattern)")


def _walk(root: Path, found: Discovery, skip_bad: bool) -> list[tuple[Path, str]]:
    """Files under `root`, following symlinked folders once (a folder seen before is a loop, reported)."""
    hf = hf_dataset_files(root)
    if hf is not None:
        return [(p, p.relative_to(root).as_posix()) for p in hf]
    out: list[tuple[Path, str]] = []
    seen = {_inode(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        base = Path(dirpath)
        rel_dir = base.relative_to(root)
        for name in sorted(dirnames):
            rel = (rel_dir / name).as_posix()
            if name.startswith("."):
                dirnames.remove(name)
                found.hidden += 1
                continue
            key = _inode(base / name)
            if key is None or key in seen:
                dirnames.remove(name)
                _skip(found, "symlink loop" if key is not None else "unreadable folder", rel + "/")
                continue
            seen.add(key)
            if not _name_ok(rel, found, skip_bad):
                dirnames.remove(name)
                continue
            hf = hf_dataset_files(base / name)
            if hf is not None:
                dirnames.remove(name)
                out += [(p, p.relative_to(root).as_posix()) for p in hf]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if name.startswith("."):
                found.hidden += 1
            elif _name_ok(rel, found, skip_bad) and _check_entry(base / name, rel, found, skip_bad):
                out.append((base / name, rel))
    return sorted(out, key=lambda item: item[1])


def hf_dataset_files(folder: Path) -> list[Path] | None:
    """The .arrow files of a `datasets` `save_to_disk` folder, in order, or None for any other folder."""
    if (folder / HF_DICT).is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / HF_STATE).is_file())
        raise DataError(
            f"{folder} is a Hugging Face DatasetDict with splits {', '.join(splits) or '(none)'}: point "
            f"the corpus at one split's folder, e.g. {folder / (splits[0] if splits else 'train')}"
        )
    state_path = folder / HF_STATE
    if not state_path.is_file() or not (folder / HF_INFO).is_file():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{state_path}: not a datasets save_to_disk state file ({exc})") from None
    files = []
    for name in names:
        path = folder / name
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            raise DataError(f"{state_path} lists {name!r}, which is not a file in {folder}")
        files.append(path)
    return files


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise DataError(f"cannot read corpus file {display(path)}: {exc.strerror or exc}") from None
    return digest.hexdigest(), size


def display(path: Path | str) -> str:
    """A path as printable text: bytes of a name that is not UTF-8 are shown as \\xNN escapes."""
    return os.fsencode(str(path)).decode("utf-8", errors="backslashreplace")


def _name_ok(rel: str, found: Discovery, skip_bad: bool) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        if not skip_bad:
            raise DataError(
                f"corpus file name {display(rel)} is not valid UTF-8: rename it (or pass --skip-bad to leave it out)"
            ) from None
        _skip(found, "file name not UTF-8", display(rel))
        return False
    return True


def _check_entry(path: Path, rel: str, found: Discovery, skip_bad: bool) -> bool:
    """True for a regular file (or a link to one); otherwise the reason is recorded (or raised)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        reason = {errno.ELOOP: "symlink loop", errno.ENOENT: "broken symlink"}.get(exc.errno or 0, "unreadable")
        if not skip_bad and reason == "unreadable":
            raise DataError(f"cannot read corpus file {display(path)}: {exc.strerror or exc}") from None
        _skip(found, reason, display(rel))
        return False
    if not stat.S_ISREG(mode):
        _skip(found, "not a regular file", display(rel))
        return False
    return True


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _skip(found: Discovery, reason: str, rel: str) -> None:
    found.skipped.setdefault(reason, []).append(rel)


def _suffix(path: Path) -> str:
    return path.suffix.lower() or "no suffix"
