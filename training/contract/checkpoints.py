"""Atomic checkpoint bundles, the latest pointer, retention, and listing.

A bundle `checkpoints/step-00000100/` is written into a hidden temporary folder, every file
and the folder are fsynced, then it is renamed into place; `latest.json` is replaced
atomically after that. A crash at any instant therefore leaves `latest.json` pointing at a
complete bundle. Every bundle is also an mlx-lm adapter folder (`adapters.safetensors` +
`adapter_config.json`, for `full` too), so `mlx_lm.generate --model BASE --adapter-path
<bundle>` reads it.

No MLX here: every process reads bundles through this module (the trainer writes the
arrays with trainer/weights.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.files import fsync_path, is_temp_name, write_json_atomic
from training.contract.reading import (
    open_dir,
    open_dir_at,
    opened,
    read_json_object,
    read_json_object_at,
)

FORMAT_VERSION = 1
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
ADAPTERS_FILE = "adapters.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
# adapter_config.json key (ours; mlx-lm ignores it): modules a lora/dora run trained fully
# beside its adapters (train_embeddings: the embeddings and the head), whose weights
# adapters.safetensors holds too. training/evaluate/adapters.py loads them.
FULL_MODULES_KEY = "full_modules"
LATEST_FILE = "latest.json"
CHECKPOINTS_DIR = "checkpoints"
TMP_PREFIX = ".tmp-"
BUNDLE_RE = re.compile(r"step-(\d{8,})")


def bundle_name(step: int) -> str:
    return f"step-{step:08d}"


def bundle_step(name: str) -> int | None:
    """The step of a bundle folder name (step-00000100 -> 100); None for anything else."""
    m = BUNDLE_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


# -- writing ---------------------------------------------------------------------------------


def _remove_tree(path: Path) -> None:
    """Rename to a hidden name first, so a crash mid-delete never leaves a partial bundle
    under a bundle's name."""
    doomed = path.with_name(f"{TMP_PREFIX}del-{path.name}-{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def write_bundle(
    ckpt_dir: Path,
    step: int,
    state: dict[str, Any],
    write_files: Callable[[Path], None],
) -> Path:
    """Create bundle `step` atomically: `write_files(tmp)` writes the arrays, this writes
    state.json, makes everything durable, renames, then repoints latest.json."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = bundle_name(step)
    final = ckpt_dir / name
    tmp = ckpt_dir / f"{TMP_PREFIX}{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write_files(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        full_state = {
            "format": FORMAT_VERSION,
            "step": step,
            "time": round(time.time(), 3),
            **state,
            "files": files,
        }
        (tmp / STATE_FILE).write_text(json.dumps(full_state, indent=2) + "\n")
        for p in tmp.iterdir():
            fsync_path(p)
        fsync_path(tmp)
        if final.exists():  # an orphan from a crash between rename and latest.json: replace
            _remove_tree(final)
        os.replace(tmp, final)
        fsync_path(ckpt_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json_atomic(
        ckpt_dir / LATEST_FILE,
        {"step": step, "bundle": name, "time": full_state["time"]},
    )
    return final


def clean_stale_temp(ckpt_dir: Path) -> list[str]:
    """Remove temporary folders left by a writer that died (only the trainer calls this)."""
    removed: list[str] = []
    if not ckpt_dir.is_dir():
        return removed
    for p in ckpt_dir.iterdir():
        # ours, and files.write_atomic's (.latest.json.XXXX.tmp)
        if p.name.startswith(TMP_PREFIX) or is_temp_name(p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def apply_retention(ckpt_dir: Path, keep: int, keep_best: bool) -> list[str]:
    """Delete bundles beyond the newest `keep` (0 keeps all), sparing the best by val_loss
    when `keep_best`, and never the one latest.json points at."""
    if keep <= 0:
        return []
    bundles = _bundles(ckpt_dir)
    keepers = {b.name for b in bundles[-keep:]}
    latest = read_latest(ckpt_dir.parent)
    if latest is not None:
        keepers.add(latest["bundle"])
    if keep_best:
        best = best_bundle(bundles)
        if best is not None:
            keepers.add(best.name)
    removed = []
    for b in bundles:
        if b.name not in keepers:
            _remove_tree(b.path)
            removed.append(b.name)
    return removed


# -- reading (no MLX) -------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    name: str
    path: Path
    step: int
    time: float
    size: int
    val_loss: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "step": self.step,
            "time": self.time,
            "size": self.size,
            "val_loss": self.val_loss,
        }


def read_state(bundle: str | Path) -> dict[str, Any]:
    """A bundle's state.json: a regular file holding a JSON object (DamagedFile, an
    OSError, otherwise)."""
    return read_json_object(bundle, STATE_FILE)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _open_checkpoints(run_dir: Path) -> int | None:
    """A descriptor of the run's checkpoints folder, reached without a link; None when
    there is none, or something else (a link, a file) sits at its name."""
    try:
        return open_dir(run_dir, CHECKPOINTS_DIR)
    except OSError:
        return None


def _bundle_at(ckpt_fd: int, name: str, step: int) -> tuple[dict[str, Any], int, float] | None:
    """(state, size, mtime) of a complete bundle in the open checkpoints folder, else None.
    A bundle is a real folder (not a link) of regular files and folders only, with a
    state.json holding an object: a link or a FIFO among its files would make a loader read
    elsewhere or hang, so such a folder is no bundle. Sizes never follow links."""
    shown = f"{CHECKPOINTS_DIR}/{name}"
    try:
        with opened(open_dir_at(ckpt_fd, name, shown)) as fd:
            size = 0
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        size += entry.stat(follow_symlinks=False).st_size
                    elif not entry.is_dir(follow_symlinks=False):
                        return None  # a link, FIFO, socket or device
            state = read_json_object_at(fd, STATE_FILE, f"{shown}/{STATE_FILE}")
            mtime = os.fstat(fd).st_mtime
    except OSError:
        return None  # missing, pruned meanwhile, a link, or damaged: not complete
    return state, size, mtime


def read_latest(run_dir: str | Path) -> dict[str, Any] | None:
    """latest.json when it points at a complete bundle (with its state.json), else None.
    `step` is the bundle's (from its name) when latest.json's own is not a whole number."""
    ckpt_dir = checkpoints_dir(run_dir)
    fd = _open_checkpoints(Path(run_dir))
    if fd is None:
        return None
    with opened(fd):
        data: dict[str, Any] | None = None
        # A reader racing a running trainer may find the bundle it just read of already
        # pruned by a newer save; latest.json has moved on by then, so read it again.
        for _ in range(5):
            try:
                now = read_json_object_at(fd, LATEST_FILE, f"{CHECKPOINTS_DIR}/{LATEST_FILE}")
            except OSError:
                return None
            if now == data:
                return None  # the same pointer twice, to a bundle that is not there
            data = now
            name = data.get("bundle")
            step = bundle_step(name) if isinstance(name, str) else None
            if step is None:
                return None
            if _bundle_at(fd, str(name), step) is not None:
                break
        else:
            return None
    recorded = data.get("step")
    if not isinstance(recorded, int) or isinstance(recorded, bool):
        recorded = step
    return {**data, "step": recorded, "path": str(ckpt_dir / str(name))}


def latest_bundle(run_dir: str | Path) -> Path | None:
    latest = read_latest(run_dir)
    return Path(latest["path"]) if latest else None


def bundle_val_loss(state: dict[str, Any], step: int) -> float | None:
    """The validation loss *of this bundle's weights*: state.json keeps the latest
    evaluation (`val_loss` at `val_step`), which counts only when it ran at the bundle's own
    step (an older evaluation measured other weights). The same rule as the console's
    checkpoint table, which matches eval events to bundles by step."""
    if state.get("val_step") != step:
        return None
    return _number(state.get("val_loss"))


def list_bundles(run_dir: str | Path) -> list[CheckpointInfo]:
    """The run's complete bundles (a readable state.json), oldest first; what a resume,
    retention, the console and the exporter all count as a checkpoint."""
    return _bundles(checkpoints_dir(run_dir))


def _bundles(ckpt_dir: Path) -> list[CheckpointInfo]:
    out: list[CheckpointInfo] = []
    fd = _open_checkpoints(ckpt_dir.parent)
    if fd is None:
        return out
    with opened(fd):
        try:
            with os.scandir(fd) as entries:
                names = [e.name for e in entries]
        except OSError:
            return out
        for name in names:
            step = bundle_step(name)
            if step is None:
                continue
            found = _bundle_at(fd, name, step)
            if found is None:
                continue  # not complete: never listed, never resumed from
            state, size, mtime = found
            out.append(
                CheckpointInfo(
                    name=name,
                    path=ckpt_dir / name,
                    step=step,
                    time=_number(state.get("time")) or mtime,
                    size=size,
                    val_loss=bundle_val_loss(state, step),
                )
            )
    return sorted(out, key=lambda b: b.step)


def best_bundle(bundles: list[CheckpointInfo]) -> CheckpointInfo | None:
    """The lowest validation loss measured at a bundle's own step; the earlier step on a
    tie (the later one brought no improvement). Retention keeps it; listings mark it."""
    scored = [b for b in bundles if b.val_loss is not None]
    return min(scored, key=lambda b: (b.val_loss, b.step)) if scored else None


def list_checkpoints(run_dir: str | Path) -> list[dict[str, Any]]:
    """The complete bundles of a run, oldest first, as the API shows them: name, path
    (relative to the run folder), step, time, size (bytes), val_loss, is_latest, is_best.
    Safe while the trainer writes or prunes bundles (a bundle pruned meanwhile is left
    out), and on a damaged folder (what is not a complete bundle is left out)."""
    bundles = _bundles(checkpoints_dir(run_dir))
    latest = read_latest(run_dir)
    best = best_bundle(bundles)
    return [
        {
            **info.to_json(),
            "path": f"{CHECKPOINTS_DIR}/{info.name}",
            "is_latest": latest is not None and latest["bundle"] == info.name,
            "is_best": best is not None and best.name == info.name,
        }
        for info in bundles
    ]


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a resume has something to start from: latest.json naming a complete bundle
    (what the trainer's --resume requires)."""
    return read_latest(run_dir) is not None
