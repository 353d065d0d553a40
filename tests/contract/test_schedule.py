"""The learning-rate schedule's pure math (contract/schedule.py), on floats."""

from __future__ import annotations

import math
from typing import Any

import pytest

from training.contract.config import build_config
from training.contract.schedule import (
    ScheduleSpec,
    learning_rate_at,
    learning_rates,
    schedule_spec,
    wsd_decay_steps,
)


def _spec(total: int, **values: Any) -> ScheduleSpec:
    config, _ = build_config({"model": "m", "data": "d", **values})
    return schedule_spec(config, total)


def test_warmup_starts_off_warmup_init_and_reaches_the_peak() -> None:
    spec = _spec(100, learning_rate=1e-3, warmup_steps=4, warmup_init=2e-4, lr_schedule="cosine")
    lrs = [learning_rate_at(spec, s) for s in range(5)]
    assert lrs[0] == pytest.approx(2e-4 + 0.8e-3 / 4)
    assert lrs[3] == pytest.approx(1e-3) and lrs[4] == pytest.approx(1e-3)


def test_wsd_is_flat_then_decays_to_the_floor_on_the_last_update() -> None:
    spec = _spec(
        100, learning_rate=1.0, min_learning_rate=0.1, lr_schedule="wsd", decay_fraction=0.2
    )
    assert spec.decay_steps == 20
    assert all(learning_rate_at(spec, s) == 1.0 for s in range(80))
    assert learning_rate_at(spec, 99) == pytest.approx(0.1)  # the last update
    # 1-sqrt: half-way through the decay, 1 - sqrt(0.5) of the way down
    assert learning_rate_at(spec, 89) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(0.5)))


@pytest.mark.parametrize(
    ("shape", "mid"), [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))]
)
def test_wsd_decay_shapes(shape: str, mid: float) -> None:
    spec = _spec(40, learning_rate=1.0, lr_schedule="wsd", decay_steps=10, decay_shape=shape)
    assert learning_rate_at(spec, 34) == pytest.approx(mid)  # 5 of 10 decay updates done


def test_wsd_extension_moves_the_decay_to_the_new_end() -> None:
    short = _spec(100, learning_rate=1.0, lr_schedule="wsd", decay_steps=10)
    longer = _spec(200, learning_rate=1.0, lr_schedule="wsd", decay_steps=10)
    assert [learning_rate_at(longer, s) for s in range(90)] == [
        learning_rate_at(short, s) for s in range(90)
    ]
    assert learning_rate_at(short, 95) < 1.0 and learning_rate_at(longer, 95) == 1.0
    assert learning_rate_at(longer, 199) == pytest.approx(0.0)


def test_decay_length_is_bounded_by_what_the_warmup_leaves() -> None:
    assert wsd_decay_steps(10, 4, 50, 0.2) == 6
    assert wsd_decay_steps(10, 0, None, 0.01) == 1
    assert wsd_decay_steps(1000, 0, None, 0.25) == 250


def test_learning_rates_lists_every_step_or_a_spread() -> None:
    spec = _spec(30, learning_rate=1e-3, lr_schedule="linear")
    steps, lrs = learning_rates(spec)
    assert steps == list(range(1, 31)) and lrs[0] == pytest.approx(1e-3)
    steps, _ = learning_rates(spec, max_points=7)
    assert steps[0] == 1 and steps[-1] == 30 and len(steps) == 7


def test_mlx_lm_mapping_warmup_joins_at_warmup_plus_one() -> None:
    spec = _spec(
        100,
        lr_schedule={"name": "cosine_decay", "arguments": [1e-3, 100], "warmup": 5},
    )
    assert learning_rate_at(spec, 0) == 0.0 and learning_rate_at(spec, 5) == pytest.approx(1e-3)
    assert learning_rate_at(spec, 6) == pytest.approx(1e-3)  # cosine_decay(0)
