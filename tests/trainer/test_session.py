"""The trainer's session callback: checkpoint records and events agree with the listing."""

from __future__ import annotations

import io
from pathlib import Path

import mlx.nn as nn
import mlx.optimizers as optim

from training.contract.checkpoints import list_checkpoints, read_state
from training.metrics.tailer import read_events
from training.metrics.writer import TrainingMetricsLogger
from training.trainer.loop import LoopState
from training.trainer.progress import Progress
from training.trainer.session import SessionContext, StopFlag, TrainingSession


def _session(run: Path, keep: int = 0, elapsed_before: float = 0.0) -> TrainingSession:
    model = nn.Linear(2, 2)
    return TrainingSession(
        run_dir=run,
        logger=TrainingMetricsLogger(run / "metrics.jsonl"),
        progress=Progress(total_steps=400, stream=io.StringIO(), tty=False),
        stop=StopFlag(),
        context=SessionContext(
            config_hash="h",
            seed=0,
            sequences_per_epoch=10,
            total_steps=400,
            fine_tune_type="full",
            adapter_config={"fine_tune_type": "full", "num_layers": -1},
            keep_checkpoints=keep,
            keep_best=True,
            elapsed_before=elapsed_before,
            inputs={"model": "/m"},
        ),
        model=model,
        optimizer=optim.SGD(learning_rate=0.1),
        writer=True,
    )


def test_checkpoint_events_carry_the_bundles_own_loss_as_the_listing_does(
    tmp_path: Path,
) -> None:
    session = _session(tmp_path, keep=1)
    state = LoopState()
    for step, (loss, at) in zip(
        (100, 200, 300, 400), [(4.0, 0), (3.0, 200), (3.0, 200), (3.5, 400)], strict=True
    ):
        state.step, state.val_loss, state.val_step = step, loss, at
        session.save_checkpoint(state, "periodic")
    session.logger.close()
    events = {e["step"]: e for e in read_events(tmp_path / "metrics.jsonl")}
    assert [events[s]["val_loss"] for s in (100, 200, 300, 400)] == [None, 3.0, None, 3.5]
    listed = list_checkpoints(tmp_path)
    assert [(b["step"], b["val_loss"], b["is_best"]) for b in listed] == [
        (200, 3.0, True),
        (400, 3.5, False),
    ]
    state_400 = read_state(tmp_path / "checkpoints" / "step-00000400")
    assert "seq" not in state_400 and state_400["inputs"] == {"model": "/m"}


def test_elapsed_seconds_continue_across_resumes(tmp_path: Path) -> None:
    session = _session(tmp_path, elapsed_before=100.0)
    state = LoopState(step=5)
    session.save_checkpoint(state, "stop")
    session.logger.close()
    assert read_state(tmp_path / "checkpoints" / "step-00000005")["elapsed_seconds"] >= 100.0
