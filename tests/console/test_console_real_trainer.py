"""End to end with the REAL trainer (training/continued_pretraining.py) on the tiny
scratch model: the console starts it, streams its metrics over a real Socket.IO client,
survives a kill -9 of itself and adopts the trainer again, stops it with a checkpoint,
and resumes the same run on an explicit, confirmed request with seq continued."""

from __future__ import annotations

import json

import psutil
import pytest

from tests.helpers import wait_until
from tests.live_server import LiveServer

pytestmark = pytest.mark.slow


def real_config(assets) -> dict:
    return {
        "model": str(assets["model"]),
        "data": str(assets["corpus"]),
        "fine_tune_type": "full",
        "max_seq_length": 64,
        "batch_size": 2,
        "iters": 100_000,  # stopped by the test long before
        "learning_rate": 1e-3,
        "steps_per_report": 1,
        "steps_per_eval": 100_000,
        "val_batches": 1,
        "save_every": 100_000,
    }


def test_start_stream_crash_adopt_stop_resume(tiny_assets, tmp_path):
    server = LiveServer(tmp_path / "ws").start()
    rows: list[dict] = []
    try:
        response = server.post("/api/runs", {"config": real_config(tiny_assets), "name": "e2e"})
        assert response.status_code == 201, response.text
        run_id = response.json()["run_id"]
        record = json.loads((server.workspace / "runs" / run_id / "run.json").read_text())
        assert "training.continued_pretraining" in record["cmdline"]

        sio = server.socket()
        sio.on("run_metrics", lambda data: rows.extend(data["rows"]))
        assert sio.call("join_run", {"run_id": run_id, "after_seq": 0})["ok"]
        wait_until(
            lambda: sum(r["event"] == "train" for r in rows) >= 2,
            timeout=180,
            message="train events over Socket.IO",
        )
        assert server.run(run_id)["state"] == "running"

        # The console dies; training goes on; a new console adopts and streams it.
        pid = json.loads((server.workspace / "runs" / run_id / "run.json").read_text())["pid"]
        server.kill()
        metrics = server.workspace / "runs" / run_id / "metrics.jsonl"
        size = metrics.stat().st_size
        wait_until(
            lambda: metrics.stat().st_size > size,
            timeout=120,
            message="training to continue without a console",
        )
        server.start()
        assert f"run {run_id}: adopted" in server.output()
        seen = rows[-1]["seq"]
        sio = server.socket()
        sio.on("run_metrics", lambda data: rows.extend(data["rows"]))
        sio.call("join_run", {"run_id": run_id, "after_seq": seen})
        wait_until(lambda: rows[-1]["seq"] > seen + 1, timeout=120, message="streaming again")

        # Stop: the trainer checkpoints and exits 0.
        assert server.post(f"/api/runs/{run_id}/stop").status_code == 202
        run = server.wait_for_state(run_id, "stopped", timeout=180)
        assert run["checkpoints"] >= 1 and run["resumable"]
        wait_until(
            lambda: (
                not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            ),
            timeout=60,
        )
        stopped_seq = run["last_seq"]
        stopped_step = run["step"]

        # Resume needs a confirmation, then continues the same run.
        assert server.post(f"/api/runs/{run_id}/resume", {}).status_code == 400
        resumed = server.post(f"/api/runs/{run_id}/resume", {"confirm": True})
        assert resumed.status_code == 202, resumed.text
        wait_until(
            lambda: server.run(run_id)["step"] > stopped_step,
            timeout=180,
            message="the resumed run to train",
        )
        wait_until(lambda: rows[-1]["seq"] > stopped_seq + 1, timeout=60)
        server.post(f"/api/runs/{run_id}/stop")
        server.wait_for_state(run_id, "stopped", timeout=180)

        history = server.get(f"/api/runs/{run_id}/metrics").json()["rows"]
        seqs = [r["seq"] for r in history]
        assert seqs == list(range(1, len(seqs) + 1))  # seq continued across the resume
        starts = [r for r in history if r["event"] == "run_start"]
        assert len(starts) == 2 and starts[1].get("resumed_from")
        live = [r["seq"] for r in rows]
        assert live == sorted(set(live))  # the live stream never repeated a row
    finally:
        server.stop()
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any("continued_pretraining" in c for c in proc.info["cmdline"] or []) and any(
                    str(tmp_path) in c for c in proc.info["cmdline"] or []
                ):
                    proc.kill()
            except psutil.Error:
                continue


def test_a_remote_trainer_reports_over_http(tiny_assets, tmp_path):
    """`--report-url` from a trainer with its own run folder (another machine, say): its
    events land in the console's run of that id and read like a local run's."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.live_server import ROOT

    run_id = "20260303-000000-remote"
    config = {**real_config(tiny_assets), "iters": 4}
    config_path = tmp_path / "remote.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with LiveServer(tmp_path / "console-ws") as server:
        env = {**os.environ, "MLX_CPT_TOKEN": server.token, "PYTHONPATH": str(ROOT)}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training.continued_pretraining",
                "-c",
                str(config_path),
                "--run-dir",
                str(tmp_path / "elsewhere" / "runs" / run_id),
                "--report-url",
                f"{server.base_url}api/callbacks/{run_id}",
            ],
            cwd=tmp_path,
            env=env,
            check=True,
            timeout=600,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        local = (tmp_path / "elsewhere" / "runs" / run_id / "metrics.jsonl").read_text()
        expected = [json.loads(line)["seq"] for line in local.splitlines() if line.strip()]
        wait_until(
            lambda: server.run(run_id)["last_seq"] == expected[-1],
            timeout=60,
            message="the reporter to deliver every event",
        )
        run = server.run(run_id)
        assert run["remote"] and run["state"] == "finished" and run["step"] == 4
        rows = server.get(f"/api/runs/{run_id}/metrics").json()["rows"]
        assert [r["seq"] for r in rows] == expected


def test_a_trainer_started_from_the_command_line_is_live_and_stoppable(tiny_assets, tmp_path):
    """The trainer's own command line in the console's workspace (default run folder, no
    run.json): the console lists it as running, stops it with a checkpoint, and sees it
    stopped at once, not after a silence."""
    import os
    import subprocess
    import sys

    import yaml

    from tests.live_server import ROOT

    config_path = tmp_path / "cli.yaml"
    config_path.write_text(yaml.safe_dump(real_config(tiny_assets)))
    with LiveServer(tmp_path / "ws") as server:
        env = {k: v for k, v in os.environ.items() if k != "MLX_CPT_TOKEN"}
        env.update(MLX_CPT_HOME=str(server.workspace), PYTHONPATH=str(ROOT))
        trainer = subprocess.Popen(
            [sys.executable, "-m", "training.continued_pretraining", "-c", str(config_path)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            runs = wait_until(
                lambda: [r for r in server.get("/api/runs").json()["runs"] if r["step"]],
                timeout=180,
                message="the command-line run to train",
            )
            [run] = runs
            assert run["state"] == "running" and not run["remote"]
            assert not (server.workspace / "runs" / run["run_id"] / "run.json").exists()
            assert server.post(f"/api/runs/{run['run_id']}/stop").status_code == 202
            assert trainer.wait(timeout=180) == 0
            stopped = server.wait_for_state(run["run_id"], "stopped", timeout=30)
            assert stopped["checkpoints"] >= 1 and stopped["resumable"]
        finally:
            trainer.kill()
            trainer.wait()
