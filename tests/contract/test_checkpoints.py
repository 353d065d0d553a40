"""Checkpoint bundles: atomic writes, latest pointer, retention, listing, and a writer
killed (SIGKILL, a real process) at the worst moments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import pytest

from tests.conftest import ROOT
from tests.helpers import wait_until
from training.contract.checkpoints import (
    apply_retention,
    bundle_name,
    clean_stale_temp,
    list_checkpoints,
    read_latest,
    read_state,
    write_bundle,
)


def _write_arrays(step: int):
    def write(directory: Path) -> None:
        mx.save_safetensors(str(directory / "adapters.safetensors"), {"w": mx.full((4,), step)})
        mx.save_safetensors(str(directory / "optimizer.safetensors"), {"m": mx.zeros((4,))})

    return write


def _save(run: Path, step: int, val_loss: float | None = None, val_step: int | None = -1) -> Path:
    """A bundle whose latest evaluation (`val_loss`) ran at `val_step` (default: its own)."""
    state = {"val_loss": val_loss, "val_step": step if val_step == -1 else val_step}
    return write_bundle(run / "checkpoints", step, state, _write_arrays(step))


def test_bundle_layout_latest_and_listing(tmp_path: Path) -> None:
    bundle = _save(tmp_path, 100, 2.5)
    assert bundle.name == "step-00000100" == bundle_name(100)
    assert {p.name for p in bundle.iterdir()} == {
        "adapters.safetensors",
        "optimizer.safetensors",
        "state.json",
    }
    state = read_state(bundle)
    assert (
        state["step"] == 100
        and state["val_loss"] == 2.5
        and "adapters.safetensors" in state["files"]
    )
    assert read_latest(tmp_path)["bundle"] == "step-00000100"  # type: ignore[index]
    [info] = list_checkpoints(tmp_path)
    assert info["step"] == 100 and info["val_loss"] == 2.5 and info["is_latest"]
    assert info["size"] == sum(p.stat().st_size for p in bundle.iterdir())


def test_retention_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    for step, loss in [(10, 3.0), (20, 1.0), (30, 2.0), (40, 2.5), (50, 2.2)]:
        _save(tmp_path, step, loss)
    removed = apply_retention(tmp_path / "checkpoints", keep=2, keep_best=True)
    assert sorted(removed) == ["step-00000010", "step-00000030"]
    listed = list_checkpoints(tmp_path)
    assert [b["step"] for b in listed] == [20, 40, 50]
    assert [b["step"] for b in listed if b["is_best"]] == [20]
    apply_retention(tmp_path / "checkpoints", keep=1, keep_best=False)
    assert [b["step"] for b in list_checkpoints(tmp_path)] == [50]


def test_best_is_the_loss_measured_at_the_bundles_own_step(tmp_path: Path) -> None:
    # Evaluations at 0, 200 and 400, checkpoints every 100: step 300 still carries the
    # step-200 loss in its state, which says nothing about step 300's weights.
    ckpt = tmp_path / "checkpoints"
    removed: list[str] = []
    for step, loss, at in [(100, 4.0, 0), (200, 3.0, 200), (300, 3.0, 200), (400, 3.5, 400)]:
        _save(tmp_path, step, loss, at)
        removed += apply_retention(ckpt, keep=1, keep_best=True)
    listed = list_checkpoints(tmp_path)
    assert [b["step"] for b in listed] == [200, 400]
    assert [b["step"] for b in listed if b["is_best"]] == [200]
    assert [b["val_loss"] for b in listed] == [3.0, 3.5]
    assert sorted(removed) == ["step-00000100", "step-00000300"]


def test_best_ties_go_to_the_earlier_step_and_old_states_score_nothing(tmp_path: Path) -> None:
    _save(tmp_path, 10, 2.0)
    _save(tmp_path, 20, 2.0)
    write_bundle(tmp_path / "checkpoints", 30, {"val_loss": 1.0}, _write_arrays(30))  # no step
    apply_retention(tmp_path / "checkpoints", keep=1, keep_best=True)
    listed = list_checkpoints(tmp_path)
    assert [(b["step"], b["is_best"], b["val_loss"]) for b in listed] == [
        (10, True, 2.0),
        (30, False, None),
    ]


def test_incomplete_folders_are_never_listed_and_are_cleaned(tmp_path: Path) -> None:
    _save(tmp_path, 5)
    ckpt = tmp_path / "checkpoints"
    (ckpt / ".tmp-step-00000010-123").mkdir()
    (ckpt / "step-00000010").mkdir()  # no state.json: not complete
    assert [b["step"] for b in list_checkpoints(tmp_path)] == [5]
    assert clean_stale_temp(ckpt) == [".tmp-step-00000010-123"]


def test_latest_pointing_at_a_missing_bundle_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.json").write_text('{"bundle": "step-00000007"}')
    assert read_latest(tmp_path) is None
    (tmp_path / "checkpoints" / "latest.json").write_text("{not json")
    assert read_latest(tmp_path) is None


def test_a_reader_racing_retention_reads_the_newer_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between reading latest.json and looking at its bundle, a running trainer may save
    twice and prune that bundle; the reader follows the pointer it moved to, not None."""
    from training.contract import checkpoints

    _save(tmp_path, 1)
    real = checkpoints._bundle_at
    raced: list[str] = []

    def bundle_at(fd: int, name: str, step: int):  # type: ignore[no-untyped-def]
        if not raced:
            raced.append(name)
            _save(tmp_path, 2)
            _save(tmp_path, 3)
            apply_retention(tmp_path / "checkpoints", keep=1, keep_best=False)
        return real(fd, name, step)

    monkeypatch.setattr(checkpoints, "_bundle_at", bundle_at)
    latest = read_latest(tmp_path)
    assert raced == ["step-00000001"]
    assert latest is not None and latest["step"] == 3


