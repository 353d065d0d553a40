"""The trainer: continue pre-training a language model on raw text with MLX.

    python -m training.continued_pretraining -c config.yaml [--run-dir DIR] [--resume]
        [--report-url URL] [--<any field> VALUE]

Exit codes: 0 finished, or stopped on request (SIGTERM/SIGINT; a stop before training
starts creates nothing), 1 failed, 2 bad input (nothing created or changed), 3 diverged
(non-finite loss). The console spawns this same program.

Three phases, so that bad input never leaves a half-made run folder:
1. preflight: the config, the cheap checks, the run folder (locked for this trainer), the
   corpus scan, the model and tokenizer, and for --resume that the model and data are
   the ones the checkpoint was trained on;
2. prepare (training_run.prepare): tokenize into the workspace's cache, pack, make the
   model trainable, build the optimizer, restore the checkpoint;
3. only then is a new run folder created (and locked) and the run starts.
With several processes (mlx.launch) the ranks agree after each phase, so one rank's bad
input or stop request ends them all instead of leaving the others waiting.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
    resolve_path,
)
from training.data import DataInputs, scan_inputs, scan_memo_dir
from training.errors import StopRequested
from training.run_folder import (
    RunFolder,
    RunFolderError,
    choose_run_folder,
    create_run_folder,
    lock_run_folder,
    workspace_for,
)
from training.run_store import RunPaths, Workspace

EXIT_OK, EXIT_BAD_INPUT = 0, 2  # the others (1 failed, 3 diverged) come from training_run.run
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.continued_pretraining",
        description="Continue pre-training a language model on raw text with MLX. Settings "
        "come from the field registry: defaults < the -c YAML (mlx-lm keys work) < flags.",
    )
    parser.add_argument(
        "-c",
        "--config",
        help="YAML config file (an mlx-lm config works); with --resume it defaults to the "
        "run folder's config.yaml",
    )
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
    tokenizer_fp: str = ""
    identity: dict[str, Any] | None = None  # what the run trains on (state.json "inputs")
    lock_fd: int | None = None  # the run folder's flock, held for the process's life
    group: Any = None  # mx.distributed.Group
    rank: int = 0
    world: int = 1

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def bad_input(exc: Exception, field: str | None) -> ConfigError:
    """Any bad-input exception as a ConfigError naming its field."""
    if isinstance(exc, ConfigError):
        return exc
    return ConfigError([FieldError(getattr(exc, "field", None) or field, str(exc))])


# -- preflight: every check, cheapest first --------------------------------------------------


def check_config(args: argparse.Namespace, base_dir: Path) -> tuple[RunConfig, list[str]]:
    if args.config:
        raw = read_yaml(args.config)
    elif args.resume and args.run_dir:  # the run's own config is the base to resume with
        raw = read_yaml(Path(args.run_dir).expanduser() / "config.yaml")
    else:
        raw = {}
    cli = cli_values(args)
    if any(name in cli for name in BUDGET_FIELDS):
        # A budget on the command line replaces the file's (--epochs 2 over `iters: 1000`).
        raw = {k: v for k, v in raw.items() if k not in BUDGET_FIELDS}
    return build_config(raw, cli, check_paths=True, base_dir=base_dir)


def check_report_url(url: str | None) -> None:
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError([FieldError("report_url", "must be an http:// or https:// URL")])


def check_folder(
    args: argparse.Namespace, config: RunConfig, workspace: Workspace, rank: int
) -> tuple[RunFolder, bool, int | None]:
    """The run folder, whether config.yaml must be (re)written, and the folder's lock (an
    existing folder is locked before it is looked at)."""
    if rank != 0:  # only rank 0 creates, locks and checks; the others read (resume)
        root = Path(args.run_dir) if args.run_dir else workspace.runs_dir / "unused"
        return RunFolder(RunPaths(root), "resume" if args.resume else "new"), False, None
    existing = Path(args.run_dir).expanduser() if args.run_dir else None
    lock_fd = lock_run_folder(existing) if existing is not None and existing.is_dir() else None
    try:
        folder = choose_run_folder(args.run_dir, args.resume, workspace)
        return folder, _check_saved_config(folder, config), lock_fd
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise


def _check_saved_config(folder: RunFolder, config: RunConfig) -> bool:
    """Whether config.yaml must be written; ConfigError when the folder's config forbids."""
    if folder.mode == "new":
        return True
    saved = load_config_file(folder.paths.config)
    if folder.mode == "prepared":
        differ = [f.name for f in FIELDS if saved.get(f.name) != config.get(f.name)]
        if differ:
            message = (
                f"{folder.paths.config} (written by the console) differs in "
                f"{', '.join(differ)}; run with -c {folder.paths.config}"
            )
            raise ConfigError([FieldError("config", message)])
        return False
    differ = saved.resume_differences(config)
    if differ:
        raise ConfigError(
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
        raise ConfigError([FieldError("config", message)])
    return saved != config


def check_model(config: RunConfig, base_dir: Path) -> Any:
    """Load the model and tokenizer now, so an unloadable model, a tokenizer without EOS or
    more layers than the model has is bad input (exit 2)."""
    from training.model_setup import layers_to_train, load_base

    try:
        loaded = load_base(config, base_dir)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        raise ConfigError([FieldError("model", f"cannot load {config.model}: {exc}")]) from None
    if loaded.tokenizer.eos_token_id is None:
        message = (
            f"the tokenizer of {config.model} has no EOS token, which separates the "
            "documents of the packed stream; use a model whose tokenizer defines eos_token"
        )
        raise ConfigError([FieldError("model", message)])
    blocks = len(loaded.model.layers)
    try:
        layers_to_train(config, blocks)
    except ValueError:
        message = (
            f"{config.effective_num_layers} is more than the model's {blocks} blocks; "
            f"use at most {blocks}, or -1"
        )
        raise ConfigError([FieldError("num_layers", message)]) from None
    return loaded


def input_identity(
    config: RunConfig, inputs: DataInputs, model_path: Path, tokenizer_fp: str, base_dir: Path
) -> dict[str, Any]:
    """What the run trains on, as state.json records it: the resolved model folder and data
    paths, and the token-cache keys (content hashes of the tokenizer and each text)."""
    from training.token_cache import cache_key

    def where(value: str | None) -> str | None:
        return str(resolve_path(value, base_dir).resolve()) if value else None

    return {
        "model": str(model_path.resolve()),
        "data": where(config.data),
        "valid_data": where(config.valid_data),
        "eval_sets": {n: where(v) for n, v in sorted((config.eval_sets or {}).items())},
        "token_cache": {
            "train": cache_key(inputs.train, tokenizer_fp),
            "valid": cache_key(inputs.valid, tokenizer_fp) if inputs.valid else None,
            "eval_sets": {
                n: cache_key(s, tokenizer_fp) for n, s in sorted(inputs.eval_sets.items())
            },
        },
    }


_IDENTITY_FIELDS = (
    # (key in the identity, field to name, what it is)
    ("model", "model", "the base model folder"),
    ("data", "data", "the training corpus path"),
    ("valid_data", "valid_data", "the validation data path"),
    ("eval_sets", "eval_sets", "the held-out sets' paths"),
)
_CACHE_FIELDS = (
    ("train", "data", "the training corpus's text (or the tokenizer)"),
    ("valid", "valid_data", "the validation text (or the tokenizer)"),
    ("eval_sets", "eval_sets", "a held-out set's text (or the tokenizer)"),
)


def identity_changes(saved: dict[str, Any], now: dict[str, Any], bundle: str) -> list[FieldError]:
    """What differs between the inputs a checkpoint was trained on and today's."""
    errors = []
    for key, field, what in _IDENTITY_FIELDS:
        if saved.get(key) != now.get(key):
            errors.append(
                FieldError(
                    field,
                    f"{what} changed since {bundle}: {saved.get(key)!r} then, {now.get(key)!r} now",
                )  # fmt: skip
            )
    saved_keys, now_keys = saved.get("token_cache") or {}, now["token_cache"]
    for key, field, what in _CACHE_FIELDS:
        if saved_keys.get(key) != now_keys.get(key):
            errors.append(
                FieldError(
                    field,
                    f"{what} changed since {bundle} (token cache key "
                    f"{saved_keys.get(key)} then, {now_keys.get(key)} now)",
                )  # fmt: skip
            )
    if errors:
        errors.append(
            FieldError(
                None,
                "--resume continues a run on the same model and data; put them back, "
                "or start a new run",
            )
        )
    return errors


def preflight(args: argparse.Namespace, rank: int = 0, world: int = 1) -> Plan:
    """Every check, cheapest first; ConfigError before anything is created or changed."""
    from training.optimization import check_optimizer

    base_dir = Path.cwd()
    config, warnings = check_config(args, base_dir)
    check_report_url(args.report_url)
    if config.batch_size % world:
        message = f"{config.batch_size} is not divisible by the {world} workers; change either"
        raise ConfigError([FieldError("batch_size", message)])
    check_optimizer(config)
    workspace = workspace_for(args.run_dir)
    try:
        folder, rewrite, lock_fd = check_folder(args, config, workspace, rank)
    except (ValueError, OSError) as exc:  # RunFolderError, a corrupt state.json, EACCES
        raise bad_input(exc, "run_dir") from None
    try:
        inputs = scan_inputs(config, base_dir, scan_memo_dir(workspace))
        loaded = check_model(config, base_dir)
        from training.token_cache import tokenizer_fingerprint

        tokenizer_fp = tokenizer_fingerprint(loaded.tokenizer, loaded.path)
        identity = input_identity(config, inputs, loaded.path, tokenizer_fp, base_dir)
        if folder.mode == "resume" and rank == 0:
            check_same_inputs(folder, identity)
    except BaseException as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        if isinstance(exc, (ValueError, OSError)):  # DataError, CorpusError, ConfigError, ...
            raise bad_input(exc, None) from None
        raise
    return Plan(
        config, warnings, folder, workspace, inputs, base_dir, args.report_url, rewrite,
        loaded, tokenizer_fp, identity, lock_fd, rank=rank, world=world,
    )  # fmt: skip


def check_same_inputs(folder: RunFolder, identity: dict[str, Any]) -> None:
    """--resume: the latest checkpoint was trained on this model and this data."""
    bundle = latest_bundle(folder.root)
    saved = read_state(bundle).get("inputs") if bundle is not None else None
    if bundle is not None and isinstance(saved, dict):  # (older bundles did not record it)
        errors = identity_changes(saved, identity, bundle.name)
        if errors:
            raise ConfigError(errors)


def claim_folder(plan: Plan) -> None:
    """Rank 0, after every check: create a new run folder (never one that appeared in the
    meantime) and lock it; an existing folder was locked in preflight."""
    if plan.rank != 0 or plan.lock_fd is not None:
        return
    root = plan.folder.root
    try:
        plan.lock_fd = create_run_folder(root)
    except FileExistsError:
        message = f"{root} appeared while the run was being prepared; give a new --run-dir"
        raise ConfigError([FieldError("run_dir", message)]) from None
    except (RunFolderError, OSError) as exc:
        raise bad_input(exc, "run_dir") from None


# -- the command line ------------------------------------------------------------------------


def print_errors(errors: list[FieldError]) -> None:
    print("error: the run was not started (nothing was created or changed):", file=sys.stderr)
    for e in errors:
        print(f"  {e}", file=sys.stderr)


@dataclass
class Outcome:
    """One phase's result on this rank: a value, bad input, or a stop request."""

    value: Any = None
    error: ConfigError | None = None
    stopped: bool = False


def _phase(fn: Callable[[], T]) -> Outcome:
    try:
        return Outcome(value=fn())
    except ConfigError as exc:
        return Outcome(error=exc)
    except StopRequested:
        return Outcome(stopped=True)


def _agree(group: Any, outcome: Outcome, stop_requested: bool) -> int | None:
    """The exit code every rank takes after a phase (None: go on). With several ranks they
    sum their verdicts, so bad input or a stop anywhere ends all of them together."""
    bad, stop = outcome.error is not None, outcome.stopped or stop_requested
    if group is not None and group.size() > 1:
        import mlx.core as mx

        votes = mx.distributed.all_sum(mx.array([float(bad), float(stop)]), stream=mx.cpu)
        bad, stop = float(votes[0].item()) > 0, float(votes[1].item()) > 0  # type: ignore[arg-type]
    if bad:
        if outcome.error is not None:
            print_errors(outcome.error.errors)
        else:
            print("error: another worker found bad input; nothing was created", file=sys.stderr)
        return EXIT_BAD_INPUT
    if stop:
        if group is None or group.rank() == 0:
            print("stopped before the run started; nothing was created", file=sys.stderr)
        return EXIT_OK
    return None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    args = build_parser().parse_args(argv)
    import mlx.core as mx

    from training.run_session import StopFlag

    group = mx.distributed.init()
    rank, world = group.rank(), group.size()
    stop = StopFlag()
    # Alone, a stop during the checks ends them at once (nothing exists yet to save); with
    # several ranks it is a flag they agree on after each phase, so none waits alone.
    stop.install(interrupt=world == 1)
    plan: Plan | None = None
    try:
        checked = _phase(lambda: preflight(args, rank, world))
        stop.interrupt = False
        plan = checked.value
        exit_code = _agree(group, checked, stop.requested)
        if exit_code is not None or plan is None:
            return EXIT_BAD_INPUT if exit_code is None else exit_code
        plan.group = group
        from training.training_run import prepare, run

        prepared = _phase(lambda: prepare(plan, stop))
        exit_code = _agree(group, prepared, stop.requested)
        if exit_code is not None:
            return exit_code
        exit_code = _agree(group, _phase(lambda: claim_folder(plan)), False)
        if exit_code is not None:
            return exit_code
        return run(plan, prepared.value, stop)
    finally:
        if plan is not None:
            plan.release()
        stop.uninstall()


if __name__ == "__main__":
    from training.blas import reexec_with_openblas

    reexec_with_openblas()
    sys.exit(main())
