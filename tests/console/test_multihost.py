"""A run on several machines from the console's API, with the real trainer and the real
`mlx.launch --backend ring`, across stand-in hosts: network namespaces, each with its own
address and sshd (tests/multihost.py). Two hosts train the same losses as one process
with the same global batch; Stop goes through mlx.launch, so both ranks finish the same
step and rank 0 checkpoints once; a confirmed resume relaunches on the same hosts; a host
that dies or drops off the network fails the run, named, within the stop grace period,
and nothing restarts by itself."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.helpers import wait_until
from tests.live_server import LiveServer
from tests.multihost import StandInHosts, end_processes_naming, run_config, stand_in_hosts
from tests.trainer_helpers import TINY, events, run_trainer, train_losses

pytestmark = pytest.mark.slow

# Seconds between Stop and SIGKILL, and so the most a lost host may take to fail the run.
GRACE = 30  # roomy: a host is looked at every GRACE/8 s, and CI machines run loaded


@pytest.fixture
def hosts() -> Iterator[StandInHosts]:
    with stand_in_hosts(2) as made:
        yield made


@pytest.fixture
def console(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "ws", args=["--stop-grace", str(GRACE)])
    try:
        yield server.start()
    finally:
        server.stop()
        end_processes_naming(str(tmp_path / "ws"))


def start(console: LiveServer, body: dict[str, Any]) -> str:
    response = console.post("/api/runs", {"config": body, "name": "two hosts"})
    assert response.status_code == 201, response.text
    return str(response.json()["run_id"])


def ranks_alive(run_dir: Path) -> list[psutil.Process]:
    """Trainer processes of the run (the namespaces share this process table)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            argv = proc.info["cmdline"] or []
            if "training.continued_pretraining" in argv and str(run_dir) in argv:
                if proc.status() != psutil.STATUS_ZOMBIE and "mlx.launch" not in " ".join(argv):
                    found.append(proc)
        except psutil.Error:
            continue
    return found


def log_of(console: LiveServer, run_id: str) -> str:
    path = console.workspace / "runs" / run_id / "stdout.log"
    return path.read_text(errors="replace") if path.exists() else ""


def single_process_losses(
    tmp_path: Path, assets: dict[str, Path], steps: int, name: str, **extra: Any
) -> dict[int, float]:
    """The same global batch in one process: the reference for the ranks' losses."""
    ws = tmp_path / "single"
    path = tmp_path / f"{name}.yaml"
    values = {"model": str(assets["model"]), "data": str(assets["corpus"]), **TINY, **extra}
    path.write_text(yaml.safe_dump({**values, "iters": steps}))
    result = run_trainer(ws, "-c", path, "--run-dir", ws / "runs" / name)
    assert result.returncode == 0, result.stdout + result.stderr
    return train_losses(ws / "runs" / name)


def test_two_hosts_train_from_the_api_as_one_process_does(
    tiny_assets: dict[str, Path], tmp_path: Path, hosts: StandInHosts, console: LiveServer
) -> None:
    run_id = start(console, run_config(tiny_assets, hosts.addresses, iters=6, steps_per_eval=6))
    run = console.wait_for_state(run_id, "finished", "failed", timeout=180)
    assert run["state"] == "finished", (run, log_of(console, run_id))
    run_dir = console.workspace / "runs" / run_id

    # The console started mlx.launch (argv, never a shell) on the hostfile it wrote.
    record = json.loads((run_dir / "run.json").read_text())
    assert Path(record["cmdline"][0]).name == "mlx.launch"
    assert record["cmdline"][record["cmdline"].index("--backend") + 1] == "ring"
    assert [h["ssh"] for h in record["launch"]["hosts"]] == hosts.addresses
    assert all(c["ok"] for c in record["launch"]["checked"])
    # ... and removed its launch files (the hostfile, the FIFO) when it ended.
    assert not (console.workspace / "launch" / run_id).exists()

    # The run page's ranks: hosts by rank, and each rank's own throughput and memory.
    assert [h["ssh"] for h in run["launch"]["hosts"]] == hosts.addresses
    assert run["launch"]["hosts"][1]["facts"]["python"] == sys.version.split()[0]
    last = run["last"]["train"]
    assert [r["rank"] for r in last["ranks"]] == [0, 1]
    assert all(r["tokens_per_second"] > 0 and r["peak_memory"] > 0 for r in last["ranks"])
    assert run["last"]["run_start"]["world_size"] == 2
    assert "\r" not in log_of(console, run_id).replace("\r\n", "\n")  # plain lines

    # The same global batch in one process: the same losses.
    rows = events(run_dir)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))  # one writer
    two = train_losses(run_dir)
    one = single_process_losses(tmp_path, tiny_assets, 6, "reference")
    assert sorted(two) == sorted(one) == list(range(1, 7))
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step


