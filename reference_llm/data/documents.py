"""Reading a corpus: a text file (one document) or a folder of .txt/.md files (one document per file)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from reference_llm.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class SourceFile:
    """One file of the corpus: where it is, its name inside the corpus, and its content hash."""

    path: Path
    name: str  # path relative to the corpus folder (posix), or the file name for a single-file corpus
    sha256: str
    size: int


@dataclass(frozen=True)
class Document:
    source: str  # SourceFile.name it came from; reports and the train/val split refer to it
    text: str


def list_sources(corpus: str | Path) -> list[SourceFile]:
    """Every file of the corpus, in a stable (sorted) order, with its sha256.

    Hidden files and folders (names starting with '.') are skipped, so a corpus can live in a git checkout.
    """
    root = Path(corpus)
    if root.is_file():
        files = [(root, root.name)]
    elif root.is_dir():
        files = sorted(
            ((p, p.relative_to(root).as_posix()) for p in root.rglob("*")
             if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(root).parts)),
            key=lambda item: item[1],
        )
        if not files:
            raise DataError(f"corpus folder {root} has no {' or '.join(TEXT_SUFFIXES)} files")
    else:
        raise DataError(f"corpus not found: {root} (data.corpus must be a text file or a folder of "
                        f"{'/'.join(TEXT_SUFFIXES)} files)")
    return [SourceFile(path, name, *_hash_file(path)) for path, name in files]


def read_documents(sources: list[SourceFile]) -> list[Document]:
    """Decode each file as UTF-8 (a leading byte-order mark is dropped)."""
    return [Document(src.name, _read_text(src.path)) for src in sources]


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise DataError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
    return digest.hexdigest(), size


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"corpus file {path} is not UTF-8 text (bad byte at offset {exc.start}); "
                        f"convert it to UTF-8") from None
