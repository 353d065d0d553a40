"""Runs whose trainer runs elsewhere and reports its metrics events over HTTP.

A remote run's folder is created on first contact and holds only run.json and
metrics.jsonl; retried events (at or below the last seq) are dropped.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from training.console.run_store import RunStore
from training.contract.config import ConfigError, FieldError
from training.contract.errors import RunConflict
from training.contract.layout import RunNotFound, RunRecord, is_valid_run_id
from training.contract.protocol import RUNNING, STATUS

log = logging.getLogger(__name__)

# Event seqs stay exact in every JSON reader (JavaScript's numbers included) and fit the
# metrics index's 64-bit column.
MAX_SEQ = 2**53


def event_problem(event: Any) -> str | None:
    """What is wrong with one metrics event from a remote trainer, if anything."""
    if not isinstance(event, dict):
        return "must be a JSON object"
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq < MAX_SEQ:
        return "needs `seq`, a whole number from 1 to 2**53 - 1"
    if not isinstance(event.get("event"), str) or not event["event"]:
        return "needs `event`, the event kind (train, eval, status, ...)"
    return None


def check_events(run_id: str, events: list[Any]) -> None:
    """RunNotFound for a run_id that cannot name a run folder; ConfigError listing every
    bad event."""
    if not is_valid_run_id(run_id):
        raise RunNotFound(run_id)
    errors = [
        FieldError("events", f"event {i}: {problem}")
        for i, event in enumerate(events)
        if (problem := event_problem(event))
    ]
    if errors:
        raise ConfigError(errors)


def append_remote_events(
    store: RunStore, run_id: str, events: list[Any]
) -> tuple[int, int, int, bool]:
    """Append checked events to the run's metrics.jsonl, creating the remote run folder on
    first contact; the caller holds the manager's lock. Returns (accepted, duplicates,
    last_seq, changed): `changed` when the run is new or a new status event came, the
    only reports that change how the run is listed (rows reach charts by the stream)."""
    created = False
    root = store.workspace.run(run_id).root
    if root.is_dir() or root.is_symlink() or root.exists():
        # RunNotFound (404) for a link or a file at the run's name: never written through.
        record = store.read_record(run_id)
        if record.damaged:
            raise RunConflict(f"run {run_id} cannot take events: {record.damaged}")
        if not record.remote:
            raise RunConflict(
                f"run {run_id} belongs to a trainer of this console; a remote trainer "
                "must report to its own run_id"
            )
    else:
        record = RunRecord(run_id, run_id, time.time(), state=RUNNING, remote=True)
        store.create_run(record, None)
        created = True
        log.info("run %s: created for a remote trainer", run_id)
    before = store.summary(run_id).last_seq
    accepted, duplicates = store.append_events(run_id, events)
    status = any(e["seq"] > before and e["event"] == STATUS for e in events)
    return accepted, duplicates, store.summary(run_id).last_seq, created or status
