"""The runs list's view of a metrics.jsonl: the newest row of each kind, read from the
file's tail (no index), so listing many long runs stays cheap."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.contract.protocol import EVAL, RUN_START, STATUS, TRAIN
from training.contract.reading import (
    MAX_LINE_BYTES,
    LineReader,
    open_file,
    rfind_newline,
    split_path,
)
from training.metrics.tailer import decode_event

SUMMARY_KINDS = (TRAIN, EVAL, STATUS, RUN_START)
_HEAD_BYTES = 64


class MetricsSummary:
    """The newest row of each kind (train, eval, status, run_start), last_seq and
    last_time of one metrics.jsonl: what the runs list shows, without an index.

    The first refresh reads the file backwards from its end, a block at a time, only until
    every kind was found (bytes.rfind, so a million train rows cost a few milliseconds
    when the run_start is far back); later refreshes read only the appended bytes, and an
    unchanged file costs one stat. A truncated or replaced file is read afresh. A line over
    `max_line` is malformed: passed over (its bytes never held, never read twice), in
    either direction. Same `last()`/`last_seq`/`last_time` as RunMetrics (`malformed` is
    not counted here). The file is opened through contract/reading.py: DamagedFile (an
    OSError) when it is a link, a FIFO or anything but a regular file."""

    malformed = 0

    def __init__(
        self,
        path: str | Path,
        block_size: int = 1 << 20,
        scan_limit: int = 1 << 30,
        root: str | Path | None = None,
        max_line: int = MAX_LINE_BYTES,
    ) -> None:
        self.path = Path(path)
        self._root, self._rel = split_path(self.path, root)
        self.block_size = block_size
        self.scan_limit = scan_limit  # bytes read backwards at most, for a kind never found
        self.max_line = max_line
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._ident: tuple[int, int] | None = None
        self._head = b""
        self._lines = LineReader(0, self.max_line)  # forward reads: its offset is our end
        self._last: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._time: float | None = None

    @property
    def _end(self) -> int:
        """Just past the last complete line read."""
        return self._lines.offset

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def last_time(self) -> float | None:
        return self._time

    def last(self, event: str) -> dict[str, Any] | None:
        return self._last.get(event)

    def refresh(self) -> None:
        with self._lock:
            try:
                fd = open_file(self._root, self._rel)
            except FileNotFoundError:
                self._reset()
                return
            try:
                st = os.fstat(fd)
                ident = (st.st_dev, st.st_ino)
                rewritten = (
                    ident != self._ident
                    or st.st_size < self._end
                    or (self._head and os.pread(fd, len(self._head), 0) != self._head)
                )
                if rewritten or st.st_size - self._end > self.scan_limit:
                    self._reset()
                    self._ident = ident
                    self._scan_back(fd, st.st_size)
                elif st.st_size > self._end:
                    self._read_forward(fd, st.st_size)
                if not self._head and self._end:
                    self._head = os.pread(fd, min(_HEAD_BYTES, self._end), 0)
            finally:
                os.close(fd)

    def _note(self, row: dict[str, Any], kind_only: bool = False) -> None:
        kind = row.get("event")
        if isinstance(kind, str) and kind in SUMMARY_KINDS:
            self._last[kind] = row
        if kind_only:
            return
        seq = row.get("seq")
        if type(seq) is int:
            self._seq = seq
            when = row.get("time")
            try:
                self._time = float(when) if isinstance(when, (int, float)) else None
            except OverflowError:  # a 400-digit integer
                self._time = None

    def _read_forward(self, fd: int, size: int) -> None:
        while True:
            _start, block = self._lines.read(fd, size, self.block_size)
            if not block:
                return
            for line in block.split(b"\n")[:-1]:
                row = decode_event(line) if line.strip() else None
                if row is not None:
                    self._note(row)

    def _scan_back(self, fd: int, size: int) -> None:
        """From the end backwards: the last complete line with a seq, and the last line of
        each kind."""
        floor = max(0, size - self.scan_limit)
        last_newline = rfind_newline(fd, size, floor, self.block_size)
        if last_newline < 0 and floor > 0:
            # No newline in the last scan_limit bytes: one overlong line still unterminated.
            self._lines = LineReader(size, self.max_line)
            self._lines.skip_line_at(size)
            return
        end = last_newline + 1  # only whole lines count: a half-written last line is "not yet"
        self._lines = LineReader(end, self.max_line)
        wanted = set(SUMMARY_KINDS)
        seq_found = False
        for region in self._regions_back(fd, end, floor):
            if not seq_found:
                for line in reversed(region.split(b"\n")):
                    row = decode_event(line) if line.strip() else None
                    if row is not None and type(row.get("seq")) is int:
                        self._note(row)
                        seq_found = True
                        break
            for kind in list(wanted):
                row = _last_line_of(region, kind)
                if row is not None:
                    if kind not in self._last:
                        self._last[kind] = row
                    wanted.discard(kind)
            if not wanted and seq_found:
                return

    def _regions_back(self, fd: int, end: int, floor: int) -> Iterator[bytes]:
        """Blocks of whole lines of the file before `end` (a line start), from the end
        backwards, down to `floor`. A line longer than a block is read alone when it is
        within max_line, else passed over: its start is searched for without keeping its
        bytes. Every step moves strictly backwards, so the scan always ends."""
        pos = end
        while pos > floor:
            start = max(floor, pos - self.block_size)
            data = os.pread(fd, pos - start, start)
            if len(data) < pos - start:
                return  # truncated meanwhile: the next refresh reads it afresh
            if start == 0:
                yield data
                return
            first = data.find(b"\n")
            if 0 <= first < len(data) - 1:
                yield data[first + 1 :]  # the bytes before `first` belong to an earlier line
                pos = start + first + 1
                continue
            # No line starts inside this block: the line ending at pos is longer than it.
            before = rfind_newline(fd, start, floor, self.block_size)
            if before < 0 and floor > 0:
                return  # it begins before the scan limit
            line_start = before + 1
            if pos - 1 - line_start <= self.max_line:
                yield os.pread(fd, pos - line_start, line_start)
            pos = line_start


def _last_line_of(region: bytes, kind: str) -> dict[str, Any] | None:
    """The last line of a block of whole lines whose event is `kind` (found by its quoted
    name, then decoded and checked)."""
    token = b'"' + kind.encode() + b'"'
    hi = len(region)
    while True:
        i = region.rfind(token, 0, hi)
        if i < 0:
            return None
        start = region.rfind(b"\n", 0, i) + 1
        end = region.find(b"\n", i)
        row = decode_event(region[start : end if end >= 0 else len(region)])
        if row is not None and row.get("event") == kind:
            return row
        hi = start
