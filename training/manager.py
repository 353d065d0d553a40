"""TrainingManager: the only owner of trainer processes.

It validates and creates runs, spawns the trainer (argv list, own session, output to
stdout.log), stops it (SIGTERM, then SIGKILL after a grace period, only ever to a
verified pid), reaps it, records why it ended, resumes on explicit request and runs the
queue. States are derived when read (run_store.derive_state); nothing here writes a
run's state at console start-up.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from training.config import ConfigError, FieldError, build_config
from training.detection import Detection, detect_run, log_detection, verify_process
from training.run_queue import QueueError, RunQueue
from training.run_store import (
    ACTIVE_STATES,
    FINAL_STATES,
    MAX_NAME_LENGTH,
    RESUMABLE_STATES,
    RunNotFound,
    RunPaths,
    RunRecord,
    RunStore,
    Workspace,
    derive_state,
    exit_reason,
    has_checkpoint,
    is_valid_run_id,
    new_run_id,
)
from training.tailer import tail_events

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TRAINER_MODULE = "training.continued_pretraining"
# Environment the trainer must not inherit: the console's token stays in the console.
PRIVATE_ENV = ("MLX_CPT_TOKEN",)


class RunConflict(RuntimeError):
    """The request does not fit the run's state (HTTP 409)."""


class ConfirmRequired(ValueError):
    """A destructive or expensive action without {"confirm": true} (HTTP 400)."""

    field = "confirm"


@dataclass
class ManagerSettings:
    workspace: Path
    trainer_module: str = DEFAULT_TRAINER_MODULE
    python: str = sys.executable
    # Seconds between SIGTERM and SIGKILL: a large model's checkpoint takes a while.
    stop_grace_seconds: float = 120.0
    # Runs training at once; 1 by default because unified memory is shared.
    max_concurrent_runs: int = 1
    # macOS: hold `caffeinate -i -w <pid>` while a run trains.
    keep_awake: bool = True
    platform: str = sys.platform
    log_tail_lines: int = 20


@dataclass
class _Active:
    """A trainer this console follows: its child (Popen) or an adopted process."""

    run_id: str
    pid: int
    popen: subprocess.Popen[bytes] | None = None
    adopted: psutil.Process | None = None
    from_queue: bool = False
    signals_sent: set[str] = field(default_factory=set)
    kill_timer: threading.Timer | None = None

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.adopted is not None and _psutil_running(self.adopted)


def _psutil_running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def keep_awake_argv(pid: int, platform: str) -> list[str] | None:
    """The command that keeps the machine awake while `pid` lives, on this platform."""
    if platform == "darwin" and shutil.which("caffeinate"):
        return ["caffeinate", "-i", "-w", str(pid)]
    return None


