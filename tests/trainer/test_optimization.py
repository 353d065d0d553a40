"""Learning-rate schedules and optimizers from the fields."""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim
import pytest

from training.contract.config import build_config
from training.contract.schedule import learning_rate_at, schedule_spec
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


MAPPINGS = [
    {"name": "cosine_decay", "arguments": [1e-3, 100], "warmup": 5},
    {"name": "cosine_decay", "arguments": [1e-3, 30, 1e-4], "warmup": 3, "warmup_init": 1e-5},
    {"name": "linear_schedule", "arguments": [1e-3, 1e-5, 40]},
    {"name": "exponential_decay", "arguments": [1e-3, 0.97], "warmup": 2},
    {"name": "step_decay", "arguments": [1e-3, 0.5, 7]},
]


@pytest.mark.parametrize("mapping", MAPPINGS, ids=lambda m: m["name"])
def test_mlx_lm_schedule_mappings_equal_mlx_lms_builder_at_every_step(
    mapping: dict[str, Any],
) -> None:
    from mlx_lm.tuner.utils import build_schedule

    ours = learning_rate(_config(lr_schedule=mapping), 60)
    theirs = build_schedule(mapping)
    assert callable(ours)
    for step in range(60):
        assert _lr(ours, step) == pytest.approx(_lr(theirs, step), rel=1e-5, abs=1e-9), step
    assert learning_rate(_config(lr_schedule="constant", learning_rate=0.1), 10) == 0.1


SCHEDULES = [
    {"lr_schedule": "cosine", "warmup_steps": 3, "min_learning_rate": 1e-5},
    {"lr_schedule": "linear", "warmup_steps": 0},
    {"lr_schedule": "constant", "warmup_steps": 4, "warmup_init": 1e-4},
    {"lr_schedule": "wsd", "warmup_steps": 2, "decay_fraction": 0.3},
    {"lr_schedule": "wsd", "decay_steps": 7, "decay_shape": "cosine", "min_learning_rate": 1e-4},
    {"lr_schedule": "wsd", "decay_steps": 5, "decay_shape": "linear"},
    {"lr_schedule": {"name": "step_decay", "arguments": [2e-3, 0.5, 7], "warmup": 3}},
]


@pytest.mark.parametrize("values", SCHEDULES, ids=lambda v: str(v["lr_schedule"])[:20])
def test_the_trainers_mlx_schedule_is_the_consoles_float_schedule(values: dict[str, Any]) -> None:
    """The trainer's schedule (MLX arrays, float32) and the one the console plots (Python
    floats) are one function: they agree at every step."""
    config = _config(learning_rate=2e-3, **values)
    trainer = learning_rate(config, 40)
    spec = schedule_spec(config, 40)
    assert callable(trainer)
    for step in range(41):
        plotted = learning_rate_at(spec, step)
        assert _lr(trainer, step) == pytest.approx(plotted, rel=1e-5, abs=1e-9), step


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
