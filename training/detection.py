"""Prior-session detection, read-only: which recorded trainers are still alive.

A pid alone proves nothing (pids are reused), so a process is the run's trainer only
when its pid, its start time and its command line (naming the run's folder) all match
what run.json recorded at spawn. Nothing here writes, signals or starts anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psutil

from training.run_store import ACTIVE_STATES, FINAL_STATES, RunPaths, RunRecord

log = logging.getLogger(__name__)

# psutil derives start times from boot time and clock ticks: equal for the same process,
# far apart for a reused pid.
CREATE_TIME_TOLERANCE = 1.0


@dataclass(frozen=True)
class Verdict:
    """Whether a recorded process is verifiably the run's trainer, and why (for the log)."""

    alive: bool
    reason: str
    process: psutil.Process | None = None


def cmdline_names_run(cmdline: list[str], paths: RunPaths) -> bool:
    """The trainer is spawned with `--run-dir <folder>`; accept any argument naming it."""
    folder = str(paths.root)
    for i, arg in enumerate(cmdline):
        if arg == "--run-dir" and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif arg.startswith("--run-dir="):
            value = arg.split("=", 1)[1]
        else:
            continue
        if value == folder or Path(value).name == paths.run_id:
            return True
    return False


def verify_process(record: RunRecord, paths: RunPaths) -> Verdict:
    """Is record.pid still this run's trainer? Read-only; never signals."""
    if record.pid is None:
        return Verdict(False, "no process recorded")
    try:
        proc = psutil.Process(record.pid)
        create_time = proc.create_time()
        status = proc.status()
        cmdline = proc.cmdline()
    except psutil.NoSuchProcess:
        return Verdict(False, f"pid {record.pid} is gone")
    except psutil.AccessDenied:
        return Verdict(False, f"pid {record.pid} belongs to another user (not our trainer)")
    if status == psutil.STATUS_ZOMBIE:
        return Verdict(False, f"pid {record.pid} has exited (zombie)")
    if record.pid_create_time is None or (
        abs(create_time - record.pid_create_time) > CREATE_TIME_TOLERANCE
    ):
        return Verdict(
            False, f"pid {record.pid} was reused by another process (start time differs)"
        )
    if not cmdline_names_run(cmdline, paths):
        return Verdict(False, f"pid {record.pid} runs another command (not this run's trainer)")
    return Verdict(True, f"pid {record.pid} is alive and verified", proc)


@dataclass(frozen=True)
class Detection:
    run_id: str
    decision: str  # adopt, interrupted, final, queued, created, remote
    reason: str
    process: psutil.Process | None = None


def detect_run(
    record: RunRecord, paths: RunPaths, last_status: dict[str, object] | None
) -> Detection:
    """What a console starting up should make of one run (decision + reason)."""
    status = str(last_status.get("state")) if last_status else None
    if record.pid is None and record.state in ("created", "queued") and not record.remote:
        if record.state == "queued":
            return Detection(record.run_id, "queued", "waiting in the queue; the queue is paused")
        return Detection(record.run_id, "created", "never started")
    if record.remote:
        return Detection(record.run_id, "remote", f"no local process; last status {status}")
    if status in FINAL_STATES:
        return Detection(record.run_id, "final", f"finished earlier with status {status}")
    verdict = verify_process(record, paths)
    if verdict.alive:
        return Detection(record.run_id, "adopt", verdict.reason, verdict.process)
    if record.exit is not None:
        return Detection(
            record.run_id, "final", f"the console saw it exit: {record.exit.get('reason')}"
        )
    if record.state in ACTIVE_STATES or record.pid is not None:
        return Detection(record.run_id, "interrupted", f"{verdict.reason}; no final status")
    return Detection(record.run_id, "interrupted", verdict.reason)


def log_detection(d: Detection) -> None:
    """One INFO line per run: the decision and its reason."""
    action = {
        "adopt": "adopted: live trainer, following it",
        "interrupted": "interrupted: shown with Resume (nothing started)",
        "final": "finished: nothing to do",
        "queued": "queued: the queue stays paused until started",
        "created": "not started: nothing to do",
        "remote": "remote: shown from its events",
    }[d.decision]
    log.info("run %s: %s (%s)", d.run_id, action, d.reason)
