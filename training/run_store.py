"""The workspace and run-folder layout (DESIGN.md "Run folder contract").

Both the trainer and the console name files only through these helpers, so the
layout is written down once. No MLX import here: the console imports this module.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

WORKSPACE_ENV = "MLX_CPT_HOME"
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
    def token_cache_dir(self) -> Path:
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

    def run(self, run_id: str) -> RunPaths:
        if not is_valid_run_id(run_id):
            raise ValueError(f"invalid run_id {run_id!r}")
        return RunPaths(self.runs_dir / run_id)
