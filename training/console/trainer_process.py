"""One trainer process the console follows: spawned by it, or adopted from an earlier console.

Spawning (an argv list, its own session, output to stdout.log, no console token in its
environment), waiting on it (our child is reaped; an adopted one is only watched), signals
that only ever reach a verified pid, and macOS keep-awake. Run records are the caller's:
TrainingManager decides what a start or an exit means for the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from training.console.launcher import interrupt_local_ranks, kill_group, send_ctrl_c
from training.console.run_state import exit_reason
from training.contract.files import open_append
from training.contract.layout import PROJECT_ROOT, RunPaths
from training.contract.protocol import TOKEN_ENV

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerExit:
    """How our own child ended, as its reaped exit status says."""

    code: int | None
    signal: str | None
    # A signal we sent (SIGTERM before the trainer's handler was installed, or SIGKILL
    # after the grace period) ended it, rather than the OOM killer or a crash.
    killed_by_console: bool

    @property
    def reason(self) -> str:
        return exit_reason(self.code, self.signal, self.killed_by_console)

    def to_record(self, when: float, log_tail: list[str]) -> dict[str, Any]:
        """The `exit` entry of run.json."""
        return {
            "code": self.code,
            "signal": self.signal,
            "killed_by_console": self.killed_by_console,
            "reason": self.reason,
            "time": when,
            "log_tail": log_tail,
        }


@dataclass
class Launch:
    """What the console holds of a run on several machines (console/launcher.py): the
    FIFO that is mlx.launch's stdin, the watch on its hosts, and a host the watch lost."""

    control: Path
    watch: Any = None  # console.hosts.HostWatch, stopped when the launch ends
    host_failure: dict[str, Any] | None = None

    def stop_watching(self) -> None:
        if self.watch is not None:
            self.watch.stop()


@dataclass
class TrainerProcess:
    """A trainer this console follows: its child (Popen) or an adopted process; for a run
    on several machines, the mlx.launch process that runs its ranks (`launch`)."""

    run_id: str
    pid: int
    popen: subprocess.Popen[bytes] | None = None
    adopted: psutil.Process | None = None
    from_queue: bool = False
    signals_sent: set[str] = field(default_factory=set)
    kill_timer: threading.Timer | None = None
    launch: Launch | None = None

    def running(self) -> bool:
        """Alive and still this run's trainer, so a signal cannot reach a reused pid: our
        unreaped child cannot be reused; an adopted process was verified when adopted and
        psutil checks its start time before any signal."""
        if self.popen is not None:
            return self.popen.poll() is None
        return self.adopted is not None and _psutil_running(self.adopted)

    def send_signal(self, sig: signal.Signals) -> None:
        if self.popen is not None:
            self.popen.send_signal(sig)  # a no-op once reaped: never a reused pid
        elif self.adopted is not None:
            self.adopted.send_signal(sig)  # psutil re-checks the start time first
        self.signals_sent.add(sig.name)

    def _process(self) -> psutil.Process | None:
        """The process as psutil sees it (our unreaped child's pid cannot be reused)."""
        if self.adopted is not None:
            return self.adopted
        try:
            return psutil.Process(self.pid) if self.running() else None
        except psutil.Error:
            return None

    def request_stop(self) -> str:
        """Ask for a graceful stop (finish the step, checkpoint, exit); says how, for the
        log. A trainer gets SIGTERM; a launch gets Ctrl-C through mlx.launch's stdin,
        which every rank's terminal turns into SIGINT (and local ranks get SIGINT)."""
        if self.launch is None:
            self.send_signal(signal.SIGTERM)
            return f"SIGTERM to pid {self.pid}"
        delivered = send_ctrl_c(self.launch.control)
        proc = self._process()
        if proc is not None:
            interrupt_local_ranks(proc)
        self.signals_sent.add(signal.SIGINT.name)
        if delivered:
            return f"Ctrl-C through the stdin of mlx.launch (pid {self.pid}) to every rank"
        return f"mlx.launch (pid {self.pid}) does not read its stdin FIFO {self.launch.control}"

    def kill(self) -> None:
        """SIGKILL: the trainer, or mlx.launch's whole process group (its ssh clients, so
        every host's sshd hangs up on its rank)."""
        if self.launch is None:
            self.send_signal(signal.SIGKILL)
            return
        self.signals_sent.add(signal.SIGKILL.name)
        proc = self._process()
        if proc is not None:
            kill_group(proc)

    def kill_after(self, seconds: float, kill: Callable[[TrainerProcess], None]) -> None:
        """Call `kill(self)` after the grace period unless cancel_kill() comes first."""
        timer = threading.Timer(seconds, kill, args=(self,))
        timer.daemon = True
        self.kill_timer = timer
        timer.start()

    def cancel_kill(self) -> None:
        if self.kill_timer is not None:
            self.kill_timer.cancel()

    def wait(self) -> TrainerExit | None:
        """Block until the trainer ends. Our child is reaped (no zombies) and its exit
        status returned; an adopted trainer's exit code is not ours to see (None)."""
        if self.popen is None:
            assert self.adopted is not None
            try:
                self.adopted.wait()
            except psutil.Error:
                pass
            return None
        code = self.popen.wait()
        signal_name = None
        if code < 0:
            try:
                signal_name = signal.Signals(-code).name
            except ValueError:
                signal_name = f"signal {-code}"
        return TrainerExit(
            None if code < 0 else code, signal_name, signal_name in self.signals_sent
        )

    def watch(self, ended: Callable[[TrainerProcess, TrainerExit | None], None]) -> None:
        """Wait in a daemon thread, then call `ended(self, exit)`."""
        name = f"trainer-{self.run_id}" if self.popen is not None else f"adopted-{self.run_id}"
        threading.Thread(target=lambda: ended(self, self.wait()), name=name, daemon=True).start()


