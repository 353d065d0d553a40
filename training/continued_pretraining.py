"""The trainer: continue pre-training a language model on raw text with MLX.

    python -m training.continued_pretraining -c config.yaml [--run-dir DIR] [--resume]
        [--report-url URL] [--<any field> VALUE]

Exit codes: 0 finished or stopped on request (SIGTERM/SIGINT), 1 failed, 2 bad input
(nothing created or changed), 3 diverged (non-finite loss). Everything is checked before
the run folder is created; the console spawns this same program.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.checkpoints import latest_bundle, read_state
from training.config import (
    BUDGET_FIELDS,
    FIELDS,
    ConfigError,
    FieldError,
    RunConfig,
    add_field_arguments,
    build_config,
    cli_values,
    load_config_file,
    read_yaml,
)
from training.data import DataError, DataInputs, scan_inputs
from training.run_folder import RunFolder, RunFolderError, choose_run_folder, workspace_for
from training.run_store import RunPaths, Workspace

EXIT_BAD_INPUT = 2  # the others (0 ok, 1 failed, 3 diverged) come from training_run.run


class BadInput(Exception):
    """Problems found before anything was created, each naming its setting."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.continued_pretraining",
        description="Continue pre-training a language model on raw text with MLX. Settings "
        "come from the field registry: defaults < the -c YAML (mlx-lm keys work) < flags.",
    )
    parser.add_argument("-c", "--config", help="YAML config file (an mlx-lm config works)")
    parser.add_argument(
        "--run-dir",
        help="Run folder (default: <workspace>/runs/<new run_id>; workspace from MLX_CPT_HOME)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Continue the run in --run-dir from its latest checkpoint",
    )
    parser.add_argument(
        "--report-url",
        help="Also POST events to this URL (e.g. http://127.0.0.1:PORT/api/callbacks/RUN_ID); "
        "the bearer token is read from the MLX_CPT_TOKEN environment variable",
    )
    add_field_arguments(parser)
    return parser


@dataclass
class Plan:
    """Everything checked before anything is created."""

    config: RunConfig
    warnings: list[str]
    folder: RunFolder
    workspace: Workspace
    inputs: DataInputs
    base_dir: Path
    report_url: str | None
    rewrite_config: bool = False
    loaded: Any = None  # model_setup.LoadedModel
    group: Any = None  # mx.distributed.Group
    rank: int = 0
    world: int = 1


def check_config(args: argparse.Namespace, base_dir: Path) -> tuple[RunConfig, list[str]]:
    raw = read_yaml(args.config) if args.config else {}
    cli = cli_values(args)
    if any(name in cli for name in BUDGET_FIELDS):
        # A budget on the command line replaces the file's (--epochs 2 over `iters: 1000`).
        raw = {k: v for k, v in raw.items() if k not in BUDGET_FIELDS}
    return build_config(raw, cli, check_paths=True, base_dir=base_dir)


def check_folder(
    args: argparse.Namespace, config: RunConfig, workspace: Workspace, rank: int
) -> tuple[RunFolder, bool]:
    """The run folder, and whether config.yaml must be (re)written."""
    if rank != 0:  # only rank 0 creates; the others read (resume) and never write
        root = Path(args.run_dir) if args.run_dir else workspace.runs_dir / "unused"
        return RunFolder(RunPaths(root), "resume" if args.resume else "new"), False
    folder = choose_run_folder(args.run_dir, args.resume, workspace)
    if folder.mode == "new":
        return folder, True
    saved = load_config_file(folder.paths.config)
    if folder.mode == "prepared":
        differ = [f.name for f in FIELDS if saved.get(f.name) != config.get(f.name)]
        if differ:
            raise BadInput(
                [
                    FieldError(
                        "config",
                        f"{folder.paths.config} (written by the console) differs in "
                        f"{', '.join(differ)}; run with -c {folder.paths.config}",
                    )
                ]
            )
        return folder, False
    differ = saved.resume_differences(config)
    if differ:
        raise BadInput(
            [
                FieldError(
                    name,
                    f"differs from the run's config.yaml ({saved.get(name)!r} there, "
                    f"{config.get(name)!r} now); --resume may change only iters, epochs, "
                    "train_tokens and the report/eval/save settings",
                )
                for name in differ
            ]
        )
    bundle = latest_bundle(folder.root)
    written_with = read_state(bundle).get("config_hash") if bundle else None
    if written_with != config.config_hash():
        message = (
            f"{bundle} was written with another config (hash {written_with}, now "
            f"{config.config_hash()}); restore the run's config.yaml"
        )
        raise BadInput([FieldError("config", message)])
    return folder, saved != config


