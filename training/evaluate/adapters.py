"""A run's adapter folder onto its base model: mlx-lm's load_adapters, plus the modules a
lora/dora run trained fully beside its adapters (`train_embeddings`: the embeddings and the
output head).

Such a folder's adapter_config.json lists them under `full_modules` and its
adapters.safetensors holds their weights with the adapters'. mlx-lm's own loader takes
adapter weights only (lora_a, lora_b, m), so this one loads the rest as well; an adapter
export splits them out (exporting.py) so that mlx_lm.load reads the result unaided.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from training.contract.checkpoints import ADAPTER_CONFIG_FILE, ADAPTERS_FILE, FULL_MODULES_KEY

ADAPTER_LEAVES = frozenset({"lora_a", "lora_b", "m"})


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    config = json.loads((Path(adapter_dir) / ADAPTER_CONFIG_FILE).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG_FILE} does not hold a mapping")
    return config


def full_modules(config: dict[str, Any]) -> list[str]:
    """The modules trained fully beside the adapters (empty for plain adapters)."""
    value = config.get(FULL_MODULES_KEY) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{FULL_MODULES_KEY} must be a list of module names, not {value!r}")
    return list(value)


def has_full_modules(source: Any) -> bool:
    """Whether an adapter source also holds fully trained embeddings and head."""
    if source.adapter_path is None:
        return False
    try:
        return bool(full_modules(read_adapter_config(source.adapter_path)))
    except (OSError, ValueError):
        return False


def is_full_weight(name: str, modules: list[str]) -> bool:
    return any(name.startswith(f"{m}.") for m in modules)


def split_weights(
    weights: dict[str, mx.array], modules: list[str]
) -> tuple[dict[str, mx.array], dict[str, mx.array]]:
    """(adapter weights, fully trained modules' weights)."""
    full = {k: v for k, v in weights.items() if is_full_weight(k, modules)}
    return {k: v for k, v in weights.items() if k not in full}, full


def load_adapters(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """mlx-lm's load_adapters, with the `full_modules` weights loaded too; the same checks
    (every weight a parameter of the model, with its shape), ValueError naming the rest."""
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.tuner.utils import load_adapters as mlx_lm_load_adapters

    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    modules = full_modules(config)
    if not modules:
        return mlx_lm_load_adapters(model, str(adapter_dir))
    fine_tune_type = config.get("fine_tune_type", "lora")
    if fine_tune_type not in ("lora", "dora"):
        raise ValueError(f"{FULL_MODULES_KEY} is for lora/dora adapters, not {fine_tune_type}")
    linear_to_lora_layers(
        model,
        config["num_layers"],
        config["lora_parameters"],
        use_dora=fine_tune_type == "dora",
    )
    weights: dict[str, mx.array] = mx.load(str(adapter_dir / ADAPTERS_FILE))  # type: ignore[assignment]
    params = dict(tree_flatten(model.parameters()))
    errors = []
    for name, w in weights.items():
        allowed = name.rsplit(".", 1)[-1] in ADAPTER_LEAVES or is_full_weight(name, modules)
        if not allowed or name not in params:
            errors.append(f"{name}: not an adapter or {FULL_MODULES_KEY} parameter of the model")
        elif w.shape != params[name].shape:
            errors.append(
                f"{name}: shape {tuple(w.shape)}, the model's {tuple(params[name].shape)}"
            )
    if errors:
        raise ValueError(
            f"the adapter at {adapter_dir} does not fit the model: " + "; ".join(errors[:5])
        )
    model.load_weights(list(weights.items()), strict=False)
    return model
