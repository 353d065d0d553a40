"""EvalJobs: the console's owner of evaluation worker processes (training/eval_worker.py).

No MLX and no Flask here. Each job is one worker started from an argv list in its own
session; the job goes in on stdin (never argv), events come back on stdout and are read
by a thread that keeps the job's state and hands every event to `on_event` (the web
layer forwards them over Socket.IO). Stop asks politely on stdin, then SIGTERM, then
SIGKILL. A worker that dies without a last word gets an `error` event built from its
exit status and the tail of its stderr, so no job ever hangs in "running".
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from training.console.trainer_process import child_env
from training.contract.blas import preload_command
from training.contract.layout import PROJECT_ROOT
from training.contract.protocol import (
    JOB_ERROR,
    JOB_FINAL_EVENTS,
    JOB_PROGRESS,
    JOB_RESULT,
    WORKER_PROTOCOL_VERSION,
)

# Late joiners (a page reload) get the job's events again; a generation is a few thousand.
MAX_KEPT_EVENTS = 5000
MAX_KEPT_JOBS = 50
STOP_GRACE_SECONDS = 5.0


class JobLimitError(RuntimeError):
    """Too many evaluation workers at once (each loads a model into memory)."""


@dataclass
class EvalJob:
    job_id: str
    kind: str
    spec: dict[str, Any]
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.time)
    state: str = "running"  # running, done, stopped, failed
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_KEPT_EVENTS))
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    exit_code: int | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    stop_requested: bool = False
    # Numbers the job's events (added to each as `seq`) so a client that re-joins can
    # ask for what it missed and drop what it already has.
    last_seq: int = 0
    # Held while an event is recorded and handed on, and while a client re-joins, so a
    # replay and the live stream never interleave out of order.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "state": self.state,
            "started": self.started,
            "progress": self.progress,
            "result": self.result,
            "error": self.error,
            "exit_code": self.exit_code,
            "run_id": self.spec.get("run_id"),
            "last_seq": self.last_seq,
        }

    def events_after(self, seq: int) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("seq", 0) > seq]


EventHandler = Callable[[EvalJob, dict[str, Any]], None]


class EvalJobs:
    """Start, follow and stop evaluation workers."""

    def __init__(
        self,
        on_event: EventHandler = lambda job, event: None,
        *,
        python: str = sys.executable,
        max_running: int = 3,
        env: dict[str, str] | None = None,
    ):
        self.on_event = on_event
        self.python = python
        self.max_running = max_running
        self.env = env
        self._jobs: dict[str, EvalJob] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, spec: dict[str, Any]) -> EvalJob:
        with self._lock:
            running = sum(1 for j in self._jobs.values() if j.state == "running")
            if running >= self.max_running:
                raise JobLimitError(
                    f"{running} evaluations are running; stop one or wait for it to finish"
                )
            job_id = secrets.token_hex(6)
            spec = {**spec, "kind": kind, "job_id": job_id}
            # The console's environment minus its token (as for the trainer).
            env = child_env(self.env)
            env.setdefault("HF_HUB_OFFLINE", "1")
            # argv holds no user input: the job goes in on stdin.
            argv = [self.python, "-m", "training.eval_worker"]
            # OpenBLAS preloaded on Linux, as for the trainer (contract/blas.py): perplexity
            # on the CPU wheel is several times faster. MLX_CPT_OPENBLAS=0 turns it off.
            preload = preload_command(argv, env)
            if preload is not None:
                argv, env = preload
            process = subprocess.Popen(
                argv,
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            job = EvalJob(job_id, kind, spec, process)
            self._jobs[job_id] = job
            self._forget_old_jobs()
        assert process.stdin is not None
        try:
            process.stdin.write((json.dumps(spec) + "\n").encode())
            process.stdin.flush()
        except OSError:
            pass  # it died at once; the reader reports how
        threading.Thread(target=self._read_stderr, args=(job,), daemon=True).start()
        threading.Thread(target=self._read_events, args=(job,), daemon=True).start()
        return job

    def _forget_old_jobs(self) -> None:
        """Keep the newest finished jobs only: each holds up to MAX_KEPT_EVENTS events."""
        done = [j for j in self._jobs.values() if j.finished.is_set()]
        for job in sorted(done, key=lambda j: j.started)[: max(0, len(done) - MAX_KEPT_JOBS)]:
            del self._jobs[job.job_id]

    def get(self, job_id: str) -> EvalJob | None:
        with self._lock:
            return self._jobs.get(job_id)

    def busy(self, run_id: str) -> EvalJob | None:
        """A job whose worker is still alive and reads or writes this run (its model, a
        compared model or the run its results are stored in)."""
        for job in self.list_jobs():
            if job.finished.is_set():
                continue
            models = [m for m in job.spec.get("models") or [] if isinstance(m, dict)]
            if isinstance(job.spec.get("model"), dict):
                models.append(job.spec["model"])
            if run_id == job.spec.get("run_id") or any(m.get("run_id") == run_id for m in models):
                return job
        return None

    def list_jobs(self) -> list[EvalJob]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started)

    def stop(self, job_id: str) -> bool:
        """Ask the worker to stop (it finishes the token or batch at hand, then reports)."""
        job = self.get(job_id)
        if job is None or job.state != "running":
            return False
        job.stop_requested = True
        try:
            assert job.process.stdin is not None
            job.process.stdin.write(b'{"command": "stop"}\n')
            job.process.stdin.flush()
        except (OSError, ValueError):
            pass
        threading.Thread(target=self._escalate, args=(job,), daemon=True).start()
        return True

    def _escalate(self, job: EvalJob) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if job.finished.wait(STOP_GRACE_SECONDS):
                return
            self._signal(job, sig)

    def shutdown(self, timeout: float = 3.0) -> None:
        """Stop every running worker (the console is exiting): SIGTERM (the worker stops
        at its next token or batch), up to `timeout` seconds, then SIGKILL. Each job ends
        "stopped" before this returns, so no worker outlives the console."""
        running = [job for job in self.list_jobs() if not job.finished.is_set()]
        for job in running:
            job.stop_requested = True
            self._signal(job, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for job in running:
            if not job.finished.wait(max(0.0, deadline - time.monotonic())):
                self._signal(job, signal.SIGKILL)
        for job in running:
            # The reader records the end (the worker's own last word, or a death notice).
            job.finished.wait(timeout)
            with job.lock:
                if job.state == "running":
                    job.state = "stopped"

    @staticmethod
    def _signal(job: EvalJob, sig: signal.Signals) -> None:
        if job.process.poll() is None:
            try:
                job.process.send_signal(sig)
            except ProcessLookupError:
                pass

    # -- reader threads --

    def _read_stderr(self, job: EvalJob) -> None:
        assert job.process.stderr is not None
        with job.process.stderr:
            for raw in job.process.stderr:
                job.stderr_tail.append(raw.decode(errors="replace").rstrip())

    def _read_events(self, job: EvalJob) -> None:
        assert job.process.stdout is not None
        final_seen = False
        with job.process.stdout:
            for raw in job.process.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                final_seen = final_seen or event.get("event") in JOB_FINAL_EVENTS
                self._record(job, event)
        job.exit_code = job.process.wait()
        if not final_seen:
            self._record(job, self._death_notice(job))
        if job.process.stdin is not None:
            try:
                job.process.stdin.close()
            except OSError:
                pass
        job.finished.set()

    def _death_notice(self, job: EvalJob) -> dict[str, Any]:
        code = job.exit_code
        if job.stop_requested:
            why = "stopped"
        elif code is not None and code < 0:
            why = f"killed by signal {-code}" + (
                " (likely out of memory)" if -code == signal.SIGKILL else ""
            )
        else:
            why = f"exited with code {code}"
        tail = "\n".join(list(job.stderr_tail)[-5:])
        message = f"the evaluation worker {why} before reporting a result"
        return {
            "v": WORKER_PROTOCOL_VERSION,
            "job_id": job.job_id,
            "event": JOB_ERROR,
            "time": time.time(),
            "error": message + (f":\n{tail}" if tail else ""),
            "field": None,
        }

    def attach(
        self, job: EvalJob, after_seq: int, deliver: Callable[[list[dict[str, Any]]], None]
    ) -> None:
        """Replay the events after `after_seq` through `deliver` (which also subscribes the
        client), atomically with respect to new events."""
        with job.lock:
            deliver(job.events_after(after_seq))

    def _record(self, job: EvalJob, event: dict[str, Any]) -> None:
        with job.lock:
            self._record_locked(job, event)

    def _record_locked(self, job: EvalJob, event: dict[str, Any]) -> None:
        job.last_seq += 1
        event["seq"] = job.last_seq
        kind = event.get("event")
        if kind == JOB_PROGRESS:
            job.progress = event
        elif kind == JOB_RESULT:
            job.result = event
            job.state = "stopped" if event.get("stopped") else "done"
        elif kind == JOB_ERROR:
            job.error = {"error": event.get("error"), "field": event.get("field")}
            if "lane" in event:
                job.error["lane"] = event["lane"]
            job.state = "stopped" if job.stop_requested else "failed"
        job.events.append(event)
        try:
            self.on_event(job, event)
        except Exception:  # noqa: BLE001 - a broken listener must not kill the reader
            import logging

            logging.getLogger(__name__).exception("eval event handler failed")
