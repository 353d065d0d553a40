"""What to load for "the base model of a run", "checkpoint N", "the final model" or a folder.

Pure path logic, no MLX: the console lists the choices with it (model pickers), the
evaluation worker and the exporter resolve a choice into folders to load. A run's
`config.yaml` names its base model; its checkpoints and `final/` hold either a complete
model folder (a full run's final/) or an mlx-lm adapter folder over the base model:
LoRA/DoRA adapters, or for a full run's checkpoints the trained weights themselves
(training/checkpoints.py writes every bundle that way).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import ConfigError, read_yaml
from training.errors import InputError
from training.run_store import RunPaths, Workspace, is_valid_run_id

CHECKPOINT_RE = re.compile(r"step-(\d+)")
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

    @property
    def lora(self) -> bool:
        """LoRA/DoRA adapters over the base. (A full run's checkpoint is an mlx-lm adapter
        folder too, with fine_tune_type full: the trained weights themselves.)"""
        if self.adapter_path is None:
            return False
        try:
            config = json.loads((self.adapter_path / "adapter_config.json").read_text())
            kind = config.get("fine_tune_type", "lora") if isinstance(config, dict) else None
        except (OSError, ValueError):
            kind = self.fine_tune_type
        return kind in ("lora", "dora")

    @property
    def step(self) -> int | None:
        m = CHECKPOINT_RE.fullmatch(self.checkpoint or "")
        return int(m.group(1)) if m else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "adapter_path": str(self.adapter_path) if self.adapter_path else None,
            "label": self.label,
            "run_id": self.run_id,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "fine_tune_type": self.fine_tune_type,
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
        )


def normalize_checkpoint(checkpoint: str | int | None) -> str:
    """'final' (default), 'base', 'latest', a step number or a folder name → canonical name."""
    if checkpoint is None or checkpoint == "":
        return FINAL
    text = str(checkpoint).strip()
    if text in (BASE, FINAL, LATEST) or CHECKPOINT_RE.fullmatch(text):
        return text
    if text.isdigit():
        return f"step-{int(text):08d}"
    raise SourceError(
        f"unknown checkpoint {text!r}; use base, final, latest, a step number or step-XXXXXXXX",
        "checkpoint",
    )


def resolve_run_path(value: str, workspace: Path) -> Path:
    """A path from a run's config: absolute, else relative to the workspace (the demo's
    config says so), else as given (relative to where the trainer was started)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    in_workspace = workspace / p
    return in_workspace if in_workspace.exists() else p.resolve()


def run_config(run: RunPaths) -> dict[str, Any]:
    if not run.root.is_dir():
        raise SourceError(f"no run {run.run_id!r} in the workspace", "run_id")
    try:
        return read_yaml(run.config)
    except ConfigError as exc:
        raise SourceError(f"run {run.run_id}: {exc}", "run_id") from exc


def base_model_dir(run: RunPaths, workspace: Path) -> Path:
    raw = run_config(run).get("model")
    if not isinstance(raw, str) or not raw:
        raise SourceError(f"run {run.run_id} names no base model in config.yaml", "run_id")
    path = resolve_run_path(raw, workspace)
    if not (path / "config.json").is_file():
        raise SourceError(
            f"the base model of run {run.run_id} is not on this machine ({path}); "
            "it is needed to load the run's adapters or weights",
            "model",
        )
    return path


def list_checkpoints(run: RunPaths) -> list[str]:
    """Complete checkpoint bundles, oldest first. As for the console's checkpoint list, a
    bundle is complete when it has its state.json (temporary folders never match)."""
    if not run.checkpoints.is_dir():
        return []
    names = [
        p.name
        for p in run.checkpoints.iterdir()
        if CHECKPOINT_RE.fullmatch(p.name) and (p / "state.json").is_file()
    ]
    return sorted(names, key=lambda n: int(n.split("-")[1]))


def latest_checkpoint(run: RunPaths) -> str | None:
    try:
        pointer = json.loads(run.latest.read_text())
    except (OSError, ValueError):
        pointer = {}
    # latest.json may name the bundle by path, folder name or step.
    for key in ("bundle", "checkpoint", "name", "path"):
        value = pointer.get(key) if isinstance(pointer, dict) else None
        if isinstance(value, str) and CHECKPOINT_RE.fullmatch(Path(value).name):
            return Path(value).name
    step = pointer.get("step") if isinstance(pointer, dict) else None
    if isinstance(step, int):
        return f"step-{step:08d}"
    names = list_checkpoints(run)
    return names[-1] if names else None


def _has_weights(folder: Path) -> bool:
    return any(folder.glob(WEIGHT_GLOB))


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
    if all((folder / f).is_file() for f in ADAPTER_FILES):
        return ModelSource(model=base, adapter_path=folder, **common)
    if (folder / "config.json").is_file() and _has_weights(folder):
        return ModelSource(model=folder, **common)
    raise SourceError(f"{folder} holds no model weights or adapters", "checkpoint")


def resolve_source(workspace: Workspace, run_id: str, checkpoint: str | int | None) -> ModelSource:
    """The model of `run_id` at `checkpoint` (base, final, latest, step)."""
    if not is_valid_run_id(run_id):
        raise SourceError(f"invalid run_id {run_id!r}", "run_id")
    run = workspace.run(run_id)
    name = normalize_checkpoint(checkpoint)
    config = run_config(run)
    fine_tune_type = config.get("fine_tune_type") or "full"
    base = base_model_dir(run, workspace.root)
    if name == BASE:
        return ModelSource(
            model=base,
            label=f"{run_id} · base ({base.name})",
            run_id=run_id,
            checkpoint=BASE,
            fine_tune_type=fine_tune_type,
        )
    if name == LATEST:
        latest = latest_checkpoint(run)
        if latest is None:
            raise SourceError(f"run {run_id} has no checkpoint yet", "checkpoint")
        name = latest
    if name != FINAL:
        # Match by step number, whatever the zero padding of the folder name.
        wanted = int(name.split("-")[1])
        name = next((n for n in list_checkpoints(run) if int(n.split("-")[1]) == wanted), name)
    folder = run.final if name == FINAL else run.checkpoints / name
    if not folder.is_dir() or (name != FINAL and not (folder / "state.json").is_file()):
        known = ", ".join([BASE] + list_checkpoints(run) + ([FINAL] if run.final.is_dir() else []))
        raise SourceError(
            f"run {run_id} has no checkpoint {name!r}; choose one of: {known}", "checkpoint"
        )
    return bundle_source(
        folder, base, run_id=run_id, checkpoint=name, fine_tune_type=fine_tune_type
    )


def folder_source(path: str | Path) -> ModelSource:
    """A local model folder outside any run (already confined by the caller)."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise SourceError(f"{folder} is not a model folder (no config.json)", "model")
    return ModelSource(model=folder, label=folder.name)


def run_choices(workspace: Workspace, run_id: str) -> list[dict[str, Any]]:
    """Every model of a run a person can pick: base, each checkpoint, final."""
    run = workspace.run(run_id)
    names = [BASE] + list_checkpoints(run) + ([FINAL] if run.final.is_dir() else [])
    out: list[dict[str, Any]] = []
    for name in names:
        try:
            out.append(resolve_source(workspace, run_id, name).to_json())
        except SourceError:
            continue  # e.g. a base model that moved away: not a choice
    return out
