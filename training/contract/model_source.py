"""What to load for "the base model of a run", "checkpoint N", "the final model" or a folder.

Pure path logic, no MLX: the console lists the choices with it (model pickers), the
evaluation worker and the exporter resolve a choice into folders to load. A run's
`config.yaml` names its base model; its checkpoints and `final/` hold either a complete
model folder (a full run's final/) or an mlx-lm adapter folder over the base model:
LoRA/DoRA adapters, or for a full run's checkpoints the trained weights themselves
(contract/checkpoints.py writes every bundle that way).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from training.contract.checkpoints import (
    bundle_name,
    bundle_step,
    list_bundles,
    read_latest,
    read_state,
)
from training.contract.config import ConfigError, parse_yaml_text
from training.contract.errors import InputError
from training.contract.layout import RunPaths, Workspace, is_valid_run_id
from training.contract.reading import MAX_RECORD_BYTES, is_real_dir, read_json_object, read_text

# What a person may type for a checkpoint: step-5 or step-00000005 (or just 5).
_STEP_RE = re.compile(r"step-(\d+)")
# The names a person or the API may use besides a checkpoint folder name.
BASE, FINAL, LATEST = "base", "final", "latest"
ADAPTER_FILES = ("adapter_config.json", "adapters.safetensors")
WEIGHT_GLOB = "model*.safetensors"


class SourceError(InputError):
    """A model choice that cannot be used; `field` names the input to fix."""


@dataclass(frozen=True)
class ModelSource:
    """Folders that together make one model to load."""

    model: Path  # config.json + tokenizer + base weights
    adapter_path: Path | None = None  # applied with mlx_lm.load(adapter_path=...)
    label: str = ""
    run_id: str | None = None
    checkpoint: str | None = None  # base, final or step-XXXXXXXX; None for a plain folder
    fine_tune_type: str | None = None
    run_dir: Path | None = None  # the run folder (any folder, not only <workspace>/runs/<id>)

    @property
    def lora(self) -> bool:
        """LoRA/DoRA adapters over the base. (A full run's checkpoint is an mlx-lm adapter
        folder too, with fine_tune_type full: the trained weights themselves.)"""
        if self.adapter_path is None:
            return False
        try:
            config = read_json_object(self.adapter_path, "adapter_config.json")
            kind = config.get("fine_tune_type", "lora")
        except OSError:  # missing, or not a regular JSON file (a link, a FIFO)
            kind = self.fine_tune_type
        return kind in ("lora", "dora")

    @property
    def step(self) -> int | None:
        return bundle_step(self.checkpoint or "")

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "adapter_path": str(self.adapter_path) if self.adapter_path else None,
            "label": self.label,
            "run_id": self.run_id,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "fine_tune_type": self.fine_tune_type,
            "run_dir": str(self.run_dir) if self.run_dir else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSource:
        def path(key: str) -> Path | None:
            value = data.get(key)
            return Path(value) if value else None

        model = path("model")
        if model is None:
            raise SourceError("a model folder is required", "model")
        return cls(
            model=model,
            adapter_path=path("adapter_path"),
            label=str(data.get("label") or model.name),
            run_id=data.get("run_id"),
            checkpoint=data.get("checkpoint"),
            fine_tune_type=data.get("fine_tune_type"),
            run_dir=path("run_dir"),
        )


def normalize_checkpoint(checkpoint: str | int | None) -> str:
    """'final' (default), 'base', 'latest', a step number or a folder name → canonical name."""
    if checkpoint is None or checkpoint == "":
        return FINAL
    text = str(checkpoint).strip()
    if text in (BASE, FINAL, LATEST):
        return text
    m = _STEP_RE.fullmatch(text)
    if m or text.isdigit():
        return bundle_name(int(m.group(1) if m else text))
    raise SourceError(
        f"unknown checkpoint {text!r}; use base, final, latest, a step number or step-XXXXXXXX",
        "checkpoint",
    )


def resolve_run_path(value: str, workspace: Path) -> Path:
    """A path from a run's config: absolute, else relative to the workspace (the demo's
    config says so), else as given (relative to where the trainer was started)."""
    p = Path(os.path.expanduser(value))  # pathlib's raises on `~nosuchuser`
    if p.is_absolute():
        return p
    in_workspace = workspace / p
    return in_workspace if in_workspace.exists() else p.resolve()


def run_workspace_root(run: RunPaths) -> Path:
    """The workspace a <workspace>/runs/<run_id> folder sits in; for a run folder anywhere
    else, the folder that holds it (relative paths in its config are tried there)."""
    root = run.root.resolve()
    return root.parent.parent if root.parent.name == "runs" else root.parent


def run_config(run: RunPaths) -> dict[str, Any]:
    """The run's config.yaml as a mapping, read without following a link, from a regular
    file of at most 4 MiB (never a FIFO that would block); SourceError otherwise."""
    if not run.root.is_dir():
        raise SourceError(f"no run {run.run_id!r} at {run.root}", "run_id")
    try:
        text = read_text(run.root, run.config.name, MAX_RECORD_BYTES)
    except FileNotFoundError:
        raise SourceError(f"run {run.run_id}: no config.yaml in {run.root}", "run_id") from None
    except OSError as exc:
        raise SourceError(f"run {run.run_id}: {exc}", "run_id") from None
    try:
        return parse_yaml_text(text, source=str(run.config))
    except ConfigError as exc:
        raise SourceError(f"run {run.run_id}: {exc}", "run_id") from exc


def has_final(run: RunPaths) -> bool:
    """The run's final/ is a real folder of the run (a link to one elsewhere is not)."""
    return is_real_dir(run.root, run.final.name)


