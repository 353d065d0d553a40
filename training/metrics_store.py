"""An incremental, columnar index of a run's metrics.jsonl, for charts and live streams.

Each complete line is indexed once: its offset and length, seq, event kind, step and
the value a chart must not lose (train_loss, val_loss). Full rows are re-read by
offset only when asked for, so a million-row run costs tens of megabytes, and a
history request is a numpy selection plus a few thousand small reads.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import msgspec

from training.tailer import JsonlTailer, decode_event

EVENT_CODES: dict[str, int] = {
    "train": 1,
    "eval": 2,
    "status": 3,
    "run_start": 4,
    "checkpoint": 5,
    "warning": 6,
}
# The key each event kind is charted by: its min/max envelope survives downsampling.
ENVELOPE_KEYS: dict[int, str] = {1: "train_loss", 2: "val_loss"}


class _Fields(msgspec.Struct):
    """The few keys the index needs; msgspec skips the rest without building them."""

    seq: int | None = None
    event: str = ""
    step: int | float | None = None
    time: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None


_fields_decoder = msgspec.json.Decoder(_Fields)


def _index_fields(raw: bytes) -> _Fields | None:
    try:
        return _fields_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    row = decode_event(raw)  # NaN losses, or odd types: the lenient path
    if row is None:
        return None
    try:
        return msgspec.convert(row, _Fields, strict=False)
    except msgspec.ValidationError:
        return None


def _number(value: int | float | None) -> float:
    return float("nan") if value is None else float(value)


class RunMetrics:
    """The index of one metrics.jsonl. Thread-safe; refresh() reads only what is new."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._tailer = JsonlTailer(self.path)
        self.malformed = 0
        self._clear()

    def _clear(self) -> None:
        self._offsets = array("q")
        self._lengths = array("q")
        self._seqs = array("q")
        self._codes = array("b")
        self._steps = array("d")
        self._values = array("d")
        self._times = array("d")
        # Index of the newest row of each event kind (status, train, eval, run_start...).
        self._last: dict[int, int] = {}

    # -- reading the file --

    def refresh(self) -> int:
        """Index whatever complete lines were appended; returns how many rows were added."""
        with self._lock:
            added = 0
            while True:
                start, block, reset = self._tailer.read_block()
                if reset:
                    # Truncated or replaced: the new file is the truth; offsets restart.
                    self._clear()
                if not block:
                    return added
                added += self._index_block(start, block)

    def _index_block(self, start: int, block: bytes) -> int:
        lines = block.split(b"\n")[:-1]
        decode = _fields_decoder.decode
        try:
            # The common case, in comprehensions: every line valid, seq increasing.
            rows = [decode(line) for line in lines]
            if self._append_clean(start, lines, rows):
                return len(rows)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        return self._index_lines(start, lines)

    def _append_clean(self, start: int, lines: list[bytes], rows: list[_Fields]) -> bool:
        """Append a block whose rows all have increasing int seqs; False (nothing done)
        when it has replays or odd rows, which the careful path then handles."""
        seqs = [r.seq for r in rows]
        last_seq = self._seqs[-1] if self._seqs else 0
        if not seqs or not all(type(s) is int for s in seqs):
            return not seqs
        ordered = all(a < b for a, b in zip(seqs, seqs[1:], strict=False))  # type: ignore[operator]
        if seqs[0] <= last_seq or not ordered:  # type: ignore[operator]
            return False
        lengths = [len(line) for line in lines]
        offsets = list(accumulate([start] + [n + 1 for n in lengths[:-1]]))
        codes = [EVENT_CODES.get(r.event, 0) for r in rows]
        nan = float("nan")
        values = [
            (r.train_loss if c == 1 else r.val_loss if c == 2 else None)
            for r, c in zip(rows, codes, strict=True)
        ]
        base = len(self._seqs)
        self._offsets.extend(offsets)
        self._lengths.extend(lengths)
        self._seqs.extend(seqs)  # type: ignore[arg-type]
        self._codes.extend(codes)
        self._steps.extend([nan if r.step is None else float(r.step) for r in rows])
        self._values.extend([nan if v is None else v for v in values])
        self._times.extend([nan if r.time is None else r.time for r in rows])
        for i, code in enumerate(codes):
            self._last[code] = base + i  # the last wins
        return True

    def _index_lines(self, start: int, lines: list[bytes]) -> int:
        """Line by line: malformed lines counted, replayed seqs skipped."""
        decode = _fields_decoder.decode
        parsed: list[_Fields | None] = []
        for line in lines:
            try:
                parsed.append(decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError):
                parsed.append(_index_fields(line) if line.strip() else None)
        last_seq = self._seqs[-1] if self._seqs else 0
        offsets: list[int] = []
        lengths: list[int] = []
        seqs: list[int] = []
        codes: list[int] = []
        steps: list[float] = []
        values: list[float] = []
        times: list[float] = []
        nan = float("nan")
        pos = start
        for line, row in zip(lines, parsed, strict=True):
            offset, length = pos, len(line)
            pos += length + 1
            if row is None:
                if line.strip():
                    self.malformed += 1
                continue
            seq = row.seq
            if type(seq) is not int:
                self.malformed += 1
                continue
            if seq <= last_seq:
                continue  # already indexed: a replayed line
            last_seq = seq
            code = EVENT_CODES.get(row.event, 0)
            value = row.train_loss if code == 1 else row.val_loss if code == 2 else None
            offsets.append(offset)
            lengths.append(length)
            seqs.append(seq)
            codes.append(code)
            steps.append(_number(row.step))
            values.append(nan if value is None else value)
            times.append(nan if row.time is None else row.time)
            self._last[code] = len(self._seqs) + len(seqs) - 1
        self._offsets.extend(offsets)
        self._lengths.extend(lengths)
        self._seqs.extend(seqs)
        self._codes.extend(codes)
        self._steps.extend(steps)
        self._values.extend(values)
        self._times.extend(times)
        return len(seqs)

    def _read_rows(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        offsets, lengths = self._offsets, self._lengths
        if len(indices) and indices[-1] - indices[0] + 1 == len(indices):
            # A contiguous range: one read, then split.
            first, last = int(indices[0]), int(indices[-1])
            data = self._tailer.read_at(
                offsets[first], offsets[last] + lengths[last] - offsets[first]
            )
            base = offsets[first]
            for i in range(first, last + 1):
                o = offsets[i] - base
                row = decode_event(data[o : o + lengths[i]])
                if row is not None:
                    rows.append(row)
            return rows
        for i in indices:
            row = decode_event(self._tailer.read_at(offsets[int(i)], lengths[int(i)]))
            if row is not None:
                rows.append(row)
        return rows

    # -- queries --

    @property
    def count(self) -> int:
        return len(self._seqs)

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seqs[-1] if self._seqs else 0

    @property
    def last_time(self) -> float | None:
        with self._lock:
            return self._times[-1] if self._times else None

    def last(self, event: str) -> dict[str, Any] | None:
        """The newest row of one event kind (e.g. the last status or train row)."""
        with self._lock:
            i = self._last.get(EVENT_CODES.get(event, -1))
            if i is None:
                return None
            rows = self._read_rows([i])
            return rows[0] if rows else None

    def rows_after(self, after_seq: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Rows with seq > after_seq, oldest first, at most `limit`."""
        with self._lock:
            # seqs strictly increase (replays are dropped when indexed): binary search.
            first = bisect.bisect_right(self._seqs, after_seq)
            count = len(self._seqs)
            last = count if limit is None else min(count, first + limit)
            if first >= last:
                return []
            return self._read_rows(range(first, last))

    def downsampled(self, max_points: int) -> list[dict[str, Any]]:
        """At most max_points rows per event kind, oldest first: train and eval rows by
        the min/max envelope of their loss, other kinds evenly spaced."""
        # numpy only here: importing it costs the console's start-up ~0.15 s.
        import numpy as np

        from training.downsample import minmax_indices, stride_indices

        with self._lock:
            n = len(self._seqs)
            if n == 0:
                return []
            codes = np.frombuffer(self._codes, dtype=np.int8)
            values = np.frombuffer(self._values, dtype=np.float64)
            picks: list[Any] = []
            for code in np.unique(codes):
                members = np.flatnonzero(codes == code)
                if int(code) in ENVELOPE_KEYS:
                    chosen = minmax_indices(values[members], max_points)
                else:
                    chosen = stride_indices(len(members), max_points)
                picks.append(members[chosen])
            return self._read_rows(np.unique(np.concatenate(picks)).tolist())

    def close(self) -> None:
        with self._lock:
            self._tailer.close()


class MetricsCache:
    """RunMetrics per run, least recently used dropped beyond `capacity` runs."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._runs: OrderedDict[Path, RunMetrics] = OrderedDict()

    def get(self, path: Path) -> RunMetrics:
        """The index for a metrics file, refreshed to the current end of the file."""
        with self._lock:
            metrics = self._runs.get(path)
            if metrics is None:
                metrics = self._runs[path] = RunMetrics(path)
            self._runs.move_to_end(path)
            while len(self._runs) > self.capacity:
                _, old = self._runs.popitem(last=False)
                old.close()
        metrics.refresh()
        return metrics

    def drop(self, path: Path) -> None:
        with self._lock:
            metrics = self._runs.pop(path, None)
        if metrics is not None:
            metrics.close()

    def close(self) -> None:
        with self._lock:
            runs, self._runs = list(self._runs.values()), OrderedDict()
        for metrics in runs:
            metrics.close()
