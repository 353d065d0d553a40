"""The learning-rate schedule as pure math: one function for the trainer and the console.

The trainer evaluates it on MLX arrays inside its compiled step (trainer/optimization.py
passes MLX's operations); the console evaluates it on Python floats to plot the schedule
before launch (POST /api/config/lr_schedule). Both run `learning_rate_at` below, so the
plot is the trainer's curve, step for step, and no MLX is imported here.

`step` is the optimizer's own update counter: 0 for the first update, which is training
step 1. A schedule is:

- a named shape (`lr_schedule`: constant, cosine, linear, wsd) after a linear warmup of
  `warmup_steps` updates from `warmup_init` (the first update already moves off it:
  warmup_init + (peak - warmup_init) * 1 / warmup_steps), towards `min_learning_rate`;
- wsd (warmup, stable, decay): the peak until the last `decay_steps` updates (or
  `decay_fraction` of the run), then a decay of `decay_shape` (linear, cosine or 1-sqrt)
  whose last update uses `min_learning_rate`. Extending a run (a resume with a larger
  budget) moves the decay to the new end: the stable phase grows;
- an mlx-lm mapping {name, arguments, warmup, warmup_init}: mlx.optimizers.schedulers'
  formulas joined as mlx-lm's build_schedule joins them (tests hold it to mlx-lm's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

SHAPES = ("constant", "cosine", "linear", "wsd")
DECAY_SHAPES = ("1-sqrt", "linear", "cosine")
# The most values one request may ask for (the console plots a few hundred).
MAX_POINTS = 100_000


class Ops(Protocol):
    """The operations a schedule needs beyond + - * / ** and comparisons: Python's math on
    floats (FLOAT_OPS), or MLX's on arrays (the trainer's)."""

    def to_float(self, x: Any) -> Any: ...
    def cos(self, x: Any) -> Any: ...
    def sqrt(self, x: Any) -> Any: ...
    def floor(self, x: Any) -> Any: ...
    def minimum(self, a: Any, b: Any) -> Any: ...
    def maximum(self, a: Any, b: Any) -> Any: ...
    def where(self, cond: Any, a: Any, b: Any) -> Any: ...


class _FloatOps:
    def to_float(self, x: Any) -> float:
        return float(x)

    def cos(self, x: Any) -> float:
        return math.cos(x)

    def sqrt(self, x: Any) -> float:
        return math.sqrt(x)

    def floor(self, x: Any) -> float:
        return float(math.floor(x))

    def minimum(self, a: Any, b: Any) -> Any:
        return min(a, b)

    def maximum(self, a: Any, b: Any) -> Any:
        return max(a, b)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return a if cond else b


FLOAT_OPS: Ops = _FloatOps()


@dataclass(frozen=True)
class ScheduleSpec:
    """Everything a schedule depends on, resolved for a run of `total_steps` updates."""

    shape: str  # constant, cosine, linear, wsd; or "mlx_lm" for a mapping
    peak: float
    total_steps: int
    warmup: int = 0
    warmup_init: float = 0.0
    floor: float = 0.0
    decay_steps: int = 0  # wsd: updates in the decay (resolved from steps or fraction)
    decay_shape: str = "1-sqrt"
    mlx_lm: Mapping[str, Any] | None = None  # {name, arguments, warmup, warmup_init}

    @property
    def is_constant(self) -> bool:
        """A plain number, no schedule at all (the optimizer takes a float)."""
        return self.shape == "constant" and self.warmup <= 0


def wsd_decay_steps(
    total_steps: int, warmup: int, decay_steps: int | None, decay_fraction: float
) -> int:
    """Updates in a wsd decay: `decay_steps` when given, else `decay_fraction` of the run
    (rounded up), at least 1 and at most what the warmup leaves."""
    room = max(1, total_steps - max(0, warmup))
    wanted = decay_steps if decay_steps else math.ceil(decay_fraction * total_steps)
    return max(1, min(room, int(wanted)))


def schedule_spec(config: Any, total_steps: int) -> ScheduleSpec:
    """The schedule of a RunConfig (or anything with its attributes) for `total_steps`."""
    sched = config.lr_schedule
    if isinstance(sched, Mapping):
        return ScheduleSpec("mlx_lm", float(sched["arguments"][0]), total_steps, mlx_lm=dict(sched))
    shape = str(sched or "constant")
    warmup = int(config.warmup_steps or 0)
    decay = 0
    if shape == "wsd":
        decay = wsd_decay_steps(
            total_steps,
            warmup,
            getattr(config, "decay_steps", None),
            float(getattr(config, "decay_fraction", 0.2) or 0.2),
        )
    return ScheduleSpec(
        shape=shape,
        peak=float(config.learning_rate),
        total_steps=int(total_steps),
        warmup=warmup,
        warmup_init=float(getattr(config, "warmup_init", 0.0) or 0.0),
        floor=float(config.min_learning_rate or 0.0),
        decay_steps=decay,
        decay_shape=str(getattr(config, "decay_shape", "1-sqrt") or "1-sqrt"),
    )


def _decay(shape: str, peak: float, floor: float, t: Any, ops: Ops) -> Any:
    """From peak (t = 0) to floor (t = 1)."""
    if shape == "cosine":
        return floor + (peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * t))
    if shape == "1-sqrt":
        return floor + (peak - floor) * (1.0 - ops.sqrt(t))
    return peak + (floor - peak) * t  # linear


def _clip01(x: Any, ops: Ops) -> Any:
    return ops.minimum(ops.maximum(x, 0.0), 1.0)


def learning_rate_at(spec: ScheduleSpec, step: Any, ops: Ops = FLOAT_OPS) -> Any:
    """The learning rate of the update whose counter is `step` (0 for the first)."""
    if spec.mlx_lm is not None:
        return _mlx_lm_at(spec.mlx_lm, step, ops)
    s = ops.to_float(step)
    peak, floor = spec.peak, spec.floor
    if spec.shape == "wsd":
        start = spec.total_steps - spec.decay_steps  # the first decaying update
        t = _clip01((s - start + 1.0) / spec.decay_steps, ops)
        after = ops.where(s < start, peak + 0.0 * s, _decay(spec.decay_shape, peak, floor, t, ops))
    elif spec.shape in ("cosine", "linear"):
        span = max(1, spec.total_steps - spec.warmup)
        t = _clip01((s - spec.warmup) / span, ops)
        after = _decay(spec.shape, peak, floor, t, ops)
    else:
        after = peak + 0.0 * s
    if spec.warmup <= 0:
        return after
    init = spec.warmup_init
    rising = init + (peak - init) * (s + 1.0) / spec.warmup
    return ops.where(s < spec.warmup, rising, after)


def _mlx_lm_at(mapping: Mapping[str, Any], step: Any, ops: Ops) -> Any:
    """mlx-lm's build_schedule: mlx.optimizers' scheduler `name` over `arguments`, after a
    linear warmup from warmup_init joined at warmup + 1 (mlx's join_schedules)."""
    args = [float(a) for a in mapping["arguments"]]
    s = ops.to_float(step)
    main = _mlx_scheduler(str(mapping["name"]), args, ops)
    warmup = int(mapping.get("warmup") or 0)
    if not warmup:
        return main(s)
    init = float(mapping.get("warmup_init") or 0.0)
    rising = ops.minimum(s, float(warmup)) * ((args[0] - init) / warmup) + init
    boundary = warmup + 1
    return ops.where(s < boundary, rising, main(s - boundary))


# mlx.optimizers' schedulers and how many arguments each takes (fewest, most).
_MLX_ARGUMENTS = {
    "cosine_decay": (2, 3),
    "linear_schedule": (3, 3),
    "exponential_decay": (2, 2),
    "step_decay": (3, 3),
}


def _mlx_scheduler(name: str, args: list[float], ops: Ops) -> Any:
    fewest, most = _MLX_ARGUMENTS.get(name, (0, len(args)))
    if not fewest <= len(args) <= most:
        wanted = str(fewest) if fewest == most else f"{fewest} to {most}"
        raise ValueError(f"mlx's {name} takes {wanted} arguments, got {len(args)}")
    if name == "cosine_decay":
        init, decay_steps = args[0], args[1]
        end = args[2] if len(args) > 2 else 0.0

        def cosine(s: Any) -> Any:
            decay = 0.5 * (1.0 + ops.cos((math.pi / decay_steps) * ops.minimum(s, decay_steps)))
            return end + decay * (init - end)

        return cosine
    if name == "linear_schedule":
        init, end, steps = args[0], args[1], args[2]
        return lambda s: ops.minimum(s, steps) * ((end - init) / steps) + init
    if name == "exponential_decay":
        init, rate = args[0], args[1]
        return lambda s: init * rate**s
    if name == "step_decay":
        init, rate, size = args[0], args[1], args[2]
        return lambda s: init * rate ** ops.floor(s / size)
    raise ValueError(f"unknown mlx-lm schedule {name!r}")


def learning_rates(
    spec: ScheduleSpec, max_points: int | None = None
) -> tuple[list[int], list[float]]:
    """(training steps, learning rates): step k (1..total) is the update with counter
    k - 1. Every step, or at most `max_points` of them evenly spread (first and last
    always in)."""
    total = max(1, spec.total_steps)
    n = total if max_points is None else max(2, min(total, max_points))
    if n >= total:
        steps = list(range(1, total + 1))
    else:
        steps = sorted({1 + round(i * (total - 1) / (n - 1)) for i in range(n)})
    return steps, [float(learning_rate_at(spec, k - 1)) for k in steps]