def _regular(path: Path) -> bool:
    """A regular file, not reached through a link at its own name."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def base_model_dir(run: RunPaths, workspace: Path) -> Path:
    """The run's base model folder: its config's `model` (a relative one against the
    workspace), else the folder the trainer resolved it to, as its latest checkpoint
    recorded (state.json `inputs`: a run folder moved, or started from another folder)."""
    raw = run_config(run).get("model")
    if not isinstance(raw, str) or not raw:
        raise SourceError(f"run {run.run_id} names no base model in config.yaml", "run_id")
    path = resolve_run_path(raw, workspace)
    if not (path / "config.json").is_file():
        recorded = _recorded_model(run)
        if recorded is not None and (recorded / "config.json").is_file():
            return recorded
        raise SourceError(
            f"the base model of run {run.run_id} is not on this machine ({path}); "
            "it is needed to load the run's adapters or weights",
            "model",
        )
    return path


def _recorded_model(run: RunPaths) -> Path | None:
    latest = read_latest(run.root)
    try:
        inputs = read_state(latest["path"]).get("inputs") if latest else None
    except (OSError, ValueError):
        return None
    model = inputs.get("model") if isinstance(inputs, dict) else None
    return Path(model) if isinstance(model, str) and model else None


def checkpoint_names(run: RunPaths) -> list[str]:
    """Complete checkpoint bundles' names, oldest first: exactly the ones
    contract/checkpoints.py lists for the console and resumes from."""
    return [b.name for b in list_bundles(run.root)]


def latest_checkpoint(run: RunPaths) -> str | None:
    """The bundle checkpoints/latest.json points at, when it is complete (the contract:
    no pointer, no latest; the newest folder is not guessed)."""
    latest = read_latest(run.root)
    return str(latest["bundle"]) if latest else None


def _has_weights(folder: Path) -> bool:
    return any(_regular(p) for p in folder.glob(WEIGHT_GLOB))


def bundle_source(
    folder: Path, base: Path, *, run_id: str, checkpoint: str, fine_tune_type: str | None
) -> ModelSource:
    """How to load one checkpoint bundle or final/ folder."""
    label = f"{run_id} · {checkpoint}"
    common: dict[str, Any] = {
        "label": label,
        "run_id": run_id,
        "checkpoint": checkpoint,
        "fine_tune_type": fine_tune_type,
    }
    # Links and FIFOs are no model files: a loader would read elsewhere, or hang.
    if all(_regular(folder / f) for f in ADAPTER_FILES):
        return ModelSource(model=base, adapter_path=folder, **common)
    if _regular(folder / "config.json") and _has_weights(folder):
        return ModelSource(model=folder, **common)
    raise SourceError(f"{folder} holds no model weights or adapters", "checkpoint")


def resolve_source(workspace: Workspace, run_id: str, checkpoint: str | int | None) -> ModelSource:
    """The model of `run_id` at `checkpoint` (base, final, latest, step)."""
    if not is_valid_run_id(run_id):
        raise SourceError(f"invalid run_id {run_id!r}", "run_id")
    return resolve_run_source(workspace.run(run_id), checkpoint, workspace.root)


def resolve_run_source(
    run: RunPaths, checkpoint: str | int | None, workspace: Path | None = None
) -> ModelSource:
    """The model of the run in folder `run` (anywhere) at `checkpoint`; relative paths in
    its config resolve against `workspace` (default: the run's own, run_workspace_root)."""
    run_id = run.run_id
    name = normalize_checkpoint(checkpoint)
    config = run_config(run)
    fine_tune_type = config.get("fine_tune_type") or "full"
    base = base_model_dir(run, workspace if workspace is not None else run_workspace_root(run))
    run_dir = run.root.resolve()
    if name == BASE:
        return ModelSource(
            model=base,
            label=f"{run_id} · base ({base.name})",
            run_id=run_id,
            checkpoint=BASE,
            fine_tune_type=fine_tune_type,
            run_dir=run_dir,
        )
    if name == LATEST:
        latest = latest_checkpoint(run)
        if latest is None:
            raise SourceError(f"run {run_id} has no checkpoint yet", "checkpoint")
        name = latest
    complete = checkpoint_names(run)
    final = has_final(run)
    if (name == FINAL and not final) or (name != FINAL and name not in complete):
        known = ", ".join([BASE] + complete + ([FINAL] if final else []))
        raise SourceError(
            f"run {run_id} has no checkpoint {name!r}; choose one of: {known}", "checkpoint"
        )
    folder = run.final if name == FINAL else run.checkpoints / name
    source = bundle_source(
        folder, base, run_id=run_id, checkpoint=name, fine_tune_type=fine_tune_type
    )
    return replace(source, run_dir=run_dir)


def folder_source(path: str | Path) -> ModelSource:
    """A local model folder outside any run (already confined by the caller)."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise SourceError(f"{folder} is not a model folder (no config.json)", "model")
    return ModelSource(model=folder, label=folder.name)


def run_choices(workspace: Workspace, run_id: str) -> list[dict[str, Any]]:
    """Every model of a run a person can pick: base, each checkpoint, final."""
    run = workspace.run(run_id)
    names = [BASE] + checkpoint_names(run) + ([FINAL] if has_final(run) else [])
    out: list[dict[str, Any]] = []
    for name in names:
        try:
            out.append(resolve_source(workspace, run_id, name).to_json())
        except SourceError:
            continue  # e.g. a base model that moved away: not a choice
    return out
