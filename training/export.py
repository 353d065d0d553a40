"""Export a run's final model or any checkpoint as a folder mlx-lm loads, quantized or
not, or as a GGUF file (the command line of training/evaluate/exporting.py).

Formats (`model`: a standalone folder, LoRA/DoRA fused in, optionally quantized to 4 or 8
bits; `adapter`: the adapters alone; `gguf`: a float16 GGUF file, llama family) and the
guarantees (built aside and renamed, nothing replaced without --overwrite) are in
training/evaluate/exporting.py. A quantized export of a run's model is measured on the
run's validation text next to the unquantized model (--no-perplexity skips it).

    python -m training.export --run RUN_ID|RUN_DIR [--checkpoint final|latest|STEP]
        [--format model|adapter|gguf] [--quantize 4|8 [--group-size 32|64|128]]
        [--perplexity | --no-perplexity] [--out DIR] [--overwrite] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from training.contract.blas import reexec_with_openblas
from training.contract.eval_text import run_eval_text
from training.contract.exports import (
    DEFAULT_GROUP_SIZE,
    FORMATS,
    GROUP_SIZES,
    QUANTIZE_BITS,
    ExportError,
    Quantization,
    default_destination,
    parse_quantization,
)
from training.contract.layout import RunPaths, Workspace, is_valid_run_id
from training.contract.model_source import (
    ModelSource,
    SourceError,
    resolve_run_source,
    run_workspace_root,
)
from training.contract.protocol import EXIT_BAD_INPUT, EXIT_OK, WORKSPACE_ENV
from training.evaluate.exporting import (
    ExportResult,
    PerplexityCheck,
    export_source,
    store_perplexities,
)
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


def perplexity_check(
    source: ModelSource, workspace: Workspace, wanted: bool | None, quant: Quantization | None
) -> PerplexityCheck | None:
    """The run's validation text for a quantized export's measurement: always when asked
    (--perplexity: an error when there is none), by default when the run has one."""
    if quant is None or wanted is False:
        if wanted:
            raise ExportError(
                "--perplexity measures a quantized export: give --quantize", "perplexity"
            )
        return None
    if source.run_dir is None:
        if wanted:
            raise ExportError("only a run's model has a validation text to measure", "perplexity")
        return None
    try:
        return PerplexityCheck(run_eval_text(RunPaths(source.run_dir), workspace.root))
    except SourceError as exc:
        if wanted:
            raise ExportError(str(exc), "perplexity") from exc
        print(f"not measuring perplexity: {exc}", file=sys.stderr)
        return None


def _say(message: str, done: int | None = None, total: int | None = None) -> None:
    """Stages on stderr; of a measurement's batches only the last."""
    if done is None or done == total:
        print(f"{message}...", file=sys.stderr)


def describe(result: ExportResult) -> str:
    """What the command prints: where, how big, the perplexities, how to load it."""
    what = f" ({result.quantization.label})" if result.quantization else ""
    lines = [f"exported {result.size / 1e6:.1f} MB to {result.path}{what}"]
    measured = result.perplexity
    if measured:
        before = measured["unquantized"]["perplexity"]
        after = measured["quantized"]["perplexity"]
        lines.append(
            f"perplexity on {measured['data_label']}: {after:.4f} quantized, {before:.4f} "
            f"unquantized ({after / before - 1:+.2%})"
        )
    python = result.load_python()
    if python:
        lines.append(f"load it with {python}")
    lines.append(f"{'or run' if python else 'run it with'}: {result.load_command()}")
    return "\n".join(lines)


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
        help="model: a standalone folder (adapters fused in); adapter: LoRA/DoRA adapters "
        "only; gguf: one float16 GGUF file (llama family)",
    )
    parser.add_argument(
        "--quantize",
        metavar="BITS",
        help=f"quantize the model format with mlx-lm: {' or '.join(map(str, QUANTIZE_BITS))} "
        "bits per weight",
    )
    parser.add_argument(
        "--group-size",
        metavar="N",
        help=f"weights per quantization group: {', '.join(map(str, GROUP_SIZES))} (default "
        f"{DEFAULT_GROUP_SIZE}); every layer's input size must divide by it",
    )
    parser.add_argument(
        "--perplexity",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure a quantized export and the unquantized model on the run's validation "
        "text (default: when the run has one); stored with the run's perplexities",
    )
    parser.add_argument("--out", help="destination folder (default: <workspace>/exports/...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--workspace", help=f"workspace folder (default: ${WORKSPACE_ENV} or ~)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # base models are local folders

    try:
        quant = parse_quantization(args.quantize, args.group_size)
        run, workspace = _run_and_workspace(args.run, args.workspace)
        source = resolve_run_source(
            run, args.checkpoint, Path(args.workspace) if args.workspace else None
        )
        check = perplexity_check(source, workspace, args.perplexity, quant)
        dest = (
            Path(args.out)
            if args.out
            else default_destination(workspace, source, args.format, quant)
        )
        result = export_source(
            source,
            dest,
            args.format,
            workspace,
            overwrite=args.overwrite,
            quantization=quant,
            perplexity=check,
            progress=_say,
        )
    except (ExportError, SourceError, EvaluationError) as exc:
        field = getattr(exc, "field", None)
        print(f"error{f' ({field})' if field else ''}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    store_perplexities(result)
    print(describe(result))
    return EXIT_OK


if __name__ == "__main__":
    reexec_with_openblas()  # before MLX loads: the CPU wheel's own BLAS is far slower
    sys.exit(main())
