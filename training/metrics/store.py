"""An incremental, columnar index of a run's metrics.jsonl, for charts and live streams.

Each complete line is indexed once: its offset and length, seq, event kind, step and
the value a chart must not lose (train_loss, val_loss). Full rows are re-read by
offset only when asked for, so a million-row run costs tens of megabytes, and a
history request is a numpy selection plus a few thousand small reads.
"""

from __future__ import annotations

import bisect
import os
import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import msgspec

from training.contract.protocol import CHECKPOINT, EVAL, RUN_START, SAMPLE, STATUS, TRAIN, WARNING
from training.contract.reading import MAX_LINE_BYTES, open_file, opened
from training.metrics.snapshot import read_snapshot, remove_snapshot, snapshot_file, write_snapshot
from training.metrics.tailer import JsonlTailer, decode_event

EVENT_CODES: dict[str, int] = {
    TRAIN: 1,
    EVAL: 2,
    STATUS: 3,
    RUN_START: 4,
    CHECKPOINT: 5,
    WARNING: 6,
    SAMPLE: 7,
}
# The key each event kind is charted by: its min/max envelope survives downsampling.
ENVELOPE_KEYS: dict[int, str] = {1: "train_loss", 2: "val_loss"}
# What a line may raise when decoded: malformed JSON, odd types, brackets nested too deep.
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
# seq is stored as a signed 64-bit integer; a line with a larger one is malformed.
MAX_INDEX_SEQ = 2**63 - 1
# Indexes this large are saved (metrics/snapshot.py), again after this many more rows and when
# closed: a console that starts again then reads only what was appended meanwhile.
SNAPSHOT_MIN_ROWS = 100_000
# The index's columns, one entry per indexed line: (attribute, array typecode).
COLUMNS = (
    ("_offsets", "q"),
    ("_lengths", "q"),
    ("_seqs", "q"),
    ("_codes", "b"),
    ("_steps", "d"),
    ("_values", "d"),
    ("_times", "d"),
)


def _new_columns() -> tuple[array[Any], ...]:
    return tuple(array(code) for _, code in COLUMNS)


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
    except _DECODE_ERRORS:
        pass
    row = decode_event(raw)  # NaN losses, or odd types: the lenient path
    # seq as the row itself holds it: a lenient "7" would index a row readers get as text.
    if row is None or type(row.get("seq")) is not int:
        return None
    try:
        return msgspec.convert(row, _Fields, strict=False)
    except msgspec.ValidationError:
        return None


def _number(value: int | float | None) -> float:
    return float("nan") if value is None else float(value)


