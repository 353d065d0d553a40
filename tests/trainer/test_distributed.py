"""The trainer under `mlx.launch -n 2 --backend ring` on this machine: data sharded by
rank, gradients averaged, one writer. Both ranks train on halves of the same global batch,
so the losses match a single-process run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_until
from tests.trainer_helpers import (
    events,
    last_step_seen,
    run_trainer,
    train_losses,
    trainer_env,
    write_config,
)
from training.trainer.cli import build_parser
from training.trainer.preflight import preflight

pytestmark = pytest.mark.slow


def _free_ports(n: int) -> int:
    """A base port with n free ports after it (the ring listens on base .. base+n-1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError("no free ports")


def _launch(ws: Path, config: Path, run_dir: Path) -> list[str]:
    launcher = Path(sys.executable).with_name("mlx.launch")
    return [
        str(launcher), "-n", "2", "--backend", "ring", "--starting-port", str(_free_ports(2)),
        "--", sys.executable, "-m", "training.continued_pretraining", "-c", str(config),
        "--run-dir", str(run_dir),
    ]  # fmt: skip


def _rank_pid(run_dir: Path, rank: int) -> int | None:
    """The trainer process of one rank: its argv names the run, its MLX_RANK the rank."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            argv = proc.info["cmdline"] or []
            if "training.continued_pretraining" in argv and str(run_dir) in argv:
                if proc.environ().get("MLX_RANK") == str(rank):
                    return proc.pid
        except psutil.Error:
            continue
    return None


def test_a_stop_sent_to_one_rank_stops_both_after_the_same_step(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(ws / "config.yaml", tiny_assets, iters=100_000)
    run_dir = ws / "runs" / "ring-stop"
    with (ws / "launch.log").open("wb") as log:
        launcher = subprocess.Popen(
            _launch(ws, config, run_dir), cwd=ws, env=trainer_env(ws), stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(lambda: last_step_seen(run_dir) >= 2 or launcher.poll() is not None, timeout=240)
        rank1 = _rank_pid(run_dir, 1)
        assert rank1 is not None, (ws / "launch.log").read_text()
        os.kill(rank1, signal.SIGTERM)  # rank 1 only: rank 0, the writer, must learn of it
        assert launcher.wait(timeout=120) == 0, (ws / "launch.log").read_text()
    finally:
        if launcher.poll() is None:
            launcher.kill()
    rows = events(run_dir)
    assert rows[-1]["event"] == "status" and rows[-1]["state"] == "stopped"
    [checkpoint] = events(run_dir, "checkpoint")
    assert checkpoint["reason"] == "stop" and checkpoint["step"] == rows[-1]["step"]


def test_two_ranks_under_mlx_launch_match_one_process(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(ws / "config.yaml", tiny_assets, iters=6, steps_per_eval=6)
    launcher = Path(sys.executable).with_name("mlx.launch")
    proc = subprocess.run(
        [
            str(launcher),
            "-n",
            "2",
            "--backend",
            "ring",
            "--starting-port",
            str(_free_ports(2)),
            "--",
            sys.executable,
            "-m",
            "training.continued_pretraining",
            "-c",
            str(config),
            "--run-dir",
            str(ws / "runs" / "ring"),
        ],  # fmt: skip
        cwd=ws,
        env=trainer_env(ws),
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ring = ws / "runs" / "ring"
    rows = events(ring)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))  # one writer
    assert len(events(ring, "run_start")) == 1 and rows[0]["world_size"] == 2
    assert rows[-1]["state"] == "finished" and (ring / "final" / "config.json").is_file()

    single = run_trainer(ws, "-c", config, "--run-dir", ws / "runs" / "single")
    assert single.returncode == 0, single.stdout + single.stderr
    a, b = train_losses(ring), train_losses(ws / "runs" / "single")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:  # mean of two half-batch means == the batch mean, up to float rounding
        assert a[step] == pytest.approx(b[step], rel=1e-4), step
    tokens = [events(run, "train")[-1]["trained_tokens"] for run in (ring, ws / "runs" / "single")]
    assert tokens[0] == tokens[1] == 6 * 2 * 64
    # Each report lists every rank's own throughput and peak memory (the run page's ranks).
    for row in events(ring, "train"):
        assert [r["rank"] for r in row["ranks"]] == [0, 1]
        assert all(r["tokens_per_second"] > 0 and r["peak_memory"] > 0 for r in row["ranks"])
    assert all("ranks" not in row for row in events(ws / "runs" / "single", "train"))


def test_a_config_naming_hosts_run_as_one_process_warns_how_it_is_launched(
    tiny_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    hosts = {"hosts": ["10.0.0.11", "10.0.0.12"]}
    config = write_config(ws / "config.yaml", tiny_assets, iters=2, distributed=hosts)
    monkeypatch.chdir(ws)
    monkeypatch.setenv("MLX_CPT_HOME", str(ws))
    args = build_parser().parse_args(["-c", str(config), "--run-dir", str(ws / "runs" / "one")])
    plan = preflight(args, rank=0, world=1)
    try:
        [warning] = [w for w in plan.warnings if "distributed.hosts" in w]
        assert "names 2 hosts but 1 worker(s) run this" in warning
        assert "mlx.launch --hostfile" in warning
    finally:
        plan.release()
