"""A run's metrics.jsonl as CSV: one row per event, the columns the union of the events'
keys, the numbers exactly as the file writes them.

Two streamed passes over the same bytes of the file (its complete lines when the export
began: a live run's later lines wait for the next download): the first collects the keys,
the second writes the rows in blocks, so a million-row run costs a few megabytes of
memory, never the whole file. Read through contract/reading.py like every run file: no
link followed, only a regular file, lines over MAX_LINE_BYTES skipped as malformed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.contract.reading import MAX_LINE_BYTES, LineReader, open_file, split_path
from training.metrics.tailer import decode_event

# The keys every event has, first; the others in the order they first appear.
LEADING = ("seq", "event", "step", "time", "v")
# Bounds against a damaged or hostile file: keys past these are left out.
MAX_COLUMNS = 2000
MAX_KEY_CHARS = 200
BLOCK_BYTES = 1 << 20
ROWS_PER_CHUNK = 2000
# Values csv.writer would not write as JSON does (True, a dict's repr): cell() writes them.
_SPECIAL = frozenset({bool, dict, list})


def cell(value: Any) -> str:
    """A value as the CSV shows it: numbers as JSON writes them (repr: the same digits as
    metrics.jsonl), null as an empty cell, true/false, nested values as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class MetricsCsv:
    """The CSV of one metrics file, from the moment it was opened. `columns` is known
    once constructed (the first pass ran); iterate for the text, in chunks; close() (or
    the end of the iteration) releases the file."""

    def __init__(self, path: str | Path, root: str | Path | None = None) -> None:
        folder, rel = split_path(path, root)
        try:
            self._fd: int | None = open_file(folder, rel)
        except FileNotFoundError:
            self._fd = None  # no metrics yet: a header-only CSV
        self.size = os.fstat(self._fd).st_size if self._fd is not None else 0
        self.rows = 0
        self.columns = self._columns()

    def _events(self) -> Iterator[dict[str, Any]]:
        """Every decodable event in the file's first `size` bytes (complete lines only)."""
        if self._fd is None:
            return
        reader = LineReader(0, MAX_LINE_BYTES)
        while True:
            offset, block = reader.read(self._fd, self.size, BLOCK_BYTES)
            if not block:
                return
            for line in block.split(b"\n"):
                if line.strip():
                    row = decode_event(line)
                    if row is not None:
                        yield row

    def _columns(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self._events():
            self.rows += 1
            if len(seen) >= MAX_COLUMNS:
                continue
            for key in row:
                if key not in seen and len(key) <= MAX_KEY_CHARS and len(seen) < MAX_COLUMNS:
                    seen[key] = None
        lead = [k for k in LEADING if k in seen]
        return lead + [k for k in seen if k not in LEADING]

    def __iter__(self) -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        try:
            writer.writerow(self.columns)
            count = 0
            get = self._values
            for row in self._events():
                writer.writerow(get(row))
                count += 1
                if count % ROWS_PER_CHUNK == 0:
                    yield buffer.getvalue()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue()
        finally:
            self.close()

    def _values(self, row: dict[str, Any]) -> list[Any]:
        """The row's cells. csv.writer writes str, int, and None (empty) as JSON would, and
        a finite float as its repr, which is what json.dumps writes: the common row goes
        through as it is (the speed of a million-row download), the rest through cell()."""
        values = list(map(row.get, self.columns))
        if not _SPECIAL.isdisjoint(map(type, values)):
            values = [cell(v) for v in values]
        return values

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
