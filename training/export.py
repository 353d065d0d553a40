"""Export a run's final model or any checkpoint as a folder mlx-lm loads.

Formats: `model`, a standalone model folder (`mlx_lm.load(dest)`): LoRA/DoRA adapters
are fused into the base the way `mlx_lm fuse` does it, a full run's weights are saved
as they are; `adapter`, the LoRA/DoRA adapter folder alone (`mlx_lm.load(base,
adapter_path=dest)`). Every export carries a model card (README.md). The export is
built in a hidden sibling folder and renamed into place, so a failure leaves nothing
behind, and an existing folder is replaced only with `overwrite`.

    python -m training.export --run RUN_ID|RUN_DIR [--checkpoint final|latest|STEP]
        [--format model|adapter] [--out DIR] [--overwrite] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.errors import InputError
from training.evaluation import EvaluationError, load_source
from training.model_card import render_model_card
from training.model_source import (
    ModelSource,
    SourceError,
    resolve_run_source,
    resolve_source,
    run_workspace_root,
)
from training.run_store import RunPaths, Workspace, is_valid_run_id

FORMATS = ("model", "adapter")
# Next to a model card, one of these makes a folder an earlier export (looks_like_export).
EXPORT_MARKERS = ("config.json", "adapter_config.json")
Progress = Callable[[str], None]


class ExportError(InputError):
    """Bad export request; `field` names the input to fix."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    source: ModelSource
    size: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "source": self.source.to_json(),
            "size": self.size,
            "seconds": round(self.seconds, 3),
        }


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


def export_source(
    source: ModelSource,
    dest: Path,
    fmt: str,
    workspace: Workspace,
    *,
    overwrite: bool = False,
    progress: Progress = lambda message: None,
) -> ExportResult:
    """Write `source` to `dest` in format `fmt` (see the module docstring)."""
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}", "format")
    if fmt == "adapter" and not source.lora:
        raise ExportError(
            "only LoRA/DoRA runs have an adapter to export; choose the model format", "format"
        )
    dest = check_destination(dest, source, workspace, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
    try:
        if fmt == "adapter":
            progress("copying the adapter")
            _copy_adapter(source, staging)
        elif source.adapter_path is None:
            progress("copying the model folder")
            _copy_model_folder(source.model, staging)
        else:
            progress("loading the model")
            _save_fused(source, staging, progress)
        progress("writing the model card")
        (staging / "README.md").write_text(render_model_card(source, fmt, workspace))
        staging.chmod(0o755)
        _replace(staging, dest, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return ExportResult(dest, fmt, source, size, time.perf_counter() - started)


def _copy_adapter(source: ModelSource, staging: Path) -> None:
    assert source.adapter_path is not None
    for name in ("adapters.safetensors", "adapter_config.json"):
        shutil.copy2(source.adapter_path / name, staging / name)


def _copy_model_folder(model: Path, staging: Path) -> None:
    """A full run's final/ is already a model folder: copy it (minus training-only files)."""
    skip = {"optimizer.safetensors", "state.json", "README.md"}
    for item in model.iterdir():
        if item.name in skip or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, staging / item.name)
        else:
            shutil.copy2(item, staging / item.name)


def _save_fused(source: ModelSource, staging: Path, progress: Progress) -> None:
    """mlx_lm fuse's recipe: fuse every module that can, then mlx_lm.utils.save."""
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import save

    loaded = load_source(source)
    fused = [(n, m.fuse()) for n, m in loaded.model.named_modules() if hasattr(m, "fuse")]
    if fused:
        progress(f"fusing {len(fused)} adapted layers")
        loaded.model.update_modules(tree_unflatten(fused))
    progress("saving the model")
    save(staging, source.model, loaded.model, loaded.tokenizer, loaded.config, donate_model=False)


def _replace(staging: Path, dest: Path, overwrite: bool) -> None:
    """Move the finished export into place; an old folder is removed only after that."""
    if not dest.exists():
        os.replace(staging, dest)
        return
    if any(dest.iterdir()) and not overwrite:  # appeared while we were writing
        raise ExportError(f"{dest} appeared during the export; nothing was replaced", "overwrite")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


def export_run(
    workspace: Workspace,
    run_id: str,
    checkpoint: str | int | None = None,
    *,
    fmt: str = "model",
    dest: Path | None = None,
    overwrite: bool = False,
    progress: Progress = lambda message: None,
) -> ExportResult:
    source = resolve_source(workspace, run_id, checkpoint)
    target = dest if dest is not None else default_destination(workspace, source, fmt)
    return export_source(source, target, fmt, workspace, overwrite=overwrite, progress=progress)


def _run_and_workspace(run: str, workspace: str | None) -> tuple[RunPaths, Workspace]:
    """--run names a run folder anywhere (RunPaths), or a run_id in the workspace. The
    workspace only decides the default destination: --workspace, else the one a
    <workspace>/runs/<run_id> folder sits in, else $MLX_CPT_HOME or the per-user one."""
    folder = Path(run).expanduser()
    if folder.is_dir() and (folder / "config.yaml").is_file():
        paths = RunPaths(folder.resolve())
        if workspace:
            return paths, Workspace(Path(workspace))
        if paths.root.parent.name == "runs":
            return paths, Workspace(run_workspace_root(paths))
        return paths, Workspace.default()
    ws = Workspace(Path(workspace)) if workspace else Workspace.default()
    if not is_valid_run_id(run) or not ws.run(run).root.is_dir():
        raise ExportError(
            f"no run {run!r}: give a run folder (with config.yaml) or a run_id in {ws.runs_dir}",
            "run",
        )
    return ws.run(run), ws


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.export",
        description="Export a run's final model or a checkpoint as a folder mlx_lm.load reads.",
    )
    parser.add_argument("--run", required=True, help="run_id in the workspace, or a run folder")
    parser.add_argument("--checkpoint", default="final", help="final (default), latest or a step")
    parser.add_argument(
        "--format",
        default="model",
        choices=FORMATS,
        help="model: a standalone folder (adapters fused in); adapter: LoRA/DoRA adapters only",
    )
    parser.add_argument("--out", help="destination folder (default: <workspace>/exports/...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--workspace", help="workspace folder (default: $MLX_CPT_HOME or ~)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # base models are local folders

    try:
        run, workspace = _run_and_workspace(args.run, args.workspace)
        source = resolve_run_source(
            run, args.checkpoint, Path(args.workspace) if args.workspace else None
        )
        dest = Path(args.out) if args.out else default_destination(workspace, source, args.format)
        result = export_source(
            source,
            dest,
            args.format,
            workspace,
            overwrite=args.overwrite,
            progress=lambda message: print(f"{message}...", file=sys.stderr),
        )
    except (ExportError, SourceError, EvaluationError) as exc:
        field = getattr(exc, "field", None)
        print(f"error{f' ({field})' if field else ''}: {exc}", file=sys.stderr)
        return 2
    hint = (
        f"mlx_lm.load({str(result.source.model)!r}, adapter_path={str(result.path)!r})"
        if result.format == "adapter"
        else f"mlx_lm.load({str(result.path)!r})"
    )
    print(f"exported {result.size / 1e6:.1f} MB to {result.path}\nload it with {hint}")
    return 0


if __name__ == "__main__":
    from training.blas import reexec_with_openblas

    reexec_with_openblas()  # before MLX loads: the CPU wheel's own BLAS is far slower
    sys.exit(main())
