"""Which run folder the trainer writes to, decided before anything is created.

no --run-dir               a new <workspace>/runs/<run_id>/ (created after validation)
--run-dir missing or empty a new run there
--run-dir with config.yaml (and run.json, stdout.log) but no metrics
                           a run the console prepared: start it
--run-dir with metrics     refuse without --resume or --restart
--resume                   continue from checkpoints/latest.json
--restart                  a run folder without a complete checkpoint (its trainer died
                           before the first one): start again from step 0 in it, after
                           clearing what the earlier trainer wrote (never by itself)
anything else              not ours: refuse, touch nothing

One trainer per folder: the trainer holds an OS lock (flock) on the run folder itself (its
directory descriptor, so no file is added to the folder) for as long as it lives; the
kernel drops it when the process dies. An existing folder is locked before it is looked
at, a new one is created with mkdir (never reused) and locked at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from training.contract.checkpoints import TMP_PREFIX, read_latest
from training.contract.files import is_temp_name
from training.contract.layout import RunPaths, Workspace, default_workspace, new_run_id

Mode = Literal["new", "prepared", "resume", "restart"]
# What the console puts into a run folder before it spawns the trainer.
PREPARED_FILES = frozenset({"config.yaml", "run.json", "stdout.log"})
# What a trainer writes into its run folder besides config.yaml, which --restart removes
# (config.yaml stays; run.json and stdout.log are the console's, evaluations/ the
# evaluation worker's). Temporary names of writers that died go too.
TRAINER_FILES = ("checkpoints", "final", "data_report.json", "metrics.jsonl")
RESTART_HINT = (
    "add --restart to start it again from step 0 in this folder (what its trainer wrote "
    "is cleared; config.yaml is kept), or give a new --run-dir"
)


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


def choose_run_folder(
    run_dir: str | None, resume: bool, workspace: Workspace, restart: bool = False
) -> RunFolder:
    if run_dir is None:
        if resume:
            raise RunFolderError("--resume needs --run-dir: the folder of the run to continue")
        if restart:
            raise RunFolderError("--restart needs --run-dir: the folder of the run to start again")
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
                f"--resume: {root} has no complete checkpoint (checkpoints/latest.json) to "
                f"continue from; instead of --resume, {RESTART_HINT}"
            )
        return RunFolder(paths, "resume")
    if restart:
        if not (root / "config.yaml").is_file():
            raise RunFolderError(f"--restart: {root} is not a run folder (no config.yaml)")
        latest = read_latest(root)
        if latest is not None:
            raise RunFolderError(
                f"--restart: {root} has a complete checkpoint ({latest['bundle']}); use "
                "--resume to continue from it (--restart only starts again a run that "
                "ended before its first checkpoint), or give a new --run-dir"
            )
        return RunFolder(paths, "restart")
    if not entries:
        return RunFolder(paths, "new")
    has_metrics = paths.metrics.is_file() and paths.metrics.stat().st_size > 0
    if "config.yaml" in entries and (has_metrics or paths.checkpoints.exists()):
        if read_latest(root) is not None:
            raise RunFolderError(
                f"{root} already holds a run; add --resume to continue it from its latest "
                "checkpoint, or give a new --run-dir"
            )
        raise RunFolderError(
            f"{root} already holds a run, which has no complete checkpoint; {RESTART_HINT}"
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


def clear_for_restart(root: Path) -> list[str]:
    """--restart, once every check passed: remove what an earlier trainer wrote into the
    run folder (it holds no complete checkpoint, which choose_run_folder checked), the
    metrics file last, so a restart cut short can simply be repeated. Returns the names
    removed."""
    removed: list[str] = []
    leftovers = sorted(p.name for p in root.iterdir() if _trainer_temp(p.name))
    for name in [*leftovers, *TRAINER_FILES]:
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def _trainer_temp(name: str) -> bool:
    """A temporary name a trainer that died left: save_final's .tmp-final-PID and
    write_atomic's .config.yaml.XXXX.tmp / .data_report.json.XXXX.tmp (never the
    console's run.json temp, which a console may be writing right now)."""
    if name.startswith(TMP_PREFIX):
        return True
    return is_temp_name(name) and name.startswith((".config.yaml.", ".data_report.json."))
