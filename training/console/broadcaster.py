"""Live metrics for Socket.IO rooms, one room per run, through an injected emit function.

One pump task follows every run that has a subscriber or a live trainer: it refreshes
the run's metrics index (a stat and a read, every `poll_interval`) and emits the new
rows to the run's room as `run_metrics {run_id, rows, last_seq}`, at most once per
`min_emit_interval` (the first rows after a quiet spell go out at once). A join sends
the rows after the client's `after_seq` and enters the room under the same lock the
pump emits under, so a reconnecting client neither misses nor repeats a row. Emits
only enqueue (Socket.IO's per-client queues), so a slow client never stalls the pump,
and the trainer never waits for anyone: it appends to a file.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.console.run_store import RunStore
from training.contract.layout import RunNotFound
from training.contract.protocol import STATUS
from training.contract.reading import DamagedFile
from training.metrics.store import RunMetrics

log = logging.getLogger(__name__)

# (event, data, to): `to` is a room or a client sid; None sends to every client.
Emit = Callable[[str, dict[str, Any], "str | None"], None]
Describe = Callable[[str], dict[str, Any]]


def room_of(run_id: str) -> str:
    return f"run:{run_id}"


@dataclass
class _Follower:
    run_id: str
    emitted_seq: int
    # Held for as long as the run is followed: the metrics cache may forget it, but hands
    # this same index back (never rebuilds it) while someone holds it.
    metrics: RunMetrics
    # Guards emitted_seq and sids; the pump drops a follower only while holding it.
    lock: threading.RLock = field(default_factory=threading.RLock)
    sids: set[str] = field(default_factory=set)
    last_emit: float = float("-inf")


def _start_thread(target: Callable[[], None]) -> Any:
    thread = threading.Thread(target=target, name="metrics-pump", daemon=True)
    thread.start()
    return thread


class Broadcaster:
    def __init__(
        self,
        store: RunStore,
        emit: Emit,
        describe: Describe,
        *,
        active_runs: Callable[[], list[str]] = list,
        poll_interval: float = 0.05,
        min_emit_interval: float = 0.1,
        chunk_rows: int = 5000,
        start_task: Callable[[Callable[[], None]], Any] = _start_thread,
        sleep: Callable[[float], Any] = time.sleep,
    ):
        self.store = store
        self.emit = emit
        self.describe = describe
        self.active_runs = active_runs
        self.poll_interval = poll_interval
        self.min_emit_interval = min_emit_interval
        self.chunk_rows = chunk_rows
        self._start_task = start_task
        self._sleep = sleep
        self._lock = threading.Lock()
        self._followers: dict[str, _Follower] = {}
        self._running = False
        self._closed = False

    # -- subscriptions --

    def _follower(self, run_id: str) -> _Follower:
        with self._lock:
            follower = self._followers.get(run_id)
        if follower is not None:
            return follower
        # Indexing a large file takes a while: never under the lock every run shares.
        metrics = self.store.metrics(run_id)  # RunNotFound for an unknown run
        with self._lock:
            follower = self._followers.get(run_id)
            if follower is None:
                follower = _Follower(run_id, metrics.last_seq, metrics)
                self._followers[run_id] = follower
            return follower

    def _is_current(self, follower: _Follower) -> bool:
        with self._lock:
            return self._followers.get(follower.run_id) is follower

    def join(self, sid: str, run_id: str, after_seq: int, enter_room: Callable[[], None]) -> int:
        """Send `sid` the rows after `after_seq`, then put it in the run's room. Returns
        the last seq sent (the client's new after_seq)."""
        while True:
            follower = self._follower(run_id)
            with follower.lock:
                # The pump may have dropped it (idle) before we held its lock: a client
                # added to a dropped follower would never get rows. Take the new one.
                if not self._is_current(follower):
                    continue
                sent = self._join_locked(follower, sid, after_seq, enter_room)
            break
        self._ensure_pump()
        return sent

    def _join_locked(
        self, follower: _Follower, sid: str, after_seq: int, enter_room: Callable[[], None]
    ) -> int:
        run_id = follower.run_id
        # Flush what the room has not had yet, so the backlog and the room meet
        # exactly at emitted_seq whatever after_seq the client brings.
        self._flush(follower, force=True)
        upto = follower.emitted_seq
        metrics = follower.metrics  # refreshed by the flush
        sent = after_seq
        while sent < upto:
            rows = [r for r in metrics.rows_after(sent, self.chunk_rows) if r["seq"] <= upto]
            if not rows:
                break
            sent = rows[-1]["seq"]
            self.emit("run_metrics", {"run_id": run_id, "rows": rows, "last_seq": sent}, sid)
        if sent == after_seq:
            # Nothing new: still tell the client where the stream stands.
            self.emit("run_metrics", {"run_id": run_id, "rows": [], "last_seq": max(sent, 0)}, sid)
        enter_room()
        follower.sids.add(sid)
        # What the client now has: at least upto, short of it only if rows vanished (a
        # rewritten file), never more than was sent.
        return sent

    def leave(self, sid: str, run_id: str | None = None) -> None:
        """Forget a client in one run's room, or in all of them (a disconnect)."""
        with self._lock:
            followers = list(self._followers.values())
        for follower in followers:
            if run_id is None or follower.run_id == run_id:
                with follower.lock:
                    follower.sids.discard(sid)

    def follow(self, run_id: str) -> None:
        """Follow a run without subscribers (a live trainer), for its status changes."""
        try:
            self._follower(run_id)
        except (RunNotFound, DamagedFile):
            return  # gone, or its metrics cannot be read: nothing to stream
        self._ensure_pump()

    # -- status --

    def run_changed(self, run_id: str) -> None:
        """A TrainingManager listener: emit the run's new state to every client."""
        try:
            summary = self.describe(run_id)
        except RunNotFound:
            with self._lock:
                self._followers.pop(run_id, None)
            self.emit("run_status", {"run_id": run_id, "state": "deleted"}, None)
            return
        self.emit("run_status", summary, None)
        self.follow(run_id)

    # -- the pump --

    def _ensure_pump(self) -> None:
        with self._lock:
            if self._running or self._closed:
                return
            self._running = True
        self._start_task(self._pump)

    def _pump(self) -> None:
        while not self._closed:
            self.pump_once()
            self._sleep(self.poll_interval)
        with self._lock:
            self._running = False

    def pump_once(self) -> None:
        """One pass over the followed runs (tests call it directly instead of waiting)."""
        active = set(self.active_runs())
        with self._lock:
            followers = list(self._followers.values())
        for follower in followers:
            try:
                with follower.lock:
                    status_seen = self._flush(follower, force=False)
            except (RunNotFound, DamagedFile) as exc:
                # Deleted, or its metrics file became unreadable (a link, a FIFO): stop
                # following it; its clients get the new state through run_status.
                with self._lock:
                    self._followers.pop(follower.run_id, None)
                if isinstance(exc, DamagedFile):
                    log.info("run %s: metrics not followed: %s", follower.run_id, exc)
                    self.run_changed(follower.run_id)
                continue
            except Exception:  # one unreadable run must not stop the others' streams
                log.exception("run %s: metrics pump failed", follower.run_id)
                continue
            if status_seen:
                self.run_changed(follower.run_id)
            if status_seen or follower.run_id in active:
                continue
            with follower.lock:  # a join holds it from finding the follower to adding its sid
                if not follower.sids:
                    with self._lock:
                        if self._followers.get(follower.run_id) is follower:
                            del self._followers[follower.run_id]

    def _flush(self, follower: _Follower, force: bool) -> bool:
        """Emit the rows after emitted_seq to the room; True if a status event was among
        them. Throttled to min_emit_interval unless forced."""
        metrics = self.store.metrics(follower.run_id)
        if metrics.last_seq <= follower.emitted_seq:
            return False
        now = time.monotonic()
        if not force and now - follower.last_emit < self.min_emit_interval:
            return False
        status_seen = False
        while True:
            rows = metrics.rows_after(follower.emitted_seq, self.chunk_rows)
            if not rows:
                break
            follower.emitted_seq = rows[-1]["seq"]
            status_seen = status_seen or any(r.get("event") == STATUS for r in rows)
            if follower.sids:
                self.emit(
                    "run_metrics",
                    {"run_id": follower.run_id, "rows": rows, "last_seq": follower.emitted_seq},
                    room_of(follower.run_id),
                )
        follower.last_emit = now
        return status_seen

    def close(self) -> None:
        self._closed = True