class TrainingManager:
    def __init__(self, settings: ManagerSettings, store: RunStore | None = None):
        self.settings = settings
        self.workspace = Workspace(settings.workspace)
        self.store = store or RunStore(self.workspace)
        self.queue = RunQueue(self.workspace.queue_json)
        self._lock = threading.RLock()
        self._active: dict[str, _Active] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._queued_orphans_checked = False

    # -- observers --

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Called with a run_id whenever that run's state may have changed."""
        self._listeners.append(listener)

    def _notify(self, run_id: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(run_id)
            except Exception:  # a broken observer must not break the process bookkeeping
                log.exception("run %s: state listener failed", run_id)

    # -- start-up detection (read-only) --

    def detect(self, autodetect: bool = True) -> list[Detection]:
        """Scan the runs at console start: log one line per run and adopt verified live
        trainers. With autodetect off, nothing is scanned or logged."""
        self._load_queue_orphans()
        if not autodetect:
            return []
        found: list[Detection] = []
        for run_id in self.store.run_ids():
            try:
                paths = self.store.paths(run_id)
                record = self.store.read_record(run_id)
                # The file's tail holds any final status: no full index at start-up.
                detection = detect_run(record, paths, self._tail_status(record, paths))
            except (RunNotFound, OSError) as exc:
                log.info("run %s: skipped (%s)", run_id, exc)
                continue
            log_detection(detection)
            if detection.decision == "adopt" and detection.process is not None:
                # No notification: nobody listens yet, and describing the run would index
                # its whole metrics file before the console even listens.
                self._adopt(run_id, detection.process, notify=False)
            found.append(detection)
        return found

    def _load_queue_orphans(self) -> None:
        with self._lock:
            if self._queued_orphans_checked:
                return
            self._queued_orphans_checked = True
            queued = []
            for run_id in self.store.run_ids():
                try:
                    record = self.store.read_record(run_id)
                except RunNotFound:
                    continue
                if record.state == "queued" and record.pid is None:
                    queued.append(run_id)
            self.queue.order = [r for r in self.queue.order if r in queued]
            self.queue.adopt_orphans(queued)

    def adopt_if_alive(self, run_id: str) -> bool:
        """Follow a verified live trainer this console does not know yet (a run opened
        with --no-autodetect, or one started before this console)."""
        with self._lock:
            if run_id in self._active:
                return True
            record = self.store.read_record(run_id)
            if record.pid is None or record.exit is not None or record.remote:
                return False
            verdict = verify_process(record, self.store.paths(run_id))
            if not verdict.alive or verdict.process is None:
                return False
            log.info("run %s: adopted: live trainer, following it (%s)", run_id, verdict.reason)
            self._adopt(run_id, verdict.process)
            return True

    def _adopt(self, run_id: str, proc: psutil.Process, notify: bool = True) -> None:
        active = _Active(run_id, proc.pid, adopted=proc)
        with self._lock:
            self._active[run_id] = active
        threading.Thread(
            target=self._watch_adopted, args=(active,), name=f"adopted-{run_id}", daemon=True
        ).start()
        if notify:
            self._notify(run_id)

    # -- reading state --

    def _tail_status(self, record: RunRecord, paths: RunPaths) -> dict[str, Any] | None:
        statuses = [
            r
            for r in tail_events(paths.metrics)
            if r.get("event") == "status" and int(r.get("seq", 0)) > record.start_seq
        ]
        return statuses[-1] if statuses else None

    def _current_status(self, record: RunRecord) -> dict[str, Any] | None:
        """The last status event of the current attempt (not of a run before a resume)."""
        status = self.store.metrics(record.run_id).last("status")
        if status is None or int(status.get("seq", 0)) <= record.start_seq:
            return None
        return status

    def _alive(self, record: RunRecord, paths: RunPaths, last_status: Any) -> bool:
        active = self._active.get(record.run_id)
        if active is not None:
            return active.running()
        if record.pid is None or record.exit is not None:
            return False
        if last_status and last_status.get("state") in FINAL_STATES:
            return False
        return verify_process(record, paths).alive

    def state(self, run_id: str) -> tuple[str, str]:
        record = self.store.read_record(run_id)
        paths = self.store.paths(run_id)
        status = self._current_status(record)
        metrics = self.store.metrics(run_id)
        return derive_state(
            record, status, self._alive(record, paths, status), last_event_time=metrics.last_time
        )

    def describe(self, run_id: str, *, detail: bool = True) -> dict[str, Any]:
        """The run record with its derived state, progress and last metrics."""
        record = self.store.read_record(run_id)
        paths = self.store.paths(run_id)
        metrics = self.store.metrics(run_id)
        status = self._current_status(record)
        alive = self._alive(record, paths, status)
        state, reason = derive_state(record, status, alive, last_event_time=metrics.last_time)
        train, evaluation = metrics.last("train"), metrics.last("eval")
        run_start = metrics.last("run_start")
        config = self.store.config_values(run_id)
        total_steps = (run_start or {}).get("total_steps") or config.get("iters")
        step = (train or {}).get("step") or 0
        ips = (train or {}).get("iterations_per_second")
        eta = None
        if state == "running" and total_steps and ips:
            eta = max(0.0, (float(total_steps) - float(step)) / float(ips))
        with self._lock:
            position = self.queue.order.index(run_id) if run_id in self.queue else None
        out: dict[str, Any] = {
            "run_id": run_id,
            "name": record.name,
            "state": state,
            "reason": reason,
            "created": record.created,
            "started": record.started,
            "ended": (record.exit or {}).get("time"),
            "step": step,
            "total_steps": total_steps,
            "trained_tokens": (train or {}).get("trained_tokens"),
            "total_tokens": (run_start or {}).get("total_tokens"),
            "train_loss": (train or {}).get("train_loss"),
            "val_loss": (evaluation or {}).get("val_loss"),
            "tokens_per_second": (train or {}).get("tokens_per_second"),
            "peak_memory": (train or {}).get("peak_memory"),
            "eta_seconds": eta,
            "last_seq": metrics.last_seq,
            "model": config.get("model"),
            "data": config.get("data"),
            "fine_tune_type": config.get("fine_tune_type"),
            "queue_position": position,
            "remote": record.remote,
            "cloned_from": record.cloned_from,
        }
        if detail:
            checkpoints = self.store.checkpoints(run_id)
            out.update(
                pid=record.pid if alive else None,
                alive=alive,
                adopted=bool(self._active.get(run_id) and self._active[run_id].adopted),
                exit=record.exit,
                resumes=record.resumes,
                stop_requested=record.stop_requested,
                last={"train": train, "eval": evaluation, "status": status, "run_start": run_start},
                checkpoints=len(checkpoints),
                latest_checkpoint_step=checkpoints[-1]["step"] if checkpoints else None,
                resumable=state in RESUMABLE_STATES and bool(checkpoints),
                malformed_lines=metrics.malformed,
            )
        return out

    def list_runs(self, *, detail: bool = False) -> list[dict[str, Any]]:
        """Every run folder, newest first, with its derived state."""
        self._load_queue_orphans()
        runs = []
        for run_id in self.store.run_ids():
            try:
                runs.append(self.describe(run_id, detail=detail))
            except RunNotFound:
                continue  # deleted while listing
        return runs

    def active_run_ids(self) -> list[str]:
        with self._lock:
            return [r for r, a in self._active.items() if a.running()]

    # -- creating and starting --

    def validate(self, *layers: Mapping[str, Any]) -> tuple[Any, list[str]]:
        """build_config with path checks against the workspace: ConfigError lists all."""
        if not all(isinstance(layer, Mapping) for layer in layers):
            raise ConfigError([FieldError("config", "expected a mapping of settings")])
        return build_config(*layers, check_paths=True, base_dir=self.workspace.root)

    def create_run(
        self,
        values: Mapping[str, Any],
        *,
        name: str | None = None,
        start: bool = True,
        queue: bool = False,
        cloned_from: str | None = None,
        base: Mapping[str, Any] | None = None,
    ) -> str:
        """Validate, create the run folder atomically, then start, queue or keep it.
        `base` is a lower-precedence layer (a cloned run's config under the overrides)."""
        config, warnings = self.validate(*([base] if base is not None else []), values)
        for warning in warnings:
            log.info("config: %s", warning)
        name = clean_name(name) or default_name(config.model, config.data)
        with self._lock:
            if start and not queue:
                self._check_capacity(config_yaml=config.to_yaml())
            run_id = new_run_id()
            while (self.workspace.runs_dir / run_id).exists():
                run_id = new_run_id()
            record = RunRecord(
                run_id,
                name,
                time.time(),
                state="queued" if queue else "created",
                cloned_from=cloned_from,
            )
            self.store.create_run(record, config.to_yaml())
            log.info("run %s: created%s", run_id, " and queued" if queue else "")
            if queue:
                self.queue.add(run_id)
            elif start:
                self._spawn(run_id, resume=False)
        self._notify(run_id)
        if queue:
            self.advance_queue()
        return run_id

    def start(self, run_id: str) -> None:
        """Start a created or queued run now (an explicit action)."""
        with self._lock:
            state, _ = self.state(run_id)
            if state not in ("created", "queued"):
                raise RunConflict(f"run {run_id} is {state}; only a new or queued run starts")
            self._check_capacity(config_yaml=self.store.config_text(run_id))
            self.queue.remove(run_id)
            self._spawn(run_id, resume=False)
        self._notify(run_id)

    def resume(self, run_id: str, *, confirm: bool) -> None:
        """Continue a stopped, interrupted, failed or diverged run from its checkpoint."""
        if confirm is not True:
            raise ConfirmRequired('resuming starts training again: send {"confirm": true}')
        with self._lock:
            self.adopt_if_alive(run_id)
            state, _ = self.state(run_id)
            if state not in RESUMABLE_STATES:
                raise RunConflict(
                    f"run {run_id} is {state}; only {', '.join(RESUMABLE_STATES)} runs resume"
                )
            if not has_checkpoint(self.store.paths(run_id)):
                raise RunConflict(f"run {run_id} has no checkpoint to resume from")
            self._check_capacity(config_yaml=None)
            log.info("run %s: resuming from %s (explicit request)", run_id, state)
            self._spawn(run_id, resume=True, from_state=state)
        self._notify(run_id)

    def _check_capacity(self, config_yaml: str | None) -> None:
        active = self.active_run_ids()
        if config_yaml is not None:
            for run_id in active:
                if self.store.config_text(run_id) == config_yaml:
                    raise RunConflict(f"the same config is already running as run {run_id}")
        if len(active) >= self.settings.max_concurrent_runs:
            raise RunConflict(
                f"run {active[0]} is training and only {self.settings.max_concurrent_runs} "
                "run may train at once: add this run to the queue, or stop the other first"
            )

    def trainer_argv(self, paths: RunPaths, resume: bool) -> list[str]:
        argv = [
            self.settings.python,
            "-m",
            self.settings.trainer_module,
            "-c",
            str(paths.config),
            "--run-dir",
            str(paths.root),
        ]
        return argv + ["--resume"] if resume else argv

    def _trainer_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in PRIVATE_ENV}
        root = str(PROJECT_ROOT)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(
        self, run_id: str, *, resume: bool, from_queue: bool = False, from_state: str = ""
    ) -> None:
        """Write run.json, then start the trainer; the caller holds the lock."""
        paths = self.store.paths(run_id)
        record = self.store.read_record(run_id)
        now = time.time()
        if resume:
            checkpoints = self.store.checkpoints(run_id)
            record.resumes.append(
                {
                    "time": now,
                    "from_state": from_state,
                    "from_step": checkpoints[-1]["step"] if checkpoints else None,
                    "previous_exit": {
                        k: v for k, v in (record.exit or {}).items() if k != "log_tail"
                    }
                    or None,
                }
            )
        record.state, record.started, record.exit = "starting", now, None
        record.pid = record.pid_create_time = record.cmdline = None
        record.stop_requested = False
        record.start_seq = self.store.metrics(run_id).last_seq
        self.store.write_record(record)
        argv = self.trainer_argv(paths, resume)
        try:
            with paths.stdout.open("ab") as out:
                popen = subprocess.Popen(
                    argv,
                    cwd=self.workspace.root,
                    env=self._trainer_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # survives the console; Ctrl-C is not its signal
                    close_fds=True,
                )
        except OSError as exc:
            record.exit = {
                "code": None,
                "signal": None,
                "reason": f"could not start the trainer: {exc}",
                "time": time.time(),
                "log_tail": [],
            }
            self.store.write_record(record)
            log.error("run %s: could not start the trainer: %s", run_id, exc)
            raise RunConflict(f"could not start the trainer: {exc}") from exc
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = None
        record.pid, record.pid_create_time, record.cmdline = popen.pid, create_time, argv
        self.store.write_record(record)
        active = _Active(run_id, popen.pid, popen=popen, from_queue=from_queue)
        self._active[run_id] = active
        log.info(
            "run %s: trainer started, pid %d%s", run_id, popen.pid, " (resume)" if resume else ""
        )
        threading.Thread(
            target=self._wait_child, args=(active,), name=f"trainer-{run_id}", daemon=True
        ).start()
        self._keep_awake(run_id, popen.pid)

    def _keep_awake(self, run_id: str, pid: int) -> None:
        argv = keep_awake_argv(pid, self.settings.platform) if self.settings.keep_awake else None
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

    # -- exits --

    def _wait_child(self, active: _Active) -> None:
        assert active.popen is not None
        code = active.popen.wait()  # reaps: no zombies
        signal_name = None
        if code < 0:
            try:
                signal_name = signal.Signals(-code).name
            except ValueError:
                signal_name = f"signal {-code}"
        # A signal we sent (SIGTERM before the trainer's handler was installed, or
        # SIGKILL after the grace period) ended it, rather than the OOM killer or a crash.
        we_killed = signal_name in active.signals_sent
        reason = exit_reason(None if code < 0 else code, signal_name, we_killed)
        with self._lock:
            if active.kill_timer is not None:
                active.kill_timer.cancel()
            if self._active.get(active.run_id) is active:
                del self._active[active.run_id]
            try:
                record = self.store.read_record(active.run_id)
                if record.pid == active.pid:
                    record.exit = {
                        "code": None if code < 0 else code,
                        "signal": signal_name,
                        "killed_by_console": we_killed,
                        "reason": reason,
                        "time": time.time(),
                        "log_tail": self.store.log_tail(
                            active.run_id, self.settings.log_tail_lines
                        ),
                    }
                    self.store.write_record(record)
            except RunNotFound:
                pass
        log.info("run %s: trainer ended: %s", active.run_id, reason)
        self._after_exit(active)

    def _watch_adopted(self, active: _Active) -> None:
        assert active.adopted is not None
        try:
            active.adopted.wait()
        except psutil.Error:
            pass
        with self._lock:
            if active.kill_timer is not None:
                active.kill_timer.cancel()
            if self._active.get(active.run_id) is active:
                del self._active[active.run_id]
        log.info("run %s: adopted trainer ended (its exit code is not ours to see)", active.run_id)
        self._after_exit(active)

    def _after_exit(self, active: _Active) -> None:
        self._notify(active.run_id)
        try:
            state, _ = self.state(active.run_id)
        except RunNotFound:
            state = "deleted"
        with self._lock:
            if active.from_queue and state in ("failed", "diverged") and self.queue.stop_on_failure:
                self.queue.pause(f"run {active.run_id} {state}: the queue stops on failure")
                log.info("queue: paused because run %s %s", active.run_id, state)
        self.advance_queue()

    # -- stopping --

    def stop(self, run_id: str) -> str:
        """SIGTERM the verified trainer (it checkpoints and exits 0); SIGKILL after the
        grace period. Returns the new state."""
        self.adopt_if_alive(run_id)
        with self._lock:
            active = self._active.get(run_id)
            if active is None or not active.running():
                state, _ = self.state(run_id)
                raise RunConflict(f"run {run_id} is {state}, not training: nothing to stop")
            record = self.store.read_record(run_id)
            if record.stop_requested:
                return "stopping"
            if not self._verified(active, record):
                raise RunConflict(
                    f"run {run_id}: pid {active.pid} failed verification; not signalled"
                )
            record.stop_requested = True
            record.state = "stopping"
            self.store.write_record(record)
            self._signal(active, signal.SIGTERM)
            timer = threading.Timer(self.settings.stop_grace_seconds, self._kill, args=(active,))
            timer.daemon = True
            active.kill_timer = timer
            timer.start()
            log.info("run %s: stop requested (SIGTERM to pid %d)", run_id, active.pid)
        self._notify(run_id)
        return "stopping"

    def _verified(self, active: _Active, record: RunRecord) -> bool:
        if active.popen is not None:
            # Our own unreaped child: its pid cannot have been reused.
            return active.popen.poll() is None
        return verify_process(record, self.store.paths(active.run_id)).alive

    def _signal(self, active: _Active, sig: signal.Signals) -> None:
        if active.popen is not None:
            active.popen.send_signal(sig)  # a no-op once reaped: never a reused pid
        elif active.adopted is not None:
            active.adopted.send_signal(sig)  # psutil re-checks the start time first
        active.signals_sent.add(sig.name)

    def _kill(self, active: _Active) -> None:
        with self._lock:
            if self._active.get(active.run_id) is not active or not active.running():
                return
            try:
                record = self.store.read_record(active.run_id)
            except RunNotFound:
                return
            if not self._verified(active, record):
                return
            log.warning(
                "run %s: did not stop within %.0f s; sending SIGKILL",
                active.run_id,
                self.settings.stop_grace_seconds,
            )
            try:
                self._signal(active, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError):
                pass

    # -- other actions --

    def delete(self, run_id: str, *, confirm: bool) -> None:
        if confirm is not True:
            raise ConfirmRequired('deleting removes the run folder: send {"confirm": true}')
        with self._lock:
            self.adopt_if_alive(run_id)
            state, _ = self.state(run_id)
            if state in ACTIVE_STATES or run_id in self.active_run_ids():
                raise RunConflict(f"run {run_id} is {state}: stop it before deleting")
            self.queue.remove(run_id)
            self.store.delete_run(run_id)
            log.info("run %s: deleted", run_id)
        self._notify(run_id)

    def rename(self, run_id: str, name: Any) -> None:
        cleaned = clean_name(name)
        if not cleaned:
            raise ConfigError([FieldError("name", "give a name of 1 to 200 characters")])
        with self._lock:
            record = self.store.read_record(run_id)
            record.name = cleaned
            self.store.write_record(record)
        self._notify(run_id)

    def clone(
        self,
        run_id: str,
        *,
        name: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        start: bool = False,
        queue: bool = False,
    ) -> str:
        """A new run with this run's config (plus overrides): a new folder, never a copy
        of the old run's checkpoints or metrics."""
        from training.config import parse_yaml_text

        values = parse_yaml_text(self.store.config_text(run_id))
        source = self.store.read_record(run_id)
        return self.create_run(
            overrides or {},
            base=values,
            name=name or f"{source.name} (copy)",
            start=start,
            queue=queue,
            cloned_from=run_id,
        )

    # -- remote trainers --

    def report_events(self, run_id: str, events: list[Any]) -> tuple[int, int, int]:
        """Append a remote trainer's events to its run's metrics.jsonl (creating a remote
        run folder on first contact). Events at or below the last seq are retries and are
        dropped. Returns (accepted, duplicates, last_seq)."""
        if not is_valid_run_id(run_id):
            raise RunNotFound(run_id)
        errors = [
            FieldError("events", f"event {i}: {problem}")
            for i, event in enumerate(events)
            if (problem := event_problem(event))
        ]
        if errors:
            raise ConfigError(errors)
        with self._lock:
            paths = self.workspace.run(run_id)
            if paths.root.is_dir():
                record = self.store.read_record(run_id)
                if not record.remote:
                    raise RunConflict(
                        f"run {run_id} belongs to a trainer of this console; a remote trainer "
                        "must report to its own run_id"
                    )
            else:
                record = RunRecord(run_id, run_id, time.time(), state="running", remote=True)
                self.store.create_run(record, None)
                log.info("run %s: created for a remote trainer", run_id)
            accepted, duplicates = self.store.append_events(run_id, events)
            last_seq = self.store.metrics(run_id).last_seq
        if accepted:
            self._notify(run_id)
        return accepted, duplicates, last_seq

    # -- the queue --

    def advance_queue(self) -> None:
        """Start queued runs while there is capacity and the queue is not paused."""
        while True:
            with self._lock:
                if len(self.active_run_ids()) >= self.settings.max_concurrent_runs:
                    return
                run_id = self.queue.pop_next()
                if run_id is None:
                    return
                try:
                    self._spawn(run_id, resume=False, from_queue=True)
                except RunNotFound:
                    continue
                except RunConflict as exc:
                    if self.queue.stop_on_failure:
                        self.queue.pause(f"run {run_id} could not start: {exc}")
            self._notify(run_id)

    def queue_state(self) -> dict[str, Any]:
        self._load_queue_orphans()
        with self._lock:
            return {**self.queue.to_json(), "active": self.active_run_ids()}

    def queue_add(self, run_id: str) -> None:
        with self._lock:
            state, _ = self.state(run_id)
            if state not in ("created", "queued"):
                raise RunConflict(f"run {run_id} is {state}; only a new run can be queued")
            record = self.store.read_record(run_id)
            record.state = "queued"
            self.store.write_record(record)
            self.queue.add(run_id)
        self._notify(run_id)
        self.advance_queue()

    def queue_remove(self, run_id: str) -> None:
        with self._lock:
            if run_id not in self.queue:
                raise RunConflict(f"run {run_id} is not in the queue")
            self.queue.remove(run_id)
            record = self.store.read_record(run_id)
            if record.state == "queued":
                record.state = "created"
                self.store.write_record(record)
        self._notify(run_id)

    def queue_reorder(self, run_ids: list[str]) -> None:
        with self._lock:
            try:
                self.queue.reorder(run_ids)
            except QueueError as exc:
                raise ConfigError([FieldError("run_ids", str(exc))]) from None

    def queue_pause(self) -> None:
        with self._lock:
            self.queue.pause()

    def queue_start(self) -> None:
        with self._lock:
            self.queue.resume()
        self.advance_queue()

    def queue_settings(self, *, stop_on_failure: bool) -> None:
        with self._lock:
            self.queue.set_stop_on_failure(stop_on_failure)

    # -- shutdown --

    def close(self) -> list[str]:
        """Stop following trainers (they keep running); returns their run_ids."""
        with self._lock:
            running = self.active_run_ids()
            for active in self._active.values():
                if active.kill_timer is not None:
                    active.kill_timer.cancel()
        self.store.close()
        return running


def event_problem(event: Any) -> str | None:
    """What is wrong with one metrics event from a remote trainer, if anything."""
    if not isinstance(event, dict):
        return "must be a JSON object"
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "needs `seq`, a whole number >= 1"
    if not isinstance(event.get("event"), str) or not event["event"]:
        return "needs `event`, the event kind (train, eval, status, ...)"
    return None


def clean_name(name: Any) -> str:
    if not isinstance(name, str):
        return ""
    cleaned = " ".join(name.split())
    return cleaned[:MAX_NAME_LENGTH]


def default_name(model: str | None, data: str | None) -> str:
    parts = [Path(p).name for p in (model, data) if p]
    return " on ".join(parts) or "run"