def _psutil_running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def trainer_argv(
    python: str,
    module: str,
    paths: RunPaths,
    resume: bool,
    restart: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The trainer's command line: a new run, `--resume` (from the latest checkpoint) or
    `--restart` (from step 0, for a run that has no checkpoint); `extra` flags after it
    (a resume that extends the budget: `--iters N`)."""
    argv = [python, "-m", module, "-c", str(paths.config), "--run-dir", str(paths.root)]
    mode = ["--resume"] if resume else ["--restart"] if restart else []
    return argv + mode + list(extra)


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every process the console starts (trainer, evaluation worker,
    demo build): the console's own (or `base`) without the console's token, with the
    project on PYTHONPATH and unbuffered output."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if k != TOKEN_ENV}
    root = str(PROJECT_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn_trainer(
    run_id: str,
    argv: list[str],
    *,
    cwd: Path,
    stdout: Path,
    from_queue: bool = False,
    stdin: int | None = None,
) -> TrainerProcess:
    """Start the trainer with its output appended to `stdout`; OSError if it cannot start
    (DamagedFile when stdout.log is a link or a FIFO: never written through, never waited on).
    `stdin`: a descriptor for its stdin (mlx.launch's FIFO), else /dev/null."""
    out = open_append(stdout)
    try:
        popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env(),
            stdin=subprocess.DEVNULL if stdin is None else stdin,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the console; Ctrl-C is not its signal
            close_fds=True,
        )
    finally:
        os.close(out)
    return TrainerProcess(run_id, popen.pid, popen=popen, from_queue=from_queue)


def adopt_trainer(run_id: str, proc: psutil.Process) -> TrainerProcess:
    """Follow a verified live trainer another console started."""
    return TrainerProcess(run_id, proc.pid, adopted=proc)


def create_time(pid: int) -> float | None:
    """The process's start time, recorded so a reused pid is never taken for it later."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def keep_awake_argv(pid: int, platform: str) -> list[str] | None:
    """The command that keeps the machine awake while `pid` lives, on this platform."""
    if platform == "darwin" and shutil.which("caffeinate"):
        return ["caffeinate", "-i", "-w", str(pid)]
    return None


def keep_awake(run_id: str, pid: int, platform: str) -> None:
    """Hold the machine awake while the trainer lives (macOS caffeinate; elsewhere nothing)."""
    argv = keep_awake_argv(pid, platform)
    if not argv:
        return
    try:
        helper = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError as exc:
        log.warning("run %s: could not keep the machine awake: %s", run_id, exc)
        return
    # Reaped by its own thread: caffeinate exits by itself when the trainer does.
    threading.Thread(target=helper.wait, name=f"keep-awake-{run_id}", daemon=True).start()
