"""What a run looks like to the console: its derived state, progress and last metrics.

Read-only: nothing here writes a run or signals a process. Whether a trainer lives is
the caller's to say for the trainers it follows (TrainingManager); for the others the
recorded pid is verified here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from training.console.detection import verify_process
from training.console.run_state import derive_state
from training.console.run_store import RunStore
from training.contract.checkpoints import has_checkpoint
from training.contract.disk import DISK_FULL_REASON
from training.contract.layout import RunPaths, RunRecord
from training.contract.protocol import (
    EVAL,
    EXIT_DISK_FULL,
    FAILED,
    FINAL_STATES,
    FINISHED,
    RESUMABLE_STATES,
    RUN_START,
    RUNNING,
    STATUS,
    STOPPED,
    TRAIN,
    UNREADABLE,
)

if TYPE_CHECKING:
    from training.metrics.store import RunMetrics
    from training.metrics.summary import MetricsSummary


class NoMetrics:
    """The metrics view of a run whose metrics.jsonl cannot be read: nothing."""

    last_seq = 0
    last_time: float | None = None
    malformed = 0

    def last(self, event: str) -> dict[str, Any] | None:
        return None


NO_METRICS = NoMetrics()

if TYPE_CHECKING:
    Metrics = RunMetrics | MetricsSummary | NoMetrics


def _number(value: Any) -> int | float | None:
    """A finite number from a metrics row, else None: a damaged row's text, object or
    400-digit integer never reaches arithmetic or the JSON answer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _object(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def current_status(metrics: Metrics, record: RunRecord) -> dict[str, Any] | None:
    """The last status event of the current attempt (not of a run before a resume), from
    the run's metrics index or its summary (the file's tail)."""
    status = metrics.last(STATUS)
    seq = status.get("seq") if status else None
    if status is None or not isinstance(seq, int) or seq <= record.start_seq:
        return None
    return status


def recorded_trainer_alive(record: RunRecord, paths: RunPaths, last_status: Any) -> bool:
    """Whether run.json's pid is still this run's trainer (for a trainer nobody follows)."""
    if record.pid is None or record.exit is not None:
        return False
    if last_status and last_status.get("state") in FINAL_STATES:
        return False
    return verify_process(record, paths).alive


def disk_full_info(
    state: str, record: RunRecord, status: dict[str, Any] | None
) -> dict[str, Any] | None:
    """Where and by how much a run failed for lack of space: its status event's numbers,
    or, when the trainer could not even write that (exit code 4), the folder and the space
    left when the console saw it exit. None for any other run."""
    if state != FAILED:
        return None
    if status is not None and status.get("reason") == DISK_FULL_REASON:
        return {k: status.get(k) for k in ("path", "needed_bytes", "free_bytes")}
    exit_info = record.exit or {}
    if exit_info.get("code") == EXIT_DISK_FULL:
        return {
            "path": exit_info.get("path"),
            "needed_bytes": None,
            "free_bytes": exit_info.get("free_bytes"),
        }
    return None


def launch_info(launch: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a client may know of a run's launch (run.json is data: only the expected
    keys, typed): backend, port, Python, environment names, and each host by rank with
    what its check said about it."""
    if not isinstance(launch, dict):
        return None
    checked = {
        c.get("rank"): c.get("facts") for c in launch.get("checked") or [] if isinstance(c, dict)
    }
    hosts = []
    for host in launch.get("hosts") or []:
        if not isinstance(host, dict) or not isinstance(host.get("rank"), int):
            continue
        ips = host.get("ips")
        ips = ips if isinstance(ips, list) else []
        facts = checked.get(host["rank"])
        hosts.append(
            {
                "rank": host["rank"],
                "ssh": _text(host.get("ssh")),
                "ips": [ip for ip in ips if isinstance(ip, str)],
                "facts": facts if isinstance(facts, dict) else None,
            }
        )
    env = launch.get("env")
    env = env if isinstance(env, list) else []
    return {
        "launcher": _text(launch.get("launcher")),
        "backend": _text(launch.get("backend")),
        "hosts": hosts,
        "python": _text(launch.get("python")),
        "port": _number(launch.get("port")),
        "env": [name for name in env if isinstance(name, str)],
        "source": _text(launch.get("source")),
    }


def describe_run(
    store: RunStore,
    record: RunRecord,
    metrics: Metrics,
    status: dict[str, Any] | None,
    *,
    alive: bool,
    adopted: bool,
    queue_position: int | None,
    detail: bool = True,
    damaged: str | None = None,
) -> dict[str, Any]:
    """The run record with its derived state, progress and last metrics; `detail` adds
    the process, exit, resumes, checkpoints and last events (the run page's view).
    `damaged` (why run.json or metrics.jsonl cannot be read) makes the state `unreadable`
    with that reason; what could be read is still described."""
    run_id = record.run_id
    state, reason = derive_state(record, status, alive, last_event_time=metrics.last_time)
    if damaged:
        state, reason = UNREADABLE, damaged
    train, evaluation = metrics.last(TRAIN) or {}, metrics.last(EVAL) or {}
    run_start = metrics.last(RUN_START) or {}
    config = store.config_values(run_id)
    total_steps = _number(run_start.get("total_steps")) or _number(config.get("iters"))
    step = _number(train.get("step")) or 0
    ips = _number(train.get("iterations_per_second"))
    eta = None
    if state == RUNNING and total_steps and ips:
        eta = max(0.0, (float(total_steps) - float(step)) / float(ips))
    out: dict[str, Any] = {
        "run_id": run_id,
        "name": record.name,
        "state": state,
        "reason": reason,
        "created": record.created,
        "started": record.started,
        "ended": _number((record.exit or {}).get("time")),
        "step": step,
        "total_steps": total_steps,
        "trained_tokens": _number(train.get("trained_tokens")),
        "total_tokens": _number(run_start.get("total_tokens")),
        "train_loss": _number(train.get("train_loss")),
        "val_loss": _number(evaluation.get("val_loss")),
        "tokens_per_second": _number(train.get("tokens_per_second")),
        "peak_memory": _number(train.get("peak_memory")),
        "eta_seconds": eta,
        # Training wall seconds across resumes, as of the last train event.
        "elapsed_seconds": _number(train.get("elapsed_seconds")),
        "last_seq": metrics.last_seq,
        "model": _text(config.get("model")),
        "data": _text(config.get("data")),
        "fine_tune_type": _text(config.get("fine_tune_type")),
        "queue_position": queue_position,
        "remote": record.remote,
        "cloned_from": record.cloned_from,
        # The run whose weights it started from (init_from): run.json's, else run_start's
        # (a run started from the trainer's command line).
        "initialized_from": record.initialized_from or _object(run_start.get("initialized_from")),
        # {path, needed_bytes, free_bytes} when it failed for lack of space, else null.
        "disk_full": disk_full_info(state, record, status),
        # A run on several machines: its hosts by rank, the backend (else null).
        "launch": launch_info(record.launch),
    }
    if detail:
        checkpoints = store.checkpoints(run_id)
        resumes_from = has_checkpoint(store.paths(run_id).root)
        out.update(
            pid=record.pid if alive else None,
            alive=alive,
            adopted=adopted,
            exit=record.exit,
            resumes=record.resumes,
            stop_requested=record.stop_requested,
            last={
                "train": train or None,
                "eval": evaluation or None,
                "status": status,
                "run_start": run_start or None,
            },
            checkpoints=len(checkpoints),
            latest_checkpoint_step=checkpoints[-1]["step"] if checkpoints else None,
            # What TrainingManager.resume and .restart accept: latest.json naming a complete
            # bundle resumes; a run that ended before its first one starts again from 0.
            resumable=state in RESUMABLE_STATES and resumes_from,
            # A finished or stopped run with a checkpoint may resume with a larger budget.
            extendable=state in (FINISHED, STOPPED)
            and resumes_from
            and store.paths(run_id).config.is_file(),
            restartable=state in RESUMABLE_STATES
            and not resumes_from
            and store.paths(run_id).config.is_file(),  # a remote run's is on its machine
            malformed_lines=metrics.malformed,
        )
    return out