def test_stop_goes_through_mlx_launch_and_a_confirmed_resume_uses_the_same_hosts(
    tiny_assets: dict[str, Path], tmp_path: Path, hosts: StandInHosts, console: LiveServer
) -> None:
    # A constant rate after warmup (the uninterrupted reference has fewer steps), small
    # enough that float rounding (a sum of two half-batch gradients is not the full batch's
    # to the last bit) stays far below the tolerance over the dozens of steps this takes.
    slow = {"lr_schedule": "constant", "learning_rate": 3e-4}
    body = run_config(tiny_assets, hosts.addresses, iters=100_000, **slow)
    run_id = start(console, body)
    run_dir = console.workspace / "runs" / run_id
    wait_until(
        lambda: any(r["step"] >= 2 for r in events(run_dir, "train")) if run_dir.exists() else 0,
        timeout=180,
        message="two steps on two hosts",
    )
    assert len(ranks_alive(run_dir)) == 2
    # The console dies; the ranks train on; a new console adopts mlx.launch (its stdin
    # FIFO is in the workspace) and stops it through it like the first would have.
    console.kill()
    console.start()
    assert f"run {run_id}: adopted" in console.output()
    assert console.run(run_id)["state"] == "running"
    assert console.post(f"/api/runs/{run_id}/stop").status_code == 202
    run = console.wait_for_state(run_id, "stopped", "failed", timeout=120)
    assert run["state"] == "stopped", (run, log_of(console, run_id))
    # Both ranks finished the same step; rank 0 saved one checkpoint, at that step.
    status = events(run_dir, "status")[-1]
    [checkpoint] = events(run_dir, "checkpoint")
    assert checkpoint["reason"] == "stop" and checkpoint["step"] == status["step"]
    assert "stop requested (Ctrl-C through the stdin of mlx.launch" in console.output()
    wait_until(lambda: not ranks_alive(run_dir), timeout=30, message="both ranks to exit")
    stopped_at = status["step"]

    # Resume asks first, then relaunches on the same hosts.
    refused = console.post(f"/api/runs/{run_id}/resume", {})
    assert refused.status_code == 400 and refused.json()["field"] == "confirm"
    assert console.post(f"/api/runs/{run_id}/resume", {"confirm": True}).status_code == 202
    wait_until(
        lambda: any(r["step"] > stopped_at + 1 for r in events(run_dir, "train")),
        timeout=180,
        message="the resumed run to train",
    )
    record = json.loads((run_dir / "run.json").read_text())
    assert [h["ssh"] for h in record["launch"]["hosts"]] == hosts.addresses
    assert len(record["resumes"]) == 1 and record["resumes"][0]["from_step"] == stopped_at
    assert console.post(f"/api/runs/{run_id}/stop").status_code == 202
    run = console.wait_for_state(run_id, "stopped", "failed", timeout=120)
    assert run["state"] == "stopped", (run, log_of(console, run_id))
    rows = events(run_dir)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))  # seq continued

    # Stopped and resumed across two hosts: the losses of one uninterrupted process.
    two = train_losses(run_dir)
    one = single_process_losses(tmp_path, tiny_assets, max(two), "uninterrupted", **slow)
    assert sorted(two) == list(range(1, max(two) + 1))
    worst = max(abs(two[step] - one[step]) for step in two)
    assert worst <= 1e-5, (worst, two, one)


