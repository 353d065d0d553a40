"""The workspace and run-folder layout (DESIGN.md "Run folder contract").

Both the trainer and the console name files only through these helpers, so the
layout is written down once. No MLX import here: the console imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.metrics_store import RunMetrics
    from training.metrics_summary import MetricsSummary

WORKSPACE_ENV = "MLX_CPT_HOME"
# The console's access token: read by the console (and a reporting trainer), and never
# passed on to the processes the console starts (training/trainer_process.child_env).
TOKEN_ENV = "MLX_CPT_TOKEN"
APP_DIR_NAME = "mlx-cpt-console"
# run_ids become folder names and URL parts: keep them to a safe alphabet.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def default_workspace() -> Path:
    """$MLX_CPT_HOME, else the per-user data folder of the platform."""
    env = os.environ.get(WORKSPACE_ENV)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Application Support" / APP_DIR_NAME
    data_home = os.environ.get("XDG_DATA_HOME")
    return (Path(data_home) if data_home else home / ".local" / "share") / APP_DIR_NAME


def new_run_id(now: float | None = None) -> str:
    """Sortable by creation time, unique without coordination: 20261123-121500-3fa9c2."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{secrets.token_hex(3)}"


def is_valid_run_id(run_id: str) -> bool:
    return bool(RUN_ID_RE.fullmatch(run_id)) and run_id not in (".", "..")


@dataclass(frozen=True)
class RunPaths:
    """Where each file of one run lives."""

    root: Path

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def stdout(self) -> Path:
        return self.root / "stdout.log"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.json"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def evaluations(self) -> Path:
        """Results of evaluation jobs run from the console (perplexity tables)."""
        return self.root / "evaluations"


# What a token cache entry holds (training/token_cache.py writes it; the console lists it).
TOKEN_CACHE_META = "meta.json"


@dataclass(frozen=True)
class Workspace:
    """The console's and trainer's working folder: runs, caches, models, exports."""

    root: Path

    @classmethod
    def default(cls) -> Workspace:
        return cls(default_workspace())

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def metrics_index_dir(self) -> Path:
        """Saved indexes of large metrics files (metrics_snapshot), so a restarted console
        does not read them from the start."""
        return self.cache_dir / "metrics"

    @property
    def token_cache_dir(self) -> Path:
        """One folder per tokenized corpus + tokenizer, each with a TOKEN_CACHE_META file."""
        return self.cache_dir / "tokens"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def console_json(self) -> Path:
        return self.root / "console.json"

    @property
    def console_lock(self) -> Path:
        return self.root / "console.lock"

    @property
    def queue_json(self) -> Path:
        """The run queue's order and settings (written by the console only)."""
        return self.root / "queue.json"

    def run(self, run_id: str) -> RunPaths:
        if not is_valid_run_id(run_id):
            raise ValueError(f"invalid run_id {run_id!r}")
        return RunPaths(self.runs_dir / run_id)

    def existing_run(self, run_id: str) -> RunPaths:
        """A run that is there: a real folder directly in the runs folder, so its real path
        is inside the real runs folder (runs/ itself may be a link). A symlinked run folder
        could point anywhere: it is no run, never read, served or deleted. RunNotFound for
        it, an invalid run_id or a missing folder."""
        if not isinstance(run_id, str) or not is_valid_run_id(run_id):
            raise RunNotFound(str(run_id))
        paths = self.run(run_id)
        if paths.root.is_symlink() or not paths.root.is_dir():
            raise RunNotFound(run_id)
        return paths


# -- run.json and run states ----------------------------------------------------------------

