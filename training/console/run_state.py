"""A run's state, derived when read (DESIGN.md "Run states"): from run.json, the last
`status` event of the current attempt, whether the trainer verifiably lives, and the exit
the console saw. Nothing here is ever written; `interrupted` exists only here."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from training.contract.layout import RunRecord
from training.contract.protocol import (
    ACTIVE_STATES,
    CREATED,
    EXIT_BAD_INPUT,
    EXIT_CODE_STATES,
    EXIT_DISK_FULL,
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_OK,
    FAILED,
    FINAL_STATES,
    FINISHED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
)


def derive_state(
    record: RunRecord,
    last_status: Mapping[str, Any] | None,
    alive: bool,
    *,
    now: float | None = None,
    last_event_time: float | None = None,
    remote_stale_seconds: float = 300.0,
) -> tuple[str, str]:
    """A run's state and the reason, derived at read time (DESIGN.md "Run states").

    `last_status` is the newest `status` event of the current attempt (seq > start_seq);
    `alive` says whether the recorded process is verifiably the run's trainer.
    """
    if record.pid is None and not record.remote and record.state in (CREATED, QUEUED):
        return record.state, "waiting in the queue" if record.state == QUEUED else "not started"
    status = str(last_status.get("state")) if last_status else None
    message = str(last_status.get("message") or "") if last_status else ""
    if alive and status in FINAL_STATES:
        # Reported, but still flushing and exiting: not yet safe to resume or delete.
        return STOPPING, f"the trainer reported {status} and is exiting"
    failure = (record.exit or {}).get("host_failure") if not alive else None
    # Rank 0 can only finish a step, or a requested stop's checkpoint, with every rank:
    # a session that ended after that (mlx.launch tearing down the others) lost nothing.
    ended_whole = status == FINISHED or (status == STOPPED and record.stop_requested)
    if isinstance(failure, Mapping) and not ended_whole:
        # A run on several machines lost a host: whatever rank 0 managed to say (a ring
        # error, or nothing), the run failed, and the host is named.
        return FAILED, str(failure.get("reason") or "a host of the run was lost")
    if status in FINAL_STATES:
        return status, message or f"the trainer reported {status}"
    if alive:
        if status in ACTIVE_STATES:
            return (STOPPING if record.stop_requested else status), message or "training"
        return (STOPPING if record.stop_requested else STARTING), "the trainer is starting"
    if record.exit is not None:
        return exit_state(record), str(record.exit.get("reason") or "the trainer exited")
    if record.remote:
        seen = last_event_time or 0.0
        if (now if now is not None else time.time()) - seen < remote_stale_seconds:
            return status or RUNNING, "reported by a remote trainer"
        return INTERRUPTED, "the remote trainer stopped reporting without a final status"
    if record.pid is None:
        return INTERRUPTED, "no trainer process runs it and it reported no final status"
    return INTERRUPTED, "the trainer process is gone and never reported a final status"


def exit_state(record: RunRecord) -> str:
    """The state an observed exit means when the trainer wrote no final status."""
    info = record.exit or {}
    code = info.get("code")
    if record.stop_requested and info.get("killed_by_console"):
        return STOPPED  # asked to stop, killed after the grace period
    if isinstance(code, int) and code in EXIT_CODE_STATES:
        if code == 0 and record.stop_requested:
            return STOPPED
        return EXIT_CODE_STATES[code]
    return FAILED


def exit_reason(code: int | None, signal_name: str | None, we_killed: bool) -> str:
    """A person-readable sentence for why a trainer ended."""
    if signal_name == "SIGKILL" and not we_killed:
        return "killed: likely out of memory (SIGKILL not sent by the console)"
    if signal_name == "SIGKILL":
        return "killed by the console after the stop grace period"
    if signal_name and we_killed:
        return f"stopped by the console's {signal_name} before the trainer could checkpoint"
    if signal_name:
        return f"ended by signal {signal_name}"
    return {
        EXIT_OK: f"exited normally (code {EXIT_OK})",
        EXIT_FAILED: f"failed (exit code {EXIT_FAILED}): see the log",
        EXIT_BAD_INPUT: f"bad input (exit code {EXIT_BAD_INPUT}): see the log for the field to fix",
        EXIT_DIVERGED: f"diverged (exit code {EXIT_DIVERGED}): the loss became NaN or infinite",
        EXIT_DISK_FULL: f"disk full (exit code {EXIT_DISK_FULL}): the trainer could not even "
        "write its final status; free some space, then resume from its last checkpoint",
    }.get(code if isinstance(code, int) else -1, f"exited with code {code}")
