"""TrainingMetricsLogger: the trainer's writer of metrics.jsonl, and optionally of the same
events by HTTP.

Every event is one JSON object on one line (DESIGN.md "Metrics events"), written with a single
`os.write` on an O_APPEND descriptor so a reader never sees two events interleaved and a crash
leaves at most one torn last line. A write the disk cuts short is cut back off: a full disk
leaves the file ending with a whole line, and the writer raises DiskFull.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from training.contract.disk import DiskFull, disk_full_error
from training.contract.protocol import (
    EVENTS,
    SCHEMA_VERSION,
    STATUS,
    STATUS_STATES,
    TOKEN_ENV,
    WARNING,
    WARNING_KINDS,
)


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats become null (the event says what happened)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def read_last_seq(path: str | Path) -> int:
    """The highest `seq` in a metrics file (0 when absent or empty); reads only its tail."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    block = 1 << 16
    with path.open("rb") as f:
        while True:
            start = max(0, size - block)
            f.seek(start)
            lines = f.read(size - start).split(b"\n")
            # The first piece may be cut mid-line unless we read from the file's start.
            candidates = lines if start == 0 else lines[1:]
            for raw in reversed(candidates):
                try:
                    row = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("seq"), int):
                    return int(row["seq"])
            if start == 0:
                return 0
            block *= 4


def repair_torn_tail(path: str | Path) -> bool:
    """Cut a half-written last line (a writer killed mid-write) so appends start clean."""
    path = Path(path)
    try:
        with path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return False
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return False
            pos = size
            while pos > 0:
                step = min(4096, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                nl = chunk.rfind(b"\n")
                if nl >= 0:
                    f.truncate(pos - step + nl + 1)
                    return True
                pos -= step
            f.truncate(0)
            return True
    except FileNotFoundError:
        return False


class HttpReporter:
    """POSTs events to a console in batches from a background thread; never blocks training.

    The queue is bounded: when the console is unreachable for long, the oldest events are
    dropped (they are still in metrics.jsonl). The bearer token comes from the environment
    (MLX_CPT_TOKEN), never from argv where `ps` would show it.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        max_queue: int = 10_000,
        batch_size: int = 200,
        timeout: float = 10.0,
        max_backoff: float = 30.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--report-url must be an http(s) URL, got {url!r}")
        self.url = url
        self.token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.dropped = 0
        self.sent = 0
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queue)
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="metrics-reporter", daemon=True)
        self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        while True:
            try:
                self._queue.put_nowait(event)
                return
            except queue.Full:
                try:  # drop the oldest: the newest matter most to a live view
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, retrying for at most `timeout` seconds."""
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        self._thread.join(timeout + 0.5)

    def _next_batch(self) -> list[dict[str, Any]]:
        try:
            batch = [self._queue.get(timeout=0.25)]
        except queue.Empty:
            return []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        backoff = 0.5
        pending: list[dict[str, Any]] = []
        while True:
            if not pending:
                pending = self._next_batch()
                if not pending:
                    if self._closing.is_set():
                        return
                    continue
            status = self._post(pending)
            if status == "ok":
                self.sent += len(pending)
                pending, backoff = [], 0.5
            elif status == "reject":
                self.dropped += len(pending)
                pending = []
            else:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    return  # shutting down and the console stays unreachable: give up
                if self._closing.is_set():
                    time.sleep(min(backoff, remaining))
                else:
                    self._closing.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _post(self, events: list[dict[str, Any]]) -> str:
        body = json.dumps({"events": events}).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
            return "ok"
        except urllib.error.HTTPError as exc:
            # 4xx other than timeout/rate-limit will not get better by retrying.
            if 400 <= exc.code < 500 and exc.code not in (408, 409, 425, 429):
                print(f"report-url: {exc.code} {exc.reason}; dropping events", file=sys.stderr)
                return "reject"
            return "retry"
        except (urllib.error.URLError, OSError, TimeoutError):
            return "retry"


class EventSink(Protocol):
    """Something else that takes every written event: HttpReporter, the trainer's trackers
    (training/trainer/trackers.py). put() must never raise nor block training."""

    def put(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class TrainingMetricsLogger:
    """Appends events to metrics.jsonl; `seq` continues from the file's last event (or
    from `first_seq`, the last event of a file a restart cleared, when that is higher).
    Each written event then goes to the reporter and the `sinks`, in that order.

    `enabled=False` (distributed ranks other than 0) makes every call a no-op that still
    returns the event, so callers need no rank checks.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        reporter: HttpReporter | None = None,
        enabled: bool = True,
        first_seq: int = 0,
        sinks: Sequence[EventSink] = (),
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.reporter = reporter
        self.sinks = list(sinks)
        self.enabled = enabled and self.path is not None
        self._fd: int | None = None
        self.seq = 0
        if self.enabled and self.path is not None:
            repair_torn_tail(self.path)
            self.seq = max(read_last_seq(self.path), first_seq)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def emit(self, event: str, step: int, **fields: Any) -> dict[str, Any]:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}")
        self.seq += 1
        record: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "seq": self.seq,
            "event": event,
            "time": round(time.time(), 3),
            "step": int(step),
        }
        record.update(_clean(fields))
        if not self.enabled or self._fd is None:
            return record
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            self._append(self._fd, data)
        except BaseException:
            self.seq -= 1  # not written: the next event takes this seq
            raise
        if self.reporter is not None:
            self.reporter.put(record)
        for sink in self.sinks:
            sink.put(record)
        return record

    def _append(self, fd: int, data: bytes) -> None:
        """One whole line or nothing: a write the disk cuts short (ENOSPC after a partial
        write) is truncated back off, so readers never meet a torn last line."""
        start = os.fstat(fd).st_size  # one writer (the run folder's lock): the line's offset
        view = memoryview(data)
        try:
            while view:  # a regular file takes it in one write; loop only for safety
                view = view[os.write(fd, view) :]
        except OSError as exc:
            try:
                os.ftruncate(fd, start)  # shrinking needs no space
            except OSError:
                pass
            assert self.path is not None
            full = disk_full_error(exc, self.path.parent, len(data), "a metrics line")
            if full is None:
                raise
            raise full from exc

    def final_status(self, step: int, state: str, message: str = "", **fields: Any) -> bool:
        """The run's last word. False when the disk is too full to take it (nothing of
        the line is left behind): the trainer's exit code must then say it
        (EXIT_DISK_FULL)."""
        try:
            self.status(step, state, message, **fields)
        except DiskFull:
            return False
        return True

    def status(self, step: int, state: str, message: str = "", **fields: Any) -> dict[str, Any]:
        if state not in STATUS_STATES:
            raise ValueError(f"unknown state {state!r}")
        return self.emit(STATUS, step, state=state, message=message, **fields)

    def warning(self, step: int, kind: str, message: str, **fields: Any) -> dict[str, Any]:
        if kind not in WARNING_KINDS:
            raise ValueError(f"unknown warning kind {kind!r}")
        return self.emit(WARNING, step, kind=kind, message=message, **fields)

    def close(self) -> None:
        # The sinks first: a tracker that fails to finish its files says so in this file.
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.reporter is not None:
            self.reporter.close()

    def __enter__(self) -> TrainingMetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