RECORD_VERSION = 1
# The trainer's final `status` states; `interrupted` is derived, never written by anyone.
FINAL_STATES: tuple[str, ...] = ("stopped", "finished", "failed", "diverged")
ACTIVE_STATES: tuple[str, ...] = ("starting", "running", "stopping")
# `created`: a run folder whose trainer was never started (not queued, not running).
RUN_STATES: tuple[str, ...] = (
    "created",
    "queued",
    *ACTIVE_STATES,
    *FINAL_STATES,
    "interrupted",
    "unreadable",  # the runs list's flag for a run whose files cannot be read
)
RESUMABLE_STATES: tuple[str, ...] = ("stopped", "interrupted", "failed", "diverged")
# Trainer exit codes (DESIGN.md): 0 done or stopped, 1 failed, 2 bad input, 3 diverged.
EXIT_CODE_STATES: dict[int, str] = {0: "finished", 1: "failed", 2: "failed", 3: "diverged"}


class RunNotFound(LookupError):
    """No run folder with that run_id (or an invalid run_id, which is the same to a client)."""


@dataclass
class RunRecord:
    """run.json: what the console knows about a run; the console is its only writer."""

    run_id: str
    name: str
    created: float
    # The console's last intent before a trainer runs: created, queued, or starting (spawned:
    # set before the process starts, so a crash before its pid is recorded still reads as
    # started, never as a run to start or queue again). Stopping is stop_requested; the
    # rest is derived (derive_state). Older consoles also wrote "stopping" here.
    state: str = "created"
    pid: int | None = None
    pid_create_time: float | None = None
    cmdline: list[str] | None = None
    started: float | None = None
    # seq of the last metrics event before the current attempt was spawned: status events
    # at or below it belong to an earlier attempt (stop, then resume).
    start_seq: int = 0
    stop_requested: bool = False
    # Set when the console saw the trainer exit: code, signal, reason, time, log_tail.
    exit: dict[str, Any] | None = None
    resumes: list[dict[str, Any]] = field(default_factory=list)
    cloned_from: str | None = None
    # No process of this console's: a trainer on another machine (POST /api/callbacks) or
    # one launched from the command line. Its state comes from its events alone.
    remote: bool = False
    v: int = RECORD_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        known = {f.name for f in fields(cls)}
        # Unknown keys (a newer console's) are dropped rather than refused.
        return cls(**{k: v for k, v in data.items() if k in known})


