"""Learning-rate schedules and optimizers from the fields."""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
import pytest

from training.contract.config import build_config
from training.trainer.optimization import (
    build_optimizer,
    learning_rate,
    optimizer_kwargs,
    warmup_decay,
)


def _config(**values: Any):
    return build_config({"model": "m", "data": "d", **values})[0]


def _lr(schedule: Any, step: int) -> float:
    return float(schedule(mx.array(step)).item())


def test_warmup_never_wastes_a_step_then_cosine_decays_to_the_floor() -> None:
    s = warmup_decay("cosine", 1e-3, total_steps=110, warmup=10, floor=1e-4)
    assert _lr(s, 0) == pytest.approx(1e-4)  # first update: peak / warmup, not 0
    assert _lr(s, 9) == pytest.approx(1e-3)
    assert _lr(s, 10) == pytest.approx(1e-3)
    assert _lr(s, 60) == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert _lr(s, 110) == pytest.approx(1e-4)


@pytest.mark.parametrize(("kind", "mid"), [("linear", 0.5), ("constant", 1.0)])
def test_linear_and_constant(kind: str, mid: float) -> None:
    s = warmup_decay(kind, 1.0, total_steps=100, warmup=0, floor=0.0)
    assert _lr(s, 0) == pytest.approx(1.0)
    assert _lr(s, 50) == pytest.approx(mid)


def test_mlx_lm_schedule_mapping_uses_mlx_lms_builder() -> None:
    cfg = _config(
        lr_schedule={"name": "cosine_decay", "arguments": [1e-3, 100], "warmup": 5},
    )
    s = learning_rate(cfg, 100)
    assert callable(s) and _lr(s, 5) == pytest.approx(1e-3)
    assert learning_rate(_config(lr_schedule="constant", learning_rate=0.1), 10) == 0.1


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("adamw", optim.AdamW),
        ("adam", optim.Adam),
        ("sgd", optim.SGD),
        ("adafactor", optim.Adafactor),
    ],
)
def test_every_optimizer_builds(name: str, cls: type) -> None:
    assert isinstance(build_optimizer(_config(optimizer=name), 10), cls)


def test_optimizer_config_overrides_in_mlx_lm_shape() -> None:
    cfg = _config(
        optimizer="adamw",
        weight_decay=0.1,
        optimizer_config={"adamw": {"betas": [0.9, 0.95], "weight_decay": 0.0}, "sgd": {}},
    )
    assert optimizer_kwargs(cfg) == {"weight_decay": 0.0, "betas": [0.9, 0.95]}
    opt = build_optimizer(cfg, 10)
    assert opt.betas == [0.9, 0.95]  # type: ignore[attr-defined]
