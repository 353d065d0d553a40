"""`init_from`: a new run that starts from an earlier run's trained weights.

What it names (no MLX here: the console checks it when a run is created, the trainer in
its preflight, before anything exists):

- a run: a run_id of the workspace, or a run folder anywhere; `init_checkpoint` picks its
  weights: `final` (the bundle a finished run wrote at its last step), `latest`, `best`
  (the lowest validation loss measured at a bundle's own step) or `step-N`. Empty: final
  when the run finished, else latest. A bundle holds exactly what the run trained
  (checkpoints.py): a full run's trained weights, a LoRA/DoRA run's adapter;
- an mlx-lm adapter folder or `adapters.safetensors` file (mlx-lm's
  `resume_adapter_file`), when it names no run.

The new run loads those weights into its own trainable parameters (full: the weights;
lora/dora: training goes on in the same adapter), with a fresh optimizer and its own
schedule. A run's source must have been trained on the same base model with the same
fine_tune_type; the trainer also checks that every weight of the source is one this run
trains, with the same shape. The lineage (`initialized_from`) is recorded in run.json by
the console and in the trainer's `run_start` event.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.checkpoints import (
    ADAPTER_CONFIG_FILE,
    ADAPTERS_FILE,
    FULL_MODULES_KEY,
    best_bundle,
    bundle_name,
    list_bundles,
    read_latest,
    read_state,
)
from training.contract.config import FieldError, RunConfig, resolve_path
from training.contract.errors import InputError
from training.contract.layout import RunPaths, Workspace, is_valid_run_id
from training.contract.model_source import SourceError, base_model_dir, normalize_checkpoint
from training.contract.reading import read_json_object

BEST = "best"
CHECKPOINT_WORDS = ("final", "latest", BEST)


class LineageError(InputError):
    default_field = "init_from"


@dataclass(frozen=True)
class InitSource:
    """The weights a run starts from, and where they come from."""

    weights: Path  # the adapters.safetensors to load
    fine_tune_type: str | None  # the source's (None: an adapter file that does not say)
    run_id: str | None = None
    run_dir: Path | None = None
    checkpoint: str | None = None  # final, latest, best or step-XXXXXXXX as asked
    bundle: str | None = None  # the bundle it resolved to
    step: int | None = None
    base_model: Path | None = None
    val_loss: float | None = None  # the source's latest evaluation when it was saved
    val_step: int | None = None

    def to_json(self) -> dict[str, Any]:
        """run.json's and run_start's `initialized_from`."""
        return {
            "run_id": self.run_id,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "checkpoint": self.checkpoint,
            "bundle": self.bundle,
            "step": self.step,
            "path": str(self.weights),
            "fine_tune_type": self.fine_tune_type,
            "val_loss": self.val_loss,
            "val_step": self.val_step,
        }


def resolve_init(value: str, checkpoint: str | None, workspace: Path, base_dir: Path) -> InitSource:
    """What `init_from` (and `init_checkpoint`) name; LineageError naming the field."""
    text = value.strip()
    runs = Workspace(workspace).runs_dir
    if is_valid_run_id(text) and "/" not in text and (runs / text).is_dir():
        return _run_source(RunPaths(runs / text), checkpoint, workspace)
    path = resolve_path(text, base_dir)
    if path.is_dir() and (path / "config.yaml").is_file():
        return _run_source(RunPaths(path), checkpoint, workspace)
    if checkpoint:
        raise LineageError(
            f"init_checkpoint picks a checkpoint of a run; init_from names no run here ({path})",
            "init_checkpoint",
        )
    if path.is_dir() and (path / ADAPTERS_FILE).is_file():
        return _file_source(path / ADAPTERS_FILE)
    if path.is_file() and path.suffix == ".safetensors":
        return _file_source(path)
    raise LineageError(
        f"{text!r} is no run of this workspace ({runs}) and no run folder, adapter folder "
        "or .safetensors file; give a run_id, a run folder or an adapter file"
    )


def _file_source(weights: Path) -> InitSource:
    kind = None
    try:
        kind = read_json_object(weights.parent, ADAPTER_CONFIG_FILE).get("fine_tune_type", "lora")
    except OSError:
        pass
    return InitSource(weights=weights, fine_tune_type=kind if isinstance(kind, str) else None)


def _run_source(run: RunPaths, checkpoint: str | None, workspace: Path) -> InitSource:
    bundles = list_bundles(run.root)
    if not bundles:
        raise LineageError(f"run {run.run_id} has no checkpoint to start from (at {run.root})")
    asked = (checkpoint or "").strip().lower()
    finals = [b for b in bundles if _reason(b.path) == "final"]
    if not asked:
        asked = "final" if finals else "latest"
    if asked == "final":
        if not finals:
            raise LineageError(
                f"run {run.run_id} has no final checkpoint (it has not finished, or its final "
                "bundle was removed); choose latest, best or a step",
                "init_checkpoint",
            )
        chosen = finals[-1]
    elif asked == "latest":
        latest = read_latest(run.root)
        pointed = [b for b in bundles if latest is not None and b.name == latest["bundle"]]
        chosen = pointed[0] if pointed else bundles[-1]
    elif asked == BEST:
        best = best_bundle(bundles)
        if best is None:
            raise LineageError(
                f"run {run.run_id} has no checkpoint with a validation loss of its own step; "
                "choose final, latest or a step",
                "init_checkpoint",
            )
        chosen = best
    else:
        try:
            name = normalize_checkpoint(asked)
        except SourceError:
            name = ""
        if not name.startswith("step-"):
            raise LineageError(
                f"init_checkpoint must be final, latest, best or step-N, got {checkpoint!r}",
                "init_checkpoint",
            )
        found = [b for b in bundles if b.name == name]
        if not found:
            known = ", ".join(b.name for b in bundles)
            raise LineageError(
                f"run {run.run_id} has no checkpoint {name}; it has {known}", "init_checkpoint"
            )
        chosen = found[0]
    state = _state(chosen.path)
    kind = state.get("fine_tune_type")
    try:
        base: Path | None = base_model_dir(run, workspace)
    except SourceError:
        base = None
    val_step = state.get("val_step")
    val_loss = state.get("val_loss")
    return InitSource(
        weights=chosen.path / ADAPTERS_FILE,
        fine_tune_type=kind if isinstance(kind, str) else None,
        run_id=run.run_id,
        run_dir=run.root.resolve(),
        checkpoint=asked if asked in CHECKPOINT_WORDS else bundle_name(chosen.step),
        bundle=chosen.name,
        step=chosen.step,
        base_model=base,
        val_loss=float(val_loss) if isinstance(val_loss, (int, float)) else None,
        val_step=val_step if isinstance(val_step, int) else None,
    )


def _reason(bundle: Path) -> Any:
    return _state(bundle).get("reason")


def _state(bundle: Path) -> dict[str, Any]:
    try:
        return read_state(bundle)
    except OSError:
        return {}


def check_init(
    config: RunConfig, workspace: Path, base_dir: Path
) -> tuple[InitSource | None, list[FieldError]]:
    """The source of `config.init_from` and what rules it out for this run: a source
    trained on another base model, or with another fine_tune_type."""
    if not config.init_from:
        if config.init_checkpoint:
            return None, [FieldError("init_checkpoint", "needs init_from: the run to start from")]
        return None, []
    try:
        source = resolve_init(config.init_from, config.init_checkpoint, workspace, base_dir)
    except InputError as exc:
        return None, [FieldError(exc.field, str(exc))]
    errors: list[FieldError] = []
    name = f"run {source.run_id}" if source.run_id else str(source.weights)
    kind = source.fine_tune_type
    if kind is not None and kind != config.fine_tune_type:
        if kind == "full":
            fix = (
                f"a {config.fine_tune_type} run over its weights needs them as its base: set "
                f"model to its final/ folder (a model folder) and leave init_from empty"
            )
        elif config.fine_tune_type == "full":
            fix = "export that run as a model (its adapter fused in) and use it as model"
        else:
            fix = f"use fine_tune_type {kind} to go on training the same adapter"
        errors.append(
            FieldError(
                "fine_tune_type",
                f"{name} trained {kind}, this run is {config.fine_tune_type}; {fix}",
            )
        )
    if kind in ("lora", "dora") and kind == config.fine_tune_type and not config.train_embeddings:
        if _full_modules(source.weights):
            errors.append(
                FieldError(
                    "train_embeddings",
                    f"{name} also trained its embeddings and head fully (train_embeddings); "
                    "turn train_embeddings on to go on training them with init_from",
                )
            )
    if source.run_id is not None and config.model:
        if source.base_model is None:
            errors.append(
                FieldError(
                    "init_from",
                    f"the base model of {name} is not on this machine; its weights apply to "
                    "that model only",
                )
            )
        elif not _same_folder(resolve_path(config.model, base_dir), source.base_model):
            errors.append(
                FieldError(
                    "model",
                    f"{name} was trained on {source.base_model}; set model to that folder "
                    "(its weights apply to that base model only)",
                )
            )
    return source, errors


def _full_modules(weights: Path) -> bool:
    """Whether the adapter_config.json beside `weights` lists modules trained fully."""
    try:
        config = read_json_object(weights.parent, ADAPTER_CONFIG_FILE)
    except (OSError, ValueError):
        return False
    return bool(config.get(FULL_MODULES_KEY))


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
