"""The formats a corpus file comes in, each read as a stream of documents.

A file's kind comes from its name: text (.txt, .md, ...: the whole file is one document),
jsonl (one JSON record per line), jsonl.gz and jsonl.zst (the same, compressed), json (one
JSON array of records, or of strings), parquet, and arrow (the Arrow files of a Hugging Face
`datasets` folder or cache). A record's text is its `text_field` ("text" unless the config
says otherwise, as mlx-lm's `text_feature`); a blank or null text is no document.

Every reader is a generator that holds at most one line, one JSON record or one batch of
rows (ROW_BATCH) in memory, whatever the file's size. Each document comes with where its
record starts (Doc.offset: a byte offset in a jsonl file, a row of a parquet or arrow file,
an element of a json array), so a reader can start again from a recorded place: `start`
seeks there in the seekable kinds (SEEKABLE_KINDS) and reads up to it in the others.
Every problem is a CorpusError naming the file, the place in it and the field.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from training.contract.errors import InputError

TEXT_FIELD = "text"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
# Kinds by how a file's name ends (longest first: .jsonl.gz is not .gz).
KIND_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".jsonl.gz", "jsonl.gz"),
    (".jsonl.zst", "jsonl.zst"),
    (".jsonl.zstd", "jsonl.zst"),
    (".jsonl", "jsonl"),
    (".json", "json"),
    (".parquet", "parquet"),
    (".arrow", "arrow"),
    *((suffix, "text") for suffix in TEXT_SUFFIXES),
)
SUPPORTED = ".txt, .md, .jsonl, .jsonl.gz, .jsonl.zst, .json, .parquet or .arrow"
# Kinds a reader can enter in the middle (a byte offset, a row); the others read up to it.
SEEKABLE_KINDS = frozenset({"text", "jsonl", "parquet", "arrow"})
ROW_BATCH = 1024  # rows of a parquet or arrow file converted to text at a time
_SNIFF_BYTES = 8192  # a file with a NUL byte in its first block is binary, not text
_JSON_CHUNK = 1 << 20

RawFn = Callable[[bytes], None]


class CorpusError(InputError):
    """A corpus that cannot be used; the message names the file and the fix."""


class Doc(NamedTuple):
    """One document and where its record starts."""

    offset: int  # byte offset (jsonl), row (parquet, arrow), element (json), 0 (text)
    number: int  # the 1-based line, row or element (what a message names)
    part: int  # the record within a jsonl line split at bare CRs (old Mac line ends)
    text: str


class Start(NamedTuple):
    """Where to start reading a file again: a Doc's offset, number and part."""

    offset: int
    number: int
    part: int = 0


def file_kind(path: Path) -> str:
    """The kind of a corpus file from its name; CorpusError for any other file."""
    name = path.name.lower()
    for suffix, kind in KIND_SUFFIXES:
        if name.endswith(suffix):
            return kind
    raise CorpusError(
        f"{path}: unsupported file type '{''.join(path.suffixes[-2:]) or path.name}'; "
        f"use {SUPPORTED} (records with a text field)"
    )


def is_corpus_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix, _ in KIND_SUFFIXES)


def content_kind(path: Path, field: str = TEXT_FIELD) -> str:
    """What a file's content hash is qualified with: its kind, and the field read from its
    records when that is not "text" (the same bytes read through another column are
    another corpus)."""
    kind = file_kind(path)
    return kind if kind == "text" or field == TEXT_FIELD else f"{kind}:{field}"


def hashes_while_reading(path: Path) -> bool:
    """Whether read_file's `raw` sees every byte of the file (else hash it with file_hash)."""
    return file_kind(path) in ("text", "jsonl", "json")


def file_hash(path: Path) -> bytes:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as exc:
        raise unreadable(path, exc) from None
    return h.digest()


