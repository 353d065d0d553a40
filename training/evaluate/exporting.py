"""Export a run's final model or any checkpoint as a folder mlx-lm loads.

Formats: `model`, a standalone model folder (`mlx_lm.load(dest)`): LoRA/DoRA adapters
are fused into the base the way `mlx_lm fuse` does it, a full run's weights are saved
as they are; `adapter`, the LoRA/DoRA adapter folder alone (`mlx_lm.load(base,
adapter_path=dest)`); a run that also trained its embeddings and head fully
(`train_embeddings`) exports the base with those weights in place and the adapters beside
them (`mlx_lm.load(dest, adapter_path=dest)`: mlx-lm's adapter loader takes adapter
weights only). Every export carries a model card (README.md). The export is
built in a hidden sibling folder and renamed into place, so a failure leaves nothing
behind, and an existing folder is replaced only with `overwrite`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.checkpoints import ADAPTER_CONFIG_FILE, ADAPTERS_FILE, FULL_MODULES_KEY
from training.contract.exports import FORMATS, ExportError, check_destination
from training.contract.layout import Workspace
from training.contract.model_source import ModelSource
from training.evaluate.adapters import full_modules, read_adapter_config, split_weights
from training.evaluate.model_card import render_model_card
from training.evaluate.models import load_model, load_source

# Told each stage of the export as it begins ("loading the model").
StageProgress = Callable[[str], None]


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


def export_source(
    source: ModelSource,
    dest: Path,
    fmt: str,
    workspace: Workspace,
    *,
    overwrite: bool = False,
    progress: StageProgress = lambda message: None,
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
            _copy_adapter(source, staging, progress)
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


def _copy_adapter(source: ModelSource, staging: Path, progress: StageProgress) -> None:
    """The adapter folder as it is; one that also holds fully trained embeddings and head
    (`full_modules`) becomes the base model with those weights in place plus the adapters
    alone beside them, since mlx-lm's adapter loader takes adapter weights only:
    `mlx_lm.load(dest, adapter_path=dest)`."""
    assert source.adapter_path is not None
    config = read_adapter_config(source.adapter_path)
    modules = full_modules(config)
    if not modules:
        for name in (ADAPTERS_FILE, ADAPTER_CONFIG_FILE):
            shutil.copy2(source.adapter_path / name, staging / name)
        return
    import mlx.core as mx
    from mlx_lm.utils import save

    progress("loading the base model")
    base = load_model(source.model)
    weights: dict[str, Any] = mx.load(str(source.adapter_path / ADAPTERS_FILE))  # type: ignore[assignment]
    adapters, trained = split_weights(weights, modules)
    base.model.load_weights(list(trained.items()), strict=False)
    progress(f"saving the base with its trained {', '.join(modules)}")
    save(staging, source.model, base.model, base.tokenizer, base.config, donate_model=False)
    mx.save_safetensors(str(staging / ADAPTERS_FILE), adapters, {"format": "mlx"})
    plain = {k: v for k, v in config.items() if k != FULL_MODULES_KEY}
    plain["model"] = "."  # the base with the trained embeddings and head: this folder
    plain["base_model"] = str(config.get("model") or source.model)
    (staging / ADAPTER_CONFIG_FILE).write_text(json.dumps(plain, indent=2) + "\n")


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


def _save_fused(source: ModelSource, staging: Path, progress: StageProgress) -> None:
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
