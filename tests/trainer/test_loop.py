"""The training loop in-process with real MLX on the CPU and the tiny scratch model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest

from training.contract.config import build_config
from training.trainer.data import corpus_run_data
from training.trainer.loop import (
    DIVERGED,
    FINISHED,
    STOPPED,
    LoopArgs,
    LoopState,
    default_loss,
    step_seed,
    train,
)
from training.trainer.mixture import MixState
from training.trainer.model_setup import load_base, prepare_trainable
from training.trainer.optimization import build_optimizer
from training.trainer.token_cache import scan_corpus, tokenizer_fingerprint
from training.trainer.tokenization import load_or_tokenize


class Recorder:
    """A TrainingCallback that keeps what the loop reports."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.train: list[dict[str, Any]] = []
        self.evals: list[dict[str, Any]] = []
        self.warnings: list[tuple[int, str]] = []
        self.saved: list[tuple[int, str]] = []
        self.stop_after = stop_after
        self.step = 0

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        self.train.append(info)

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        self.evals.append(info)

    def on_step(self, state: LoopState, step_seconds: float) -> None:
        self.step = state.step

    def on_warning(self, step: int, kind: str, message: str, **fields: Any) -> None:
        self.warnings.append((step, kind))

    def save_checkpoint(self, state: LoopState, reason: str) -> None:
        state.last_saved_step = state.step
        self.saved.append((state.step, reason))

    def should_stop(self) -> bool:
        return self.stop_after is not None and self.step >= self.stop_after


def _setup(assets: dict[str, Path], tmp_path: Path, **values: Any) -> tuple[Any, ...]:
    config, _ = build_config(
        {
            "model": str(assets["model"]),
            "data": str(assets["corpus"]),
            "max_seq_length": 32,
            "batch_size": 4,
            "learning_rate": 3e-3,
            "warmup_steps": 2,
            "val_batches": 2,
            **values,
        }
    )
    loaded = load_base(config, tmp_path)
    fp = tokenizer_fingerprint(loaded.tokenizer, loaded.path)
    scan = scan_corpus([assets["corpus"]])
    corpus = load_or_tokenize(scan, loaded.tokenizer, fp, tmp_path)
    data = corpus_run_data(config, scan, corpus)
    prepare_trainable(loaded.model, config)
    optimizer = build_optimizer(config, 40)
    batches = data.batches(config, MixState())
    val = {"val": data.held_out["val"].batches}
    return loaded.model, optimizer, batches, val


def test_loss_falls_on_a_short_run(tiny_assets: dict[str, Path], tmp_path: Path) -> None:
    model, optimizer, batches, val = _setup(tiny_assets, tmp_path)
    rec = Recorder()
    args = LoopArgs(total_steps=40, steps_per_report=10, steps_per_eval=40, save_every=20)
    state = LoopState()
    assert train(model, optimizer, batches, args, state, rec, eval_sets=val) == FINISHED
    losses = [r["train_loss"] for r in rec.train]
    assert losses[-1] < losses[0] - 0.3
    assert rec.evals[-1]["val_loss"] < rec.evals[0]["val_loss"]
    assert [e["iteration"] for e in rec.evals] == [0, 40]
    assert rec.saved == [(20, "periodic"), (40, "final")]
    assert state.trained_tokens == rec.train[-1]["trained_tokens"] == 40 * 4 * 32
    assert {"learning_rate", "tokens_per_second", "peak_memory", "grad_norm"} <= set(rec.train[0])


def test_a_stop_request_finishes_the_step_and_saves(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    model, optimizer, batches, val = _setup(tiny_assets, tmp_path)
    rec = Recorder(stop_after=3)
    state = LoopState()
    args = LoopArgs(total_steps=40, steps_per_report=100, save_every=100, eval_at_start=False)
    assert train(model, optimizer, batches, args, state, rec, eval_sets=val) == STOPPED
    # Asked right after step 3 (i.e. while step 4 runs): step 4 completes, then it stops.
    assert state.step == 4 and rec.saved == [(4, "stop")]
    assert rec.train[-1]["iteration"] == 4  # the partial window is reported
    assert state.cursor == 4 * 4


def test_non_finite_loss_diverges_without_saving(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    model, optimizer, batches, _ = _setup(tiny_assets, tmp_path)

    def poisoned(m: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        loss, ntoks = default_loss(m, batch, lengths)
        return loss + mx.array(float("nan")), ntoks

    rec = Recorder()
    args = LoopArgs(total_steps=10, save_every=1, eval_at_start=False)
    state = LoopState()
    assert train(model, optimizer, batches, args, state, rec, loss=poisoned) == DIVERGED
    assert rec.warnings == [(1, "nan")] and rec.saved == [] and state.step == 0


def test_loss_spike_warns(tiny_assets: dict[str, Path], tmp_path: Path) -> None:
    from training.trainer.loop import _spike_check

    rec = Recorder()
    state = LoopState()
    for loss in (2.0, 2.1, 1.9, 2.0):
        _spike_check(state, loss, 3.0, 1, rec)
    assert rec.warnings == []
    _spike_check(state, 9.0, 3.0, 5, rec)
    assert rec.warnings == [(5, "loss_spike")]


def test_step_seed_is_pure() -> None:
    assert step_seed(0, 5) == step_seed(0, 5) != step_seed(0, 6) != step_seed(1, 5)


@pytest.mark.parametrize("accum", [2])
def test_gradient_accumulation_consumes_micro_batches(
    tiny_assets: dict[str, Path], tmp_path: Path, accum: int
) -> None:
    model, optimizer, batches, _ = _setup(tiny_assets, tmp_path, grad_accumulation_steps=accum)
    rec = Recorder()
    state = LoopState()
    args = LoopArgs(total_steps=3, grad_accumulation_steps=accum, eval_at_start=False)
    assert train(model, optimizer, batches, args, state, rec) == FINISHED
    assert state.cursor == 3 * accum * 4 and int(optimizer.step.item()) == 3


def test_a_stop_on_the_last_step_finishes_the_run(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    model, optimizer, batches, val = _setup(tiny_assets, tmp_path)
    rec = Recorder(stop_after=4)  # asked while step 5, the last, runs
    state = LoopState()
    args = LoopArgs(total_steps=5, steps_per_report=100, steps_per_eval=100, save_every=100)
    assert train(model, optimizer, batches, args, state, rec, eval_sets=val) == FINISHED
    assert rec.saved == [(5, "final")] and [e["iteration"] for e in rec.evals] == [0, 5]


def test_evaluation_batches_become_arrays_once(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    model, optimizer, batches, val = _setup(tiny_assets, tmp_path)
    seen: list[int] = []

    def recording(m: nn.Module, batch: mx.array, lengths: mx.array) -> tuple[mx.array, mx.array]:
        if not m.training:  # evaluation calls (training calls are traced by compile)
            seen.append(id(batch))
        return default_loss(m, batch, lengths)

    args = LoopArgs(total_steps=4, steps_per_report=100, steps_per_eval=2, save_every=100)
    train(model, optimizer, batches, args, LoopState(), Recorder(), eval_sets=val, loss=recording)
    per_eval = len(val["val"])
    assert len(seen) == 3 * per_eval  # evaluations at 0, 2 and 4
    assert seen[:per_eval] == seen[per_eval : 2 * per_eval] == seen[2 * per_eval :]
