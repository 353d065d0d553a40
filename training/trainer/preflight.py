"""Preflight: every check of a trainer's input, cheapest first, before anything is created.

The config, the report URL, the run folder (locked for this trainer), the run `init_from`
names (it exists, on the same base model, with the same fine_tune_type), the corpus scan,
the model and tokenizer, and for --resume that the model and data are the ones the
checkpoint was trained on. Every problem is a ConfigError naming its field (exit 2);
claim_folder creates a new run folder only after prepare() succeeded too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.checkpoints import latest_bundle, read_state
from training.contract.config import (
    BUDGET_FIELDS,
    FIELDS,
    ConfigError,
    FieldError,
    RunConfig,
    build_config,
    cli_values,
    load_config_file,
    read_yaml,
    resolve_path,
)
from training.contract.layout import RunPaths, Workspace
from training.contract.lineage import InitSource, check_init
from training.contract.model_facts import FULL_ON_QUANTIZED_FIX
from training.metrics.writer import read_last_seq
from training.trainer.data import LAYOUT, DataInputs, scan_inputs, scan_memo_dir
from training.trainer.model_setup import (
    LoadedModel,
    describe_quantized,
    layers_to_train,
    load_base,
    quantized_embeddings,
    quantized_to_train,
)
from training.trainer.optimization import check_optimizer
from training.trainer.run_folder import (
    Mode,
    RunFolder,
    RunFolderError,
    choose_run_folder,
    clear_for_restart,
    create_run_folder,
    lock_run_folder,
    workspace_for,
)
from training.trainer.token_cache import cache_key, tokenizer_fingerprint


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
    loaded: LoadedModel
    tokenizer_fp: str
    identity: dict[str, Any]  # what the run trains on (state.json "inputs")
    rewrite_config: bool = False
    # init_from: the weights a new run (or a restart) starts from; None for a resume, which
    # restores its own checkpoint (contract/lineage.py)
    init_source: InitSource | None = None
    # --restart: the seq of the cleared metrics file's last event (seq continues after it)
    first_seq: int = 0
    lock_fd: int | None = None  # the run folder's flock, held for the process's life
    group: Any = None  # mx.distributed.Group
    rank: int = 0
    world: int = 1
    # A resume of a checkpoint written before shards: its data order took each corpus as one.
    one_shard: bool = False
    tokenization: Any = None  # tokenization.Tokenization, once prepare() started it

    def release(self) -> None:
        if self.tokenization is not None:
            self.tokenization.close()
            self.tokenization = None
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def bad_input(exc: Exception, field: str | None) -> ConfigError:
    """Any bad-input exception as a ConfigError naming its field."""
    if isinstance(exc, ConfigError):
        return exc
    return ConfigError([FieldError(getattr(exc, "field", None) or field, str(exc))])


def check_config(args: argparse.Namespace, base_dir: Path) -> tuple[RunConfig, list[str]]:
    if args.config:
        raw = read_yaml(args.config)
    elif (args.resume or args.restart) and args.run_dir:  # the run's own config is the base
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


# The package each report_to tracker needs (training/trainer/trackers.py imports it).
TRACKER_PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb"}


def check_trackers(config: RunConfig) -> None:
    """report_to names only trackers whose library is installed (looked up, not imported:
    importing wandb takes a second, and only a starting run needs it)."""
    for name in config.report_to or ():
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            message = f"{name} needs the {package} package: pip install {package}"
            raise ConfigError([FieldError("report_to", message)])


def check_folder(
    args: argparse.Namespace, config: RunConfig, workspace: Workspace, rank: int
) -> tuple[RunFolder, bool, int | None]:
    """The run folder, whether config.yaml must be (re)written, and the folder's lock (an
    existing folder is locked before it is looked at)."""
    if rank != 0:  # only rank 0 creates, locks and checks; the others read (resume)
        root = Path(args.run_dir) if args.run_dir else workspace.runs_dir / "unused"
        mode: Mode = "resume" if args.resume else "restart" if args.restart else "new"
        return RunFolder(RunPaths(root), mode), False, None
    existing = Path(args.run_dir).expanduser() if args.run_dir else None
    lock_fd = lock_run_folder(existing) if existing is not None and existing.is_dir() else None
    try:
        folder = choose_run_folder(args.run_dir, args.resume, workspace, restart=args.restart)
        return folder, _check_saved_config(folder, config), lock_fd
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise


def _check_saved_config(folder: RunFolder, config: RunConfig) -> bool:
    """Whether config.yaml must be written; ConfigError when the folder's config forbids."""
    if folder.mode == "new":
        return True
    if folder.mode == "restart":  # a fresh start: any settings; config.yaml says which
        try:
            return load_config_file(folder.paths.config) != config
        except ConfigError:
            return True  # an unreadable config.yaml, replaced by the -c file given
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
    # The settings check read config.json; this catches what it cannot see (a hub id, a
    # quantization stated elsewhere) before anything is created.
    quantized = quantized_to_train(loaded.model, config)
    if quantized:
        first = describe_quantized(*quantized[0])
        more = f", and {len(quantized) - 1} more" if len(quantized) > 1 else ""
        message = (
            f"full cannot train {config.model}: the layers it would train hold quantized "
            f"weights ({first}{more}), which have no gradient; {FULL_ON_QUANTIZED_FIX}"
        )
        raise ConfigError([FieldError("fine_tune_type", message)])
    try:
        quantized = quantized_embeddings(loaded.model, config)
    except ValueError as exc:  # no embedding to find
        raise ConfigError([FieldError("train_embeddings", str(exc))]) from None
    if quantized:
        names = ", ".join(describe_quantized(*q) for q in quantized)
        message = (
            f"the embeddings and head of {config.model} are quantized ({names}), which have "
            "no gradient; turn train_embeddings off, or use a dequantized copy of the model "
            "(mlx_lm.convert --dequantize)"
        )
        raise ConfigError([FieldError("train_embeddings", message)])
    return loaded