class RunMetrics:
    """The index of one metrics.jsonl. Thread-safe; refresh() reads only what is new.
    With `snapshot_dir`, a large index is saved there and picked up again by the next
    index of the same file (metrics/snapshot.py)."""

    _offsets: array[int]
    _lengths: array[int]
    _seqs: array[int]
    _codes: array[int]
    _steps: array[float]
    _values: array[float]
    _times: array[float]

    def __init__(self, path: str | Path, snapshot_dir: Path | None = None):
        self.path = Path(path)
        self._lock = threading.RLock()
        self._tailer = JsonlTailer(self.path)
        # Closed when the index is closed, or when nobody holds it any more: the cache
        # forgets an index on eviction but never closes it under a reader.
        self._finalizer = weakref.finalize(self, self._tailer.close)
        self.malformed = 0
        self._snapshot = None if snapshot_dir is None else snapshot_file(snapshot_dir, self.path)
        self._saved_count = 0
        self._clear()
        if self._snapshot is not None:
            self._load_snapshot(self._snapshot)

    def _clear(self) -> None:
        self._set_columns(_new_columns())
        # Index of the newest row of each event kind (status, train, eval, run_start...).
        self._last: dict[int, int] = {}

    # -- reading the file --

    def refresh(self) -> int:
        """Index whatever complete lines were appended; returns how many rows were added."""
        with self._lock:
            added = 0
            while True:
                start, block, reset = self._tailer.read_block()
                self.malformed += self._tailer.take_skipped()  # lines over MAX_LINE_BYTES
                if reset:
                    # Truncated or replaced: the new file is the truth; offsets restart.
                    self._clear()
                    self._saved_count = 0
                if not block:
                    break
                added += self._index_block(start, block)
            if self.count >= SNAPSHOT_MIN_ROWS + self._saved_count:
                self._save_snapshot()
            return added

    # -- the saved copy --

    def _load_snapshot(self, file: Path) -> None:
        """Start from a saved index of this very file, if there is a valid one."""
        loaded = read_snapshot(file)
        if loaded is None:
            return
        header, columns = loaded
        try:
            n, end = int(header["count"]), int(header["end"])
            ident = (int(header["ident"][0]), int(header["ident"][1]))
            head = bytes.fromhex(header["head"])
            last = {int(code): int(i) for code, i in header["last"].items()}
            malformed = int(header["malformed"])
        except (KeyError, TypeError, ValueError, IndexError):
            return
        if [c.typecode for c in columns] != [code for _, code in COLUMNS]:
            return
        if not n or any(len(c) != n for c in columns):
            return
        offsets, lengths, seqs = columns[0], columns[1], columns[2]
        # The last indexed line must still be where it was, byte for byte the same row.
        try:
            with opened(open_file(self.path.parent, self.path.name)) as fd:
                line = os.pread(fd, lengths[-1] + 1, offsets[-1])
        except OSError:
            return
        row = decode_event(line[:-1]) if line.endswith(b"\n") else None
        if row is None or row.get("seq") != seqs[-1] or offsets[-1] + lengths[-1] >= end:
            return
        if not self._tailer.resume(ident, end, head):
            return
        self._set_columns(columns)
        self._last, self.malformed, self._saved_count = last, malformed, n

    def _save_snapshot(self) -> None:
        identity = self._tailer.identity
        if self._snapshot is None or identity is None or not self.count:
            return
        (dev, ino), head = identity
        header = {
            "path": str(self.path),
            "ident": [dev, ino],
            "head": head.hex(),
            "end": self._tailer.offset,
            "count": self.count,
            "last": {str(code): i for code, i in self._last.items()},
            "malformed": self.malformed,
        }
        try:
            write_snapshot(self._snapshot, header, self._columns())
        except OSError:
            return  # only a shortcut: the index itself is whole
        self._saved_count = self.count

    def _index_block(self, start: int, block: bytes) -> int:
        lines = block.split(b"\n")[:-1]
        decode = _fields_decoder.decode
        try:
            # The common case, in comprehensions: every line valid, seq increasing.
            rows = [decode(line) for line in lines]
            if self._append_clean(start, lines, rows):
                return len(rows)
        except _DECODE_ERRORS:
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
        if max(lengths) > MAX_LINE_BYTES:
            return False  # an overlong line is malformed: the careful path counts it
        offsets = list(accumulate([start] + [n + 1 for n in lengths[:-1]]))
        codes = [EVENT_CODES.get(r.event, 0) for r in rows]
        nan = float("nan")
        values = [
            (r.train_loss if c == 1 else r.val_loss if c == 2 else None)
            for r, c in zip(rows, codes, strict=True)
        ]
        try:
            # Every column is built before any is extended: a value that does not fit (a
            # seq beyond 64 bits, a step beyond a double) leaves the index as it was.
            columns = (
                array("q", offsets),
                array("q", lengths),
                array("q", seqs),  # type: ignore[type-var]
                array("b", codes),
                array("d", [nan if r.step is None else float(r.step) for r in rows]),
                array("d", [nan if v is None else v for v in values]),
                array("d", [nan if r.time is None else r.time for r in rows]),
            )
        except (OverflowError, TypeError):
            return False
        base = len(self._seqs)
        self._extend(columns)
        for i, code in enumerate(codes):
            self._last[code] = base + i  # the last wins
        return True

    def _extend(self, columns: tuple[array[Any], ...]) -> None:
        for column, values in zip(self._columns(), columns, strict=True):
            column.extend(values)

    def _columns(self) -> tuple[array[Any], ...]:
        return tuple(getattr(self, name) for name, _ in COLUMNS)

    def _set_columns(self, columns: Sequence[array[Any]]) -> None:
        for (name, _), column in zip(COLUMNS, columns, strict=True):
            setattr(self, name, column)

    def _index_lines(self, start: int, lines: list[bytes]) -> int:
        """Line by line: malformed lines counted, replayed seqs skipped."""
        decode = _fields_decoder.decode
        parsed: list[_Fields | None] = []
        for line in lines:
            if len(line) > MAX_LINE_BYTES:
                parsed.append(None)  # malformed, whatever it holds
                continue
            try:
                parsed.append(decode(line))
            except _DECODE_ERRORS:
                parsed.append(_index_fields(line) if line.strip() else None)
        last_seq = self._seqs[-1] if self._seqs else 0
        columns = _new_columns()
        offsets, lengths, seqs, codes, steps, values, times = columns
        last: dict[int, int] = {}
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
            if type(seq) is not int or not 0 < seq <= MAX_INDEX_SEQ:
                self.malformed += 1
                continue
            if seq <= last_seq:
                continue  # already indexed: a replayed line
            code = EVENT_CODES.get(row.event, 0)
            value = row.train_loss if code == 1 else row.val_loss if code == 2 else None
            try:
                numbers = (
                    _number(row.step),
                    nan if value is None else float(value),
                    nan if row.time is None else float(row.time),
                )
            except (OverflowError, TypeError, ValueError):
                self.malformed += 1  # a number no double holds
                continue
            last_seq = seq
            offsets.append(offset)
            lengths.append(length)
            seqs.append(seq)
            codes.append(code)
            steps.append(numbers[0])
            values.append(numbers[1])
            times.append(numbers[2])
            last[code] = len(self._seqs) + len(seqs) - 1
        self._extend(columns)
        self._last.update(last)
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

    def rows_of(self, event: str) -> list[dict[str, Any]]:
        """Every row of one event kind (eval, status, checkpoint...), oldest first: read by
        offset, so a checkpoint table never parses the train rows."""
        import numpy as np

        code = EVENT_CODES.get(event)
        if code is None:
            return []
        with self._lock:
            if not self._codes:
                return []
            codes = np.frombuffer(self._codes, dtype=np.int8)
            return self._read_rows(np.flatnonzero(codes == code).tolist())

    def downsampled(self, max_points: int) -> list[dict[str, Any]]:
        """At most max_points rows per event kind, oldest first: train and eval rows by
        the min/max envelope of their loss, other kinds evenly spaced."""
        return self.snapshot(max_points)[0]

    def snapshot(self, max_points: int) -> tuple[list[dict[str, Any]], int, int]:
        """(downsampled rows, last_seq, count) of one moment, under one lock: the rows
        sample the first `count` rows, their last is the row of `last_seq`, so a client
        that follows the stream after last_seq misses nothing and repeats nothing."""
        # numpy only here: importing it costs the console's start-up ~0.15 s.
        import numpy as np

        from training.metrics.downsample import minmax_indices, stride_indices

        with self._lock:
            n = len(self._seqs)
            if n == 0:
                return [], 0, 0
            codes = np.frombuffer(self._codes, dtype=np.int8)[:n]
            values = np.frombuffer(self._values, dtype=np.float64)[:n]
            picks: list[Any] = [np.array([n - 1])]  # the newest row: where the stream resumes
            for code in np.unique(codes):
                members = np.flatnonzero(codes == code)
                if int(code) in ENVELOPE_KEYS:
                    chosen = minmax_indices(values[members], max_points)
                else:
                    chosen = stride_indices(len(members), max_points)
                picks.append(members[chosen])
            rows = self._read_rows(np.unique(np.concatenate(picks)).tolist())
            return rows, self._seqs[n - 1], n

    def page(self, after_seq: int, limit: int) -> tuple[list[dict[str, Any]], int, bool, int]:
        """(rows after after_seq, at most limit; last_seq; more; count), under one lock:
        last_seq is the last row's seq when there are more, else the index's last seq."""
        with self._lock:
            rows = self.rows_after(after_seq, limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            last = self._seqs[-1] if self._seqs else 0
            return rows, (rows[-1]["seq"] if more else last), more, len(self._seqs)

    def close(self) -> None:
        with self._lock:
            if self.count >= SNAPSHOT_MIN_ROWS and self.count > self._saved_count:
                self._save_snapshot()
            self._finalizer()


class MetricsCache:
    """RunMetrics per run, the least recently used forgotten beyond `capacity` runs.

    Forgotten, not closed: a thread still holding an index (a join, a history request, a
    followed run's pump) keeps reading it, and asking for its file again brings back that
    same index rather than building a second one. An index nobody holds is closed by the
    garbage collector."""

    def __init__(self, capacity: int = 16, snapshot_dir: Path | None = None):
        self.capacity = capacity
        self.snapshot_dir = snapshot_dir  # where large indexes are saved (metrics/snapshot.py)
        self._lock = threading.Lock()
        self._runs: OrderedDict[Path, RunMetrics] = OrderedDict()
        self._evicted: weakref.WeakValueDictionary[Path, RunMetrics] = weakref.WeakValueDictionary()

    def get(self, path: Path) -> RunMetrics:
        """The index for a metrics file, refreshed to the current end of the file."""
        with self._lock:
            metrics = self._runs.get(path)
            if metrics is None:
                metrics = self._evicted.pop(path, None) or RunMetrics(path, self.snapshot_dir)
                self._runs[path] = metrics
            self._runs.move_to_end(path)
            while len(self._runs) > self.capacity:
                old_path, old = self._runs.popitem(last=False)
                self._evicted[old_path] = old
        metrics.refresh()
        return metrics

    def drop(self, path: Path) -> None:
        """Forget a file's index and its saved copy (its run was deleted); holders keep
        what they have."""
        with self._lock:
            self._runs.pop(path, None)
            self._evicted.pop(path, None)
        if self.snapshot_dir is not None:
            remove_snapshot(self.snapshot_dir, path)

    def close(self) -> None:
        """The console is exiting: close every index."""
        with self._lock:
            runs = [*self._runs.values(), *self._evicted.values()]
            self._runs = OrderedDict()
            self._evicted = weakref.WeakValueDictionary()
        for metrics in runs:
            metrics.close()