def read_file(
    path: Path, field: str = TEXT_FIELD, start: Start | None = None, raw: RawFn | None = None
) -> Iterator[Doc]:
    """The documents of one file, from `start` (a Doc's place) or its beginning. `raw` is
    given every byte read, as read, in the kinds hashes_while_reading names (to hash the
    file while it is parsed)."""
    kind = file_kind(path)
    if kind == "text":
        if start is None or start.number <= 1:
            yield from _read_text(path, raw)
    elif kind == "jsonl":
        yield from _read_jsonl(path, field, start, raw)
    elif kind in ("jsonl.gz", "jsonl.zst"):
        yield from _skip_to(_read_compressed(path, kind, field), start)
    elif kind == "json":
        yield from _skip_to(_read_json_array(path, field, raw), start)
    elif kind == "parquet":
        yield from _read_parquet(path, field, start)
    else:
        yield from _read_arrow(path, field, start)


def _skip_to(docs: Iterator[Doc], start: Start | None) -> Iterator[Doc]:
    for doc in docs:
        if start is None or (doc.number, doc.part) >= (start.number, start.part):
            yield doc


# -- errors -----------------------------------------------------------------------------------


def unreadable(path: Path, exc: OSError) -> CorpusError:
    if isinstance(exc, PermissionError):
        return CorpusError(f"{path}: permission denied; make the file readable")
    return CorpusError(f"{path}: cannot read ({exc.strerror or exc})")


def _not_utf8(path: Path, where: str) -> CorpusError:
    return CorpusError(
        f"{path}: not UTF-8 (invalid byte at {where}); convert it, e.g. "
        f"`iconv -f latin1 -t utf-8 {path.name}`"
    )


def _binary(path: Path) -> CorpusError:
    return CorpusError(f"{path}: looks binary (contains NUL bytes); give plain UTF-8 text")


def _no_field(path: Path, where: str, field: str, has: list[str]) -> CorpusError:
    chat = field == TEXT_FIELD and bool({"messages", "prompt", "completion"} & set(has))
    shown = ", ".join(repr(k) for k in has[:12]) or "none"
    return CorpusError(
        f"{path}:{where}: each record needs a {field!r} field (text_field) for continued "
        f"pre-training; this one has: {shown}"
        + (
            " (chat or prompt/completion data is not raw text)"
            if chat
            else "; set text_field to the field that holds the text"
        )
    )


def _text_of(path: Path, where: str, record: Any, field: str) -> str | None:
    """A record's document: its field's text (None when blank or null)."""
    if isinstance(record, str):
        return record if record.strip() else None
    if not isinstance(record, dict):
        raise CorpusError(
            f"{path}:{where}: expected a JSON object with a {field!r} field (text_field), "
            f"got {type(record).__name__}"
        )
    if field not in record:
        raise _no_field(path, where, field, [str(k) for k in record])
    value = record[field]
    if value is None:
        return None
    if not isinstance(value, str):
        raise CorpusError(
            f"{path}:{where}: {field!r} (text_field) must be text, not {type(value).__name__}"
        )
    return value if value.strip() else None


# -- text and JSON lines ----------------------------------------------------------------------