def _outside_bundle(tmp_path: Path) -> Path:
    """A complete bundle in a folder outside the run (what a link may point at)."""
    elsewhere = tmp_path / "elsewhere"
    bundle = _save(elsewhere, 9, 0.5)
    (bundle / "big.bin").write_bytes(b"x" * 100_000)
    return bundle


def test_a_bundle_that_is_a_link_is_no_bundle(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 1, 2.0)
    outside = _outside_bundle(tmp_path)
    (run / "checkpoints" / "step-00000009").symlink_to(outside, target_is_directory=True)
    latest = run / "checkpoints" / "latest.json"
    latest.write_text(json.dumps({"step": 9, "bundle": "step-00000009"}))
    listed = list_checkpoints(run)
    assert [b["step"] for b in listed] == [1]  # not latest, not best, no foreign size
    assert not any(b["is_latest"] for b in listed) and read_latest(run) is None


@pytest.mark.parametrize("name", ["adapters.safetensors", "state.json", "extra.bin"])
def test_a_bundle_holding_a_link_is_no_bundle(tmp_path: Path, name: str) -> None:
    run = tmp_path / "run"
    _save(run, 1, 2.0)
    bundle = _save(run, 2, 1.0)
    outside = _outside_bundle(tmp_path)
    target = bundle / name
    target.unlink(missing_ok=True)
    target.symlink_to(outside / ("big.bin" if name == "extra.bin" else name))
    listed = list_checkpoints(run)
    assert [b["step"] for b in listed] == [1]
    assert read_latest(run) is None  # latest.json names step 2: not complete any more


def test_a_fifo_in_a_bundle_or_at_latest_json_never_blocks(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _save(run, 1, 2.0)
    bundle = _save(run, 2, 1.0)
    os.mkfifo(bundle / "stray")
    assert [b["step"] for b in list_checkpoints(run)] == [1]
    (run / "checkpoints" / "latest.json").unlink()
    os.mkfifo(run / "checkpoints" / "latest.json")
    assert read_latest(run) is None and [b["is_latest"] for b in list_checkpoints(run)] == [False]


def test_a_checkpoints_folder_that_is_a_link_holds_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    outside = _outside_bundle(tmp_path)
    (run / "checkpoints").symlink_to(outside.parent, target_is_directory=True)
    assert list_checkpoints(run) == [] and read_latest(run) is None


def test_wrong_types_in_latest_and_state_json(tmp_path: Path) -> None:
    bundle = _save(tmp_path, 3, 2.0)
    latest = tmp_path / "checkpoints" / "latest.json"
    latest.write_text(json.dumps({"step": "three", "bundle": "step-00000003"}))
    assert read_latest(tmp_path)["step"] == 3  # type: ignore[index]
    for data in ({"bundle": 3}, {"bundle": ["step-00000003"]}, [1], {"bundle": "../../x"}):
        latest.write_text(json.dumps(data))
        assert read_latest(tmp_path) is None
    state = json.loads((bundle / "state.json").read_text())
    (bundle / "state.json").write_text(
        json.dumps({**state, "time": "noon", "val_loss": "low", "val_step": 3})
    )
    [info] = list_checkpoints(tmp_path)
    assert info["val_loss"] is None and isinstance(info["time"], float)
    (bundle / "state.json").write_text(json.dumps({**state, "time": 10**400, "val_loss": 1e400}))
    [info] = list_checkpoints(tmp_path)
    assert info["val_loss"] is None and isinstance(info["time"], float)
    (bundle / "state.json").write_text("[]")
    assert list_checkpoints(tmp_path) == []


# A writer that saves step 1, then blocks inside the save of step 2 at a chosen point.
_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import mlx.core as mx
    from training.contract import checkpoints

    run, where = Path(sys.argv[1]), sys.argv[2]
    def arrays(step, block=False):
        def write(d):
            mx.save_safetensors(str(d / "adapters.safetensors"), {"w": mx.full((1000,), step)})
            if block:
                (run / "ready").write_text("1")
                time.sleep(600)
        return write
    checkpoints.write_bundle(run / "checkpoints", 1, {"val_loss": 1.0}, arrays(1))
    if where == "before_latest":
        real = checkpoints.write_json_atomic
        def blocking(path, data):
            (run / "ready").write_text("1")
            time.sleep(600)
        checkpoints.write_json_atomic = blocking
    checkpoints.write_bundle(run / "checkpoints", 2, {}, arrays(2, where == "files"))
    """
)


@pytest.mark.parametrize("where", ["files", "before_latest"])
def test_killed_mid_save_leaves_previous_bundle_loadable(tmp_path: Path, where: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), where],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_until(lambda: (tmp_path / "ready").exists() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, "writer exited before reaching the save"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    latest = read_latest(tmp_path)
    assert latest is not None and latest["bundle"] == "step-00000001"
    json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    weights = mx.load(str(Path(latest["path"]) / "adapters.safetensors"))
    assert weights["w"].tolist() == [1.0] * 1000  # type: ignore[index,call-overload]
    steps = [b["step"] for b in list_checkpoints(tmp_path)]
    # Killed before the rename: step 2 does not exist; after it: complete, but not latest.
    assert steps == ([1] if where == "files" else [1, 2])
    clean_stale_temp(tmp_path / "checkpoints")
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
