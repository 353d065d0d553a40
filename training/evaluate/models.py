"""Load a model to test: a local folder (never a hub download) with its adapters, checked
first so every failure is an EvaluationError naming the input to fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.errors import InputError
from training.contract.model_source import ModelSource

# config.json keys that name a model's context length, most common first.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")


ShouldStop = Callable[[], bool]


class EvaluationError(InputError):
    """Bad input for an evaluation; `field` names the input to fix (API: {"error", "field"})."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    config: dict[str, Any]

    @property
    def context_length(self) -> int | None:
        return context_length(self.config)


def context_length(config: dict[str, Any]) -> int | None:
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_model_dir(model: str | Path, field: str = "model") -> Path:
    """A local model folder, checked before mlx-lm sees it: mlx_lm.load would treat a
    missing path as a Hugging Face id and try the network."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EvaluationError(f"no model folder at {path}; give a folder with config.json", field)
    if not (path / "config.json").is_file():
        raise EvaluationError(f"{path} has no config.json: not a model folder", field)
    return path


def check_adapter_dir(adapter: str | Path, field: str = "adapter_path") -> Path:
    path = Path(adapter).expanduser()
    for name in ("adapter_config.json", "adapters.safetensors"):
        if not (path / name).is_file():
            raise EvaluationError(
                f"{path} is not an adapter folder (no {name}); give a LoRA/DoRA adapter "
                "folder such as a run's final/ or a checkpoint",
                field,
            )
    return path


def load_model(model: str | Path, adapter_path: str | Path | None = None) -> LoadedModel:
    """mlx_lm.load with checked paths; any failure to load becomes an EvaluationError."""
    model_dir = check_model_dir(model)
    adapter_dir = check_adapter_dir(adapter_path) if adapter_path else None
    from mlx_lm import load

    from training.evaluate.adapters import load_adapters

    try:
        result: Any = load(str(model_dir), return_config=True)
        if adapter_dir is not None:  # mlx-lm's, plus embeddings and head trained fully
            load_adapters(result[0], adapter_dir)
            result[0].eval()
    # mlx-lm raises many types here (FileNotFoundError, ValueError, KeyError, safetensors
    # errors); to the person they all mean the same thing: this model does not load.
    except Exception as exc:  # noqa: BLE001
        field = "adapter_path" if adapter_dir and "adapter" in str(exc).lower() else "model"
        raise EvaluationError(f"could not load the model at {model_dir}: {exc}", field) from exc
    loaded, tokenizer, config = result
    return LoadedModel(loaded, tokenizer, config)


def load_source(source: ModelSource) -> LoadedModel:
    """Load a resolved model choice: the base folder, with its adapters when it has some."""
    return load_model(source.model, source.adapter_path)
