"""SIGKILL the real trainer while it saves checkpoints, several times at random moments:
latest.json must always name a complete bundle, and the resumed chain's losses must be an
uninterrupted run's, step for step, bit for bit. (The writer killed at exact points of a
save is tests/contract/test_checkpoints.py; a stop by SIGTERM, tests/trainer/test_resume.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import mlx.core as mx
import pytest

from tests.helpers import wait_until
from tests.trainer_helpers import events, run_trainer, start_trainer, train_losses, write_config
from training.contract.checkpoints import CHECKPOINTS_DIR, TMP_PREFIX, read_latest, read_state

pytestmark = pytest.mark.slow

STEPS = 14
KILLS = 3
# A save every step, two kept: every moment is near a save, a rename or a deletion.
SETTINGS = {"iters": STEPS, "save_every": 1, "keep_checkpoints": 2}


def saving(run_dir: Path) -> bool:
    """A bundle is being written (its temporary folder exists) or retention is deleting one."""
    try:
        return any(p.name.startswith(TMP_PREFIX) for p in (run_dir / CHECKPOINTS_DIR).iterdir())
    except FileNotFoundError:
        return False


def assert_latest_complete(run_dir: Path) -> int:
    """latest.json names a bundle whose state.json, recorded files and arrays all load."""
    latest = read_latest(run_dir)
    assert latest is not None, "latest.json must name a complete bundle"
    bundle = Path(latest["path"])
    state = read_state(bundle)
    assert state["step"] == latest["step"]
    for name, size in state["files"].items():
        assert (bundle / name).stat().st_size == size, name
    for name in ("adapters.safetensors", "optimizer.safetensors"):
        assert mx.load(str(bundle / name)), name
    return int(latest["step"])


def kill_during_a_save(
    proc: subprocess.Popen[bytes], run_dir: Path, after_step: int, rng: random.Random
) -> bool:
    """Once this attempt has saved a checkpoint past `after_step`, wait for a save in
    progress (or, failing that, a random moment) and SIGKILL the trainer there; True when
    a save was in progress when it died."""
    latest_file = run_dir / CHECKPOINTS_DIR / "latest.json"
    give_up: list[float] = []

    def moment() -> bool:
        # Whenever latest.json exists it names a complete bundle, even mid-save.
        latest = read_latest(run_dir)
        assert latest is not None or not latest_file.exists()
        if proc.poll() is not None:
            raise AssertionError(f"the trainer ended (code {proc.returncode}) before a kill")
        if latest is None or latest["step"] <= after_step:
            return False  # this attempt has not saved yet (still starting, or restoring)
        if not give_up:
            give_up.append(time.monotonic() + rng.uniform(0.2, 2.0))
        return saving(run_dir) or time.monotonic() > give_up[0]

    wait_until(moment, timeout=180, interval=0.001, message="a checkpoint save")
    mid_save = saving(run_dir)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return mid_save


def test_sigkill_during_saves_keeps_latest_complete_and_the_resumed_losses_exact(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    seed = int(os.environ.get("KILL_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(ws / "config.yaml", tiny_assets, **SETTINGS)
    straight, chain = ws / "runs" / "straight", ws / "runs" / "chain"
    done = run_trainer(ws, "-c", config, "--run-dir", straight)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = train_losses(straight)
    assert sorted(expected) == list(range(1, STEPS + 1))

    args: list[str | Path] = ["-c", config, "--run-dir", chain]
    mid_save, steps_at_kill = 0, [0]
    for kill in range(KILLS):
        proc = start_trainer(ws, *args, log=ws / f"attempt-{kill}.log")
        try:
            mid_save += kill_during_a_save(proc, chain, steps_at_kill[-1], rng)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        steps_at_kill.append(assert_latest_complete(chain))
        assert (
            not events(chain)
            or events(chain)[-1]["event"] != "status"
            or (events(chain)[-1]["state"] == "running")
        ), "a killed trainer writes no final status"
        args = ["-c", chain / "config.yaml", "--run-dir", chain, "--resume"]
    resumed = run_trainer(ws, *args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert events(chain)[-1]["state"] == "finished"
    assert_latest_complete(chain)
    assert not saving(chain), "the resumed trainer cleans what a killed save left"

    note = f"(KILL_SEED={seed}; killed after checkpoints {steps_at_kill[1:]}, {mid_save} mid-save)"
    # Every train row of the chain, the steps redone after a kill included, is the
    # uninterrupted run's loss exactly: weights, optimizer state and data order come back.
    rows = events(chain, "train")
    assert {r["step"] for r in rows} == set(expected), note
    assert all(r["train_loss"] == expected[r["step"]] for r in rows), note
    assert train_losses(chain) == expected, note
    seqs = [r["seq"] for r in events(chain)]
    assert seqs == list(range(1, len(seqs) + 1)), note  # a torn tail repaired, seq continued
    assert len(events(chain, "run_start")) == KILLS + 1
    print(f"{KILLS} kills survived {note}")  # shown with -rA: where the kills landed
