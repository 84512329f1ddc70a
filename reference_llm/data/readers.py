"""Streaming readers: the texts of one corpus file, in bounded memory, whatever its format.

Text files are one document each, read in blocks and cut into pieces of at most `piece_chars` characters
(at a line break if there is one in the second half of the window, else at a space), so that a 200 MB
file without line breaks never sits in memory whole. JSON Lines, JSON arrays, CSV/TSV, Parquet and Arrow
files give one document per record, the text taken from `text_field` (dots reach nested fields:
`meta.body`, `turns.0.text`). Any of them may be gzip, zstd, bzip2 or xz compressed (Parquet excepted:
it needs random access).

A record that cannot be read (not JSON, no such field, not text) is bad input: `BadRecords` raises a
DataError naming the file, the line or row and what is wrong, or, with `skip=True`, counts it and goes on.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from reference_llm.data.sources import SourceFile, display
from reference_llm.errors import DataError

BLOCK = 1 << 20  # bytes read at a time
MAX_BAD_ITEMS = 20  # bad records listed in the report; the counts are complete
_WS = re.compile(r"[ \t\n\r]*")


@dataclass
class BadRecords:
    """Raises on the first bad record, or with `skip=True` counts them per reason and keeps a few."""

    skip: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    items: list[str] = field(default_factory=list)

    def __call__(self, src: SourceFile, at: str, why: str, reason: str) -> None:
        """`at`: "" for the whole file, ":12" for line 12, "[5]" for row 5; `reason`: the report's key."""
        if not self.skip:
            raise DataError(f"{display(src.path)}{at}: {why} (or pass --skip-bad to leave it out)")
        self.counts[reason] += 1
        if len(self.items) < MAX_BAD_ITEMS:
            self.items.append(f"{src.name}{at}: {why}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_report(self) -> dict[str, Any]:
        return {"skipped": self.total, "by_reason": dict(sorted(self.counts.items())), "items": list(self.items)}


def iter_documents(src: SourceFile, piece_chars: int, limit_bytes: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    """(name, text) of every document of `src`; a document longer than `piece_chars` comes as pieces
    `name#1`, `name#2`, ... A record (or a line of JSON Lines) over `limit_bytes` is a bad record."""
    if src.format == "text":
        yield from _text_pieces(src, piece_chars, bad)
        return
    for where, text in iter_records(src, limit_bytes, bad):
        pieces = cut_pieces(text, piece_chars)
        if len(pieces) == 1:
            yield where, text
        else:
            yield from ((f"{where}#{i}", piece) for i, piece in enumerate(pieces, 1))


def iter_records(src: SourceFile, limit_bytes: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    """(where, text) of each record of a JSON/CSV/Parquet/Arrow file; `where` is `name:line` for line-based
    formats and `name[row]` (0-based) for the others."""
    readers = {"jsonl": _jsonl, "json": _json, "csv": _csv, "tsv": _csv, "parquet": _parquet, "arrow": _arrow}
    if src.format not in readers:
        raise DataError(f"{src.name}: format {src.format!r} has no records")
    with _guard(src, bad):
        yield from readers[src.format](src, limit_bytes, bad)


# ----------------------------------------------------------------------------------------------------
# Opening, decompressing, and turning I/O failures into one-line errors
# ----------------------------------------------------------------------------------------------------


def open_binary(path: Path, compression: str) -> BinaryIO:
    """The file's bytes, decompressed on the fly."""
    stream: io.BufferedIOBase
    if compression == "gzip":
        stream = gzip.open(path, "rb")
    elif compression == "bz2":
        stream = bz2.open(path, "rb")
    elif compression == "xz":
        stream = lzma.open(path, "rb")
    elif compression == "zstd":
        stream = io.BufferedReader(_ZstdReader(path), BLOCK)
    else:
        stream = path.open("rb")
    return cast(BinaryIO, stream)  # every one is a buffered binary stream


class _ZstdReader(io.RawIOBase):
    """zstd frames back to back (as `zstd` and `cat a.zst b.zst` make them), decompressed as a stream.

    zstandard's own stream_reader reports a truncated file as a normal end; here a frame that has not
    ended when the file does raises ZstdError, like gzip's EOFError. Input is fed 1 KiB at a time, so
    that one call produces at most ~32 MiB even from a file built to expand (zstd's ratio is < 32768).
    """

    FEED = 1024

    def __init__(self, path: Path):
        self._zstd = _optional("zstandard", "zstd-compressed files")
        self._file = path.open("rb")
        self._frame = self._zstd.ZstdDecompressor().decompressobj()
        self._fed = False  # compressed bytes given to the current frame
        self._in, self._in_pos = b"", 0
        self._out, self._out_pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._out_pos == len(self._out):
            if self._in_pos == len(self._in):
                self._in, self._in_pos = self._file.read(BLOCK), 0
                if not self._in:
                    if self._fed and not self._frame.eof:
                        raise self._zstd.ZstdError("the file ends inside a frame")
                    return 0
            if self._frame.eof:  # the previous frame ended: what follows starts a new one
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
                self._fed = False
            piece = self._in[self._in_pos : self._in_pos + self.FEED]
            self._out, self._out_pos = self._frame.decompress(piece), 0
            self._fed = True
            # Bytes after a frame's end are not consumed: they are the next frame's start.
            self._in_pos += len(piece) - (len(self._frame.unused_data) if self._frame.eof else 0)
        n = min(len(buffer), len(self._out) - self._out_pos)
        buffer[:n] = self._out[self._out_pos : self._out_pos + n]
        self._out_pos += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _damage_errors() -> tuple[type[Exception], ...]:
    """What reading a damaged file raises (OSError also for an unreadable plain file)."""
    errors: list[type[Exception]] = [OSError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:
        pass
    return tuple(errors)


class _Stop(Exception):
    """The rest of the file cannot be read; its error was already counted (skip mode)."""


@contextmanager
def _guard(src: SourceFile, bad: BadRecords) -> Iterator[None]:
    """Damaged compressed data and read failures become one bad-input line (or one counted skip)."""
    try:
        yield
    except _Stop:
        return
    except _damage_errors() as exc:
        if not src.compression and isinstance(exc, OSError):
            raise DataError(f"cannot read corpus file {display(src.path)}: {exc.strerror or exc}") from None
        bad(
            src,
            "",
            f"truncated or corrupt {src.compression} data ({exc or type(exc).__name__}; what came before "
            f"the damage was read)",
            "damaged file",
        )


def _optional(module: str, what: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise DataError(f"reading {what} needs the `{module}` package: pip install 'llmgen[data]'") from None


# ----------------------------------------------------------------------------------------------------
# Text: one document per file, in pieces
# ----------------------------------------------------------------------------------------------------


def cut_pieces(text: str, piece_chars: int) -> list[str]:
    """`text` cut into pieces of at most `piece_chars` characters (one piece when it is short enough)."""
    pieces = []
    start = 0
    while len(text) - start > piece_chars:
        end = _cut_point(text, start, start + piece_chars)
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:] if start else text)
    return pieces


def _cut_point(text: str, lo: int, hi: int) -> int:
    """Where to end a piece that starts at `lo` and may not reach past `hi`: after the last line break in
    the second half of the window, else before the last space there, else at `hi` moved back off any
    combining mark (so that NFC sees every character with its accents)."""
    mid = lo + (hi - lo) // 2
    newline = text.rfind("\n", mid, hi)
    if newline != -1:
        return newline + 1
    space = text.rfind(" ", mid, hi)
    if space > lo:
        return space
    cut = hi
    while cut > lo + 1 and unicodedata.combining(text[cut]):
        cut -= 1
    return cut


def _text_pieces(src: SourceFile, piece_chars: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    buf, offset, lines, count = "", 0, 0, 0  # offset: bytes decoded so far; lines: line breaks emitted
    with _guard(src, bad), open_binary(src.path, src.compression) as stream:
        while True:
            block = stream.read(BLOCK)
            try:
                buf += decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                line = lines + buf.count("\n") + block[: exc.start].count(b"\n") + 1
                bad(
                    src,
                    "",
                    f"not UTF-8 text (bad byte near offset {offset + exc.start}, line {line}); convert it to UTF-8",
                    "not UTF-8",
                )
                return  # skip mode: the rest of this file is left out
            offset += len(block)
            while len(buf) > piece_chars:
                cut = _cut_point(buf, 0, piece_chars)
                count += 1
                lines += buf.count("\n", 0, cut)
                yield f"{src.name}#{count}", buf[:cut]
                buf = buf[cut:]
            if not block:
                break
    if count == 0:
        yield src.name, buf
    elif buf:
        yield f"{src.name}#{count + 1}", buf


# ----------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------


def field_value(record: Any, path: str) -> tuple[str | None, str]:
    """(text, "") or (None, what is wrong) for the field at a dotted `path` of a decoded record."""
    value = record
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict):
            keys = ", ".join(list(value)[:10]) + (", ..." if len(value) > 10 else "")
            return None, f"no field {path!r} (fields: {keys or 'none'})"
        else:
            return None, f"no field {path!r} (the record is a JSON {_json_type(value)}, not an object)"
    if isinstance(value, str):
        return value, ""
    return None, f"field {path!r} is {'null' if value is None else 'a ' + _json_type(value)}, not a string"


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


def _record(at: str, record: Any, src: SourceFile, bad: BadRecords) -> str | None:
    text, why = field_value(record, src.text_field)
    if text is None:
        bad(src, at, why, "missing field" if why.startswith("no field") else "field not text")
    return text


def _jsonl(src: SourceFile, limit: int, bad: BadRecords, first_line_only: bool = False) -> Iterator[tuple[str, str]]:
    with open_binary(src.path, src.compression) as stream:
        lineno = 0
        while raw := stream.readline(limit + 1):
            lineno += 1
            at = f":{lineno}"
            if len(raw) > limit and not raw.endswith(b"\n"):
                while (rest := stream.readline(BLOCK)) and not rest.endswith(b"\n"):
                    pass
                bad(src, at, f"line is longer than {limit / 2**20:g} MiB (raise data.chunk_mb)", "record too long")
                continue
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                bad(src, at, f"not UTF-8 (bad byte at column {exc.start + 1})", "not UTF-8")
                continue
            except json.JSONDecodeError as exc:
                bad(src, at, f"not JSON ({exc.msg} at column {exc.colno})", "not JSON")
                continue
            text = _record(at, record, src, bad)
            if text is not None:
                yield src.name + at, text


def _json(src: SourceFile, limit: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    """A .json file: an array of records, streamed element by element, or JSON Lines."""
    with open_binary(src.path, src.compression) as stream:
        head = stream.read(4096).lstrip(codecs.BOM_UTF8).lstrip()
    if head.startswith(b"["):
        yield from _json_array(src, limit, bad)
    elif head.startswith(b"{"):
        yield from _jsonl(src, limit, bad)
    elif head:
        bad(src, "", "neither a JSON array of records nor JSON Lines (one object per line)", "not JSON")


def _json_array(src: SourceFile, limit: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    with open_binary(src.path, src.compression) as stream:
        buf, pos, eof = "", 0, False

        def more(at_least: int = BLOCK) -> None:
            """Append decoded bytes; reads grow with the element being parsed, so parsing stays linear."""
            nonlocal buf, pos, eof
            block = stream.read(max(BLOCK, at_least))
            eof = not block
            try:
                buf = buf[pos:] + utf8.decode(block, final=eof)
            except UnicodeDecodeError:
                bad(src, f"[{index}]", "not UTF-8; the rest of the array is unreadable", "not UTF-8")
                raise _Stop from None
            pos = 0

        def skip_space() -> str:
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]  # the pattern matches ""
                if pos < len(buf) or eof:
                    return buf[pos] if pos < len(buf) else ""
                more()

        index = 0
        more()
        if skip_space() != "[":
            bad(src, "", "not a JSON array", "not JSON")
            return
        pos += 1
        while True:
            if skip_space() == "]" and index == 0:
                return
            try:
                record, end = decoder.raw_decode(buf, pos)
                complete = end < len(buf) or eof  # a number at the buffer's end may continue
            except json.JSONDecodeError as exc:
                if eof or len(buf) - pos > limit:
                    what = (
                        f"element is longer than {limit / 2**20:g} MiB (raise data.chunk_mb)"
                        if not eof
                        else f"not JSON ({exc.msg})"
                    )
                    bad(src, f"[{index}]", what + "; the rest of the array is unreadable", "not JSON")
                    return
                complete = False
            if not complete:
                more(at_least=2 * (len(buf) - pos))
                continue
            pos = end
            text = _record(f"[{index}]", record, src, bad)
            if text is not None:
                yield f"{src.name}[{index}]", text
            index += 1
            sep = skip_space()
            pos += 1
            if sep == "]":
                return
            if sep != ",":
                bad(
                    src,
                    f"[{index}]",
                    f"not JSON (expected ',' or ']' after element {index - 1}, got {sep or 'end of file'!r})",
                    "not JSON",
                )
                return


def _csv(src: SourceFile, limit: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    csv.field_size_limit(max(csv.field_size_limit(), limit))
    with (
        open_binary(src.path, src.compression) as raw,
        io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as stream,
    ):
        reader = csv.reader(stream, delimiter="\t" if src.format == "tsv" else ",")
        try:
            header = next(reader, [])
            if src.text_field not in header:
                bad(
                    src,
                    "",
                    f"no column {src.text_field!r} (columns: {', '.join(header[:10]) or 'none'})",
                    "missing field",
                )
                return
            column = header.index(src.text_field)
            for row in reader:
                at = f":{reader.line_num}"
                if len(row) <= column:
                    bad(src, at, f"row has {len(row)} field(s), no {src.text_field!r}", "missing field")
                    continue
                yield src.name + at, row[column]
        except UnicodeDecodeError:
            bad(src, f":{reader.line_num + 1}", "not UTF-8; the rest of the file is left out", "not UTF-8")
        except csv.Error as exc:
            bad(src, f":{reader.line_num}", f"not CSV ({exc})", "not CSV")


def _column_values(batch: Any, src: SourceFile, first_row: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    """Texts of one Arrow record batch, whose first column is the top-level column of `text_field`."""
    top = src.text_field.partition(".")[0]
    for row, value in enumerate(batch.column(0).to_pylist(), first_row):
        text = _record(f"[{row}]", {top: value}, src, bad)
        if text is not None:
            yield f"{src.name}[{row}]", text


def _check_column(src: SourceFile, schema: Any, bad: BadRecords) -> bool:
    pa = _optional("pyarrow", "Parquet and Arrow files")
    top = src.text_field.split(".")[0]
    if top not in schema.names:
        bad(src, "", f"no column {top!r} (columns: {', '.join(schema.names[:10]) or 'none'})", "missing field")
        return False
    kind = schema.field(top).type
    if "." not in src.text_field and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        bad(src, "", f"column {top!r} holds {kind}, not text", "field not text")
        return False
    return True


def _parquet(src: SourceFile, limit: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    pa = _optional("pyarrow", "Parquet files")
    import pyarrow.parquet as pq

    row = 0
    try:
        # pre_buffer (on by default) reads column chunks ahead and, with threads, several row groups at
        # once: reading a 90 MB file then peaked at ~240 MB above the import instead of ~90 MB.
        pf = pq.ParquetFile(src.path, pre_buffer=False, buffer_size=BLOCK)
        if not _check_column(src, pf.schema_arrow, bad):
            return
        meta = pf.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        # Batches of about a tenth of the record limit, judged by the average row, so a row group of
        # large documents is not decoded at once.
        rows = max(1, min(65_536, int(limit / 10 / max(1.0, size / max(1, meta.num_rows)))))
        top = src.text_field.split(".")[0]
        for batch in pf.iter_batches(batch_size=rows, columns=[top], use_threads=False):
            yield from _column_values(batch, src, row, bad)
            row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        bad(src, f"[{row}]" if row else "", f"not a readable Parquet file ({exc})", "damaged file")


def _arrow(src: SourceFile, limit: int, bad: BadRecords) -> Iterator[tuple[str, str]]:
    """Arrow IPC, file or stream format (`datasets` save_to_disk writes the stream format)."""
    pa = _optional("pyarrow", "Arrow files")
    row = 0
    try:
        with ExitStack() as stack:
            stream = stack.enter_context(open_binary(src.path, src.compression))
            batches: Any
            if not src.compression and stream.read(6) == b"ARROW1":
                reader = stack.enter_context(pa.ipc.open_file(str(src.path)))
                schema, batches = reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
            else:
                if not src.compression:
                    stream.seek(0)
                reader = stack.enter_context(pa.ipc.open_stream(stream))
                schema, batches = reader.schema, reader
            if not _check_column(src, schema, bad):
                return
            top = src.text_field.split(".")[0]
            for batch in batches:
                yield from _column_values(batch.select([top]), src, row, bad)
                row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        bad(src, f"[{row}]" if row else "", f"not a readable Arrow file ({exc})", "damaged file")
