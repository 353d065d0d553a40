"""The console's side of runs on several machines, without stand-in hosts: mlx.launch's
command line, the stdin FIFO a stop goes through, reading which rank mlx.launch saw end,
the host check (run here on 127.0.0.1, which mlx.launch and the console run without SSH),
the host watch, and what a lost host makes of a run's state. The same over real SSH and
network-namespace hosts: tests/console/test_multihost.py."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.console_helpers import fake_config, make_manager, make_workspace
from tests.helpers import wait_until
from training.console.detection import TrainerTable
from training.console.hosts import HostCheckFailed, HostWatch
from training.console.launcher import (
    LaunchFiles,
    RankEnd,
    launch_argv,
    lost_host,
    rank_ends,
    send_ctrl_c,
)
from training.console.run_description import launch_info
from training.console.run_state import derive_state
from training.contract.config import build_config, distributed_plan
from training.contract.hosts import host_plan
from training.contract.layout import PROJECT_ROOT, RunRecord, Workspace
from training.contract.protocol import FAILED, FINISHED, STOPPED

LAUNCH = {"hosts": [{"rank": 0, "ssh": "10.0.0.11", "ips": ["10.0.0.11"]},
                    {"rank": 1, "ssh": "mac2", "ips": ["10.0.0.12"]}]}  # fmt: skip


def fake_ssh(tmp_path: Path) -> str:
    """An ssh client that fails as ssh does when a host is not there (exit 255), except
    on 10.255.0.3, which answers and whose remote shell exits 1."""
    script = tmp_path / "ssh"
    script.write_text(
        "#!/bin/sh\nfor a; do host=$last; last=$a; done\n"
        '[ "$host" = 10.255.0.3 ] && { echo "remote: no" >&2; exit 1; }\n'
        'echo "ssh: connect to host $host port 22: No route to host" >&2\nexit 255\n'
    )
    script.chmod(0o755)
    return str(script)


def test_mlx_launch_s_report_of_each_rank_is_read_from_the_log() -> None:
    log = (
        "step 44/100000 | 5.6k tok | loss 5.5386 | 2.8k tok/s"
        "\x1b[33m[WARN] Node with rank 1 exited with code 255 \x1b[0m\n"
        "RuntimeError: [ring] connection to a peer was lost\n"
        "\x1b[33m[WARN] Node with rank 0 was killed \x1b[0m\n"
    )
    ends = rank_ends(log)
    assert ends == [RankEnd(1, 255), RankEnd(0, None)]
    failure = lost_host(LAUNCH, ends)
    assert failure is not None and failure["rank"] == 1
    assert failure["reason"].startswith("host mac2 (10.0.0.12) (rank 1) was lost")
    # A rank that failed on its own (exit 1) is no lost host.
    assert lost_host(LAUNCH, [RankEnd(1, 1)]) is None


def test_ctrl_c_reaches_whoever_reads_the_fifo_and_nothing_else(tmp_path: Path) -> None:
    files = LaunchFiles(tmp_path / "launch" / "r1")
    plan = host_plan(["10.0.0.11", "10.0.0.12"], None, "ring", None, None, 40000)
    assert plan is not None
    files.create(plan)
    assert stat.S_ISFIFO(files.control.stat().st_mode)
    assert not send_ctrl_c(files.control)  # nobody reads it: no launch
    reader = files.open_stdin()  # as mlx.launch's stdin
    try:
        assert send_ctrl_c(files.control)
        assert os.read(reader, 16) == b"\x03"
    finally:
        os.close(reader)
    link = tmp_path / "link"
    link.symlink_to(files.control)
    regular = tmp_path / "regular"
    regular.write_text("")
    assert not send_ctrl_c(link) and not send_ctrl_c(regular) and regular.read_text() == ""
    files.remove()
    assert not files.folder.exists() and not send_ctrl_c(files.control)


def test_mlx_launch_command_line(tmp_path: Path) -> None:
    plan = host_plan(
        ["10.0.0.11", "mac2=10.0.0.12"], None, "ring", {"MLX_METAL_FAST_SYNCH": "1"}, None, 40000
    )
    assert plan is not None
    files = LaunchFiles(tmp_path / "launch" / "r1")
    argv = launch_argv(
        "/venv/bin/mlx.launch",
        plan,
        files,
        workspace=tmp_path,
        python="/venv/bin/python",
        trainer_args=["-m", "training.continued_pretraining", "--run-dir", "R"],
    )
    assert argv[0] == "/venv/bin/mlx.launch"
    flags = list(zip(argv, argv[1:], strict=False))
    assert ("--hostfile", str(files.hostfile)) in flags and ("--backend", "ring") in flags
    assert ("--cwd", str(tmp_path)) in flags and ("--python", "/venv/bin/python") in flags
    assert ("--starting-port", "40000") in flags
    envs = [b for a, b in flags if a == "--env"]
    assert f"PYTHONPATH={PROJECT_ROOT}" in envs and "MLX_METAL_FAST_SYNCH=1" in envs
    assert f"MLX_CPT_HOME={tmp_path}" in envs and "MLX_CPT_PLAIN_PROGRESS=1" in envs
    assert argv[argv.index("--") :] == [
        "--",
        "-m",
        "training.continued_pretraining",
        "--run-dir",
        "R",
    ]
    nccl = host_plan(["10.0.0.11"], None, "nccl", None, "/opt/py/bin/python3", 41000)
    assert nccl is not None
    argv = launch_argv("l", nccl, files, workspace=tmp_path, python="p", trainer_args=[])
    assert "--nccl-port" in argv and "--starting-port" not in argv
    assert argv[argv.index("--python") + 1] == "/opt/py/bin/python3"


def config_on(workspace: Path, hosts: list[str], **values: Any) -> Any:
    config, _ = build_config(
        {**fake_config(**values), "distributed": {"hosts": hosts, "port": _free_port()}},
        check_paths=True,
        base_dir=workspace,
    )
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_host_check_runs_on_the_host_and_names_what_is_missing(tmp_path: Path) -> None:
    """127.0.0.1 is checked without SSH, with the same program a remote host runs."""
    ws = make_workspace(tmp_path / "ws")
    manager = make_manager(ws)
    try:
        config = config_on(ws, ["127.0.0.1"], batch_size=1)
        [report] = manager.check_hosts(config)
        assert report.ok, report.problems
        assert report.facts["python"] == sys.version.split()[0] and report.facts["mlx"]

        # A port in use and a corpus that is not there are named.
        plan = distributed_plan(config, ws)
        assert plan is not None
        with socket.socket() as held:
            held.bind(("127.0.0.1", plan.port))
            (ws / "corpus.txt").rename(ws / "elsewhere.txt")
            [report] = manager.check_hosts(config)
        assert any(f"port {plan.port} on 127.0.0.1 is not free" in p for p in report.problems)
        assert any(f"{ws / 'corpus.txt'} is missing there" in p for p in report.problems)
        assert not (ws / "launch").exists() or not list((ws / "launch").iterdir())
    finally:
        manager.close()


def test_a_launch_whose_hosts_fail_creates_nothing_and_names_each(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    manager = make_manager(ws, ssh=fake_ssh(tmp_path))
    try:
        config = fake_config(batch_size=2, distributed={"hosts": ["10.255.0.1", "10.255.0.2"]})
        with pytest.raises(HostCheckFailed) as info:
            manager.create_run(config)
        messages = [e.message for e in info.value.errors]
        assert [m.split(" (rank")[0] for m in messages] == ["10.255.0.1", "10.255.0.2"]
        assert all("not reachable over SSH without a password" in m for m in messages)
        assert "No route to host" in messages[0]
        assert manager.list_runs() == []

        # From the queue nobody waits for an answer: the run fails, its hosts named, and
        # the queue goes on.
        run_id = manager.create_run(config, queue=True)
        run = wait_until(
            lambda: (r := manager.describe(run_id))["state"] == FAILED and r, timeout=60
        )
        assert "10.255.0.1 (rank 0): not reachable" in run["reason"]
        assert manager.queue_state()["run_ids"] == []
    finally:
        manager.close()


def test_the_watch_reports_a_host_that_stops_answering(tmp_path: Path) -> None:
    lost: list[tuple[int, str, str]] = []
    done = threading.Event()

    def note(rank: int, host: str, why: str) -> None:
        lost.append((rank, host, why))
        done.set()

    hosts = [
        {"rank": 0, "ssh": "127.0.0.1", "ips": ["127.0.0.1"]},  # local: nothing to watch
        # Looked at first: a remote command that fails is a host that answered, not lost.
        {"rank": 3, "ssh": "10.255.0.3", "ips": ["10.255.0.3"]},
        {"rank": 1, "ssh": "10.255.0.2", "ips": ["10.255.0.2"]},
        {"rank": 2, "ssh": "-oProxyCommand=touch /tmp/x", "ips": []},  # never given to ssh
    ]
    watch = HostWatch("r1", hosts, 0.2, note, client=fake_ssh(tmp_path)).start()
    try:
        assert [h.rank for h in watch.hosts] == [3, 1]
        assert done.wait(30)
    finally:
        watch.stop()
    [(rank, host, why)] = lost
    assert rank == 1 and host == "10.255.0.2" and "No route to host" in why


def test_a_lost_host_fails_the_run_whatever_rank_0_last_said() -> None:
    failure = {"rank": 1, "host": "10.0.0.12", "reason": "host 10.0.0.12 (rank 1) was lost"}
    record = RunRecord("r1", "r1", 0.0, pid=5, exit={"code": None, "host_failure": failure})
    ring_error = {"state": "failed", "message": "RuntimeError: [ring] connection lost"}
    assert derive_state(record, ring_error, False) == (FAILED, failure["reason"])
    assert derive_state(record, {"state": "running"}, False) == (FAILED, failure["reason"])
    assert derive_state(record, None, False) == (FAILED, failure["reason"])
    # A run that finished before the host went away stays finished.
    assert derive_state(record, {"state": "finished"}, False)[0] == FINISHED
    # A stop rank 0 completed (its checkpoint saved with every rank) stays stopped when
    # mlx.launch's teardown then cuts another rank's session; unasked, it is a failure.
    stopped = {"state": "stopped", "message": "stopped on request"}
    assert derive_state(record, stopped, False)[0] == FAILED
    asked = RunRecord("r1", "r1", 0.0, pid=5, exit=record.exit, stop_requested=True)
    assert derive_state(asked, stopped, False) == (STOPPED, "stopped on request")


def test_run_json_s_launch_is_shown_only_as_typed_data() -> None:
    shown = launch_info(
        {
            "backend": "ring",
            "hosts": [
                {"rank": 0, "ssh": "h0", "ips": ["10.0.0.1", 7]},
                {"rank": "1", "ssh": "h1"},  # not a rank: left out
                "garbage",
            ],
            "env": ["A", 3],
            "checked": [{"rank": 0, "facts": {"python": "3.11.7"}}, "x"],
            "control": "/secret/path",
        }
    )
    assert shown is not None
    assert shown["hosts"] == [
        {"rank": 0, "ssh": "h0", "ips": ["10.0.0.1"], "facts": {"python": "3.11.7"}}
    ]
    assert shown["env"] == ["A"] and "control" not in shown
    assert launch_info(None) is None and launch_info("x") is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("rank", "found"), [("1", False), ("0", True), (None, True)])
def test_a_rank_other_than_0_is_never_a_run_s_trainer(
    tmp_path: Path, rank: str | None, found: bool
) -> None:
    runs = Workspace(tmp_path / "ws").runs_dir
    (runs / "r1").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "MLX_RANK"}
    if rank is not None:
        env["MLX_RANK"] = rank
    argv = [sys.executable, "-c", "import sys; sys.stdin.read()", "training.continued_pretraining",
            "--run-dir", str(runs / "r1")]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE)
    try:
        table = TrainerTable(runs, ttl=0)
        # Seen once its command line is readable (it reads empty between fork and exec).
        wait_until(lambda: _cmdline_ready(proc.pid), timeout=30)
        assert ("r1" in table.trainers()) is found
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def _cmdline_ready(pid: int) -> bool:
    try:
        return "training.continued_pretraining" in Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return sys.platform == "darwin"
