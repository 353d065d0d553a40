"""A checkpoint's arrays: the trained parameters (mlx-lm's adapter layout, also for
`full`) and the optimizer state, saved into a bundle the contract's checkpoints.write_bundle
makes durable, and loaded back for an exact resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from training.contract.checkpoints import ADAPTER_CONFIG_FILE, ADAPTERS_FILE, OPTIMIZER_FILE


def save_trainable(directory: Path, model: Any, adapter_config: dict[str, Any]) -> None:
    """The trained parameters in mlx-lm's adapter layout (also used for `full`)."""

    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(directory / ADAPTERS_FILE), weights, {"format": "mlx"})
    (directory / ADAPTER_CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2) + "\n")


def save_optimizer(directory: Path, optimizer: Any) -> None:

    state = dict(tree_flatten(optimizer.state))
    mx.save_safetensors(str(directory / OPTIMIZER_FILE), state)


def checkpoint_bytes(model: Any, optimizer: Any) -> int:
    """The arrays a bundle holds, in bytes: the trainable parameters and the optimizer
    state (the estimate of a first checkpoint's size, before any bundle exists)."""
    arrays: list[tuple[str, mx.array]] = [
        *tree_flatten(model.trainable_parameters()),
        *tree_flatten(optimizer.state),
    ]
    return sum(int(a.nbytes) for _, a in arrays if isinstance(a, mx.array))


def load_trainable(bundle: Path, model: Any) -> None:
    """Load a bundle's weights into the model's trainable parameters: exactly those keys
    with those shapes (ValueError naming the difference), so a bundle from another model
    or another choice of layers is never half-applied."""

    weights: dict[str, Any] = mx.load(str(bundle / ADAPTERS_FILE))  # type: ignore[assignment]
    expected = dict(tree_flatten(model.trainable_parameters()))
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(weights) & set(expected) if weights[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("other shapes", wrong),
            )
            if keys
        ]
        raise ValueError(
            f"{Path(bundle).name} does not fit the model's trainable parameters ("
            + "; ".join(parts)
            + ")"
        )
    model.load_weights(list(weights.items()), strict=False)


def load_optimizer(bundle: Path, optimizer: Any) -> None:
    """Replace the optimizer's state; call before the compiled step captures it."""

    flat: dict[str, Any] = mx.load(str(bundle / OPTIMIZER_FILE))  # type: ignore[assignment]
    optimizer.state = tree_unflatten(list(flat.items()))


def load_init(weights_file: Path, model: Any) -> int:
    """init_from: load another run's trained weights into this run's trainable parameters.
    Every weight of the file must be one this run trains, with the same shape (ValueError
    naming the first that are not), so a source is never half-applied; the weights take
    this run's dtype. Returns how many arrays were loaded."""

    weights: dict[str, Any] = mx.load(str(weights_file))  # type: ignore[assignment]
    expected = dict(tree_flatten(model.trainable_parameters()))
    untrained = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(weights) & set(expected) if weights[k].shape != expected[k].shape)
    if untrained or wrong:
        parts = [
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("not trained by this run", untrained), ("other shapes", wrong))
            if keys
        ]
        fix = "train the same layers (num_layers), adapter rank and keys as that run"
        adapters = ("lora_a", "lora_b", "m")
        if any(k.rsplit(".", 1)[-1] not in adapters for k in untrained) and any(
            k.rsplit(".", 1)[-1] in adapters for k in expected
        ):
            fix = (
                "that run also trained its embeddings and head fully: turn train_embeddings "
                "on to go on training them"
            )
        raise ValueError(
            f"{weights_file} does not fit this run's trainable parameters ("
            + "; ".join(parts)
            + f"): {fix}"
        )
    model.load_weights([(k, v.astype(expected[k].dtype)) for k, v in weights.items()], strict=False)
    return len(weights)
