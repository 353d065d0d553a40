"""The workspace and run-folder layout (DESIGN.md "Run folder contract").

Every process names files only through these helpers, so the layout is written down
once: where runs, caches, exports and the demo live, what a run folder holds, and
run.json, the console's record of a run.
"""

from __future__ import annotations

import json
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
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state=STARTING)
    except (OSError, ValueError):
        # A corrupt record must not hide the run: list it, derived from its files.
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state=RUNNING)
    if not isinstance(data, dict):
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state=RUNNING)
    data = {**data, "run_id": paths.run_id}
    data.setdefault("name", paths.run_id)
    data.setdefault("created", _folder_time(paths.root))
    try:
        return RunRecord.from_json(data)
    except TypeError:
        return RunRecord(paths.run_id, paths.run_id, _folder_time(paths.root), state=RUNNING)


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
