"""Per-run rooms: the backlog after a client's seq, then coalesced live rows; reconnects
lose nothing and repeat nothing; status events become run_status."""

from __future__ import annotations

import json
import weakref

import pytest

from training.console.broadcaster import Broadcaster, room_of
from training.console.run_store import RunStore
from training.contract.layout import RunRecord, Workspace

RUN_ID = "20260101-000000-aaaaaa"


class Recorder:
    """Stands in for Socket.IO: remembers room membership and what each client got."""

    def __init__(self):
        self.rooms: dict[str, set[str]] = {}
        self.received: dict[str, list[dict]] = {}
        self.broadcasts: list[tuple[str, dict]] = []
        self.emits = 0

    def emit(self, event, data, to):
        self.emits += 1
        if to is None:
            self.broadcasts.append((event, data))
            return
        targets = self.rooms.get(to, {to})
        for sid in targets:
            self.received.setdefault(sid, []).append({"event": event, **data})

    def enter(self, sid, room):
        return lambda: self.rooms.setdefault(room, set()).add(sid)

    def seqs(self, sid):
        return [
            r["seq"]
            for m in self.received.get(sid, [])
            if m["event"] == "run_metrics"
            for r in m["rows"]
        ]


@pytest.fixture
def setup(tmp_path):
    store = RunStore(Workspace(tmp_path))
    paths = store.create_run(RunRecord(RUN_ID, "r", 1.0), "")
    rec = Recorder()
    b = Broadcaster(
        store,
        rec.emit,
        lambda run_id: {"run_id": run_id, "state": "running"},
        min_emit_interval=0.0,
        start_task=lambda fn: None,  # the test pumps by hand
    )
    seq = {"n": 0}

    def append(count=1, event="train", **extra):
        with paths.metrics.open("a") as f:
            for _ in range(count):
                seq["n"] += 1
                f.write(
                    json.dumps({"v": 1, "seq": seq["n"], "event": event, "step": seq["n"], **extra})
                    + "\n"
                )

    return b, rec, append


def join(b, rec, sid, after_seq):
    return b.join(sid, RUN_ID, after_seq, rec.enter(sid, room_of(RUN_ID)))


def test_join_sends_the_backlog_then_live_rows(setup):
    b, rec, append = setup
    append(5)
    assert join(b, rec, "a", 2) == 5
    assert rec.seqs("a") == [3, 4, 5]
    append(3)
    b.pump_once()
    assert rec.seqs("a") == [3, 4, 5, 6, 7, 8]
    msg = rec.received["a"][-1]
    assert msg["run_id"] == RUN_ID and msg["last_seq"] == 8


def test_reconnect_with_the_last_seq_loses_and_repeats_nothing(setup):
    b, rec, append = setup
    append(4)
    join(b, rec, "a", 0)
    last = rec.seqs("a")[-1]
    b.leave("a")
    rec.rooms[room_of(RUN_ID)].discard("a")
    append(6)  # written while the client was away
    b.pump_once()
    join(b, rec, "a2", last)
    append(2)
    b.pump_once()
    assert rec.seqs("a") + rec.seqs("a2") == list(range(1, 13))


def test_a_client_ahead_of_the_room_gets_no_duplicates(setup):
    b, rec, append = setup
    append(2)
    join(b, rec, "a", 0)
    append(5)  # not pumped yet: the room is at 2, the file at 7
    join(b, rec, "b", 7)  # b read history over HTTP up to 7
    append(1)
    b.pump_once()
    assert rec.seqs("b") == [8]
    assert rec.seqs("a") == list(range(1, 9))


def test_rows_are_coalesced(setup, tmp_path):
    b, rec, append = setup
    b.min_emit_interval = 3600.0
    join(b, rec, "a", 0)
    before = rec.emits
    append(50)
    b.pump_once()  # the first rows after a quiet spell go out at once
    append(50)
    b.pump_once()  # then at most one emit per interval
    b.pump_once()
    assert rec.emits == before + 1
    assert rec.seqs("a") == list(range(1, 51))


def test_status_events_become_run_status(setup):
    b, rec, append = setup
    join(b, rec, "a", 0)
    append(1, event="status", state="stopped")
    b.pump_once()
    assert ("run_status", {"run_id": RUN_ID, "state": "running"}) in rec.broadcasts


def test_large_backlogs_are_chunked(setup):
    b, rec, append = setup
    b.chunk_rows = 100
    append(250)
    join(b, rec, "a", 0)
    sizes = [len(m["rows"]) for m in rec.received["a"] if m["event"] == "run_metrics"]
    assert sizes == [100, 100, 50] and rec.seqs("a") == list(range(1, 251))


def test_unknown_runs_and_deleted_runs(setup, tmp_path):
    from training.contract.layout import RunNotFound

    b, rec, append = setup
    with pytest.raises(RunNotFound):
        b.join("a", "20990101-000000-ffffff", 0, lambda: None)
    b.describe = lambda run_id: (_ for _ in ()).throw(RunNotFound(run_id))
    b.run_changed(RUN_ID)
    assert rec.broadcasts[-1] == ("run_status", {"run_id": RUN_ID, "state": "deleted"})


def test_a_follower_dropped_while_a_client_joins_is_not_orphaned(setup):
    """The pump drops idle followers; one dropped between join() finding it and join()
    locking it must not take the new client with it (its room would never get rows)."""
    b, rec, append = setup
    append(2)
    real = b._follower
    raced = []

    def racing(run_id):
        follower = real(run_id)
        if not raced:
            raced.append(run_id)
            b.pump_once()  # finds the follower idle (no client yet) and drops it
        return follower

    b._follower = racing
    join(b, rec, "a", 0)
    append(3)
    b.pump_once()
    assert rec.seqs("a") == [1, 2, 3, 4, 5]


def test_followed_runs_keep_their_index(setup, tmp_path):
    """A followed run's index is never rebuilt because other runs pushed it out of the
    cache: the follower holds it, and the cache hands the same index back."""
    b, rec, append = setup
    append(3)
    join(b, rec, "a", 0)
    index = weakref.ref(b.store.metrics(RUN_ID))  # held by nobody but the follower
    b.store.metrics_cache.capacity = 1
    for i in range(3):
        other = f"20260101-00000{i}-bbbbbb"
        b.store.create_run(RunRecord(other, other, 1.0), "")
        b.store.metrics(other)
    append(1)
    b.pump_once()
    assert b.store.metrics(RUN_ID) is index() and rec.seqs("a") == [1, 2, 3, 4]
