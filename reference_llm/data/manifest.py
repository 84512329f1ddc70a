"""`python -m reference_llm.data.manifest add`: record where data files came from, in data/manifest.toml.

    python -m reference_llm.data.manifest add data/mycorpus.jsonl --license CC-BY-4.0 \\
        --source "https://example.org/corpus (downloaded 2025-01-31)"

Each file (a folder adds every file under it) gets a `[[file]]` entry with its path relative to the
manifest's folder, the source and licence given, its sha256 and size, and for records the field that
training reads (`--text-field`), which is the one `llmgen compliance` scans for personal data. The
licence must be an SPDX expression whose ids are on the SPDX License List shipped with this package
(or `LicenseRef-<name>`): nothing is guessed. An entry that exists with other values is replaced only
with --force. The manifest is rewritten through a temporary file; its leading comments are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from reference_llm.cli import ArgumentParser, run_main
from reference_llm.data.licenses import check_licence
from reference_llm.data.sources import display, hash_file, infer_format
from reference_llm.errors import DataError

DEFAULT_MANIFEST = Path("data") / "manifest.toml"
RECORD_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "arrow")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m reference_llm.data.manifest",
        description="Record the provenance of data files in data/manifest.toml.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add (or with --force update) files and folders")
    add.add_argument("paths", nargs="+", metavar="PATH", help="files or folders under the manifest's folder")
    add.add_argument(
        "--license",
        dest="licence",
        metavar="SPDX",
        help="the data's licence as an SPDX expression, e.g. CC-BY-4.0 or MIT OR Apache-2.0 "
        "(required: it is never guessed)",
    )
    add.add_argument("--source", metavar="TEXT", help="where the data came from: a URL, a citation, who made it")
    add.add_argument(
        "--text-field",
        default="text",
        metavar="NAME",
        help="for JSON/CSV/Parquet/Arrow records: the field training reads (default text)",
    )
    add.add_argument(
        "--manifest",
        default=str(DEFAULT_MANIFEST),
        metavar="TOML",
        help=f"the manifest to update (default {DEFAULT_MANIFEST})",
    )
    add.add_argument("--force", action="store_true", help="replace entries that exist with other values")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.licence:
        raise DataError(
            "--license is required: give the SPDX id of the data's licence (e.g. CC-BY-4.0, see "
            "https://spdx.org/licenses/); it is never guessed"
        )
    if not args.source or not args.source.strip():
        raise DataError("--source is required: say where the data came from (a URL, a citation, who wrote it)")
    problems, notes = check_licence(args.licence)
    if problems:
        raise DataError(f"--license: {problems[0]}")
    manifest = Path(args.manifest)
    entries = add_files(
        manifest,
        [Path(p) for p in args.paths],
        licence=args.licence,
        source=args.source.strip(),
        text_field=args.text_field,
        force=args.force,
    )
    for entry, what in entries:
        size, digest = entry["bytes"], entry["sha256"][:12]
        print(f"{what} {entry['path']} ({entry['license']}, {size:,} bytes, sha256 {digest}...)")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def add_files(
    manifest: Path, paths: list[Path], *, licence: str, source: str, text_field: str = "text", force: bool = False
) -> list[tuple[dict[str, Any], str]]:
    """Add or update an entry per file; returns (entry, "added" | "updated" | "unchanged") for each."""
    head, entries = _read(manifest)
    by_path = {e.get("path"): e for e in entries}
    base = manifest.parent.resolve()
    results = []
    for path in _expand(paths, manifest):
        relative = path.resolve().relative_to(base).as_posix()
        if not relative.isprintable() or relative.encode("utf-8", "surrogateescape") != relative.encode(
            "utf-8", "replace"
        ):
            raise DataError(f"{display(path)}: the file name is not valid UTF-8; rename it")
        digest, size = hash_file(path)
        entry: dict[str, Any] = {
            "path": relative,
            "source": source,
            "license": licence,
            "sha256": digest,
            "bytes": size,
        }
        if infer_format(path.name)[0] in RECORD_FORMATS:
            entry["text_field"] = text_field
        old = by_path.get(relative)
        if old is None:
            entries.append(entry)
            by_path[relative] = entry
            results.append((entry, "added"))
        elif all(old.get(k) == v for k, v in entry.items()):
            results.append((old, "unchanged"))
        elif not force:
            changed = ", ".join(k for k, v in entry.items() if old.get(k) != v)
            raise DataError(
                f"{manifest} already lists {relative} with another {changed}; check the file and pass "
                f"--force to replace its entry"
            )
        else:
            old.update(entry)
            results.append((old, "updated"))
    _write(manifest, head, entries)
    return results


def _expand(paths: list[Path], manifest: Path) -> list[Path]:
    """The files named, folders expanded (hidden files and the manifest itself left out), in order."""
    base = manifest.parent.resolve()
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        if not path.resolve().is_relative_to(base):
            raise DataError(
                f"{path} is outside {manifest.parent}/: copy it there first, so that the project "
                f"holds the data its manifest describes"
            )
        found = (
            [path]
            if path.is_file()
            else sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        )
        files += [p for p in found if p.resolve() != manifest.resolve()]
    if not files:
        raise DataError(f"no files in {', '.join(map(str, paths))}")
    return list(dict.fromkeys(files))


def _read(manifest: Path) -> tuple[str, list[dict[str, Any]]]:
    """(the comment lines before the first entry, the entries) of a manifest; a missing one is empty."""
    if not manifest.exists():
        return "# Provenance of every data file: source, SPDX licence and sha256 (checked by llmgen compliance).\n", []
    try:
        text = manifest.read_text(encoding="utf-8")
        entries = tomllib.loads(text).get("file", [])
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DataError(f"{manifest}: cannot read it as TOML ({exc})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"{manifest}: `file` must be an array of [[file]] tables")
    head = "".join(line for line in text.splitlines(keepends=True)[: _first_table(text)] if line.startswith("#"))
    return head, entries


def _first_table(text: str) -> int:
    for i, line in enumerate(text.splitlines()):
        if line.strip().startswith("["):
            return i
    return len(text.splitlines())


def _write(manifest: Path, head: str, entries: list[dict[str, Any]]) -> None:
    lines = [head.rstrip("\n")] if head else []
    for entry in entries:
        lines += ["", "[[file]]"] + [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(manifest.name + ".tmp")
    tmp.write_text("\n".join(lines).lstrip("\n") + "\n", encoding="utf-8")
    os.replace(tmp, manifest)


def _toml_value(value: Any) -> str:
    """A TOML literal: JSON's string escapes are valid in TOML basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value, ensure_ascii=False)
    raise DataError(f"cannot write {value!r} to a manifest")


if __name__ == "__main__":
    sys.exit(run_main(main))