def _read_text(path: Path, raw: RawFn | None) -> Iterator[Doc]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None
    if b"\0" in data[:_SNIFF_BYTES]:
        raise _binary(path)
    if raw is not None:
        raw(data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _not_utf8(path, f"line {line}") from None
    if text.strip():
        yield Doc(0, 1, 0, text)


def _read_jsonl(path: Path, field: str, start: Start | None, raw: RawFn | None) -> Iterator[Doc]:
    try:
        f = path.open("rb")
    except OSError as exc:
        raise unreadable(path, exc) from None
    with f:
        try:
            if start is None:
                if b"\0" in f.read(_SNIFF_BYTES):
                    raise _binary(path)
                f.seek(0)
                yield from _jsonl_lines(path, f, field, 0, 1, raw)
            else:
                f.seek(start.offset)
                docs = _jsonl_lines(path, f, field, start.offset, start.number, raw)
                yield from _skip_to(docs, start)
        except OSError as exc:
            raise unreadable(path, exc) from None


def _jsonl_lines(
    path: Path, f: IO[bytes], field: str, offset: int, number: int, raw: RawFn | None
) -> Iterator[Doc]:
    """Doc per non-blank record of a binary line stream that starts at byte `offset`,
    line `number`."""
    for data in f:
        if raw is not None:
            raw(data)
        try:
            line = data.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise _not_utf8(path, f"line {number}") from None
        # (old Mac line ends: a bare CR never occurs inside valid JSON)
        parts = line.split("\r") if "\r" in line.rstrip("\r\n") else (line,)
        for part, text in enumerate(parts):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
            doc = _text_of(path, str(number), record, field)
            if doc is not None:
                yield Doc(offset, number, part, doc)
        offset += len(data)
        number += 1


def _read_compressed(path: Path, kind: str, field: str) -> Iterator[Doc]:
    """A jsonl file compressed with gzip or zstd, decompressed as it is read."""
    import gzip
    import zlib

    try:
        raw_file = path.open("rb")
    except OSError as exc:
        raise unreadable(path, exc) from None
    what = "gzip" if kind == "jsonl.gz" else "zstd"
    errors: tuple[type[BaseException], ...] = (EOFError, zlib.error)
    with raw_file:
        stream: Any
        if kind == "jsonl.gz":
            stream = gzip.GzipFile(fileobj=raw_file, mode="rb")
        else:
            import zstandard

            errors = (*errors, zstandard.ZstdError)
            reader = zstandard.ZstdDecompressor().stream_reader(raw_file, read_across_frames=True)
            stream = io.BufferedReader(reader)
        try:
            with stream:
                if b"\0" in stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]:
                    raise _binary(path)
                yield from _jsonl_lines(path, stream, field, 0, 1, None)
        except errors as exc:
            raise CorpusError(
                f"{path}: not a complete {what} file ({exc}); compress it again"
            ) from None
        except OSError as exc:  # gzip.BadGzipFile is one
            if isinstance(exc, (PermissionError, FileNotFoundError)):
                raise unreadable(path, exc) from None
            raise CorpusError(f"{path}: not a readable {what} file ({exc})") from None


# -- a JSON array -----------------------------------------------------------------------------


def _read_json_array(path: Path, field: str, raw: RawFn | None) -> Iterator[Doc]:
    """The records of one JSON array, parsed one at a time from a buffer that holds about
    one record (it doubles while a record is longer than what it holds)."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    try:
        f = path.open("rb")
    except OSError as exc:
        raise unreadable(path, exc) from None
    buf, pos, eof, read_bytes = "", 0, False, 0

    def more() -> None:
        nonlocal buf, pos, eof, read_bytes
        data = f.read(max(_JSON_CHUNK, len(buf) - pos))
        if read_bytes == 0 and b"\0" in data[:_SNIFF_BYTES]:
            raise _binary(path)
        if raw is not None and data:
            raw(data)
        try:
            text = utf8.decode(data, final=not data)
        except UnicodeDecodeError:
            raise _not_utf8(path, f"byte {read_bytes}") from None
        read_bytes += len(data)
        eof = not data
        buf, pos = buf[pos:] + text, 0

    def skip_space() -> bool:
        """Move past white space; False at the end of the file."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(buf):
                return True
            if eof:
                return False
            more()

    with f:
        try:
            if not skip_space() or buf[pos] != "[":
                raise CorpusError(
                    f"{path}: a .json corpus must hold one array of records "
                    f'([{{"{field}": "..."}}, ...]); for one record per line use .jsonl'
                )
            pos += 1
            number = 0
            while True:
                if not skip_space():
                    raise CorpusError(f"{path}: invalid JSON (the array is not closed)")
                if buf[pos] == "]" and number == 0:
                    pos += 1
                    break
                while True:
                    try:
                        record, end = decoder.raw_decode(buf, pos)
                    except json.JSONDecodeError as exc:
                        if eof:
                            raise CorpusError(
                                f"{path}: invalid JSON in element {number + 1} ({exc.msg})"
                            ) from None
                        more()
                        continue
                    if end < len(buf) or eof:  # a complete value: something follows it
                        break
                    more()
                number += 1
                pos = end
                doc = _text_of(path, f"element {number}", record, field)
                if doc is not None:
                    yield Doc(number - 1, number, 0, doc)
                if not skip_space():
                    raise CorpusError(f"{path}: invalid JSON (the array is not closed)")
                if buf[pos] == "]":
                    pos += 1
                    break
                if buf[pos] != ",":
                    raise CorpusError(
                        f"{path}: invalid JSON after element {number} (expected ',' or ']')"
                    )
                pos += 1
            if skip_space():
                raise CorpusError(f"{path}: invalid JSON (text after the array's end)")
        except OSError as exc:
            raise unreadable(path, exc) from None


