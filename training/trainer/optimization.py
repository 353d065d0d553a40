"""The optimizer and its learning-rate schedule, from the run's fields.

The schedule is a function of the optimizer's own step counter (saved with its state), so a
resumed run continues the curve exactly. It is built from MLX ops because it runs inside
the compiled step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim

from training.contract.config import ConfigError, FieldError, RunConfig

Schedule = Callable[[mx.array], mx.array]

OPTIMIZERS: dict[str, Any] = {
    "adamw": optim.AdamW,
    "adam": optim.Adam,
    "sgd": optim.SGD,
    "adafactor": optim.Adafactor,
}
# Optimizers whose constructor takes weight_decay from the field (others ignore it).
_WEIGHT_DECAY = ("adamw", "sgd")


def _cosine(peak: float, floor: float, t: mx.array) -> mx.array:
    return floor + (peak - floor) * 0.5 * (1.0 + mx.cos(math.pi * t))


def _linear(peak: float, floor: float, t: mx.array) -> mx.array:
    return peak + (floor - peak) * t


def _constant(peak: float, floor: float, t: mx.array) -> mx.array:
    return mx.full(t.shape, peak, dtype=mx.float32)


DECAYS: dict[str, Callable[[float, float, mx.array], mx.array]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
}


def warmup_decay(
    kind: str, peak: float, total_steps: int, warmup: int = 0, floor: float = 0.0
) -> Schedule:
    """Linear warmup to `peak` over `warmup` updates (the first update already uses
    peak/warmup, never 0), then `kind` decay towards `floor` at `total_steps`."""
    decay = DECAYS[kind]
    span = max(1, total_steps - warmup)

    def schedule(step: mx.array) -> mx.array:
        s = step.astype(mx.float32)
        t = mx.clip((s - warmup) / span, 0.0, 1.0)
        after = decay(peak, floor, t)
        if warmup <= 0:
            return after
        return mx.where(s < warmup, peak * (s + 1.0) / warmup, after)

    return schedule


def learning_rate(config: RunConfig, total_steps: int) -> float | Schedule:
    """The optimizer's learning_rate: an mlx-lm `lr_schedule` mapping goes through mlx-lm's
    own build_schedule; a named shape uses the warmup/min fields."""
    sched = config.lr_schedule
    if isinstance(sched, dict):
        from mlx_lm.tuner.utils import build_schedule

        return build_schedule(sched)
    if sched == "constant" and not config.warmup_steps:
        return float(config.learning_rate)
    return warmup_decay(
        sched or "constant",
        float(config.learning_rate),
        total_steps,
        int(config.warmup_steps or 0),
        float(config.min_learning_rate or 0.0),
    )


def optimizer_kwargs(config: RunConfig) -> dict[str, Any]:
    """Keyword arguments from the fields, overridden by `optimizer_config` (mlx-lm's
    {name: {...}} shape, or a flat mapping for the chosen optimizer)."""
    name = config.optimizer
    kwargs: dict[str, Any] = {}
    if name == "adafactor":  # else Adafactor ignores learning_rate (relative step sizes)
        kwargs["relative_step"] = False
    if name in _WEIGHT_DECAY and config.weight_decay is not None:
        kwargs["weight_decay"] = float(config.weight_decay)
    extra = config.optimizer_config or {}
    if any(key in OPTIMIZERS or key == "muon" for key in extra):
        extra = extra.get(name) or {}
    for key, value in extra.items():
        kwargs[key] = list(value) if isinstance(value, tuple) else value
    return kwargs


def build_optimizer(config: RunConfig, total_steps: int) -> optim.Optimizer:
    cls = OPTIMIZERS[config.optimizer]
    return cls(learning_rate=learning_rate(config, total_steps), **optimizer_kwargs(config))


def check_optimizer(config: RunConfig) -> None:
    """Build the schedule and the optimizer once on a throw-away parameter and take one
    step, so a bad lr_schedule or optimizer_config is bad input (ConfigError) before the
    model loads. The run's optimizer needs its step count, known once the data is
    tokenized (for an epochs or train_tokens budget)."""
    steps = config.effective_iters or 1000
    try:
        schedule = learning_rate(config, steps)
        if callable(schedule):
            mx.eval(schedule(mx.array(0)), schedule(mx.array(steps)))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        message = f"cannot build the learning-rate schedule: {exc}"
        raise ConfigError([FieldError("lr_schedule", message)]) from None
    try:
        optimizer = OPTIMIZERS[config.optimizer](learning_rate=schedule, **optimizer_kwargs(config))
        params = {"w": mx.zeros((2,))}
        params = optimizer.apply_gradients({"w": mx.ones((2,))}, params)
        mx.eval(params, optimizer.state)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        message = f"cannot build the {config.optimizer} optimizer: {exc}"
        raise ConfigError([FieldError("optimizer_config", message)]) from None
