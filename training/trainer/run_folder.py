"""Which run folder the trainer writes to, decided before anything is created.

no --run-dir               a new <workspace>/runs/<run_id>/ (created after validation)
--run-dir missing or empty a new run there
--run-dir with config.yaml (and run.json, stdout.log) but no metrics
                           a run the console prepared: start it
--run-dir with metrics     refuse without --resume
--resume                   continue from checkpoints/latest.json
anything else              not ours: refuse, touch nothing

One trainer per folder: the trainer holds an OS lock (flock) on the run folder itself (its
directory descriptor, so no file is added to the folder) for as long as it lives; the
kernel drops it when the process dies. An existing folder is locked before it is looked
at, a new one is created with mkdir (never reused) and locked at once.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.contract.checkpoints import read_latest
from training.contract.layout import RunPaths, Workspace, default_workspace, new_run_id

Mode = Literal["new", "prepared", "resume"]
# What the console puts into a run folder before it spawns the trainer.
PREPARED_FILES = frozenset({"config.yaml", "run.json", "stdout.log"})


class RunFolderError(ValueError):
    """A run folder that cannot be used; the message says which and what to do."""


@dataclass(frozen=True)
class RunFolder:
    paths: RunPaths
    mode: Mode

    @property
    def root(self) -> Path:
        return self.paths.root


def workspace_for(run_dir: str | None) -> Workspace:
    """$MLX_CPT_HOME; else the workspace a <ws>/runs/<id> run folder sits in; else the
    per-user default. Holds the token cache."""
    if os.environ.get("MLX_CPT_HOME"):
        return Workspace(default_workspace())
    if run_dir is not None:
        root = Path(run_dir).expanduser().resolve()
        if root.parent.name == "runs":
            return Workspace(root.parent.parent)
    return Workspace(default_workspace())


def choose_run_folder(run_dir: str | None, resume: bool, workspace: Workspace) -> RunFolder:
    if run_dir is None:
        if resume:
            raise RunFolderError("--resume needs --run-dir: the folder of the run to continue")
        while True:
            paths = workspace.run(new_run_id())
            if not paths.root.exists():
                return RunFolder(paths, "new")
    root = Path(run_dir).expanduser()
    paths = RunPaths(root)
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"--run-dir {root} is a file; give a folder")
    entries = {p.name for p in root.iterdir()} if root.is_dir() else set()
    if resume:
        if not (root / "config.yaml").is_file():
            raise RunFolderError(f"--resume: {root} is not a run folder (no config.yaml)")
        if read_latest(root) is None:
            raise RunFolderError(
                f"--resume: {root} has no complete checkpoint (checkpoints/latest.json); "
                "start a new run instead"
            )
        return RunFolder(paths, "resume")
    if not entries:
        return RunFolder(paths, "new")
    has_metrics = paths.metrics.is_file() and paths.metrics.stat().st_size > 0
    if "config.yaml" in entries and (has_metrics or paths.checkpoints.exists()):
        raise RunFolderError(
            f"{root} already holds a run; add --resume to continue it, or give a new --run-dir"
        )
    if "config.yaml" in entries and entries <= PREPARED_FILES | {"metrics.jsonl"}:
        return RunFolder(paths, "prepared")
    raise RunFolderError(
        f"--run-dir {root} is not empty and is not a run folder; give a new or empty folder"
    )


def lock_run_folder(root: Path) -> int:
    """Claim an existing run folder for this process: an open descriptor holding an
    exclusive flock (close it to release). RunFolderError when another trainer holds it."""
    try:
        fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise RunFolderError(f"--run-dir {root}: cannot open it ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunFolderError(
            f"{root} is in use by another trainer; wait for it to finish (or stop it) "
            "instead of starting a second one on the same run"
        ) from None
    return fd


def create_run_folder(root: Path) -> int:
    """Create a new run folder (never an existing one: FileExistsError) and lock it."""
    root.mkdir(parents=True, exist_ok=False)
    return lock_run_folder(root)
