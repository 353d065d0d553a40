"""Stop and resume the real trainer; a resumed run equals an uninterrupted one. (Killed
mid-save, several times: tests/adversarial/test_kill_during_save.py.)"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import mlx.core as mx
import pytest

from tests.helpers import wait_until
from tests.trainer_helpers import (
    events,
    last_step_seen,
    run_trainer,
    start_trainer,
    train_losses,
    write_config,
)
from training.contract.checkpoints import list_checkpoints, read_latest, read_state

pytestmark = pytest.mark.slow

STEPS = 60
VARIANTS = {
    # full: every weight and the AdamW state must come back bit for bit.
    "full": {},
    # lora with dropout: the RNG must be a pure function of (seed, step).
    "lora-dropout": {"fine_tune_type": "lora", "lora_parameters": {"dropout": 0.2}},
}


def _stop_with_sigterm(ws: Path, config: Path, run_dir: Path, after_step: int) -> int:
    proc = start_trainer(ws, "-c", config, "--run-dir", run_dir, log=ws / "stopped.log")
    try:
        wait_until(
            lambda: last_step_seen(run_dir) >= after_step or proc.poll() is not None,
            timeout=240,
            message=f"step {after_step}",
        )
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)  # a second signal must not break the save
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sigterm_checkpoints_and_resume_equals_uninterrupted(
    variant: str, tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(ws / "config.yaml", tiny_assets, iters=STEPS, **VARIANTS[variant])
    straight, stopped = ws / "runs" / "straight", ws / "runs" / "stopped"
    done = run_trainer(ws, "-c", config, "--run-dir", straight)
    assert done.returncode == 0, done.stdout + done.stderr

    assert _stop_with_sigterm(ws, config, stopped, after_step=5) == 0
    rows = events(stopped)
    states = [r["state"] for r in rows if r["event"] == "status"]
    assert states == ["running", "stopping", "stopped"]
    stop_step = rows[-1]["step"]
    assert 5 <= stop_step < STEPS, "the stop must land mid-run for this test to mean anything"
    [ckpt] = [r for r in rows if r["event"] == "checkpoint"]
    assert ckpt["step"] == stop_step and ckpt["reason"] == "stop"
    assert read_latest(stopped)["step"] == stop_step  # type: ignore[index]
    state = read_state(stopped / "checkpoints" / f"step-{stop_step:08d}")
    assert (
        state["data"]["cursor"] == stop_step * 2
        and state["schedule"]["optimizer_step"] == stop_step
    )

    resumed = run_trainer(ws, "-c", stopped / "config.yaml", "--run-dir", stopped, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = events(stopped)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))  # seq continued
    assert events(stopped, "run_start")[1]["resumed_from"] == stop_step
    assert rows[-1]["state"] == "finished"
    # Same ops in the same order on the same CPU, float32 weights and optimizer state saved
    # bit for bit, data order and dropout from (seed, step): the losses are identical. The
    # tolerance only absorbs a BLAS that might split a reduction differently between runs.
    a, b = train_losses(straight), train_losses(stopped)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step
    assert (
        events(stopped, "train")[-1]["trained_tokens"]
        == events(straight, "train")[-1]["trained_tokens"]
    )
    # Training seconds carry over the resume: they never go back.
    elapsed = [r["elapsed_seconds"] for r in events(stopped, "train")]
    assert elapsed == sorted(elapsed)


def test_non_finite_loss_keeps_the_last_good_checkpoint(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    model = ws / "model"
    ws.mkdir()
    shutil.copytree(tiny_assets["model"], model)
    config = write_config(
        ws / "config.yaml", tiny_assets, iters=4, save_every=2, fine_tune_type="lora",
        model=str(model),
    )  # fmt: skip
    run_dir = ws / "runs" / "nan"
    first = run_trainer(ws, "-c", config, "--run-dir", run_dir)
    assert first.returncode == 0, first.stdout + first.stderr
    # The frozen base goes bad (NaN in a block's weights): the resumed run must diverge.
    weights = mx.load(str(model / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    weights[name] = mx.full(weights[name].shape, float("nan"))  # type: ignore[index,call-overload]
    mx.save_safetensors(str(model / "model.safetensors"), weights)  # type: ignore[arg-type]
    before = [b["step"] for b in list_checkpoints(run_dir)]
    proc = run_trainer(ws, "-c", config, "--run-dir", run_dir, "--resume", "--iters", "8")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert [b["step"] for b in list_checkpoints(run_dir)] == before
    assert read_latest(run_dir)["step"] == 4  # type: ignore[index]
    warning = events(run_dir, "warning")[-1]
    assert warning["kind"] == "nan"
    status = events(run_dir)[-1]
    assert status["state"] == "diverged" and "step-00000004" in status["message"]
