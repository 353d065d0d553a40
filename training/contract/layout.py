"""The workspace and run-folder layout (DESIGN.md "Run folder contract").

Every process names files only through these helpers, so the layout is written down
once: where runs, caches, exports and the demo live, what a run folder holds, and
run.json, the console's record of a run.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.contract.files import write_json_atomic
from training.contract.protocol import CREATED, RUNNING, STARTING, WORKSPACE_ENV
from training.contract.reading import MAX_RECORD_BYTES, DamagedFile, read_json

# The project's own folder: on the PYTHONPATH of the processes the console starts.
PROJECT_ROOT = Path(__file__).resolve().parents[2]

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


# What a token cache entry holds (trainer/token_cache.py writes it; the console lists it).
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
        """Saved indexes of large metrics files (metrics/snapshot.py), so a restarted console
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

    @property
    def launch_dir(self) -> Path:
        """The console's files of runs on several machines, one folder per run_id: the
        hostfile mlx.launch reads and the FIFO that is its stdin (console/launcher.py)."""
        return self.root / "launch"

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


RECORD_VERSION = 1


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
    state: str = CREATED
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
    # init_from's source when the run was created (contract/lineage.py InitSource.to_json):
    # the run, checkpoint and step whose weights it starts from.
    initialized_from: dict[str, Any] | None = None
    # No process of this console's: a trainer on another machine (POST /api/callbacks) or
    # one launched from the command line. Its state comes from its events alone.
    remote: bool = False
    # A run on several machines (issue 14): how mlx.launch runs it, from HostPlan.to_record
    # (backend, hosts by rank, Python, port, environment names) plus the launch's files
    # (`hostfile`, `control`: the FIFO that is mlx.launch's stdin). None: one process.
    launch: dict[str, Any] | None = None
    v: int = RECORD_VERSION
    # Never written: why run.json could not be read (the run then reads `unreadable`, and
    # the console refuses to rewrite the file over what it could not read).
    damaged: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["damaged"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """A record from run.json's object; ValueError naming every field of the wrong
        type (a record the console cannot trust is read as damaged, never half-used)."""
        problems = record_problems(data)
        if problems:
            raise ValueError("; ".join(problems))
        known = {f.name for f in fields(cls)} - {"damaged"}
        # Unknown keys (a newer console's) are dropped rather than refused.
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite number a float holds (times, seconds): no bool, no 400-digit integer."""
    if isinstance(v, float):
        return math.isfinite(v)
    return _is_int(v) and abs(v) <= 2**63


def _optional(check: Any) -> Any:
    return lambda v: v is None or check(v)


# run.json's fields: what each must hold, and how to say it.
_RECORD_FIELDS: dict[str, tuple[Any, str]] = {
    "run_id": (lambda v: isinstance(v, str), "text"),
    "name": (lambda v: isinstance(v, str), "text"),
    "created": (_is_number, "a number"),
    "state": (lambda v: isinstance(v, str), "text"),
    "pid": (_optional(lambda v: _is_int(v) and 0 < v < 2**31), "a process id or null"),
    "pid_create_time": (_optional(_is_number), "a number or null"),
    "cmdline": (
        _optional(lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v)),
        "a list of text or null",
    ),
    "started": (_optional(_is_number), "a number or null"),
    "start_seq": (lambda v: _is_int(v) and v >= 0, "a whole number >= 0"),
    "stop_requested": (lambda v: isinstance(v, bool), "true or false"),
    "exit": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
    "resumes": (
        lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
        "a list of objects",
    ),
    "cloned_from": (_optional(lambda v: isinstance(v, str)), "text or null"),
    "initialized_from": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
    "remote": (lambda v: isinstance(v, bool), "true or false"),
    "launch": (_optional(lambda v: isinstance(v, dict)), "an object or null"),
    "v": (_is_int, "a whole number"),
}


def record_problems(data: Mapping[str, Any]) -> list[str]:
    """What is wrong with run.json's fields, one phrase each (empty when nothing is)."""
    return [
        f"{key} must be {what}, not {type(data[key]).__name__} {_short(data[key])}"
        for key, (check, what) in _RECORD_FIELDS.items()
        if key in data and not check(data[key])
    ]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_record(paths: RunPaths) -> RunRecord:
    """run.json of a run folder; a folder without one (e.g. a bare trainer CLI run) gets a
    record derived from the folder, so every run folder can be listed. A run.json that
    cannot be read safely or trusted (a link, a FIFO, garbage, a field of the wrong type)
    gives a record marked `damaged` with the reason, never an exception."""
    try:
        data = read_json(paths.root, "run.json", MAX_RECORD_BYTES)
    except FileNotFoundError:
        if not paths.root.is_dir():
            raise RunNotFound(paths.run_id) from None
        # Launched from the trainer's own command line: started, with no pid recorded; its
        # process is found in the process table (detection.TrainerTable) while it lives.
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state=STARTING)
    except OSError as exc:  # DamagedFile, or an I/O error: the file is there but unusable
        return _damaged(paths, str(exc) if isinstance(exc, DamagedFile) else f"run.json {exc}")
    if not isinstance(data, dict):
        return _damaged(paths, "run.json does not hold a JSON object")
    data = {**data, "run_id": paths.run_id}
    data.setdefault("name", paths.run_id)
    data.setdefault("created", _folder_time(paths.root))
    try:
        return RunRecord.from_json(data)
    except (TypeError, ValueError) as exc:
        return _damaged(paths, f"run.json has fields of the wrong type: {exc}", data)


def _damaged(paths: RunPaths, reason: str, data: Mapping[str, Any] | None = None) -> RunRecord:
    """A record for listing a run whose run.json is unusable: its name and creation time
    when those fields are sound, nothing else trusted (no pid, no exit)."""
    data = data or {}
    name = data.get("name")
    created = data.get("created")
    return RunRecord(
        paths.run_id,
        name if isinstance(name, str) and name else paths.run_id,
        float(created) if created is not None and _is_number(created) else _folder_time(paths.root),
        state=RUNNING,
        damaged=reason,
    )


def write_record(paths: RunPaths, record: RunRecord) -> None:
    write_json_atomic(paths.run_json, record.to_json())


def _folder_time(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# -- the demo's assets, relative to the workspace (built by `python -m training.demo`) ----------

DEMO_CONFIG = "demo.yaml"
DOMAIN_CORPUS = "corpora/python-stdlib.jsonl"
GENERAL_SET = "corpora/general-prose.jsonl"


def demo_model_dir(size: str) -> str:
    return f"models/scratch-{size}"
