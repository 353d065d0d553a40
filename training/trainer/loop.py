"""The training loop: a compiled step, gradient accumulation, evaluation, reports, stops.

Shaped like mlx-lm's `tuner.trainer.train` (collaborators are parameters: the loss, the
batch iterator, the callback), with what continued pre-training needs on top: a step is one
optimizer update, randomness is a pure function of (seed, step) so a resume is exact, the
next batch is built in numpy while the current step computes, and a non-finite loss stops
the run before anything bad is saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.nn.utils import average_gradients
from mlx.optimizers import Optimizer, clip_grad_norm
from mlx.utils import tree_flatten, tree_map, tree_reduce

from training.contract.protocol import DIVERGED, FINISHED, STOPPED, eval_set_keys
from training.trainer.packing import Batch

LossFn = Callable[[nn.Module, mx.array, mx.array], tuple[mx.array, mx.array]]
EvalBatches = list[tuple[np.ndarray, np.ndarray]]
_DeviceBatches = list[tuple[mx.array, mx.array]]


def default_loss(model: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
    """mlx-lm's masked next-token loss: (mean cross-entropy over counted targets, count)."""
    from mlx_lm.tuner.trainer import default_loss as mlx_lm_loss

    return mlx_lm_loss(model, batch, lengths)


@dataclass
class LoopArgs:
    total_steps: int
    grad_accumulation_steps: int = 1
    steps_per_report: int = 10
    steps_per_eval: int = 200
    save_every: int = 100
    grad_clip: float = 0.0
    seed: int = 0
    clear_cache_threshold: int = 0
    loss_spike_factor: float = 3.0
    eval_at_start: bool = True


@dataclass
class LoopState:
    """Where the run is; a checkpoint stores it and a resume starts from it."""

    step: int = 0
    cursor: int = 0  # training sequences consumed (global, all workers)
    trained_tokens: int = 0  # target tokens, cumulative over resumes
    val_loss: float | None = None  # the latest evaluation's, measured at val_step
    val_step: int | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    last_saved_step: int | None = None
    last_loss: float | None = None  # the latest step's (for a live status line)
    recent_losses: list[float] = field(default_factory=list)
    # Per data source (by name): target tokens trained and sequences drawn, cumulative.
    tokens_by_source: dict[str, int] = field(default_factory=dict)
    source_cursors: dict[str, int] = field(default_factory=dict)