@pytest.mark.parametrize("how", ["dies", "drops off the network"])
def test_a_lost_host_fails_the_run_naming_it(
    how: str,
    tiny_assets: dict[str, Path],
    tmp_path: Path,
    hosts: StandInHosts,
    console: LiveServer,
) -> None:
    run_id = start(console, run_config(tiny_assets, hosts.addresses, iters=100_000))
    run_dir = console.workspace / "runs" / run_id
    wait_until(
        lambda: any(r["step"] >= 2 for r in events(run_dir, "train")) if run_dir.exists() else 0,
        timeout=180,
        message="two steps on two hosts",
    )
    if how == "dies":
        hosts.kill(1)
    else:
        hosts.unplug(1)
    # Within the stop grace period (the console's watch looks every GRACE/8 seconds).
    run = console.wait_for_state(run_id, "failed", "stopped", "finished", timeout=GRACE)
    assert run["state"] == "failed", run
    assert hosts.addresses[1] in run["reason"] and "rank 1" in run["reason"], run["reason"]
    assert run["exit"]["host_failure"]["rank"] == 1
    # Rank 0, on the host still up, is gone too; nothing started again.
    wait_until(
        lambda: not [p for p in ranks_alive(run_dir) if p.pid not in hosts.pids(1)],
        timeout=30,
        message="rank 0 to end",
    )
    again = console.run(run_id)
    assert again["state"] == "failed" and not again["resumes"] and not again["alive"]
    assert console.get("/api/queue").json()["queue"]["active"] == []
    assert again["resumable"] is False or again["checkpoints"] >= 1


def test_hosts_are_checked_before_a_launch_and_each_failing_host_is_named(
    tiny_assets: dict[str, Path], hosts: StandInHosts, console: LiveServer
) -> None:
    good = run_config(tiny_assets, hosts.addresses, iters=6)
    answer = console.post("/api/hosts/check", {"config": good})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] and [h["ssh"] for h in body["hosts"]] == hosts.addresses
    assert body["hosts"][0]["facts"]["mlx"]

    # A host nobody answers on, and a host whose port is taken.
    nobody = hosts.gateway[: -len("1")] + "99"
    port = good["distributed"]["port"]
    holder = subprocess.Popen(
        ["ip", "netns", "exec", hosts.hosts[0].namespace, sys.executable, "-c",
         "import socket, sys; s = socket.socket(); "
         f"s.bind(({hosts.addresses[0]!r}, {port})); s.listen(); print('bound', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        bad = {**good, "distributed": {**good["distributed"], "hosts": [*hosts.addresses, nobody]}}
        bad["batch_size"] = 3
        answer = console.post("/api/hosts/check", {"config": bad})
        assert answer.status_code == 200, answer.text
        reports = answer.json()["hosts"]
        assert [r["ok"] for r in reports] == [False, True, False]
        assert f"port {port} on {hosts.addresses[0]} is not free" in reports[0]["problems"][0]
        assert "not reachable over SSH" in reports[2]["problems"][0]

        # Starting it is refused (400, each failing host named) and nothing is created.
        refused = console.post("/api/runs", {"config": bad})
        assert refused.status_code == 400, refused.text
        messages = [e["message"] for e in refused.json()["errors"]]
        assert any(m.startswith(f"{hosts.addresses[0]} (rank 0): port") for m in messages)
        assert any(m.startswith(f"{nobody} (rank 2): not reachable") for m in messages)
        assert console.get("/api/runs").json()["runs"] == []
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()

    # A Python that is not there.
    missing = {**good, "distributed": {**good["distributed"], "python": "/nowhere/bin/python3"}}
    reports = console.post("/api/hosts/check", {"config": missing}).json()["hosts"]
    assert all("no Python at /nowhere/bin/python3" in r["problems"][0] for r in reports)