def check_model(config: RunConfig, base_dir: Path) -> Any:
    """Load the model and tokenizer now, so an unloadable model is bad input (exit 2)."""
    from training.model_setup import load_base, num_blocks, read_model_config

    model_cfg = read_model_config(config, base_dir)
    blocks = num_blocks(model_cfg) if model_cfg else None
    n = config.effective_num_layers
    if blocks is not None and config.num_layers is not None and n > blocks:
        message = f"{n} is more than the model's {blocks} blocks; use at most {blocks}, or -1"
        raise BadInput([FieldError("num_layers", message)])
    try:
        return load_base(config, base_dir)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        raise BadInput([FieldError("model", f"cannot load {config.model}: {exc}")]) from None


def preflight(args: argparse.Namespace, rank: int = 0, world: int = 1) -> Plan:
    """Every check, in order of cost; BadInput before anything is created."""
    base_dir = Path.cwd()
    try:
        config, warnings = check_config(args, base_dir)
    except ConfigError as exc:
        raise BadInput(exc.errors) from None
    if config.batch_size % world:
        message = f"{config.batch_size} is not divisible by the {world} workers; change either"
        raise BadInput([FieldError("batch_size", message)])
    workspace = workspace_for(args.run_dir)
    try:
        folder, rewrite = check_folder(args, config, workspace, rank)
    except RunFolderError as exc:
        raise BadInput([FieldError("run_dir", str(exc))]) from None
    except ConfigError as exc:  # an unreadable config.yaml in the run folder
        raise BadInput(exc.errors) from None
    try:
        inputs = scan_inputs(config, base_dir)
    except DataError as exc:
        raise BadInput([FieldError(exc.field, str(exc))]) from None
    if args.report_url and not args.report_url.startswith(("http://", "https://")):
        raise BadInput([FieldError("report_url", "must be an http:// or https:// URL")])
    loaded = check_model(config, base_dir)
    return Plan(
        config, warnings, folder, workspace, inputs, base_dir, args.report_url, rewrite, loaded
    )


def print_errors(errors: list[FieldError]) -> None:
    print("error: the run was not started (nothing was created or changed):", file=sys.stderr)
    for e in errors:
        print(f"  {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    args = build_parser().parse_args(argv)
    import mlx.core as mx

    group = mx.distributed.init()
    rank, world = group.rank(), group.size()
    error: BadInput | None = None
    try:
        plan = preflight(args, rank, world)
    except BadInput as exc:
        error = exc
    except KeyboardInterrupt:
        print("interrupted before the run started; nothing was created", file=sys.stderr)
        return 0
    if world > 1:  # every worker exits 2 if any found bad input, or the others would hang
        failed = mx.distributed.all_sum(mx.array(1 if error else 0), stream=mx.cpu).item()
        if failed and error is None:
            return EXIT_BAD_INPUT
    if error is not None:
        if rank == 0:
            print_errors(error.errors)
        return EXIT_BAD_INPUT
    plan.group, plan.rank, plan.world = group, rank, world
    from training.training_run import run

    return run(plan)


if __name__ == "__main__":
    from training.blas import reexec_with_openblas

    reexec_with_openblas()
    sys.exit(main())
