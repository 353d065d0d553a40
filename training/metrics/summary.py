"""The runs list's view of a metrics.jsonl: the newest row of each kind, read from the
file's tail (no index), so listing many long runs stays cheap."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from training.contract.protocol import EVAL, RUN_START, STATUS, TRAIN
from training.metrics.tailer import decode_event

SUMMARY_KINDS = (TRAIN, EVAL, STATUS, RUN_START)
_HEAD_BYTES = 64


class MetricsSummary:
    """The newest row of each kind (train, eval, status, run_start), last_seq and
    last_time of one metrics.jsonl: what the runs list shows, without an index.

    The first refresh reads the file backwards from its end, a block at a time, only until
    every kind was found (bytes.rfind, so a million train rows cost a few milliseconds
    when the run_start is far back); later refreshes read only the appended bytes, and an
    unchanged file costs one stat. A truncated or replaced file is read afresh. Same
    `last()`/`last_seq`/`last_time` as RunMetrics (`malformed` is not counted here)."""

    malformed = 0

    def __init__(
        self, path: str | Path, block_size: int = 1 << 20, scan_limit: int = 1 << 30
    ) -> None:
        self.path = Path(path)
        self.block_size = block_size
        self.scan_limit = scan_limit  # bytes read backwards at most, for a kind never found
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._ident: tuple[int, int] | None = None
        self._head = b""
        self._end = 0  # just past the last complete line read
        self._last: dict[str, dict[str, Any]] = {}
        self._seq = 0
        self._time: float | None = None

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
                fd = os.open(self.path, os.O_RDONLY)
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
            self._time = float(when) if isinstance(when, (int, float)) else None

    def _read_forward(self, fd: int, size: int) -> None:
        data = os.pread(fd, size - self._end, self._end)
        cut = data.rfind(b"\n")
        if cut < 0:
            return
        for line in data[:cut].split(b"\n"):
            row = decode_event(line) if line.strip() else None
            if row is not None:
                self._note(row)
        self._end += cut + 1

    def _scan_back(self, fd: int, size: int) -> None:
        """From the end backwards: the last complete line with a seq, and the last line of
        each kind."""
        wanted = set(SUMMARY_KINDS)
        seq_found = False
        cut = size  # [start, cut) is the next region; cut is a line start (or the end)
        first = True
        while cut > 0 and (wanted or not seq_found) and size - cut <= self.scan_limit:
            start = max(0, cut - self.block_size)
            data = os.pread(fd, cut - start, start)
            while start > 0 and b"\n" not in data:  # one line longer than a block
                start = max(0, start - self.block_size)
                data = os.pread(fd, cut - start, start)
            skip = 0 if start == 0 else data.index(b"\n") + 1
            region = data[skip:]
            if first:
                # Only whole lines count: a half-written last line is "not yet".
                end = region.rfind(b"\n") + 1
                self._end = start + skip + end
                region = region[:end]
                first = False
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
            cut = start + skip


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