class TrainingCallback(Protocol):
    def on_train_loss_report(self, info: dict[str, Any]) -> None: ...
    def on_val_loss_report(self, info: dict[str, Any]) -> None: ...
    def on_step(self, state: LoopState, step_seconds: float) -> None: ...
    def on_warning(self, step: int, kind: str, message: str, **fields: Any) -> None: ...
    def save_checkpoint(self, state: LoopState, reason: str) -> None: ...
    def should_stop(self) -> bool: ...


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one step (dropout): a pure function, so a resume draws the same."""
    return (seed * 0x9E3779B97F4A7C15 + step) % (1 << 63)


def _global_norm(grads: Any) -> mx.array:
    return mx.sqrt(
        tree_reduce(lambda acc, g: acc + g.astype(mx.float32).square().sum(), grads, 0.0)
    )


def make_step(
    model: nn.Module,
    optimizer: Optimizer,
    loss: LossFn,
    grad_accumulation_steps: int,
    grad_clip: float,
) -> tuple[Callable[..., Any], Callable[..., Any], list[Any]]:
    """Two compiled functions over the model/optimizer/RNG state: `accumulate` (a micro-step
    that adds to the gradient) and `update` (the last micro-step: average across workers,
    clip, apply). Fixed batch shapes mean each traces once.

    `update` also takes this worker's stop flag (a 0-d array in the gradients' dtype) and
    averages it with the gradients, in the same all-reduce: a positive result means some
    worker asked to stop, and no extra collective runs per step."""
    value_and_grad = nn.value_and_grad(model, loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def accumulate(
        batch: mx.array, lengths: mx.array, prev: Any, share: mx.array
    ) -> tuple[Any, ...]:
        (value, ntoks), grad = value_and_grad(model, batch, lengths)
        grad = tree_map(lambda g: g * share, grad)
        if prev is not None:
            grad = tree_map(lambda a, b: a + b, grad, prev)
        return value, ntoks, grad

    @partial(mx.compile, inputs=state, outputs=state)
    def update(
        batch: mx.array, lengths: mx.array, prev: Any, stop_flag: mx.array, share: mx.array
    ) -> tuple[mx.array, ...]:
        (value, ntoks), grad = value_and_grad(model, batch, lengths)
        grad = tree_map(lambda g: g * share, grad)
        if prev is not None:
            grad = tree_map(lambda a, b: a + b, grad, prev)
        averaged = average_gradients({"grad": grad, "stop": stop_flag})
        grad, stop_flag = averaged["grad"], averaged["stop"]
        if grad_accumulation_steps > 1:
            grad = tree_map(lambda g: g / grad_accumulation_steps, grad)
        if grad_clip > 0:
            grad, norm = clip_grad_norm(grad, grad_clip)
        else:
            norm = _global_norm(grad)
        optimizer.update(model, grad)
        return value, ntoks, norm, stop_flag

    return accumulate, update, state


def grad_dtype(model: nn.Module) -> mx.Dtype:
    """The trainable parameters' dtype: the stop flag travels with the gradients in it
    (one dtype keeps average_gradients' single concatenated all-reduce)."""
    flat: list[tuple[str, mx.array]] = tree_flatten(model.trainable_parameters())  # type: ignore[assignment]
    return flat[0][1].dtype if flat else mx.float32


def make_eval_fn(model: nn.Module, loss: LossFn) -> Callable[[mx.array, mx.array], Any]:
    """(loss sum, target count) of one batch; an all-padding batch adds 0. Not compiled:
    on the CPU it ran no faster and its kernels cost a JIT compile on first use."""

    def eval_batch(batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        value, ntoks = loss(model, batch, lengths)
        return mx.where(ntoks > 0, value * ntoks, 0.0), ntoks

    return eval_batch


def evaluate(
    eval_fn: Callable[[mx.array, mx.array], Any],
    batches: _DeviceBatches,
    group: Any = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[float, int] | None:
    """Mean loss over a fixed set of batches (summed across workers); None if stopped."""
    total = mx.array(0.0)
    ntoks = mx.array(0)
    for tokens, lengths in batches:
        if should_stop is not None and should_stop():
            return None
        s, n = eval_fn(tokens, lengths)
        total = total + s
        ntoks = ntoks + n
        mx.eval(total, ntoks)
    if group is not None and group.size() > 1:
        total = mx.distributed.all_sum(total, stream=mx.cpu)
        ntoks = mx.distributed.all_sum(ntoks, stream=mx.cpu)
    count = int(scalar(ntoks))
    return (scalar(total) / count if count else float("nan")), count


def scalar(a: mx.array) -> float:
    """A 0-d array's value as a float (after it is evaluated)."""
    return float(cast(float, a.item()))


def _clear_cache(threshold: int) -> None:
    if threshold and mx.get_cache_memory() > threshold:
        mx.clear_cache()


def _over_workers(group: Any, window: _Window) -> tuple[float, list[dict[str, Any]] | None]:
    """A report's loss as the mean over the workers, and each worker's own throughput and
    peak memory (the run page's ranks): one tiny all-gather, run only at reports, where
    every worker arrives together. Alone: the window's loss and no ranks."""
    if group is None or group.size() <= 1:
        return window.loss, None
    mine = [window.loss, window.local_tokens / window.seconds, mx.get_peak_memory() / 1e9]
    rows = mx.distributed.all_gather(mx.array(mine), stream=mx.cpu).reshape(-1, len(mine))
    values: list[list[float]] = rows.tolist()  # type: ignore[assignment]
    ranks = [
        {"rank": i, "tokens_per_second": tps, "peak_memory": memory}
        for i, (_, tps, memory) in enumerate(values)
    ]
    return sum(row[0] for row in values) / len(values), ranks


def train(
    model: nn.Module,
    optimizer: Optimizer,
    batches: Iterator[Batch],
    args: LoopArgs,
    state: LoopState,
    callback: TrainingCallback,
    *,
    eval_sets: Mapping[str, EvalBatches] | None = None,
    loss: LossFn = default_loss,
    group: Any = None,
) -> str:
    """Train from `state.step` to `args.total_steps`; returns finished, stopped or diverged.

    `eval_sets` maps names to fixed batches; "val" is the validation set. Checkpoints are
    the callback's job (`save_checkpoint`), called at save_every, on stop and at the end.
    A stop request on the last step is not honoured: that step ends the run normally.

    With several workers (`group`), a stop request travels inside each step's gradient
    all-reduce (make_step), so the workers stop after the same step, one or two steps after
    the signal; their losses are averaged at each report (which also lists each worker's
    tokens per second and peak memory as `ranks`), and a non-finite gradient norm (the
    same on every worker) is divergence.
    """
    accum = args.grad_accumulation_steps
    accumulate, update, compiled_state = make_step(model, optimizer, loss, accum, args.grad_clip)
    eval_fn = make_eval_fn(model, loss)
    # The fixed evaluation batches become arrays once, not at every evaluation.
    device_sets = {
        name: [(mx.array(tokens), mx.array(lengths)) for tokens, lengths in batches_]
        for name, batches_ in (eval_sets or {}).items()
    }
    world = group.size() if group is not None else 1
    flag_dtype = grad_dtype(model)

    def run_eval(step: int, interruptible: bool = True) -> bool:
        if not device_sets:
            return True
        tic = time.perf_counter()
        model.eval()
        info: dict[str, Any] = {"iteration": step}
        for name, set_batches in device_sets.items():
            # Workers must run the same collectives: only a lone process stops mid-eval.
            result = evaluate(
                eval_fn,
                set_batches,
                group,
                callback.should_stop if world == 1 and interruptible else None,
            )
            if result is None:
                model.train()
                return False
            loss_key, ppl_key, tokens_key = eval_set_keys(name)
            info[loss_key] = result[0]
            info[ppl_key] = math.exp(min(result[0], 50.0))
            info[tokens_key] = result[1]
        model.train()
        info["val_time"] = time.perf_counter() - tic
        if "val_loss" in info and math.isfinite(info["val_loss"]):
            state.val_loss, state.val_step = info["val_loss"], step
            if state.best_val_loss is None or info["val_loss"] < state.best_val_loss:
                state.best_val_loss, state.best_step = info["val_loss"], step
        callback.on_val_loss_report(info)
        return True

    model.train()
    if args.eval_at_start and state.step == 0 and not run_eval(0):
        return STOPPED

    window = _Window()
    if world == 1 and callback.should_stop():  # asked to stop before the first step
        return STOPPED
    next_batch = next(batches)
    for step in range(state.step + 1, args.total_steps + 1):
        tic = time.perf_counter()
        mx.random.seed(step_seed(args.seed, step))
        grad: Any = None
        step_loss = mx.array(0.0)
        step_targets = local_targets = 0
        for micro in range(accum):
            batch = next_batch
            tokens, lengths = mx.array(batch.tokens), mx.array(batch.lengths)
            mine = batch.targets if world == 1 else int(batch.lengths[:, 1].sum())
            # This worker's share of the micro-batch's targets, times the workers: the
            # average over workers is then the mean over every target, as one process
            # computes it, also when a short sequence leaves the workers unequal shares.
            share = mx.array(mine * world / batch.targets if batch.targets else 1.0, flag_dtype)
            if micro < accum - 1:
                value, _, grad = accumulate(tokens, lengths, grad, share)
                mx.async_eval(value, grad)
            else:
                asked = world > 1 and callback.should_stop()
                flag = mx.array(1.0 if asked else 0.0, dtype=flag_dtype)
                value, _, norm, agreed_stop = update(tokens, lengths, grad, flag, share)
                mx.async_eval(compiled_state, value, norm, agreed_stop)
            step_loss = step_loss + value * share
            step_targets += batch.targets
            local_targets += mine
            state.cursor = batch.cursor
            state.tokens_by_source = batch.tokens_by_source
            state.source_cursors = batch.source_cursors
            next_batch = next(batches)  # built in numpy while the step computes
        mx.eval(compiled_state, step_loss, norm, agreed_stop)
        _clear_cache(args.clear_cache_threshold)
        local_loss = scalar(step_loss) / accum
        grad_norm = scalar(norm)
        elapsed = time.perf_counter() - tic
        last = step == args.total_steps
        if world > 1:  # the same on every worker: decided together
            stop_now = scalar(agreed_stop) > 0
            bad = None if math.isfinite(grad_norm) else f"the gradient norm is {grad_norm}"
        else:
            stop_now = callback.should_stop()
            bad = None if math.isfinite(local_loss) else f"loss is {local_loss}"
        stop_now = stop_now and not last  # a stop on the last step: finish normally
        if bad is not None:
            callback.on_warning(step, "nan", f"{bad} at step {step}; stopping (diverged)")
            return DIVERGED
        state.step, state.last_loss = step, local_loss
        state.trained_tokens += step_targets
        window.add(local_loss, step_targets, elapsed, grad_norm, local_targets)
        callback.on_step(state, elapsed)

        if step % args.steps_per_report == 0 or last or stop_now:
            mean_loss, ranks = _over_workers(group, window)
            if not math.isfinite(mean_loss):
                callback.on_warning(
                    step, "nan", f"loss is {mean_loss} at step {step}; stopping (diverged)"
                )
                return DIVERGED
            _spike_check(state, mean_loss, args.loss_spike_factor, step, callback)
            report = window.report(step, state, optimizer, mean_loss)
            if ranks is not None:
                report["ranks"] = ranks
            callback.on_train_loss_report(report)
            window = _Window()
        if stop_now:
            break
        if (step % args.steps_per_eval == 0 or last) and not run_eval(step, not last):
            break
        if step % args.save_every == 0 or last:
            callback.save_checkpoint(state, "final" if last else "periodic")
    else:
        return FINISHED
    if state.step and state.last_saved_step != state.step:
        callback.save_checkpoint(state, "stop")
    return STOPPED


@dataclass
class _Window:
    """Steps since the last train report."""

    loss_sum: float = 0.0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    norm_sum: float = 0.0
    local_tokens: int = 0  # this worker's share of `tokens`

    def add(
        self, loss: float, tokens: int, seconds: float, norm: float, local_tokens: int = 0
    ) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.tokens += tokens
        self.local_tokens += local_tokens
        self.seconds += seconds
        self.norm_sum += norm

    @property
    def loss(self) -> float:
        return self.loss_sum / self.steps

    def report(
        self, step: int, state: LoopState, optimizer: Optimizer, loss: float
    ) -> dict[str, Any]:
        """mlx-lm's callback keys (`iteration` becomes the event's `step`); `loss` is the
        window's mean over the workers."""
        return {
            "iteration": step,
            "train_loss": loss,
            "learning_rate": scalar(optimizer.learning_rate),
            "iterations_per_second": self.steps / self.seconds,
            "tokens_per_second": self.tokens / self.seconds,
            "trained_tokens": state.trained_tokens,
            "tokens_by_source": dict(state.tokens_by_source),
            "peak_memory": mx.get_peak_memory() / 1e9,
            "grad_norm": self.norm_sum / self.steps,
        }


def _spike_check(
    state: LoopState, loss: float, factor: float, step: int, callback: TrainingCallback
) -> None:
    """A report far above the recent average is worth a warning (not a stop)."""
    recent = state.recent_losses
    if factor > 0 and len(recent) >= 3:
        baseline = sum(recent) / len(recent)
        if loss > factor * baseline:
            callback.on_warning(
                step,
                "loss_spike",
                f"train loss {loss:.4g} is {loss / baseline:.1f}x the recent average "
                f"{baseline:.4g}",
                value=loss,
                baseline=baseline,
            )
    recent.append(loss)
    del recent[:-5]
