"""The command line against real consoles and real (fake-trainer) processes: start-up
has no side effect on runs, detection is read-only and logged, the workspace lock,
console.json, Ctrl-C and kill -9 leave trainers running, adoption, --resume, modes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import web.cli as cli
from tests.console_helpers import fake_config, make_workspace, set_fake_mode, snapshot
from tests.helpers import wait_until
from tests.live_server import ROOT, LiveServer

RUNTIME_FILES = ("console.json", "console.lock")


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path / "ws")


def trainer_pid(server, run_id):
    return json.loads((server.workspace / "runs" / run_id / "run.json").read_text())["pid"]


def kill_pid(pid):
    """Test cleanup for a trainer a test left behind on purpose."""
    try:
        proc = psutil.Process(pid)
        proc.kill()
        proc.wait(10)
    except psutil.Error:
        pass


def python_processes_naming(run_id):
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(run_id in part for part in proc.info["cmdline"] or []):
                out.append(proc.pid)
        except psutil.Error:
            continue
    return out


def test_no_mlx_in_the_console_process():
    code = (
        "import sys, tempfile\n"
        "import start_web_interface\n"
        "from web.app import create_app\n"
        "app = create_app({'WORKSPACE': tempfile.mkdtemp()})\n"
        "app.test_client().get('/api/health')\n"
        "bad = sorted(m for m in sys.modules if m == 'mlx' or m.startswith(('mlx.', 'mlx_lm')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_start_console_json_and_clean_exit(workspace):
    server = LiveServer(workspace).start()
    info_path = workspace / "console.json"
    info = json.loads(info_path.read_text())
    assert stat.S_IMODE(info_path.stat().st_mode) == 0o600
    assert info["port"] == server.port and info["pid"] == server.process.pid
    assert info["token"] == server.token and info["url"] == server.url_with_token
    assert server.get("/api/health").json()["async_mode"] == "threading"  # even with eventlet
    assert server.stop(signal.SIGINT) == 0
    assert not info_path.exists()
    assert "console stopped" in server.output()


def test_a_second_console_on_the_same_workspace_exits_clearly(workspace):
    with LiveServer(workspace) as first:
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "start_web_interface.py"),
                "--workspace",
                str(workspace),
                "--no-browser",
                "--port",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert f"already running on this workspace ({workspace}) at {first.base_url}" in (
            result.stderr
        )
        assert first.token not in result.stderr + result.stdout


def test_a_killed_consoles_lock_is_reclaimed(workspace):
    first = LiveServer(workspace).start()
    first.kill()
    assert (workspace / "console.json").exists()  # left behind by the crash
    with LiveServer(workspace) as second:
        assert json.loads((workspace / "console.json").read_text())["pid"] == second.process.pid


def test_ctrl_c_leaves_trainers_running(workspace):
    set_fake_mode(workspace, rate=50)
    server = LiveServer(workspace, fake_trainer=True).start()
    run_id = server.post("/api/runs", {"config": fake_config(iters=100_000)}).json()["run_id"]
    server.wait_for_state(run_id, "running")
    pid = trainer_pid(server, run_id)
    try:
        assert server.stop(signal.SIGINT) == 0
        assert psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert f"1 trainer(s) keep running ({run_id})" in server.output()
    finally:
        kill_pid(pid)


def test_kill_9_mid_run_then_adopt_and_stream(workspace):
    set_fake_mode(workspace, rate=50)
    server = LiveServer(workspace, fake_trainer=True).start()
    run_id = server.post("/api/runs", {"config": fake_config(iters=100_000)}).json()["run_id"]
    server.wait_for_state(run_id, "running")
    pid = trainer_pid(server, run_id)
    metrics = workspace / "runs" / run_id / "metrics.jsonl"
    try:
        server.kill()
        size = metrics.stat().st_size
        wait_until(lambda: metrics.stat().st_size > size, message="training to go on")
        server.start()
        assert f"run {run_id}: adopted: live trainer" in server.output()
        assert server.run(run_id)["state"] == "running" and server.run(run_id)["adopted"]
        rows = []
        sio = server.socket()
        sio.on("run_metrics", lambda data: rows.extend(data["rows"]))
        last = sio.call("join_run", {"run_id": run_id, "after_seq": 0})["last_seq"]
        wait_until(lambda: rows and rows[-1]["seq"] > last + 5, message="live rows")
        seqs = [r["seq"] for r in rows]
        assert seqs == list(range(1, len(seqs) + 1))
        assert server.post(f"/api/runs/{run_id}/stop").status_code == 202
        run = server.wait_for_state(run_id, "stopped")
        assert run["checkpoints"] >= 1
        wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie")
    finally:
        server.stop()
        kill_pid(pid)


def test_a_dead_trainer_shows_interrupted_and_nothing_starts(workspace):
    set_fake_mode(workspace, rate=50)
    server = LiveServer(workspace, fake_trainer=True).start()
    run_id = server.post("/api/runs", {"config": fake_config(iters=100_000)}).json()["run_id"]
    wait_until(lambda: server.run(run_id)["checkpoints"] >= 1, message="a checkpoint")
    pid = trainer_pid(server, run_id)
    server.kill()
    kill_pid(pid)  # the machine rebooted, say
    before = snapshot(workspace, RUNTIME_FILES)
    server.start()
    assert f"run {run_id}: interrupted" in server.output()
    run = server.run(run_id)
    assert run["state"] == "interrupted" and run["resumable"]
    assert python_processes_naming(run_id) == []
    assert snapshot(workspace, RUNTIME_FILES) == before
    assert server.post(f"/api/runs/{run_id}/resume", {}).status_code == 400
    assert python_processes_naming(run_id) == []
    assert server.post(f"/api/runs/{run_id}/resume", {"confirm": True}).status_code == 202
    server.wait_for_state(run_id, "running")
    server.post(f"/api/runs/{run_id}/stop")
    server.wait_for_state(run_id, "stopped")
    server.stop()


def build_history(workspace):
    """Runs in every state a console can find on disk, made by a console that then dies."""
    set_fake_mode(workspace, rate=500)
    server = LiveServer(workspace, fake_trainer=True).start()
    done = server.post("/api/runs", {"config": fake_config(iters=5)}).json()["run_id"]
    server.wait_for_state(done, "finished")
    server.post("/api/queue/pause")
    queued = server.post("/api/runs", {"config": fake_config(iters=6), "queue": True}).json()
    created = server.post("/api/runs", {"config": fake_config(iters=7), "start": False}).json()
    set_fake_mode(workspace, rate=50)
    live = server.post("/api/runs", {"config": fake_config(iters=100_000)}).json()["run_id"]
    wait_until(lambda: server.run(live)["checkpoints"] >= 1)
    server.kill()
    return {
        "finished": done,
        "queued": queued["run_id"],
        "created": created["run_id"],
        "live": live,
        "pid": trainer_pid(server, live),
    }


@pytest.mark.parametrize("autodetect", [True, False])
def test_start_up_changes_nothing_in_any_run(workspace, autodetect):
    runs = build_history(workspace)
    try:
        os.kill(runs["pid"], signal.SIGSTOP)  # freeze the live trainer: its files hold still
        before = snapshot(workspace, RUNTIME_FILES)
        args = [] if autodetect else ["--no-autodetect"]
        with LiveServer(workspace, fake_trainer=True, args=args) as server:
            listed = {r["run_id"]: r["state"] for r in server.get("/api/runs").json()["runs"]}
            assert listed[runs["finished"]] == "finished"
            assert listed[runs["queued"]] == "queued" and listed[runs["created"]] == "created"
            queue = server.get("/api/queue").json()["queue"]
            assert queue["paused"] and queue["run_ids"] == [runs["queued"]]
            output = server.output()
            if autodetect:
                for run_id in (runs["finished"], runs["queued"], runs["created"], runs["live"]):
                    assert len([ln for ln in output.splitlines() if f"run {run_id}:" in ln]) == 1
                assert f"run {runs['live']}: adopted" in output
            else:
                assert "run " not in output.split("listening on", 1)[0]
                assert "adopted" not in output
                assert server.run(runs["live"])["adopted"]  # opened: now followed
                assert f"run {runs['live']}: adopted" in server.output()
            # Every read path a page uses, the live stream included, writes nothing either.
            sio = server.socket()
            for run_id in listed:
                assert sio.call("join_run", {"run_id": run_id, "after_seq": 0})["ok"]
                for suffix in ("", "/metrics?max_points=100", "/logs", "/checkpoints"):
                    assert server.get(f"/api/runs/{run_id}{suffix}").status_code == 200
            assert server.get("/api/runs/summary").status_code == 200
        assert snapshot(workspace, RUNTIME_FILES) == before
    finally:
        kill_pid(runs["pid"])


def test_resume_from_the_command_line(workspace):
    set_fake_mode(workspace, rate=200)
    server = LiveServer(workspace, fake_trainer=True).start()
    run_id = server.post("/api/runs", {"config": fake_config(iters=100_000)}).json()["run_id"]
    wait_until(lambda: server.run(run_id)["step"] > 3)
    server.post(f"/api/runs/{run_id}/stop")
    server.wait_for_state(run_id, "stopped")
    server.stop()
    server.args = ["--resume", run_id]
    server.start()
    assert f"run {run_id}: resuming from stopped" in server.output()
    server.wait_for_state(run_id, "running")
    server.post(f"/api/runs/{run_id}/stop")
    server.wait_for_state(run_id, "stopped")
    server.args = ["--resume", "no-such-run"]
    server.restart()
    assert "--resume no-such-run" in server.output()  # logged; the console still serves
    server.stop()


def test_eventlet_mode_serves_and_streams(workspace):
    set_fake_mode(workspace, rate=200)
    with LiveServer(workspace, fake_trainer=True, async_mode="eventlet") as server:
        assert server.get("/api/health").json()["async_mode"] == "eventlet"
        run_id = server.post("/api/runs", {"config": fake_config(iters=40)}).json()["run_id"]
        rows = []
        sio = server.socket()
        sio.on("run_metrics", lambda data: rows.extend(data["rows"]))
        sio.call("join_run", {"run_id": run_id, "after_seq": 0})
        server.wait_for_state(run_id, "finished")
        wait_until(lambda: rows and rows[-1]["event"] == "status", message="all rows")
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))


def test_port_in_use_and_fallback(monkeypatch):
    held = socket.create_server(("127.0.0.1", 0))
    port = held.getsockname()[1]
    try:
        with pytest.raises(OSError):
            cli.bind("127.0.0.1", port)  # an explicit port is not silently changed
        monkeypatch.setattr(cli, "DEFAULT_PORT", port)
        fallback = cli.bind("127.0.0.1", None)
        assert fallback.getsockname()[1] != port
        fallback.close()
    finally:
        held.close()
    assert cli.DEFAULT_PORT != 5000


def test_log_lines_never_carry_the_token():
    import logging

    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "GET /?token=%s HTTP/1.1", ("abc123",), None
    )
    cli.RedactTokens("abc123").filter(record)
    assert "abc123" not in record.getMessage()


def test_demo_flag_offers_the_preset_and_starts_nothing(workspace):
    from training.contract.layout import DEMO_CONFIG, DOMAIN_CORPUS, GENERAL_SET
    from training.contract.layout import demo_model_dir as model_dir

    for rel in (DOMAIN_CORPUS, GENERAL_SET):
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text('{"text": "x"}\n')
    (workspace / model_dir("small")).mkdir(parents=True)
    (workspace / model_dir("small") / "config.json").write_text("{}")
    (workspace / DEMO_CONFIG).write_text("model: models/scratch-small\ndata: corpus.txt\n")
    with LiveServer(workspace, args=["--demo"]) as server:
        presets = server.get("/api/presets").json()["presets"]
        demo = next(p for p in presets if p["name"] == "demo")
        assert demo["state"] == "ready" and demo["config"]["model"] == "models/scratch-small"
        assert server.get("/api/runs").json()["runs"] == []
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())


def test_help_lists_the_documented_flags():
    text = cli.build_parser().format_help()
    for flag in (
        "--host",
        "--port",
        "--workspace",
        "--token",
        "--no-browser",
        "--no-autodetect",
        "--resume",
        "--async-mode",
        "--log-level",
        "--demo",
    ):
        assert flag in text
    assert isinstance(Path(cli.__file__), Path)
