"""A run on several machines: `mlx.launch --hostfile` is the run's process.

What mlx.launch (mlx 0.32, mlx/_distributed_utils/launch.py) does, and what the console
builds on it:

- It starts rank i on the i-th host of the hostfile with `ssh -tt HOST <script>` (a host
  written `127.0.0.1` runs locally, without SSH), prints each rank's output on its own
  stdout and stderr (here: stdout.log), and copies its stdin to every rank's stdin.
- It forwards no signal: SIGTERM ends mlx.launch alone, and its ssh clients, closing,
  make each host's sshd hang up on its rank (SIGHUP: no checkpoint). Its exit code is 0
  whatever the ranks did; it says which rank ended badly only as a line on stderr,
  `[WARN] Node with rank N exited with code C` (C = 255: the SSH session itself failed)
  or `... was killed`, and then terminates the other ranks.
- So the console stops a launch through mlx.launch's stdin: its stdin is a FIFO the
  console made (`<workspace>/launch/<run_id>/control`, opened read-write by mlx.launch's
  own stdin so it never reads end-of-file), and a stop writes Ctrl-C (0x03) into it.
  mlx.launch copies it to every rank's `ssh -tt` terminal, where the terminal turns it
  into SIGINT for that rank: the trainer's graceful stop, agreed inside the next
  gradient all-reduce, so every rank finishes the same step and rank 0 checkpoints once.
  A local rank (no terminal) gets SIGINT from the console directly. Any console, also
  one started later, can write into the FIFO.
- After the grace period the whole process group is SIGKILLed (mlx.launch and its ssh
  clients; the remote ranks then get SIGHUP from their sshd).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from training.contract.files import write_json_atomic
from training.contract.hosts import HostPlan
from training.contract.layout import PROJECT_ROOT, Workspace
from training.contract.protocol import PLAIN_PROGRESS_ENV, WORKSPACE_ENV

log = logging.getLogger(__name__)

LAUNCHER = "mlx.launch"
CTRL_C = b"\x03"
# mlx.launch's own report of a rank that ended badly (ANSI colours around it).
_NODE_RE = re.compile(r"\[WARN\] Node with rank (\d+) (?:exited with code (-?\d+)|(was killed))")
# What ssh exits with when the session itself failed (connection lost, host gone), or
# when the remote command was killed by a signal.
SSH_LOST = 255


def launcher_path(python: str) -> str:
    """mlx.launch of the console's environment: the script next to its Python, else the
    one on PATH."""
    beside = Path(python).with_name(LAUNCHER)
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(LAUNCHER)
    if found is None:
        raise FileNotFoundError(
            f"{LAUNCHER} is not installed next to {python} nor on PATH (pip install mlx)"
        )
    return found


@dataclass(frozen=True)
class LaunchFiles:
    """The console's files of one launch: the hostfile mlx.launch reads and the FIFO its
    stdin is (both outside the run folder, which is the trainer's)."""

    folder: Path

    @classmethod
    def of(cls, workspace: Workspace, run_id: str) -> LaunchFiles:
        return cls(workspace.launch_dir / run_id)

    @property
    def hostfile(self) -> Path:
        return self.folder / "hostfile.json"

    @property
    def control(self) -> Path:
        return self.folder / "control"

    def create(self, plan: HostPlan) -> None:
        """Write the hostfile and make a fresh FIFO (OSError when the file system has none)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.hostfile, plan.hostfile())
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()
        os.mkfifo(self.control, 0o600)

    def open_stdin(self) -> int:
        """The FIFO opened read-write for mlx.launch's stdin: never blocks, never reads
        end-of-file while mlx.launch holds it (no writer has to stay open)."""
        return os.open(self.control, os.O_RDWR | os.O_NONBLOCK)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.folder)


def launch_argv(
    launcher: str,
    plan: HostPlan,
    files: LaunchFiles,
    *,
    workspace: Path,
    python: str,
    trainer_args: list[str],
) -> list[str]:
    """mlx.launch's command line: the hostfile, the backend, each host's Python and
    working folder (the workspace, at the same path on every host, so relative paths in
    the config mean the same files), the project on PYTHONPATH, the settings' environment,
    the first port, then the trainer's own arguments after `--`."""
    argv = [
        launcher,
        "--hostfile", str(files.hostfile),
        "--backend", plan.backend,
        "--cwd", str(workspace),
        "--python", plan.python or python,
        "--env", f"PYTHONPATH={PROJECT_ROOT}",
        "--env", f"{WORKSPACE_ENV}={workspace}",
        "--env", "PYTHONUNBUFFERED=1",
        "--env", f"{PLAIN_PROGRESS_ENV}=1",
    ]  # fmt: skip
    for pair in plan.env_args():
        argv += ["--env", pair]
    if plan.backend == "nccl":
        argv += ["--nccl-port", str(plan.port)]
    else:
        argv += ["--starting-port", str(plan.port)]
    return [*argv, "--", *trainer_args]


def send_ctrl_c(control: Path) -> bool:
    """Write Ctrl-C into a launch's stdin FIFO; False when nobody reads it any more (the
    launch is gone, or the FIFO was removed). Never follows a link or blocks."""
    try:
        fd = os.open(control, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:  # ENXIO: no reader; ENOENT: gone; ELOOP: a link
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        os.write(fd, CTRL_C)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def local_ranks(launcher: psutil.Process) -> list[psutil.Process]:
    """The ranks mlx.launch runs on this machine without SSH (host 127.0.0.1): its
    descendants that are the trainer."""
    found = []
    try:
        children = launcher.children(recursive=True)
    except psutil.Error:
        return []
    for child in children:
        try:
            if "training.continued_pretraining" in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    return found


def interrupt_local_ranks(launcher: psutil.Process) -> None:
    for rank in local_ranks(launcher):
        with contextlib.suppress(psutil.Error):
            rank.send_signal(signal.SIGINT)


def kill_group(proc: psutil.Process) -> None:
    """SIGKILL mlx.launch and its ssh clients (and local ranks): its process group when
    it leads one (the console starts it in its own session), else it and its children."""
    if not proc.is_running():  # psutil compares the start time: never a reused pid
        return
    try:
        leads = os.getpgid(proc.pid) == proc.pid
    except OSError:
        return
    if leads:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(psutil.Error):
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        proc.kill()


@dataclass(frozen=True)
class RankEnd:
    """One rank mlx.launch reported as ended badly."""

    rank: int
    code: int | None  # None: "was killed" (by mlx.launch, after another rank ended)

    @property
    def lost(self) -> bool:
        """The SSH session itself failed: the host died, dropped off the network, or the
        trainer on it was killed."""
        return self.code == SSH_LOST


def rank_ends(log_text: str) -> list[RankEnd]:
    """The ranks mlx.launch's log says ended badly, in the order it said so."""
    ends = []
    for match in _NODE_RE.finditer(log_text):
        code = None if match.group(3) else int(match.group(2))
        ends.append(RankEnd(int(match.group(1)), code))
    return ends


def host_of(launch: dict[str, Any] | None, rank: int) -> str:
    """How a message names rank `rank`'s host, from run.json's `launch` entry."""
    for host in (launch or {}).get("hosts") or []:
        if isinstance(host, dict) and host.get("rank") == rank:
            ssh = str(host.get("ssh"))
            ips = host.get("ips") or []
            ip = ips[0] if ips and isinstance(ips[0], str) else None
            return ssh if ip is None or ip == ssh else f"{ssh} ({ip})"
    return f"rank {rank}'s host"


def lost_host(launch: dict[str, Any] | None, ends: list[RankEnd]) -> dict[str, Any] | None:
    """The host failure mlx.launch's log shows (the first rank whose SSH session
    failed), as run.json's exit `host_failure`; None when every rank ended on its own."""
    for end in ends:
        if end.lost:
            host = host_of(launch, end.rank)
            return {
                "rank": end.rank,
                "host": host,
                "reason": f"host {host} (rank {end.rank}) was lost: its SSH session ended "
                f"with code {SSH_LOST} (the host died, dropped off the network, or its "
                "trainer was killed)",
            }
    return None
