"""Export a run's final model or any checkpoint as a folder mlx-lm loads (the command line
of training/evaluate/exporting.py).

Formats (`model`: a standalone folder, LoRA/DoRA fused in; `adapter`: the adapters
alone) and the guarantees (built aside and renamed, nothing replaced without --overwrite)
are in training/evaluate/exporting.py.

    python -m training.export --run RUN_ID|RUN_DIR [--checkpoint final|latest|STEP]
        [--format model|adapter] [--out DIR] [--overwrite] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from training.contract.blas import reexec_with_openblas
from training.contract.exports import FORMATS, ExportError, default_destination
from training.contract.layout import RunPaths, Workspace, is_valid_run_id
from training.contract.model_source import SourceError, resolve_run_source, run_workspace_root
from training.contract.protocol import EXIT_BAD_INPUT, EXIT_OK, WORKSPACE_ENV
from training.evaluate.exporting import export_source
from training.evaluate.models import EvaluationError


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
    parser.add_argument("--workspace", help=f"workspace folder (default: ${WORKSPACE_ENV} or ~)")
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
        return EXIT_BAD_INPUT
    # An adapter export of a run that trained its embeddings and head holds its own base.
    base = result.path if (result.path / "config.json").is_file() else result.source.model
    hint = (
        f"mlx_lm.load({str(base)!r}, adapter_path={str(result.path)!r})"
        if result.format == "adapter"
        else f"mlx_lm.load({str(result.path)!r})"
    )
    print(f"exported {result.size / 1e6:.1f} MB to {result.path}\nload it with {hint}")
    return EXIT_OK


if __name__ == "__main__":
    reexec_with_openblas()  # before MLX loads: the CPU wheel's own BLAS is far slower
    sys.exit(main())