def atomic_write_text(path: Path, text: str, mode: int | None = None) -> None:
    """Write to a sibling temp file, fsync, rename: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_record(paths: RunPaths) -> RunRecord:
    """run.json of a run folder; a folder without one (e.g. a bare trainer CLI run) gets a
    record derived from the folder, so every run folder can be listed."""
    try:
        data = json.loads(paths.run_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not paths.root.is_dir():
            raise RunNotFound(paths.run_id) from None
        # Launched from the trainer's own command line: started, with no pid recorded; its
        # process is found in the process table (detection.TrainerTable) while it lives.
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state="starting")
    except (OSError, ValueError):
        # A corrupt record must not hide the run: list it, derived from its files.
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state="running")
    if not isinstance(data, dict):
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state="running")
    data = {**data, "run_id": paths.run_id}
    data.setdefault("name", paths.run_id)
    data.setdefault("created", _folder_time(paths.root))
    try:
        return RunRecord.from_json(data)
    except TypeError:
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state="running")


def write_record(paths: RunPaths, record: RunRecord) -> None:
    atomic_write_text(paths.run_json, json.dumps(record.to_json(), indent=2) + "\n")


def _folder_time(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


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
    if record.pid is None and not record.remote and record.state in ("created", "queued"):
        return record.state, "waiting in the queue" if record.state == "queued" else "not started"
    status = str(last_status.get("state")) if last_status else None
    message = str(last_status.get("message") or "") if last_status else ""
    if alive and status in FINAL_STATES:
        # Reported, but still flushing and exiting: not yet safe to resume or delete.
        return "stopping", f"the trainer reported {status} and is exiting"
    if status in FINAL_STATES:
        return status, message or f"the trainer reported {status}"
    if alive:
        if status in ACTIVE_STATES:
            return ("stopping" if record.stop_requested else status), message or "training"
        return ("stopping" if record.stop_requested else "starting"), "the trainer is starting"
    if record.exit is not None:
        return exit_state(record), str(record.exit.get("reason") or "the trainer exited")
    if record.remote:
        seen = last_event_time or 0.0
        if (now if now is not None else time.time()) - seen < remote_stale_seconds:
            return status or "running", "reported by a remote trainer"
        return "interrupted", "the remote trainer stopped reporting without a final status"
    if record.pid is None:
        return "interrupted", "no trainer process runs it and it reported no final status"
    return "interrupted", "the trainer process is gone and never reported a final status"


def exit_state(record: RunRecord) -> str:
    """The state an observed exit means when the trainer wrote no final status."""
    info = record.exit or {}
    code = info.get("code")
    if record.stop_requested and info.get("killed_by_console"):
        return "stopped"  # asked to stop, killed after the grace period
    if isinstance(code, int) and code in EXIT_CODE_STATES:
        if code == 0 and record.stop_requested:
            return "stopped"
        return EXIT_CODE_STATES[code]
    return "failed"


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
        0: "exited normally (code 0)",
        1: "failed (exit code 1): see the log",
        2: "bad input (exit code 2): see the log for the field to fix",
        3: "diverged (exit code 3): the loss became NaN or infinite",
    }.get(code if isinstance(code, int) else -1, f"exited with code {code}")


# -- the data provider ------------------------------------------------------------------------

MAX_NAME_LENGTH = 200


class RunStore:
    """Everything the console reads or writes in run folders, in one place.

    Web handlers never open files themselves; they ask this store (and the
    TrainingManager for anything involving processes), as TensorBoard plugins ask
    their data provider.
    """

    def __init__(self, workspace: Workspace, metrics_capacity: int = 32):
        from training.metrics_store import MetricsCache

        self.workspace = workspace
        self.metrics_cache = MetricsCache(metrics_capacity, workspace.metrics_index_dir)
        self._summaries: dict[Path, MetricsSummary] = {}
        self._summaries_lock = threading.Lock()
        self._config_cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}

    def paths(self, run_id: str) -> RunPaths:
        """The run's paths; RunNotFound for an invalid run_id, a missing folder or a
        symlinked one (Workspace.existing_run)."""
        return self.workspace.existing_run(run_id)

    def run_ids(self) -> list[str]:
        """Every run folder, newest first (run_ids sort by creation time)."""
        try:
            entries = list(os.scandir(self.workspace.runs_dir))
        except FileNotFoundError:
            return []
        # Symlinked folders are no runs (Workspace.existing_run).
        ids = [
            e.name for e in entries if e.is_dir(follow_symlinks=False) and is_valid_run_id(e.name)
        ]
        return sorted(ids, reverse=True)

    def read_record(self, run_id: str) -> RunRecord:
        return read_record(self.paths(run_id))

    def write_record(self, record: RunRecord) -> None:
        write_record(self.paths(record.run_id), record)

    def create_run(self, record: RunRecord, config_yaml: str | None) -> RunPaths:
        """Create the run folder with config.yaml and run.json, all or nothing: written
        into a hidden temp folder in runs/, then renamed into place. (A remote run has
        no config.yaml: its trainer holds it.)"""
        runs = self.workspace.runs_dir
        runs.mkdir(parents=True, exist_ok=True)
        final = self.workspace.run(record.run_id)
        tmp = Path(tempfile.mkdtemp(dir=runs, prefix=f".new-{record.run_id}-"))
        try:
            staged = RunPaths(tmp)
            if config_yaml is not None:
                atomic_write_text(staged.config, config_yaml)
            write_record(staged, record)
            os.chmod(tmp, 0o755)
            # rename() refuses to replace a non-empty folder: a clash fails loudly.
            os.rename(tmp, final.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def delete_run(self, run_id: str) -> None:
        """Remove a run folder: renamed away first, so a crash never leaves half a run."""
        paths = self.paths(run_id)
        self.metrics_cache.drop(paths.metrics)
        with self._summaries_lock:
            self._summaries.pop(paths.metrics, None)
        trash = Path(tempfile.mkdtemp(dir=self.workspace.runs_dir, prefix=f".deleted-{run_id}-"))
        os.rename(paths.root, trash / run_id)
        shutil.rmtree(trash, ignore_errors=True)

    def config_text(self, run_id: str) -> str:
        try:
            return self.paths(run_id).config.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    def config_values(self, run_id: str) -> dict[str, Any]:
        """config.yaml as a raw mapping ({} when missing or unreadable), cached by mtime:
        the runs list reads every run's model and data names."""
        path = self.paths(run_id).config
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        key = (st.st_mtime_ns, st.st_size)
        cached = self._config_cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
        from training.config import ConfigError, parse_yaml_text

        try:
            values = parse_yaml_text(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ConfigError):
            values = {}
        self._config_cache[path] = (key, values)
        return values

    def metrics(self, run_id: str) -> RunMetrics:
        """The run's metrics index, refreshed to the end of metrics.jsonl."""
        return self.metrics_cache.get(self.paths(run_id).metrics)

    def summary(self, run_id: str) -> MetricsSummary:
        """The newest row of each kind and the last seq, from the tail of metrics.jsonl
        (no index: what the runs list and derived states need)."""
        from training.metrics_summary import MetricsSummary

        path = self.paths(run_id).metrics
        with self._summaries_lock:
            summary = self._summaries.get(path)
            if summary is None:
                summary = self._summaries[path] = MetricsSummary(path)
        summary.refresh()
        return summary

    def append_events(self, run_id: str, events: list[dict[str, Any]]) -> tuple[int, int]:
        """Append a remote trainer's events (seq above the file's last, in order) as one
        write. Returns (appended, skipped as already present)."""
        last = self.summary(run_id).last_seq
        fresh: list[dict[str, Any]] = []
        for event in sorted(events, key=lambda e: e["seq"]):
            if event["seq"] > last:
                fresh.append(event)
                last = event["seq"]
        if fresh:
            blob = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in fresh)
            with self.paths(run_id).metrics.open("a", encoding="utf-8") as f:
                f.write(blob)
        return len(fresh), len(events) - len(fresh)

    def log_tail(self, run_id: str, lines: int = 100) -> list[str]:
        return tail_lines(self.paths(run_id).stdout, lines)

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        return list_checkpoint_bundles(self.paths(run_id))

    def close(self) -> None:
        self.metrics_cache.close()


