"""Where exports go and what they may replace: one guard for the command line, the
evaluation worker and the console (DESIGN.md "Command lines": export).

An export replaces its destination folder only when it is an earlier export and only with
`overwrite`; never the workspace, its runs, the home folder or a browse root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from training.contract.errors import InputError
from training.contract.layout import Workspace
from training.contract.model_source import ModelSource

FORMATS = ("model", "adapter")


# Next to a model card, one of these makes a folder an earlier export (looks_like_export).
EXPORT_MARKERS = ("config.json", "adapter_config.json")


class ExportError(InputError):
    """Bad export request; `field` names the input to fix."""


def default_destination(workspace: Workspace, source: ModelSource, fmt: str) -> Path:
    """<workspace>/exports/<run_id>-<checkpoint>[-adapter]."""
    name = f"{source.run_id or source.model.name}-{source.checkpoint or 'model'}"
    return workspace.exports_dir / (name + ("-adapter" if fmt == "adapter" else ""))


def looks_like_export(folder: Path) -> bool:
    """An export of this project: a model card (README.md whose front matter carries our
    `continued-pretraining` tag) next to config.json (a model) or adapter_config.json."""
    try:
        with (folder / "README.md").open(encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    card = head.startswith("---") and "continued-pretraining" in head.split("\n---", 1)[0]
    return card and any((folder / name).is_file() for name in EXPORT_MARKERS)


def check_replaceable(dest: Path, workspace: Workspace, roots: Sequence[Path] = ()) -> None:
    """An export replaces its destination folder (renamed aside, then deleted): refuse a
    destination that is or holds the workspace, its runs, the home folder or one of
    `roots` (the console's browse roots), and an existing non-empty folder that is not an
    earlier export. The console and the command line share this guard."""
    real = Path(os.path.realpath(dest))
    protected = [
        ("the workspace", workspace.root),
        ("the workspace's runs folder", workspace.runs_dir),
        ("your home folder", Path.home()),
        *(("a folder the console may read", root) for root in roots),
    ]
    for what, folder in protected:
        folder = Path(os.path.realpath(folder))
        if real == folder or folder.is_relative_to(real):
            shown = "is" if real == folder else "contains"
            raise ExportError(
                f"{dest} {shown} {what} ({folder}): an export replaces its destination "
                f"folder; choose a new folder, e.g. {workspace.exports_dir / 'my-model'}",
                "dest",
            )
    try:
        occupied = real.is_dir() and any(real.iterdir())
    except OSError as exc:
        raise ExportError(f"{dest}: {exc.strerror or exc}", "dest") from exc
    if occupied and not looks_like_export(real):
        raise ExportError(
            f"{dest} is not empty and is not an earlier export (no model card README.md with "
            "config.json or adapter_config.json): it is never replaced; choose a new folder",
            "dest",
        )


def check_destination(
    dest: Path,
    source: ModelSource,
    workspace: Workspace,
    overwrite: bool,
    roots: Sequence[Path] = (),
) -> Path:
    """Refuse a destination that would clobber something: what check_replaceable
    refuses, anything inside the workspace's runs (checkpoints are never touched), the
    folders being exported, and an existing export without `overwrite`."""
    check_replaceable(dest.expanduser(), workspace, roots)
    dest = dest.expanduser().resolve()
    runs = workspace.runs_dir.resolve()
    if dest == runs or runs in dest.parents:
        raise ExportError(
            f"{dest} is inside the workspace's runs folder; export to "
            f"{workspace.exports_dir} or a folder of your own",
            "dest",
        )
    for folder in (source.model, source.adapter_path, source.run_dir):
        if folder is None:
            continue
        folder = folder.resolve()
        if dest == folder or folder in dest.parents or dest in folder.parents:
            raise ExportError(f"{dest} overlaps the run or model being exported ({folder})", "dest")
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise ExportError(f"{dest} exists and is not a folder", "dest")
        if any(dest.iterdir()) and not overwrite:
            raise ExportError(
                f"{dest} already exists; confirm overwriting it (--overwrite) or choose another "
                "folder",
                "overwrite",
            )
    return dest
