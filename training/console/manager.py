"""TrainingManager: the only owner of trainer processes, and the console's one facade
for acting on runs.

It validates and creates runs, starts, stops and resumes their trainers (the processes
themselves: trainer_process.py), records why each ended, and runs the queue. States are
derived when read (run_description.py); nothing here writes a run's state at console
start-up. Remote trainers report through remote_runs.py.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from training.console.detection import (
    Detection,
    TrainerTable,
    detect_run,
    log_detection,
    verify_process,
)
from training.console.hosts import (
    HostCheckFailed,
    HostReport,
    HostWatch,
    check_hosts,
    watch_interval,
)
from training.console.launcher import (
    LaunchFiles,
    host_of,
    launch_argv,
    launcher_path,
    lost_host,
    rank_ends,
)
from training.console.remote_runs import append_remote_events, check_events
from training.console.run_description import (
    NO_METRICS,
    current_status,
    describe_run,
    recorded_trainer_alive,
)
from training.console.run_queue import RunQueue
from training.console.run_state import derive_state
from training.console.run_store import MAX_NAME_LENGTH, RunStore
from training.console.trainer_process import (
    Launch,
    TrainerExit,
    TrainerProcess,
    adopt_trainer,
    create_time,
    keep_awake,
    spawn_trainer,
    trainer_argv,
)
from training.contract.checkpoints import has_checkpoint
from training.contract.config import (
    ConfigError,
    FieldError,
    RunConfig,
    build_config,
    distributed_plan,
    looks_like_hub_id,
    resolve_path,
)
from training.contract.disk import disk_full_error, free_bytes
from training.contract.errors import ConfirmRequired, RunConflict
from training.contract.hosts import HostPlan, HostsError
from training.contract.layout import RunNotFound, RunPaths, RunRecord, Workspace, new_run_id
from training.contract.limits import has_lone_surrogate
from training.contract.lineage import InitSource, check_init
from training.contract.memory import estimate_memory
from training.contract.model_facts import model_facts, read_model_config
from training.contract.protocol import (
    ACTIVE_STATES,
    CREATED,
    DIVERGED,
    EXIT_DISK_FULL,
    FAILED,
    FINAL_STATES,
    FINISHED,
    QUEUED,
    RESUMABLE_STATES,
    STARTING,
    STOPPING,
    UNREADABLE,
)
from training.contract.reading import DamagedFile

if TYPE_CHECKING:
    from training.console.run_description import Metrics

log = logging.getLogger(__name__)

DEFAULT_TRAINER_MODULE = "training.continued_pretraining"


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
    # Seconds a host may take to accept the console's SSH connection (runs on several
    # machines: the check before each launch).
    host_connect_timeout: int = 10
    # The SSH client the console's own checks run (mlx.launch runs `ssh` from PATH).
    ssh: str = "ssh"


class TrainingManager:
    def __init__(self, settings: ManagerSettings, store: RunStore | None = None):
        self.settings = settings
        self.workspace = Workspace(settings.workspace)
        self.store = store or RunStore(self.workspace)
        self.queue = RunQueue(self.workspace.queue_json)
        # Trainers run.json does not name (started from the command line, or spawned by a
        # console that died before recording the pid), from the process table.
        self.trainers = TrainerTable(self.workspace.runs_dir)
        self._lock = threading.RLock()
        self._active: dict[str, TrainerProcess] = {}
        self._listeners: list[Callable[[str], None]] = []
        # Other owners of a run's files (evaluation jobs): each says why a run is busy.
        self._busy_checks: list[Callable[[str], str | None]] = []
        self._queued_orphans_checked = False
        self._closed = False
        self._unreadable_logged: dict[str, str] = {}

    # -- observers --

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Called with a run_id whenever that run's state may have changed."""
        self._listeners.append(listener)

    def add_busy_check(self, check: Callable[[str], str | None]) -> None:
        """`check(run_id)` returns why the run is in use elsewhere (None when it is not):
        a busy run is not deleted."""
        self._busy_checks.append(check)

    def _notify(self, run_id: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(run_id)
            except Exception:  # a broken observer must not break the process bookkeeping
                log.exception("run %s: state listener failed", run_id)

    # -- start-up detection (read-only) --

    def detect(self, autodetect: bool = True) -> list[Detection]:
        """Scan the runs at console start, reading each run.json once: log one line per
        run, adopt verified live trainers and bring back the waiting queue (paused). With
        autodetect off nothing is scanned or logged: the queue is read when first asked
        for, and a live trainer adopted when its run is opened."""
        if not autodetect:
            return []
        found: list[Detection] = []
        records: dict[str, RunRecord] = {}
        for run_id in self.store.run_ids():
            try:
                paths = self.store.paths(run_id)
                record = records[run_id] = self.store.read_record(run_id)
                if record.damaged:
                    log.info("run %s: unreadable: not followed (%s)", run_id, record.damaged)
                    continue
                # The file's tail holds any final status: no full index at start-up.
                status = current_status(self.store.summary(run_id), record)
                detection = detect_run(record, paths, status, self.trainers.get(run_id))
            except DamagedFile as exc:
                log.info("run %s: unreadable: not followed (%s)", run_id, exc)
                continue
            except (RunNotFound, OSError) as exc:
                log.info("run %s: skipped (%s)", run_id, exc)
                continue
            log_detection(detection)
            if detection.decision == "adopt" and detection.process is not None:
                # No notification: nobody listens yet, and describing the run would index
                # its whole metrics file before the console even listens.
                self._adopt(run_id, detection.process, notify=False)
            found.append(detection)
        self._load_queue_orphans(records)
        return found

    def _load_queue_orphans(self, records: Mapping[str, RunRecord] | None = None) -> None:
        """Once: queue.json's order, kept to the runs whose run.json says queued (and
        never started), plus queued runs queue.json lost. `records`: run.json of every
        run, when the caller has read them already."""
        with self._lock:
            if self._queued_orphans_checked:
                return
            self._queued_orphans_checked = True
            if records is None:
                records = {}
                for run_id in self.store.run_ids():
                    try:
                        records[run_id] = self.store.read_record(run_id)
                    except RunNotFound:
                        continue
            queued = [
                run_id
                for run_id, record in records.items()
                if record.state == QUEUED and record.pid is None
            ]
            self.queue.order = [r for r in self.queue.order if r in queued]
            self.queue.adopt_orphans(queued)

    def adopt_if_alive(self, run_id: str) -> bool:
        """Follow a verified live trainer this console does not know yet (a run opened
        with --no-autodetect, one started before this console or from the command line)."""
        with self._lock:
            if run_id in self._active:
                return True
            record = self.store.read_record(run_id)
            if record.exit is not None:
                return False
            proc, reason = self._live_trainer(record)
            if proc is None:
                return False
            log.info("run %s: adopted: live trainer, following it (%s)", run_id, reason)
            self._adopt(run_id, proc)
            return True

    def _live_trainer(self, record: RunRecord) -> tuple[psutil.Process | None, str]:
        """The run's live trainer: run.json's verified pid, else one in the process table."""
        if record.pid is not None:
            verdict = verify_process(record, self.store.paths(record.run_id))
            if verdict.alive:
                return verdict.process, verdict.reason
        found = self.trainers.get(record.run_id)
        if found is None:
            return None, "no live trainer"
        return found, f"pid {found.pid} runs its trainer, found in the process table"

    def _adopt(self, run_id: str, proc: psutil.Process, notify: bool = True) -> None:
        active = adopt_trainer(run_id, proc)
        launch = self._recorded_launch(run_id, proc)
        if launch is not None:  # an mlx.launch this console stops through its FIFO too
            active.launch = Launch(Path(str(launch["control"])))
            self._watch_hosts(active, launch)
        with self._lock:
            self._active[run_id] = active
        active.watch(self._trainer_ended)
        if notify:
            self._notify(run_id)

    def _recorded_launch(self, run_id: str, proc: psutil.Process) -> dict[str, Any] | None:
        """run.json's launch entry when `proc` is the mlx.launch it records."""
        try:
            record = self.store.read_record(run_id)
        except (RunNotFound, OSError):
            return None
        launch = record.launch
        if record.pid != proc.pid or not launch or not isinstance(launch.get("control"), str):
            return None
        return launch

    # -- reading state --

    def _alive(self, record: RunRecord, paths: RunPaths, last_status: Any) -> bool:
        active = self._active.get(record.run_id)
        if active is not None:
            return active.running()
        if recorded_trainer_alive(record, paths, last_status):
            return True
        final = last_status and last_status.get("state") in FINAL_STATES
        return record.exit is None and not final and self.trainers.get(record.run_id) is not None

    def state(self, run_id: str) -> tuple[str, str]:
        """The run's derived state and why; `unreadable` when run.json or metrics.jsonl
        cannot be read (no action but delete applies to such a run)."""
        record = self.store.read_record(run_id)
        if record.damaged:
            return UNREADABLE, record.damaged
        paths = self.store.paths(run_id)
        try:
            summary = self.store.summary(run_id)  # the file's tail: no index
        except DamagedFile as exc:
            return UNREADABLE, str(exc)
        status = current_status(summary, record)
        return derive_state(
            record, status, self._alive(record, paths, status), last_event_time=summary.last_time
        )

    def describe(self, run_id: str, *, detail: bool = True) -> dict[str, Any]:
        """The run record with its derived state, progress and last metrics. The runs
        list's view (detail=False) reads only the tail of metrics.jsonl; the run page's
        (detail) uses the run's index, which it needs for its charts anyway."""
        record = self.store.read_record(run_id)
        paths = self.store.paths(run_id)
        damaged = [record.damaged] if record.damaged else []
        metrics: Metrics
        try:
            metrics = self.store.metrics(run_id) if detail else self.store.summary(run_id)
        except DamagedFile as exc:  # listed and shown all the same, as unreadable
            metrics = NO_METRICS
            damaged.append(str(exc))
        status = current_status(metrics, record)
        alive = self._alive(record, paths, status)
        with self._lock:
            position = self.queue.order.index(run_id) if run_id in self.queue else None
        active = self._active.get(run_id)
        return describe_run(
            self.store,
            record,
            metrics,
            status,
            alive=alive,
            adopted=bool(active and active.adopted),
            queue_position=position,
            detail=detail,
            damaged="; ".join(damaged) or None,
        )

    def list_runs(self, *, detail: bool = False) -> list[dict[str, Any]]:
        """Every run folder, newest first, with its derived state."""
        self._load_queue_orphans()
        runs = []
        for run_id in self.store.run_ids():
            try:
                runs.append(self.describe(run_id, detail=detail))
            except RunNotFound:
                continue  # deleted while listing
            except Exception as exc:  # noqa: BLE001 - one bad run must not hide the others
                runs.append(self._unreadable(run_id, exc))
        return runs

    def _unreadable(self, run_id: str, exc: Exception) -> dict[str, Any]:
        """A run whose files cannot be read, flagged in the list (logged once per reason)."""
        reason = f"cannot read this run's files: {type(exc).__name__}: {exc}"
        if self._unreadable_logged.get(run_id) != reason:
            self._unreadable_logged[run_id] = reason
            log.warning("run %s: %s", run_id, reason, exc_info=exc)
        return {"run_id": run_id, "name": run_id, "state": "unreadable", "reason": reason}

    def active_run_ids(self) -> list[str]:
        with self._lock:
            return [r for r, a in self._active.items() if a.running()]

    # -- creating and starting --

    def validate(self, *layers: Mapping[str, Any]) -> tuple[Any, list[str]]:
        """build_config with path checks against the workspace: ConfigError lists all."""
        if not all(isinstance(layer, Mapping) for layer in layers):
            raise ConfigError([FieldError("config", "expected a mapping of settings")])
        config, warnings = build_config(*layers, check_paths=True, base_dir=self.workspace.root)
        self.init_source(config)
        return config, warnings

    def init_source(self, config: RunConfig) -> InitSource | None:
        """The run `init_from` names, checked as the trainer checks it (ConfigError)."""
        root = self.workspace.root
        source, errors = check_init(config, root, root)
        if errors:
            raise ConfigError(errors)
        return source

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
        name = check_name(name) if name is not None else ""
        name = name or default_name(config.model, config.data)[:MAX_NAME_LENGTH]
        # Hosts are checked before anything exists, outside the lock (SSH takes seconds).
        checked = self.check_launch(config) if start and not queue else None
        with self._lock:
            if start and not queue:
                self._check_capacity(config_yaml=config.to_yaml())
            run_id = new_run_id()
            while (self.workspace.runs_dir / run_id).exists():
                run_id = new_run_id()
            source = self.init_source(config)
            record = RunRecord(
                run_id,
                name,
                time.time(),
                state=QUEUED if queue else CREATED,
                cloned_from=cloned_from,
                initialized_from=source.to_json() if source is not None else None,
            )
            self.store.create_run(record, config.to_yaml())
            try:
                if queue:
                    self.queue.add(run_id)
                elif start:
                    self._spawn(run_id, resume=False, checked=checked)
            except OSError:
                # Nothing started (a full disk refused run.json or queue.json): the request
                # fails whole, so no half-made run is left to explain.
                self.store.delete_run(run_id)
                raise
            log.info("run %s: created%s", run_id, " and queued" if queue else "")
        self._notify(run_id)
        if queue:
            self.advance_queue()
        return run_id

    def start(self, run_id: str) -> None:
        """Start a created or queued run now (an explicit action)."""
        state, _ = self.state(run_id)
        if state not in (CREATED, QUEUED):
            raise RunConflict(f"run {run_id} is {state}; only a new or queued run starts")
        checked = self._check_run_launch(run_id)
        with self._lock:
            state, _ = self.state(run_id)
            if state not in (CREATED, QUEUED):
                raise RunConflict(f"run {run_id} is {state}; only a new or queued run starts")
            self._check_capacity(config_yaml=self.store.config_text(run_id))
            self.queue.remove(run_id)
            self._spawn(run_id, resume=False, checked=checked)
        self._notify(run_id)

    def resume(self, run_id: str, *, confirm: bool, iters: int | None = None) -> None:
        """Continue a stopped, interrupted, failed or diverged run from its checkpoint.
        With `iters` (a new budget in steps, beyond the steps it has trained) a finished
        run may resume too: it is extended (the trainer resumes with `--iters N`; a wsd
        schedule decays again at the new end, a cosine one stretches to it)."""
        if confirm is not True:
            raise ConfirmRequired('resuming starts training again: send {"confirm": true}')
        self._ended_state(run_id, "resume", also=(FINISHED,) if iters else ())
        checked = self._check_run_launch(run_id)  # on the same hosts, checked again
        with self._lock:
            state = self._ended_state(run_id, "resume", also=(FINISHED,) if iters else ())
            if not has_checkpoint(self.store.paths(run_id).root):
                raise RunConflict(
                    f"run {run_id} has no checkpoint to resume from: it ended before its "
                    "first one; start it again from step 0 instead (POST "
                    f'/api/runs/{run_id}/restart with {{"confirm": true}})'
                )
            extra: list[str] = []
            if iters is not None:
                self._check_extension(run_id, iters)
                extra = ["--iters", str(iters)]
            self._check_capacity(config_yaml=None)
            log.info(
                "run %s: resuming from %s%s (explicit request)",
                run_id,
                state,
                f", extended to {iters} steps" if iters is not None else "",
            )
            self._spawn(
                run_id, resume=True, from_state=state, extra=extra, extend_to=iters, checked=checked
            )
        self._notify(run_id)

    def _check_extension(self, run_id: str, iters: int) -> None:
        """A new budget must lie beyond every step the run trained, and make a valid config
        with the run's other settings (ConfigError naming `iters` otherwise)."""
        steps = [int(c["step"]) for c in self.store.checkpoints(run_id)]
        steps.append(int(self.describe(run_id, detail=False).get("step") or 0))
        trained = max(steps)
        if iters <= trained:
            message = (
                f"run {run_id} has trained {trained} steps; give a budget beyond that "
                f"(e.g. {2 * max(trained, 1)})"
            )
            raise ConfigError([FieldError("iters", message)])
        _, values = self.store.config(run_id)
        base = {k: v for k, v in values.items() if k not in ("iters", "epochs", "train_tokens")}
        build_config(base, {"iters": iters})

    def _ended_state(self, run_id: str, action: str, also: tuple[str, ...] = ()) -> str:
        """The state of a run that may train again (no live trainer, a resumable state, or
        one of `also`); RunConflict naming the state otherwise."""
        self.adopt_if_alive(run_id)
        state, _ = self.state(run_id)
        if state not in RESUMABLE_STATES + also:
            hint = ""
            if state == FINISHED:
                hint = (
                    '; a finished run trains further with a larger budget ({"confirm": true, '
                    '"iters": N}), or a new run starts from it (init_from)'
                )
            raise RunConflict(
                f"run {run_id} is {state}; only {', '.join(RESUMABLE_STATES)} runs {action}" + hint
            )
        return state

    def restart(self, run_id: str, *, confirm: bool) -> None:
        """Start a run that ended before its first checkpoint (stopped, interrupted, failed
        or diverged, with nothing to resume from) again from step 0 in its own folder: the
        trainer's --restart clears what the earlier attempt wrote (metrics, data report,
        unfinished checkpoints) and keeps config.yaml, run.json and the log. Only ever on
        an explicit, confirmed request."""
        if confirm is not True:
            raise ConfirmRequired(
                'starting again from step 0 clears the run\'s metrics: send {"confirm": true}'
            )
        self._ended_state(run_id, "start again")
        checked = self._check_run_launch(run_id)
        with self._lock:
            state = self._ended_state(run_id, "start again")
            paths = self.store.paths(run_id)
            if has_checkpoint(paths.root):
                raise RunConflict(
                    f"run {run_id} has a checkpoint: resume it instead (starting again "
                    "from step 0 would throw it away)"
                )
            if not paths.config.is_file():
                raise RunConflict(
                    f"run {run_id} has no config.yaml here (a remote run's is on the machine "
                    "it ran on): start it again there with --restart"
                )
            self._check_capacity(config_yaml=None)
            log.info(
                "run %s: starting again from step 0 after %s (explicit request)", run_id, state
            )
            self._spawn(run_id, resume=False, restart=True, from_state=state, checked=checked)
        self._notify(run_id)

    # -- runs on several machines (issue 14) --

    def host_plan(self, config: RunConfig) -> HostPlan | None:
        """How mlx.launch would run this config; None for one process here. ConfigError
        naming the setting when it cannot be launched."""
        try:
            return distributed_plan(config, self.workspace.root)
        except HostsError as exc:
            field = "distributed.hostfile" if config.distributed_hostfile else "distributed.hosts"
            raise ConfigError([FieldError(field, str(exc))]) from None

    def check_hosts(self, config: RunConfig) -> list[HostReport]:
        """Every host's readiness for this config (SSH without a password, the same project,
        Python and mlx, the shared workspace, model and data, free ports); [] for a run
        without hosts. Takes as long as the slowest host."""
        plan = self.host_plan(config)
        if plan is None:
            return []
        return check_hosts(
            plan,
            python=self.settings.python,
            workspace=self.workspace.root,
            paths=self._input_paths(config),
            connect_timeout=self.settings.host_connect_timeout,
            client=self.settings.ssh,
        )

    def check_launch(self, config: RunConfig) -> Checked:
        """The hosts' check before a launch: HostCheckFailed naming each failing host."""
        reports = self.check_hosts(config)
        failed = [r for r in reports if not r.ok]
        if failed:
            field = "distributed.hostfile" if config.distributed_hostfile else "distributed.hosts"
            raise HostCheckFailed(failed, field)
        return Checked(reports)

    def _check_run_launch(self, run_id: str) -> Checked | None:
        """A run's hosts checked from its config.yaml (None when it cannot be read: the
        trainer says why); checked now, before the lock is taken."""
        config = self._run_config(run_id)
        return None if config is None else self.check_launch(config)

    def _run_config(self, run_id: str) -> RunConfig | None:
        try:
            values = self.store.config(run_id)[1]
            return build_config(values)[0] if values else None
        except (ConfigError, OSError):
            return None

    def _input_paths(self, config: RunConfig) -> list[Path]:
        """The files every rank reads (model folder, data, validation and extra sets), as
        the ranks resolve them (against the workspace); a hub id is no path."""
        root = self.workspace.root
        paths = []
        if config.model and not (
            looks_like_hub_id(config.model) and not resolve_path(config.model, root).exists()
        ):
            paths.append(resolve_path(config.model, root))
        sources = [source.path for source in config.sources()]
        for value in (*sources, config.valid_data, *(config.eval_sets or {}).values()):
            if value:
                paths.append(resolve_path(value, root))
        return paths

    def _host_lost(self, active: TrainerProcess, rank: int, host: str, why: str) -> None:
        """The watch lost a host: end the run at once (its ranks wait in a collective that
        cannot finish, so a graceful stop would only wait out the grace period)."""
        with self._lock:
            if self._active.get(active.run_id) is not active or active.launch is None:
                return
            reason = (
                f"host {host} (rank {rank}) stopped answering over SSH ({why}); the run was "
                "ended: resume it once the host is back"
            )
            active.launch.host_failure = {"rank": rank, "host": host, "reason": reason}
            log.warning("run %s: %s", active.run_id, reason)
            active.kill()

    def _watch_hosts(self, active: TrainerProcess, launch: Mapping[str, Any]) -> None:
        if active.launch is None:
            return
        hosts = launch.get("hosts")
        active.launch.watch = HostWatch(
            active.run_id,
            hosts if isinstance(hosts, list) else [],
            watch_interval(self.settings.stop_grace_seconds),
            lambda rank, host, why: self._host_lost(active, rank, host, why),
            client=self.settings.ssh,
        ).start()

    def _launch_exit(
        self, active: TrainerProcess, ended: TrainerExit | None, record: RunRecord
    ) -> dict[str, Any]:
        """run.json's exit of a launch. mlx.launch exits 0 whatever its ranks did, so its
        code is kept apart (`launcher_code`): the ranks' ends come from its log (which
        rank ended, with which code) and from the host watch."""
        assert active.launch is not None
        tail = self._exit_log(active.run_id)
        try:
            text = "\n".join(self.store.log_tail(active.run_id, 400))
        except OSError:
            text = ""
        ends = rank_ends(text)
        failure = active.launch.host_failure or lost_host(record.launch, ends)
        killed = ended.killed_by_console if ended is not None else "SIGKILL" in active.signals_sent
        bad = [e for e in ends if e.code != 0]
        if failure is not None:
            reason = str(failure["reason"])
        elif bad:
            first = bad[0]
            how = "was killed" if first.code is None else f"exited with code {first.code}"
            reason = f"rank {first.rank} on {host_of(record.launch, first.rank)} {how}"
        elif ended is not None and ended.signal:
            reason = f"mlx.launch {ended.reason}"
        else:  # rank 0's final status, when it wrote one, says how the run ended
            reason = "mlx.launch ended; no rank reported a failure"
        return {
            "code": None,  # mlx.launch's own says nothing about the ranks
            "signal": ended.signal if ended is not None else None,
            "killed_by_console": killed,
            "reason": reason,
            "time": time.time(),
            "log_tail": tail,
            "launcher_code": ended.code if ended is not None else None,
            "ranks": [
                {"rank": e.rank, "host": host_of(record.launch, e.rank), "code": e.code}
                for e in ends
            ],
            "host_failure": failure,
        }

    def model_facts(self, model: Any) -> dict[str, Any] | None:
        """What the New run form shows about a model folder (its quantization), from its
        config.json; None unless `model` names a model folder (a hub id, say)."""
        if not isinstance(model, str) or not model.strip():
            return None
        return model_facts(resolve_path(model.strip(), self.workspace.root))

    def memory_estimate(self, config: RunConfig) -> dict[str, Any] | None:
        """What a run of `config` will need at its peak, from the model's config.json
        (contract/memory.py), beside the machine's memory: {total, parts..., machine,
        fits}; None when the model is no local folder with a llama-shaped config.json."""
        try:
            model_config = read_model_config(resolve_path(str(config.model), self.workspace.root))
        except (OSError, ValueError, TypeError):
            return None
        estimate = estimate_memory(model_config, config)
        if estimate is None:
            return None
        machine = int(psutil.virtual_memory().total)
        return {**estimate, "machine": machine, "fits": estimate["total"] <= machine}

    def training_now(self) -> list[str]:
        """Runs whose trainer runs on this machine. Trainers nobody follows yet (started
        from the command line, or not adopted with --no-autodetect) share its memory too:
        they are adopted here, so their end lets the queue go on."""
        with self._lock:
            for run_id, proc in self.trainers.trainers().items():
                if run_id not in self._active:
                    log.info(
                        "run %s: adopted: live trainer found in the process table (pid %d)",
                        run_id,
                        proc.pid,
                    )
                    self._adopt(run_id, proc)
            return self.active_run_ids()

    def _check_capacity(self, config_yaml: str | None) -> None:
        active = self.training_now()
        if config_yaml is not None:
            for run_id in active:
                if self._config_text_or_none(run_id) == config_yaml:
                    raise RunConflict(f"the same config is already running as run {run_id}")
        if len(active) >= self.settings.max_concurrent_runs:
            raise RunConflict(
                f"run {active[0]} is training and only {self.settings.max_concurrent_runs} "
                "run may train at once: add this run to the queue, or stop the other first"
            )

    def _config_text_or_none(self, run_id: str) -> str | None:
        """Another run's config.yaml, or None when it cannot be read: one damaged run
        never stops another from starting."""
        try:
            return self.store.config_text(run_id)
        except (RunNotFound, OSError):
            return None

    def trainer_argv(
        self, paths: RunPaths, resume: bool, restart: bool = False, extra: Sequence[str] = ()
    ) -> list[str]:
        return trainer_argv(
            self.settings.python, self.settings.trainer_module, paths, resume, restart, extra
        )

    def _spawn(
        self,
        run_id: str,
        *,
        resume: bool,
        restart: bool = False,
        from_queue: bool = False,
        from_state: str = "",
        checked: Checked | None = None,
        extra: Sequence[str] = (),
        extend_to: int | None = None,
    ) -> None:
        """Write run.json, then start the trainer (for a run with hosts: mlx.launch, once
        its hosts pass their check: `checked`, or checked now); the caller holds the lock."""
        paths = self.store.paths(run_id)
        record = self.store.read_record(run_id)
        plan, checked = self._launch_plan(run_id, record, checked, from_queue)
        now = time.time()
        if resume or restart:  # another attempt of the same run: say where it began
            checkpoints = self.store.checkpoints(run_id) if resume else []
            attempt: dict[str, Any] = {
                "time": now,
                "from_state": from_state,
                "from_step": checkpoints[-1]["step"] if checkpoints else None,
                "previous_exit": {k: v for k, v in (record.exit or {}).items() if k != "log_tail"}
                or None,
            }
            if restart:
                attempt["restart"] = True  # from step 0, the earlier metrics cleared
            if extend_to is not None:
                attempt["extend_to"] = extend_to  # a larger budget, in steps
            record.resumes.append(attempt)
        record.state, record.started, record.exit = STARTING, now, None
        record.pid = record.pid_create_time = record.cmdline = None
        record.stop_requested = False
        record.remote = False  # from now on a trainer of this console's (a resumed remote run)
        record.start_seq = self.store.summary(run_id).last_seq
        files = LaunchFiles.of(self.workspace, run_id) if plan is not None else None
        record.launch = None
        if plan is not None and files is not None:
            record.launch = {
                **plan.to_record(),
                "hostfile": str(files.hostfile),
                "control": str(files.control),
                "checked": [r.to_json() for r in (checked.reports if checked else [])],
            }
        # Before the process: a disk that refuses this (OSError, HTTP 507) starts nothing.
        self.store.write_record(record)
        argv = self.trainer_argv(paths, resume, restart, extra)
        stdin = None
        try:
            if plan is not None and files is not None:
                files.create(plan)
                argv = launch_argv(
                    launcher_path(self.settings.python),
                    plan,
                    files,
                    workspace=self.workspace.root,
                    python=self.settings.python,
                    trainer_args=argv[1:],
                )
                stdin = files.open_stdin()
            active = spawn_trainer(
                run_id,
                argv,
                cwd=self.workspace.root,
                stdout=paths.stdout,
                from_queue=from_queue,
                stdin=stdin,
            )
        except OSError as exc:
            if files is not None:
                files.remove()
            record.exit = {
                "code": None,
                "signal": None,
                "reason": f"could not start the trainer: {exc}",
                "time": time.time(),
                "log_tail": [],
            }
            self._record_or_keep(record)
            log.error("run %s: could not start the trainer: %s", run_id, exc)
            raise RunConflict(f"could not start the trainer: {exc}") from exc
        finally:
            if stdin is not None:
                os.close(stdin)  # mlx.launch holds its own (read-write: never end-of-file)
        record.pid, record.cmdline = active.pid, argv
        record.pid_create_time = create_time(active.pid)
        self._record_or_keep(record)
        self._active[run_id] = active
        log.info(
            "run %s: trainer started, pid %d%s", run_id, active.pid, " (resume)" if resume else ""
        )
        if plan is not None and files is not None and record.launch is not None:
            active.launch = Launch(files.control)
            lower_priority(active.pid)
            self._watch_hosts(active, record.launch)
            log.info(
                "run %s: mlx.launch (%s) runs %d ranks on %s",
                run_id,
                plan.backend,
                plan.world,
                ", ".join(h.name for h in plan.hosts),
            )
        active.watch(self._trainer_ended)
        if self.settings.keep_awake:
            keep_awake(run_id, active.pid, self.settings.platform)

    def _launch_plan(
        self, run_id: str, record: RunRecord, checked: Checked | None, from_queue: bool
    ) -> tuple[HostPlan | None, Checked | None]:
        """The run's hosts, checked (now, unless the caller did). A queued run whose hosts
        fail is recorded as failed with them named, so the queue moves on."""
        config = self._run_config(run_id)
        if config is None:
            return None, None
        try:
            plan = self.host_plan(config)
            if plan is not None and checked is None:
                checked = self.check_launch(config)
        except ConfigError as exc:
            if not from_queue:
                raise
            record.state, record.started = STARTING, time.time()
            record.exit = {
                "code": None,
                "signal": None,
                "reason": f"could not start: {exc}",
                "time": time.time(),
                "log_tail": [],
            }
            self._record_or_keep(record)
            raise RunConflict(f"could not start: {exc}") from exc
        return plan, checked

    # -- exits --

    def _trainer_ended(self, active: TrainerProcess, ended: TrainerExit | None) -> None:
        """Forget the trainer and, for our own child, record how it ended in run.json."""
        with self._lock:
            active.cancel_kill()
            if active.launch is not None:
                active.launch.stop_watching()
            if self._active.get(active.run_id) is active:
                del self._active[active.run_id]
            if ended is not None or active.launch is not None:
                try:
                    record = self.store.read_record(active.run_id)
                    if record.pid == active.pid and active.launch is not None:
                        record.exit = self._launch_exit(active, ended, record)
                        self._record_or_keep(record)
                    elif record.pid == active.pid and ended is not None:
                        record.exit = ended.to_record(time.time(), self._exit_log(active.run_id))
                        if ended.code == EXIT_DISK_FULL:  # the numbers its status could not carry
                            root = self.store.paths(active.run_id).root
                            record.exit.update(path=str(root), free_bytes=free_bytes(root))
                        self._record_or_keep(record)
                except RunNotFound:
                    pass
            if active.launch is not None:
                LaunchFiles.of(self.workspace, active.run_id).remove()
        if ended is None and active.launch is None:
            log.info(
                "run %s: adopted trainer ended (its exit code is not ours to see)", active.run_id
            )
        elif active.launch is not None:
            log.info("run %s: mlx.launch ended", active.run_id)
        else:
            assert ended is not None
            log.info("run %s: trainer ended: %s", active.run_id, ended.reason)
        if not self._closed:  # a closed console notifies nobody and starts nothing
            self._after_exit(active)

    def _record_or_keep(self, record: RunRecord) -> None:
        """Write run.json; when the disk refuses it, keep the record in memory (shown, and
        written once there is space) rather than lose what a process did: a trainer's
        pid, its exit, a stop request."""
        try:
            self.store.write_record(record)
        except OSError as exc:
            self.store.keep_unsaved(record)
            log.warning(
                "run %s: run.json cannot be written (%s); kept in memory and written again "
                "once there is space",
                record.run_id,
                disk_full_error(exc) or exc,
            )

    def _exit_log(self, run_id: str) -> list[str]:
        """The last lines of the log for run.json's exit record (none from a damaged log:
        the exit itself must still be recorded)."""
        try:
            return self.store.log_tail(run_id, self.settings.log_tail_lines)
        except OSError as exc:
            return [f"(log not read: {exc})"]

    def _after_exit(self, active: TrainerProcess) -> None:
        self._notify(active.run_id)
        try:
            state, _ = self.state(active.run_id)
        except RunNotFound:
            state = "deleted"
        with self._lock:
            if active.from_queue and state in (FAILED, DIVERGED) and self.queue.stop_on_failure:
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
                return STOPPING
            record.stop_requested = True  # derive_state reads this (no "stopping" state)
            self._record_or_keep(record)  # a full disk must not keep a trainer from stopping
            how = active.request_stop()
            active.kill_after(self.settings.stop_grace_seconds, self._kill)
            log.info("run %s: stop requested (%s)", run_id, how)
        self._notify(run_id)
        return STOPPING

    def _kill(self, active: TrainerProcess) -> None:
        with self._lock:
            if self._active.get(active.run_id) is not active or not active.running():
                return
            log.warning(
                "run %s: did not stop within %.0f s; sending SIGKILL",
                active.run_id,
                self.settings.stop_grace_seconds,
            )
            try:
                active.kill()
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
            for check in self._busy_checks:
                reason = check(run_id)
                if reason:
                    raise RunConflict(f"run {run_id} {reason}, then delete it")
            self.store.delete_run(run_id)
            LaunchFiles.of(self.workspace, run_id).remove()
            # After the folder: deleting is how a full disk gets space back.
            self.queue.discard(run_id)
            log.info("run %s: deleted", run_id)
        self._notify(run_id)

    def rename(self, run_id: str, name: Any) -> None:
        cleaned = check_name(name)
        if not cleaned:
            raise ConfigError(
                [FieldError("name", f"give a name of 1 to {MAX_NAME_LENGTH} characters")]
            )
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
        values = self.store.config(run_id)[1]  # DamagedFile: nothing to clone from
        source = self.store.read_record(run_id)
        return self.create_run(
            overrides or {},
            base=values,
            name=name or f"{source.name[: MAX_NAME_LENGTH - 7]} (copy)",
            start=start,
            queue=queue,
            cloned_from=run_id,
        )

    # -- remote trainers --

    def report_events(self, run_id: str, events: list[Any]) -> tuple[int, int, int]:
        """Append a remote trainer's events to its run's metrics.jsonl (creating a remote
        run folder on first contact). Events at or below the last seq are retries and are
        dropped. Returns (accepted, duplicates, last_seq)."""
        check_events(run_id, events)
        with self._lock:
            accepted, duplicates, last_seq, changed = append_remote_events(
                self.store, run_id, events
            )
        if changed:  # a new run or a status change: not every batch of train rows
            self._notify(run_id)
        return accepted, duplicates, last_seq

    # -- the queue --

    def advance_queue(self) -> None:
        """Start queued runs while there is capacity and the queue is not paused."""
        while True:
            with self._lock:
                if any(a.from_queue and not a.running() for a in self._active.values()):
                    # A queued run ended and its end, which may pause the queue, is not
                    # handled yet: the reaper moves the queue on once it is.
                    return
                if len(self.training_now()) >= self.settings.max_concurrent_runs:
                    return
                try:
                    run_id = self.queue.pop_next()
                except OSError as exc:
                    self._pause_for(None, exc)
                    return
                if run_id is None:
                    return
                try:
                    self._spawn(run_id, resume=False, from_queue=True)
                except RunNotFound:
                    continue
                except (RunConflict, DamagedFile) as exc:
                    # A damaged run leaves the queue; the runs behind it still start.
                    log.warning("queue: run %s could not start: %s", run_id, exc)
                    if self.queue.stop_on_failure:
                        self.queue.pause(f"run {run_id} could not start: {exc}")
                except OSError as exc:
                    self.queue.put_back(run_id)  # nothing started: it is still next
                    self._pause_for(run_id, exc)
                    return
            self._notify(run_id)

    def _pause_for(self, run_id: str | None, exc: OSError) -> None:
        """Pause the queue for a write the disk refused (in the reaper's thread, which
        must not die of it)."""
        reason = str(disk_full_error(exc) or exc)
        who = f"run {run_id} could not start" if run_id else "the queue could not be saved"
        self.queue.pause(f"{who}: {reason}; free some space, then start the queue")
        log.warning("queue: paused: %s: %s", who, reason)

    def queue_state(self) -> dict[str, Any]:
        self._load_queue_orphans()
        with self._lock:
            return {**self.queue.to_json(), "active": self.active_run_ids()}

    def queue_add(self, run_id: str) -> None:
        with self._lock:
            state, _ = self.state(run_id)
            if state not in (CREATED, QUEUED):
                raise RunConflict(f"run {run_id} is {state}; only a new run can be queued")
            record = self.store.read_record(run_id)
            record.state = QUEUED
            self.queue.add(run_id)  # (nothing changes when the disk refuses it)
            try:
                self.store.write_record(record)
            except OSError:
                self.queue.discard(run_id)
                raise
        self._notify(run_id)
        self.advance_queue()

    def queue_remove(self, run_id: str) -> None:
        with self._lock:
            if run_id not in self.queue:
                raise RunConflict(f"run {run_id} is not in the queue")
            index = self.queue.order.index(run_id)
            self.queue.remove(run_id)
            record = self.store.read_record(run_id)
            if record.state == QUEUED:
                record.state = CREATED
                try:
                    self.store.write_record(record)
                except OSError:
                    self.queue.put_back(run_id, index)
                    raise
        self._notify(run_id)

    def queue_reorder(self, run_ids: list[str]) -> None:
        with self._lock:
            self.queue.reorder(run_ids)  # QueueError: an InputError naming run_ids

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
            self._closed = True
            running = self.active_run_ids()
            for active in self._active.values():
                active.cancel_kill()
                if active.launch is not None:  # the next console watches its hosts
                    active.launch.stop_watching()
        self.store.close()
        return running


def check_name(name: Any) -> str:
    """A run name as a person gave it, with its runs of white space made one space; ""
    for no name. ConfigError (field `name`) for anything but text of at most
    MAX_NAME_LENGTH characters: a long name is refused, never cut silently."""
    if not isinstance(name, str):
        raise ConfigError([FieldError("name", "the name must be text")])
    cleaned = " ".join(name.split())
    if len(cleaned) > MAX_NAME_LENGTH:
        raise ConfigError(
            [FieldError("name", f"the name is over {MAX_NAME_LENGTH} characters ({len(cleaned)})")]
        )
    if has_lone_surrogate(cleaned):
        raise ConfigError([FieldError("name", "the name contains a lone surrogate: not text")])
    if any(unicodedata.category(c) == "Cc" for c in cleaned):
        raise ConfigError([FieldError("name", "the name contains control characters")])
    return cleaned


def default_name(model: str | None, data: str | None) -> str:
    parts = [Path(p).name for p in (model, data) if p]
    return " on ".join(parts) or "run"


@dataclass(frozen=True)
class Checked:
    """A launch's hosts, checked and ready (their reports go into run.json)."""

    reports: list[HostReport]


def lower_priority(pid: int) -> None:
    """mlx.launch (0.32) polls its ranks' pipes without sleeping and keeps a core busy
    for the whole run: at the lowest priority it takes only what the ranks leave."""
    try:
        psutil.Process(pid).nice(19)
    except (psutil.Error, OSError) as exc:
        log.info("mlx.launch pid %d keeps its priority: %s", pid, exc)