def tail_lines(path: Path, lines: int, block: int = 64 * 1024) -> list[str]:
    """The last `lines` lines of a text file, reading backwards from its end."""
    if lines <= 0:
        return []
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            end = pos = f.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= lines:
                step = min(block, pos)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
                if end - pos > 64 * 1024 * 1024:
                    break
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace")
    # Progress bars rewrite a line with \r: show its last state.
    if text.endswith("\n"):
        text = text[:-1]
    out = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return out[-lines:]


def list_checkpoint_bundles(paths: RunPaths) -> list[dict[str, Any]]:
    """Complete checkpoint bundles, oldest first (training.checkpoints decides what is
    complete): name, path (relative to the run folder), step, time, size, val_loss,
    latest/is_latest, is_best. Safe while the trainer writes or prunes bundles."""
    from training.checkpoints import list_checkpoints  # MLX-free at import

    for _attempt in range(3):
        try:
            bundles = list_checkpoints(paths.root)
            break
        except OSError:
            continue  # a bundle pruned while being listed: list again
    else:
        return []
    return [
        {**b, "path": f"checkpoints/{b['name']}", "latest": bool(b.get("is_latest"))}
        for b in bundles
    ]


def has_checkpoint(paths: RunPaths) -> bool:
    """Whether a resume has something to start from: latest.json naming a complete bundle
    (what the trainer's --resume requires)."""
    from training.checkpoints import read_latest

    return read_latest(paths.root) is not None