# -- columnar: Parquet and Arrow --------------------------------------------------------------


def _column_index(path: Path, schema: Any, field: str) -> int:
    import pyarrow as pa

    index = schema.get_field_index(field)
    if index < 0:
        raise _no_field(path, "columns", field, list(schema.names))
    kind = schema.field(index).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or _is_view(kind)):
        raise CorpusError(f"{path}: the column {field!r} (text_field) holds {kind}, not text")
    return int(index)


def _is_view(kind: Any) -> bool:
    import pyarrow as pa

    check = getattr(pa.types, "is_string_view", None)
    return bool(check is not None and check(kind))


def _rows(path: Path, batches: Iterator[Any], index: int, row: int, skip: int) -> Iterator[Doc]:
    """Docs of record batches whose first row is `row`, the first `skip` rows left out."""
    for batch in batches:
        column = batch.column(index)
        n = len(column)
        if skip >= n:
            skip -= n
            row += n
            continue
        for lo in range(skip, n, ROW_BATCH):
            for i, value in enumerate(column.slice(lo, ROW_BATCH).to_pylist(), start=row + lo):
                if value is not None and value.strip():
                    yield Doc(i, i + 1, 0, value)
        skip = 0
        row += n


def _damaged(path: Path, what: str, exc: Exception) -> CorpusError:
    return CorpusError(f"{path}: not a readable {what} file ({exc}); write it again")


def _read_parquet(path: Path, field: str, start: Start | None) -> Iterator[Doc]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except OSError as exc:
        if isinstance(exc, (PermissionError, FileNotFoundError)):
            raise unreadable(path, exc) from None
        raise _damaged(path, "Parquet", exc) from None
    except (pa.ArrowException, ValueError) as exc:
        raise _damaged(path, "Parquet", exc) from None
    with parquet:
        _column_index(path, parquet.schema_arrow, field)  # (checked before reading)
        first = start.offset if start is not None else 0
        groups, row = [], 0
        meta = parquet.metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if row + n > first:
                groups.append(g)
            elif not groups:
                row += n
        if not groups:
            return
        batches = parquet.iter_batches(
            batch_size=ROW_BATCH, row_groups=groups, columns=[field], use_threads=False
        )
        try:
            yield from _rows(path, batches, 0, row, first - row)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise _damaged(path, "Parquet", exc) from None


def _read_arrow(path: Path, field: str, start: Start | None) -> Iterator[Doc]:
    """A Hugging Face `datasets` Arrow file (an Arrow IPC stream; the IPC file format too),
    memory-mapped: skipping rows reads nothing."""
    import pyarrow as pa

    try:
        source = pa.memory_map(str(path), "r")
    except OSError as exc:
        raise unreadable(path, exc) from None
    with source:
        try:
            try:
                reader: Any = pa.ipc.open_stream(source)
                batches: Iterator[Any] = iter(reader)
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            index = _column_index(path, reader.schema, field)
            first = start.offset if start is not None else 0
            yield from _rows(path, batches, index, 0, first)
        except (pa.ArrowException, ValueError) as exc:
            raise _damaged(path, "Arrow", exc) from None


def row_count(path: Path) -> int | None:
    """The rows pyarrow reports for a parquet or arrow file (None for other kinds)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = file_kind(path)
    try:
        if kind == "parquet":
            return int(pq.ParquetFile(path).metadata.num_rows)
        if kind == "arrow":
            with pa.memory_map(str(path), "r") as source:  # batches are views: nothing copied
                try:
                    return sum(batch.num_rows for batch in pa.ipc.open_stream(source))
                except pa.ArrowInvalid:
                    source.seek(0)
                    reader = pa.ipc.open_file(source)
                    return sum(
                        reader.get_batch(i).num_rows for i in range(reader.num_record_batches)
                    )
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _damaged(path, kind, exc) from None
    return None