def input_identity(
    config: RunConfig, inputs: DataInputs, model_path: Path, tokenizer_fp: str, base_dir: Path
) -> dict[str, Any]:
    """What the run trains on, as state.json records it: the resolved model folder and data
    paths, and the token-cache keys (content hashes of the tokenizer and each text)."""

    def where(value: str | None) -> str | None:
        return str(resolve_path(value, base_dir).resolve()) if value else None

    data: Any = where(config.data) if isinstance(config.data, str) else [
        {"name": s.name, "path": where(s.path), "weight": s.weight} for s in config.sources()
    ]  # fmt: skip
    token_cache: dict[str, Any] = {
        "train": cache_key(inputs.train, tokenizer_fp),
        "valid": cache_key(inputs.valid, tokenizer_fp) if inputs.valid else None,
        "eval_sets": {n: cache_key(s, tokenizer_fp) for n, s in sorted(inputs.eval_sets.items())},
    }
    if len(inputs.sources) > 1:  # (one source: the keys of runs from before sources)
        token_cache["sources"] = {
            s.source.name: [
                cache_key(s.scan, tokenizer_fp),
                cache_key(s.valid, tokenizer_fp) if s.valid else None,
            ]
            for s in inputs.sources[1:]
        }
    return {
        "model": str(model_path.resolve()),
        "data": data,
        "valid_data": where(config.valid_data),
        "eval_sets": {n: where(v) for n, v in sorted((config.eval_sets or {}).items())},
        "token_cache": token_cache,
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
    ("sources", "data", "a data source's text (or the tokenizer)"),
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
    base_dir = Path.cwd()
    config, warnings = check_config(args, base_dir)
    check_report_url(args.report_url)
    check_trackers(config)
    if config.batch_size % world:
        message = f"{config.batch_size} is not divisible by the {world} workers; change either"
        raise ConfigError([FieldError("batch_size", message)])
    hosts = config.distributed_hosts
    if hosts and len(hosts) != world:
        warnings.append(
            f"distributed.hosts names {len(hosts)} hosts but {world} worker(s) run this: the "
            "console starts it with mlx.launch on those hosts; by hand, run it under "
            "mlx.launch --hostfile (README 'Several machines')"
        )
    check_optimizer(config)
    workspace = workspace_for(args.run_dir)
    try:
        folder, rewrite, lock_fd = check_folder(args, config, workspace, rank)
    except (ValueError, OSError) as exc:  # RunFolderError, a corrupt state.json, EACCES
        raise bad_input(exc, "run_dir") from None
    try:
        init_source = None
        if folder.mode != "resume":  # a resume restores its own checkpoint
            init_source, errors = check_init(config, workspace.root, base_dir)
            if errors:
                raise ConfigError(errors)
        inputs = scan_inputs(config, base_dir, scan_memo_dir(workspace))
        loaded = check_model(config, base_dir)
        tokenizer_fp = tokenizer_fingerprint(loaded.tokenizer, loaded.path)
        identity = input_identity(config, inputs, loaded.path, tokenizer_fp, base_dir)
        if folder.mode == "resume" and rank == 0:
            check_same_inputs(folder, identity)
        one_shard = folder.mode == "resume" and _order_before_shards(folder)
    except BaseException as exc:
        if lock_fd is not None:
            os.close(lock_fd)
        if isinstance(exc, (ValueError, OSError)):  # DataError, CorpusError, ConfigError, ...
            raise bad_input(exc, None) from None
        raise
    return Plan(
        config=config,
        warnings=warnings,
        folder=folder,
        workspace=workspace,
        inputs=inputs,
        base_dir=base_dir,
        report_url=args.report_url,
        loaded=loaded,
        tokenizer_fp=tokenizer_fp,
        identity=identity,
        rewrite_config=rewrite,
        init_source=init_source,
        lock_fd=lock_fd,
        rank=rank,
        world=world,
        one_shard=one_shard,
    )


def check_same_inputs(folder: RunFolder, identity: dict[str, Any]) -> None:
    """--resume: the latest checkpoint was trained on this model and this data."""
    bundle = latest_bundle(folder.root)
    saved = read_state(bundle).get("inputs") if bundle is not None else None
    if bundle is not None and isinstance(saved, dict):  # (older bundles did not record it)
        errors = identity_changes(saved, identity, bundle.name)
        if errors:
            raise ConfigError(errors)


def _order_before_shards(folder: RunFolder) -> bool:
    """Whether the latest checkpoint was trained in the data order of a trainer from before
    shards (each corpus one shard: the resume keeps that order). ConfigError for a layout
    this trainer does not know."""
    bundle = latest_bundle(folder.root)
    if bundle is None:
        return False
    layout = (read_state(bundle).get("data") or {}).get("layout")
    if layout is None:
        return True
    if layout != LAYOUT:
        message = (
            f"{bundle.name} was trained with the data layout {layout}, this trainer's is "
            f"{LAYOUT}; resume it with the trainer that wrote it"
        )
        raise ConfigError([FieldError("run_dir", message)])
    return False


def claim_folder(plan: Plan) -> None:
    """Rank 0, after every check: create a new run folder (never one that appeared in the
    meantime) and lock it; an existing folder was locked in preflight. --restart clears
    what the earlier trainer wrote now, and only now."""
    if plan.rank != 0:
        return
    root = plan.folder.root
    if plan.folder.mode == "restart":
        try:
            plan.first_seq = read_last_seq(plan.folder.paths.metrics)
            clear_for_restart(root)
        except OSError as exc:
            message = f"--restart: cannot clear what the earlier trainer wrote in {root}: {exc}"
            raise ConfigError([FieldError("run_dir", message)]) from None
        return
    if plan.lock_fd is not None:
        return
    try:
        plan.lock_fd = create_run_folder(root)
    except FileExistsError:
        message = f"{root} appeared while the run was being prepared; give a new --run-dir"
        raise ConfigError([FieldError("run_dir", message)]) from None
    except (RunFolderError, OSError) as exc:
        raise bad_input(exc, "run_dir") from None
