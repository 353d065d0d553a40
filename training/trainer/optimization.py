"""The optimizer and its learning-rate schedule, from the run's fields.

The schedule is a function of the optimizer's own step counter (saved with its state), so a
resumed run continues the curve exactly. Its math is contract/schedule.py's (the console
plots the same function on floats); here it runs on MLX arrays inside the compiled step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.optimizers as optim

from training.contract.config import ConfigError, FieldError, RunConfig
from training.contract.schedule import ScheduleSpec, learning_rate_at, schedule_spec

Schedule = Callable[[mx.array], mx.array]

OPTIMIZERS: dict[str, Any] = {
    "adamw": optim.AdamW,
    "adam": optim.Adam,
    "sgd": optim.SGD,
    "adafactor": optim.Adafactor,
}
# Optimizers whose constructor takes weight_decay from the field (others ignore it).
_WEIGHT_DECAY = ("adamw", "sgd")


class _MlxOps:
    """contract/schedule.py's operations on MLX arrays (inside the compiled step)."""

    def to_float(self, x: Any) -> mx.array:
        return mx.array(x).astype(mx.float32)

    def cos(self, x: Any) -> mx.array:
        return mx.cos(x)

    def sqrt(self, x: Any) -> mx.array:
        return mx.sqrt(x)

    def floor(self, x: Any) -> mx.array:
        return mx.floor(x)

    def minimum(self, a: Any, b: Any) -> mx.array:
        return mx.minimum(a, b)

    def maximum(self, a: Any, b: Any) -> mx.array:
        return mx.maximum(a, b)

    def where(self, cond: Any, a: Any, b: Any) -> mx.array:
        return mx.where(cond, a, b)


MLX_OPS = _MlxOps()


def mlx_schedule(spec: ScheduleSpec) -> Schedule:
    """The schedule as the optimizer calls it: contract/schedule.py's learning_rate_at on
    the optimizer's step counter, the same function the console plots with."""

    def schedule(step: mx.array) -> mx.array:
        return mx.array(learning_rate_at(spec, step, MLX_OPS)).astype(mx.float32)

    return schedule


def warmup_decay(
    kind: str, peak: float, total_steps: int, warmup: int = 0, floor: float = 0.0
) -> Schedule:
    """Linear warmup to `peak` over `warmup` updates (the first update already uses
    peak/warmup, never 0), then `kind` decay towards `floor` at `total_steps`."""
    return mlx_schedule(ScheduleSpec(kind, peak, total_steps, warmup=warmup, floor=floor))


def learning_rate(config: RunConfig, total_steps: int) -> float | Schedule:
    """The optimizer's learning_rate: contract/schedule.py's schedule of the config (named
    shapes and mlx-lm mappings alike); a constant rate without warmup is a plain float."""
    spec = schedule_spec(config, total_steps)
    if spec.is_constant:
        return float(config.learning_rate)
    return mlx_schedule(spec)


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


def scaled(rate: float | Schedule, factor: float) -> float | Schedule:
    """The learning rate times `factor` at every step (a schedule stays a schedule)."""
    if not callable(rate):
        return float(rate) * factor
    schedule = rate

    def times(step: mx.array) -> mx.array:
        return schedule(step) * factor

    return times


def build_optimizer(
    config: RunConfig, total_steps: int, full_prefixes: list[str] | None = None
) -> optim.Optimizer:
    """The run's optimizer. With `full_prefixes` (train_embeddings: the embeddings and the
    head in a lora/dora run), a MultiOptimizer of two of the same kind: the first updates
    every other parameter at the schedule's rate (it is the one reported as
    `learning_rate`), the second the weights under those prefixes at `embedding_lr_scale`
    times it. Each keeps its own state (moments, step counter), so Adam's update of each
    group is exactly its own at its own rate (scaling gradients would not be: Adam divides
    the scale out) and both save and restore with the checkpoint."""
    cls = OPTIMIZERS[config.optimizer]
    rate = learning_rate(config, total_steps)
    main = cls(learning_rate=rate, **optimizer_kwargs(config))
    if not full_prefixes:
        return main
    embeddings = cls(
        learning_rate=scaled(rate, float(config.embedding_lr_scale)), **optimizer_kwargs(config)
    )
    prefixes = tuple(f"{p}." for p in full_prefixes)

    def not_embedding(path: str, _: mx.array) -> bool:
        return not path.startswith(prefixes)

    return GroupedOptimizer([main, embeddings], [not_embedding])


class GroupedOptimizer(optim.MultiOptimizer):
    """mlx's MultiOptimizer with the first optimizer's step counter and learning rate as
    its own (what checkpoints and reports read); every group steps together."""

    @property
    def step(self) -> mx.array:
        return self.optimizers[0].step


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
    except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as exc:
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
