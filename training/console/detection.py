"""Prior-session detection, read-only: which recorded trainers are still alive.

A pid alone proves nothing (pids are reused), so a process is the run's trainer only
when its pid, its start time and its command line (naming the run's folder) all match
what run.json recorded at spawn. A trainer run.json does not name (a console that died
between spawning it and recording its pid, or one started from the trainer's own command
line) is found in the process table instead (TrainerTable). Nothing here writes, signals
or starts anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from training.contract.layout import RunPaths, RunRecord
from training.contract.protocol import ACTIVE_STATES, CREATED, FINAL_STATES, QUEUED

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


def is_trainer_cmdline(cmdline: list[str]) -> bool:
    """`python -m training.continued_pretraining ...`, the script path, or mlx.launch of it."""
    return any(
        arg == "training.continued_pretraining" or arg.endswith("continued_pretraining.py")
        for arg in cmdline
    )


def _run_dir_arg(cmdline: list[str]) -> str | None:
    for i, arg in enumerate(cmdline):
        if arg == "--run-dir" and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith("--run-dir="):
            return arg.split("=", 1)[1]
    return None


def trainer_run_id(proc: psutil.Process, cmdline: list[str], runs_dir: Path) -> str | None:
    """The run of `runs_dir` a trainer process works on: its --run-dir, or else the run
    folder of a file it holds open (metrics.jsonl: a command-line run's default folder)."""
    value = _run_dir_arg(cmdline)
    if value is not None:
        folder = Path(value)
        if not folder.is_absolute():
            folder = Path(proc.cwd()) / folder
        folder = folder.resolve()
        return folder.name if folder.parent == runs_dir else None
    for f in proc.open_files():
        path = Path(f.path)
        if path.parent.parent == runs_dir:
            return path.parent.name
    return None


class TrainerTable:
    """Live trainer processes of one workspace by run_id, read from the process table
    (read-only), re-read at most every `ttl` seconds: listing runs asks for every run."""

    def __init__(
        self, runs_dir: Path, ttl: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.runs_dir = runs_dir
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._trainers: dict[str, psutil.Process] = {}

    def trainers(self) -> dict[str, psutil.Process]:
        with self._lock:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self.ttl:
                self._trainers = self._scan()
                self._read_at = now
            # A trainer that ended since the scan is not one any more.
            return {r: p for r, p in self._trainers.items() if _running(p)}

    def get(self, run_id: str) -> psutil.Process | None:
        return self.trainers().get(run_id)

    def forget(self) -> None:
        """Read the table again at the next question (a trainer was just started)."""
        with self._lock:
            self._read_at = None

    def _scan(self) -> dict[str, psutil.Process]:
        try:
            runs_dir = self.runs_dir.resolve()
        except OSError:
            return {}
        found: dict[str, psutil.Process] = {}
        me = psutil.Process().pid
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            try:
                cmdline = proc.info["cmdline"] or []
                if proc.pid == me or not is_trainer_cmdline(cmdline):
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE or _secondary_rank(proc):
                    continue
                run_id = trainer_run_id(proc, cmdline, runs_dir)
            except (psutil.Error, OSError):
                continue  # gone meanwhile, or another user's
            # mlx.launch and its ranks all name the run: keep the earliest, the launcher.
            if run_id and (
                run_id not in found or proc.info["create_time"] < found[run_id].create_time()
            ):
                found[run_id] = proc
        return found


def _secondary_rank(proc: psutil.Process) -> bool:
    """A rank other than 0 of an mlx.launch run (MLX_RANK in its environment): it writes
    nothing, so it is never a run's trainer (a rank left hanging on a host that dropped
    off the network is not the run training again)."""
    try:
        rank = proc.environ().get("MLX_RANK")
    except (psutil.Error, OSError):
        return False
    return rank is not None and rank != "0"


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True)
class Detection:
    run_id: str
    decision: str  # adopt, interrupted, final, queued, created, remote
    reason: str
    process: psutil.Process | None = None


def detect_run(
    record: RunRecord,
    paths: RunPaths,
    last_status: dict[str, object] | None,
    found: psutil.Process | None = None,
) -> Detection:
    """What a console starting up should make of one run (decision + reason). `found`:
    a live trainer of this run in the process table (TrainerTable), if any."""
    status = str(last_status.get("state")) if last_status else None
    if record.pid is None and record.state in (CREATED, QUEUED) and not record.remote:
        if record.state == QUEUED:
            return Detection(record.run_id, "queued", "waiting in the queue; the queue is paused")
        return Detection(record.run_id, "created", "never started")
    if status in FINAL_STATES:
        return Detection(record.run_id, "final", f"finished earlier with status {status}")
    verdict = verify_process(record, paths)
    if verdict.alive:
        return Detection(record.run_id, "adopt", verdict.reason, verdict.process)
    if found is not None:
        why = "run.json records no pid" if record.pid is None else verdict.reason
        return Detection(
            record.run_id,
            "adopt",
            f"pid {found.pid} runs its trainer, found in the process table ({why})",
            found,
        )
    if record.remote:
        return Detection(record.run_id, "remote", f"no local process; last status {status}")
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
