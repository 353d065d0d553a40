"""trainer/weights.py: a checkpoint's arrays round-trip exactly; weights that do not fit the
model are refused, never half-applied."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest

from training.contract.checkpoints import write_bundle
from training.trainer.weights import load_optimizer, load_trainable, save_optimizer, save_trainable


def test_mlx_arrays_round_trip_through_a_bundle(tmp_path: Path) -> None:
    import mlx.nn as nn
    import mlx.optimizers as optim

    model = nn.Linear(3, 2)
    opt = optim.AdamW(learning_rate=0.1)
    grads = {k: mx.ones_like(v) for k, v in model.parameters().items()}
    opt.update(model, grads)

    def write(d: Path) -> None:
        save_trainable(d, model, {"fine_tune_type": "full", "num_layers": -1})
        save_optimizer(d, opt)

    bundle = write_bundle(tmp_path / "checkpoints", 1, {}, write)
    other, other_opt = nn.Linear(3, 2), optim.AdamW(learning_rate=0.1)
    load_trainable(bundle, other)
    load_optimizer(bundle, other_opt)
    assert mx.array_equal(other.weight, model.weight).item()
    assert mx.array_equal(other_opt.state["weight"]["v"], opt.state["weight"]["v"]).item()
    assert int(other_opt.state["step"].item()) == 1
    assert json.loads((bundle / "adapter_config.json").read_text())["fine_tune_type"] == "full"


def test_loading_weights_that_do_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    import mlx.nn as nn

    def write(d: Path) -> None:
        save_trainable(d, nn.Linear(3, 2), {"fine_tune_type": "full"})

    bundle = write_bundle(tmp_path / "checkpoints", 1, {}, write)
    with pytest.raises(ValueError, match="other shapes: bias, weight"):
        load_trainable(bundle, nn.Linear(3, 3))
    with pytest.raises(ValueError, match="unexpected: bias"):
        load_trainable(bundle, nn.Linear(3, 2, bias=False))
    frozen_bias = nn.Linear(3, 2)
    frozen_bias.freeze(keys=["bias"])  # a bundle with more than the model trains
    with pytest.raises(ValueError, match="unexpected: bias"):
        load_trainable(bundle, frozen_bias)
    load_trainable(bundle, nn.Linear(3, 2))
