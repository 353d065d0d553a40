"""Bad configs are caught before anything is created, and a run whose trainer died before
its first checkpoint starts again from step 0, only on an explicit, confirmed request.

The real trainer (python -m training.continued_pretraining) and a real console, on the tiny
scratch model and its 4-bit copy (mlx_lm.convert).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.console_helpers import snapshot as stat_snapshot
from tests.helpers import wait_until
from tests.live_server import LiveServer, live_server
from tests.trainer_helpers import events, run_trainer, snapshot, start_trainer

pytestmark = pytest.mark.slow

FIX = "use lora or dora, or a dequantized copy of the model (mlx_lm.convert --dequantize)"


def make_workspace(root: Path, assets: dict[str, Path], quantized: Path) -> Path:
    (root / "models").mkdir(parents=True)
    shutil.copytree(assets["model"], root / "models" / "tiny")
    shutil.copytree(quantized, root / "models" / "tiny-4bit")
    shutil.copy(assets["corpus"], root / "corpus.jsonl")
    return root


def config(**values: Any) -> dict[str, Any]:
    """Workspace-relative, quick: a few seconds of training on two cores."""
    return {
        "model": "models/tiny-4bit",
        "data": "corpus.jsonl",
        "max_seq_length": 64,
        "batch_size": 2,
        "iters": 3,
        "steps_per_report": 1,
        "steps_per_eval": 100_000,
        "val_batches": 1,
        "save_every": 100_000,
        **values,
    }


@pytest.fixture
def ws(tmp_path: Path, tiny_assets: dict[str, Path], quantized_model: Path) -> Path:
    return make_workspace(tmp_path / "ws", tiny_assets, quantized_model)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_assets: dict[str, Path], quantized_model: Path
) -> Any:
    root = make_workspace(tmp_path_factory.mktemp("console") / "ws", tiny_assets, quantized_model)
    with live_server(root) as s:
        yield s


def test_full_fine_tuning_of_a_quantized_model_via_the_trainer(ws: Path) -> None:
    path = ws / "config.yaml"
    path.write_text(yaml.safe_dump(config()))  # fine_tune_type: full is the default
    before = snapshot(ws)
    for extra in (
        [],
        ["--run-dir", "runs/mine"],
        ["--fine-tune-type", "full", "--num-layers", "1"],
    ):
        proc = run_trainer(ws, "-c", path, *extra)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "nothing was created or changed" in proc.stderr
        assert "fine_tune_type: full cannot train models/tiny-4bit" in proc.stderr
        assert "(4-bit, group size 32)" in proc.stderr and FIX in proc.stderr
        assert "Traceback" not in proc.stderr
        assert snapshot(ws) == before
    # The fix it names works: LoRA on the same quantized model trains.
    proc = run_trainer(ws, "-c", path, "--fine-tune-type", "lora", "--run-dir", "runs/lora")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert events(ws / "runs" / "lora")[-1]["state"] == "finished"


def test_full_fine_tuning_of_a_quantized_model_via_the_console(server: LiveServer) -> None:
    checked = server.post("/api/config/validate", {"config": config()}).json()
    assert not checked["ok"]
    assert [e["field"] for e in checked["errors"]] == ["fine_tune_type"]
    assert FIX in checked["errors"][0]["message"]
    assert checked["model"]["quantization"] == {"bits": 4, "group_size": 32, "mode": "affine"}
    runs = server.workspace / "runs"
    before = sorted(os.listdir(runs)) if runs.exists() else []
    for body in (
        {"config": config()},
        {"config": yaml.safe_dump(config()), "start": False},  # YAML text, created only
        {"config": config(fine_tune_type="full"), "queue": True},
    ):
        response = server.post("/api/runs", body)
        assert response.status_code == 400, response.text
        assert response.json()["field"] == "fine_tune_type" and FIX in response.json()["error"]
        assert (sorted(os.listdir(runs)) if runs.exists() else []) == before
    lora = server.post("/api/config/validate", {"config": config(fine_tune_type="lora")}).json()
    assert lora["ok"] and lora["model"]["quantization"]["bits"] == 4


def _kill_after_first_steps(run_dir: Path, pid: int) -> None:
    """SIGKILL a trainer once it has trained a step, long before its first checkpoint."""
    wait_until(
        lambda: any(r["event"] == "train" for r in events(run_dir)) if run_dir.is_dir() else False,
        timeout=240,
        message="the trainer's first steps",
    )
    os.kill(pid, signal.SIGKILL)


def test_a_trainer_killed_before_its_first_checkpoint_restarts_from_step_0(ws: Path) -> None:
    path = ws / "config.yaml"
    path.write_text(yaml.safe_dump(config(model="models/tiny", iters=100_000)))
    run_dir = ws / "runs" / "killed"
    proc = start_trainer(ws, "-c", path, "--run-dir", run_dir, log=ws / "killed.log")
    try:
        _kill_after_first_steps(run_dir, proc.pid)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    last_seq = events(run_dir)[-1]["seq"]
    assert not (run_dir / "checkpoints" / "latest.json").exists()
    before = snapshot(ws)

    resume = run_trainer(ws, "--resume", "--run-dir", run_dir)
    assert resume.returncode == 2 and "no complete checkpoint" in resume.stderr
    assert "add --restart" in resume.stderr
    fresh = run_trainer(ws, "-c", path, "--run-dir", run_dir)
    assert fresh.returncode == 2 and "already holds a run" in fresh.stderr
    assert "add --restart" in fresh.stderr
    both = run_trainer(ws, "--resume", "--restart", "--run-dir", run_dir)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    assert snapshot(ws) == before

    again = run_trainer(ws, "--restart", "--run-dir", run_dir, "--iters", "3")
    assert again.returncode == 0, again.stdout + again.stderr
    rows = events(run_dir)
    assert rows[0]["event"] == "run_start" and rows[0]["seq"] == last_seq + 1
    assert rows[0]["resumed_from"] is None and rows[0]["total_steps"] == 3
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3]
    assert rows[-1]["state"] == "finished"
    assert (run_dir / "final").is_dir()
    refused = run_trainer(ws, "--restart", "--run-dir", run_dir)
    assert refused.returncode == 2 and "use --resume" in refused.stderr


def test_the_console_restarts_a_killed_run_only_when_confirmed(server: LiveServer) -> None:
    body = {"config": config(model="models/tiny", iters=100_000), "name": "killed early"}
    response = server.post("/api/runs", body)
    assert response.status_code == 201, response.text
    run_id = response.json()["run_id"]
    run_dir = server.workspace / "runs" / run_id
    pid = json.loads((run_dir / "run.json").read_text())["pid"]
    _kill_after_first_steps(run_dir, pid)
    run = server.wait_for_state(run_id, "failed", timeout=60)
    assert "killed" in run["reason"] + (run["exit"] or {}).get("reason", "")
    assert run["restartable"] and not run["resumable"]
    last_seq = run["last_seq"]
    resume = server.post(f"/api/runs/{run_id}/resume", {"confirm": True})
    assert resume.status_code == 409 and "restart" in resume.json()["error"]

    before = stat_snapshot(run_dir)
    for unconfirmed in ({}, {"confirm": "true"}, {"confirm": 1}, {"restart": True}):
        refused = server.post(f"/api/runs/{run_id}/restart", unconfirmed)
        assert refused.status_code == 400 and refused.json()["field"] == "confirm"
    # A new console never starts it by itself either.
    server.restart()
    assert server.run(run_id)["state"] == "failed"
    assert stat_snapshot(run_dir) == before

    started = server.post(f"/api/runs/{run_id}/restart", {"confirm": True})
    assert started.status_code == 202, started.text
    wait_until(  # (the earlier attempt's rows stay until the trainer's checks passed)
        lambda: any(r["event"] == "train" and r["seq"] > last_seq for r in events(run_dir)),
        timeout=240,
        message="training again",
    )
    rows = events(run_dir)
    assert rows[0]["event"] == "run_start" and rows[0]["seq"] == last_seq + 1
    assert next(r for r in rows if r["event"] == "train")["step"] == 1  # from step 0
    record = json.loads((run_dir / "run.json").read_text())
    assert record["cmdline"][-1] == "--restart" and record["resumes"][-1]["restart"] is True
    assert server.post(f"/api/runs/{run_id}/stop").status_code == 202
    stopped = server.wait_for_state(run_id, "stopped", timeout=180)
    assert stopped["resumable"] and not stopped["restartable"]  # a checkpoint now
    assert server.post(f"/api/runs/{run_id}/restart", {"confirm": True}).status_code == 409
