"""TrainingManager with a real subprocess (the fast fake trainer): start, stop, exits and
their reasons, resume, delete, concurrency, the queue, PID-reuse safety, keep-awake."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from tests.console_helpers import (
    FAKE_TRAINER,
    fake_config,
    make_manager,
    make_workspace,
    set_fake_mode,
)
from tests.helpers import wait_until
from training.console.manager import ConfirmRequired, RunConflict
from training.console.run_queue import QueueError
from training.contract.config import ConfigError, build_config
from training.contract.layout import Workspace, write_record


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path / "ws")


@pytest.fixture
def manager(workspace):
    m = make_manager(workspace)
    yield m
    for run_id in m.active_run_ids():  # never leave a trainer behind
        active = m._active[run_id]
        if active.popen is not None:
            active.popen.kill()
            active.popen.wait()
    m.close()


def state(manager, run_id):
    return manager.state(run_id)[0]


def wait_state(manager, run_id, *states, timeout=30):
    return wait_until(
        lambda: state(manager, run_id) in states, timeout, message=f"{run_id} to reach {states}"
    )


def test_start_runs_the_trainer_and_records_it(manager, workspace):
    set_fake_mode(workspace, rate=500)
    run_id = manager.create_run(fake_config(iters=30), name="first")
    paths = manager.store.paths(run_id)
    record = manager.store.read_record(run_id)
    assert record.pid and record.pid_create_time and record.name == "first"
    assert record.cmdline == [
        sys.executable,
        "-m",
        "tests.fake_trainer",
        "-c",
        str(paths.config),
        "--run-dir",
        str(paths.root),
    ]
    expected, _ = build_config(fake_config(iters=30), check_paths=True, base_dir=workspace)
    assert paths.config.read_text() == expected.to_yaml()
    wait_state(manager, run_id, "finished")
    record = wait_until(lambda: (r := manager.store.read_record(run_id)).exit and r)
    assert record.exit["code"] == 0 and "fake trainer" in "\n".join(
        record.exit["log_tail"] + [paths.stdout.read_text()]
    )
    assert manager.describe(run_id)["step"] == 30


def test_invalid_config_lists_every_error_and_writes_nothing(manager, workspace):
    with pytest.raises(ConfigError) as info:
        manager.create_run({"model": "missing", "data": "nope.txt", "learning_rate": -1})
    fields = {e.field for e in info.value.errors}
    assert {"model", "data", "learning_rate"} <= fields
    assert not (workspace / "runs").exists() or not list((workspace / "runs").iterdir())


def test_concurrent_identical_starts_make_exactly_one_process(manager, workspace):
    set_fake_mode(workspace, rate=50)
    results, errors = [], []
    barrier = threading.Barrier(4)

    def start():
        barrier.wait()
        try:
            results.append(manager.create_run(fake_config()))
        except RunConflict as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and len(errors) == 3
    assert "already running" in str(errors[0])
    assert manager.store.run_ids() == results  # the refused starts created nothing
    assert len(manager.active_run_ids()) == 1


def test_stop_checkpoints_and_resume_continues_the_same_run(manager, workspace):
    set_fake_mode(workspace, rate=200, hold_stop="release-stop")
    run_id = manager.create_run(fake_config(iters=100_000))
    wait_until(lambda: manager.describe(run_id)["step"] >= 5)
    assert manager.stop(run_id) == "stopping"
    # Idempotent while the trainer is still stopping (held until the test lets it finish;
    # a trainer that had already stopped would make a second stop a 409).
    assert manager.stop(run_id) == "stopping"
    (Path(workspace) / "release-stop").touch()
    wait_state(manager, run_id, "stopped")
    described = manager.describe(run_id)
    assert described["checkpoints"] >= 1 and described["resumable"]
    last_seq = described["last_seq"]
    with pytest.raises(ConfirmRequired):
        manager.resume(run_id, confirm=False)
    manager.resume(run_id, confirm=True)
    wait_until(lambda: manager.describe(run_id)["last_seq"] > last_seq + 3)
    rows = manager.store.metrics(run_id).rows_after(0)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))  # seq continued
    assert manager.store.read_record(run_id).resumes[0]["from_state"] == "stopped"
    manager.stop(run_id)
    wait_state(manager, run_id, "stopped")


def test_stop_kills_after_the_grace_period(workspace):
    manager = make_manager(workspace, stop_grace_seconds=0.5)
    set_fake_mode(workspace, mode="ignore_term", rate=100)
    run_id = manager.create_run(fake_config(iters=100_000))
    wait_until(lambda: manager.describe(run_id)["step"] >= 2)
    manager.stop(run_id)
    wait_state(manager, run_id, "stopped")
    exit_info = manager.store.read_record(run_id).exit
    assert exit_info["signal"] == "SIGKILL" and "grace period" in exit_info["reason"]


@pytest.mark.parametrize(
    "knobs,expected_state,reason_part",
    [
        ({"mode": "oom", "fail_at": 3}, "failed", "likely out of memory"),
        ({"mode": "fail", "fail_at": 3}, "failed", "exit code 1"),
        ({"mode": "bad_input"}, "failed", "bad input"),
        ({"mode": "diverge", "fail_at": 3}, "diverged", "NaN"),
    ],
)
def test_why_a_run_ended(manager, workspace, knobs, expected_state, reason_part):
    set_fake_mode(workspace, rate=500, **knobs)
    run_id = manager.create_run(fake_config())
    wait_state(manager, run_id, expected_state)
    wait_until(lambda: manager.store.read_record(run_id).exit is not None)
    described = manager.describe(run_id)
    assert reason_part in described["reason"] + described["exit"]["reason"]
    assert described["exit"]["log_tail"] or knobs["mode"] == "oom"


def test_resume_is_refused_without_a_checkpoint_or_from_a_final_state(manager, workspace):
    set_fake_mode(workspace, mode="fail", fail_at=2, rate=500)
    failed = manager.create_run(fake_config())
    wait_state(manager, failed, "failed")
    with pytest.raises(RunConflict, match="no checkpoint"):
        manager.resume(failed, confirm=True)
    set_fake_mode(workspace, rate=500)
    done = manager.create_run(fake_config(iters=5))
    wait_state(manager, done, "finished")
    with pytest.raises(RunConflict, match="finished.*larger budget"):
        manager.resume(done, confirm=True)


def test_a_finished_run_is_extended_with_a_larger_budget(manager, workspace):
    set_fake_mode(workspace, rate=500)
    run_id = manager.create_run(fake_config(iters=4, save_every=2))
    wait_state(manager, run_id, "finished")
    assert manager.describe(run_id)["extendable"] is True
    with pytest.raises(ConfigError, match="trained 4 steps"):
        manager.resume(run_id, confirm=True, iters=4)
    with pytest.raises(ConfirmRequired):
        manager.resume(run_id, confirm=False, iters=8)
    assert manager.describe(run_id)["state"] == "finished"  # nothing started
    manager.resume(run_id, confirm=True, iters=8)
    record = manager.store.read_record(run_id)
    assert record.cmdline[-3:] == ["--resume", "--iters", "8"]
    assert record.resumes[-1]["extend_to"] == 8 and record.resumes[-1]["from_state"] == "finished"
    wait_state(manager, run_id, "finished")
    wait_until(lambda: manager.describe(run_id)["step"] == 8)


def test_a_run_started_from_another_records_its_lineage(manager, workspace):
    set_fake_mode(workspace, rate=500)
    source = manager.create_run(fake_config(iters=4, save_every=2))
    wait_state(manager, source, "finished")
    child = manager.create_run(fake_config(init_from=source), start=False)
    lineage = manager.store.read_record(child).initialized_from
    assert lineage["run_id"] == source and lineage["checkpoint"] == "final"
    assert lineage["bundle"] == "step-00000004" and lineage["step"] == 4
    assert manager.describe(child)["initialized_from"] == lineage
    early = manager.create_run(fake_config(init_from=source, init_checkpoint="step-2"), start=False)
    assert manager.store.read_record(early).initialized_from["step"] == 2
    before = set(manager.store.run_ids())
    with pytest.raises(ConfigError) as bad:
        manager.create_run(fake_config(init_from="no-such-run"))
    assert [e.field for e in bad.value.errors] == ["init_from"]
    with pytest.raises(ConfigError) as bad:
        manager.create_run(fake_config(init_from=source, init_checkpoint="step-3"))
    assert [e.field for e in bad.value.errors] == ["init_checkpoint"]
    with pytest.raises(ConfigError) as bad:
        manager.create_run(fake_config(init_from=source, fine_tune_type="lora"))
    assert [e.field for e in bad.value.errors] == ["fine_tune_type"]
    other = workspace / "models" / "other"
    other.mkdir()
    (other / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as bad:
        manager.create_run(fake_config(init_from=source, model="models/other"))
    assert [e.field for e in bad.value.errors] == ["model"]
    assert set(manager.store.run_ids()) == before  # nothing created


def test_a_run_without_checkpoint_starts_again_from_step_0_only_when_confirmed(manager, workspace):
    set_fake_mode(workspace, mode="fail", fail_at=3, rate=500)
    run_id = manager.create_run(fake_config(save_every=1000))
    wait_state(manager, run_id, "failed")
    wait_until(lambda: manager.store.read_record(run_id).exit is not None)
    described = manager.describe(run_id)
    assert (described["resumable"], described["restartable"]) == (False, True)
    with pytest.raises(RunConflict, match=f"no checkpoint.*/api/runs/{run_id}/restart"):
        manager.resume(run_id, confirm=True)
    old_seq = described["last_seq"]
    with pytest.raises(ConfirmRequired, match="clears the run's metrics"):
        manager.restart(run_id, confirm=False)
    assert manager.describe(run_id)["state"] == "failed"  # nothing started

    set_fake_mode(workspace, rate=500)
    manager.restart(run_id, confirm=True)
    record = manager.store.read_record(run_id)
    assert record.cmdline[-1] == "--restart" and "--resume" not in record.cmdline
    assert record.resumes[-1]["restart"] is True and record.resumes[-1]["from_step"] is None
    assert record.resumes[-1]["from_state"] == "failed"
    wait_state(manager, run_id, "finished")
    rows = manager.store.metrics(run_id).rows_after(0)
    assert rows[0]["event"] == "run_start" and rows[0]["seq"] == old_seq + 1  # seq goes on
    assert [r["step"] for r in rows if r["event"] == "train"] == list(range(1, 201))
    described = manager.describe(run_id)
    assert (described["resumable"], described["restartable"]) == (False, False)
    # A finished run, or one with a checkpoint, never starts again from step 0.
    with pytest.raises(RunConflict, match="finished"):
        manager.restart(run_id, confirm=True)


def test_a_run_with_a_checkpoint_is_resumed_never_restarted(manager, workspace):
    set_fake_mode(workspace, rate=200)
    run_id = manager.create_run(fake_config(iters=100_000))
    wait_until(lambda: manager.describe(run_id)["step"] >= 3)
    with pytest.raises(RunConflict, match="running"):
        manager.restart(run_id, confirm=True)
    manager.stop(run_id)
    wait_state(manager, run_id, "stopped")
    assert manager.describe(run_id)["restartable"] is False
    with pytest.raises(RunConflict, match="has a checkpoint: resume it instead"):
        manager.restart(run_id, confirm=True)


def test_model_facts_for_the_form(manager, workspace):
    assert manager.model_facts("models/tiny") == {"quantization": None}
    quantized = workspace / "models" / "tiny-4bit"
    quantized.mkdir()
    quant = {"group_size": 32, "bits": 4, "mode": "affine"}
    (quantized / "config.json").write_text(json.dumps({"quantization": quant}))
    assert manager.model_facts("models/tiny-4bit") == {"quantization": quant}
    assert manager.model_facts(str(quantized)) == {"quantization": quant}
    for value in ("org/model", "", None, 3, "models"):
        assert manager.model_facts(value) is None


def test_delete_needs_confirm_and_is_refused_while_running(manager, workspace):
    set_fake_mode(workspace, rate=100)
    run_id = manager.create_run(fake_config(iters=100_000))
    with pytest.raises(ConfirmRequired):
        manager.delete(run_id, confirm=False)
    with pytest.raises(RunConflict, match="stop it"):
        manager.delete(run_id, confirm=True)
    manager.stop(run_id)
    wait_state(manager, run_id, "stopped")
    manager.delete(run_id, confirm=True)
    assert manager.store.run_ids() == []


def test_a_second_start_while_one_trains_is_refused(manager, workspace):
    set_fake_mode(workspace, rate=100)
    first = manager.create_run(fake_config(iters=100_000))
    with pytest.raises(RunConflict, match="queue"):
        manager.create_run(fake_config(iters=7))
    manager.stop(first)
    wait_state(manager, first, "stopped")


def test_queue_runs_one_after_another_and_failures_do_not_block(manager, workspace):
    # Every trainer fails at step 2, so a (one step) finishes and c fails: no mode switch
    # between them that the queue could outrun.
    set_fake_mode(workspace, mode="fail", fail_at=2, rate=500)
    manager.queue_pause()
    a = manager.create_run(fake_config(iters=1), queue=True)
    b = manager.create_run(fake_config(iters=11), queue=True)
    c = manager.create_run(fake_config(iters=12), queue=True)
    assert manager.queue_state()["run_ids"] == [a, b, c]
    manager.queue_reorder([c, a, b])
    manager.queue_remove(b)
    assert state(manager, b) == "created"
    with pytest.raises(QueueError, match="missing"):
        manager.queue_reorder([a])
    manager.queue_start()
    wait_state(manager, c, "failed")
    wait_state(manager, a, "finished")
    assert manager.queue_state()["run_ids"] == []


def test_stop_queue_on_failure(manager, workspace):
    manager.queue_settings(stop_on_failure=True)
    manager.queue_pause()
    set_fake_mode(workspace, mode="fail", fail_at=2, rate=500)
    a = manager.create_run(fake_config(iters=10), queue=True)
    b = manager.create_run(fake_config(iters=11), queue=True)
    manager.queue_start()
    wait_state(manager, a, "failed")
    wait_until(lambda: manager.queue_state()["paused"])
    assert state(manager, b) == "queued" and "failed" in manager.queue_state()["pause_reason"]


def test_a_waiting_queue_comes_back_paused(workspace):
    first = make_manager(workspace)
    first.queue_pause()
    run_id = first.create_run(fake_config(), queue=True)
    first.close()
    second = make_manager(workspace)
    second.detect(autodetect=True)
    queue = second.queue_state()
    assert queue["paused"] and queue["run_ids"] == [run_id]
    assert second.active_run_ids() == [] and state(second, run_id) == "queued"


def test_a_foreign_pid_is_never_signalled(manager, workspace):
    """PID reuse: run.json names a live process that is not the run's trainer."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_id = manager.create_run(fake_config(), start=False)
        record = manager.store.read_record(run_id)
        record.state, record.pid = "starting", victim.pid
        record.pid_create_time = psutil.Process(victim.pid).create_time()
        write_record(manager.store.paths(run_id), record)
        assert state(manager, run_id) == "interrupted"
        assert not manager.adopt_if_alive(run_id)
        with pytest.raises(RunConflict):
            manager.stop(run_id)
        assert victim.poll() is None  # still alive: never signalled
    finally:
        victim.kill()
        victim.wait()


def test_keep_awake_holds_caffeinate_for_the_trainer(workspace, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "caffeinate-args"
    fake = bin_dir / "caffeinate"
    fake.write_text(f'#!/bin/sh\necho "$@" > {record}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    set_fake_mode(workspace, rate=500)
    manager = make_manager(workspace, platform="darwin")
    run_id = manager.create_run(fake_config(iters=5))
    pid = manager.store.read_record(run_id).pid
    wait_until(lambda: record.exists() and record.read_text().strip())
    assert record.read_text().split() == ["-i", "-w", str(pid)]
    wait_state(manager, run_id, "finished")
    off = make_manager(workspace, platform="darwin", keep_awake=False)
    record.unlink()
    run_id = off.create_run(fake_config(iters=6))
    wait_state(off, run_id, "finished")
    assert not record.exists()


def test_children_are_reaped_and_the_token_stays_home(manager, workspace, monkeypatch):
    monkeypatch.setenv("MLX_CPT_TOKEN", "secret-token-value")
    set_fake_mode(workspace, rate=500)
    # Long enough to read its environment while it lives; then stopped and reaped.
    run_id = manager.create_run(fake_config(iters=100_000))
    pid = manager.store.read_record(run_id).pid
    # Before its exec a child still shows the parent's environment: wait for the trainer's.
    wait_until(lambda: FAKE_TRAINER in psutil.Process(pid).cmdline())
    environ = psutil.Process(pid).environ()
    assert "MLX_CPT_TOKEN" not in environ and "secret-token-value" not in str(
        psutil.Process(pid).cmdline()
    )
    manager.stop(run_id)
    wait_state(manager, run_id, "stopped")
    wait_until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() != "zombie")
    zombies = [c for c in psutil.Process().children() if c.status() == psutil.STATUS_ZOMBIE]
    assert zombies == []


def test_clone_rename_and_config(manager, workspace):
    source = manager.create_run(fake_config(iters=9), start=False, name="  base   run ")
    assert manager.store.read_record(source).name == "base run"
    clone = manager.clone(source, overrides={"iters": 12})
    assert manager.store.config_values(clone)["iters"] == 12
    assert manager.store.read_record(clone).cloned_from == source
    manager.rename(clone, "renamed")
    assert manager.describe(clone)["name"] == "renamed"
    with pytest.raises(ConfigError):
        manager.rename(clone, "   ")


def test_start_a_created_run(manager, workspace):
    set_fake_mode(workspace, rate=500)
    run_id = manager.create_run(fake_config(iters=4), start=False)
    assert state(manager, run_id) == "created"
    manager.start(run_id)
    wait_state(manager, run_id, "finished")
    with pytest.raises(RunConflict):
        manager.start(run_id)


def test_adopting_a_live_trainer_after_a_console_restart(workspace):
    set_fake_mode(workspace, rate=100)
    first = make_manager(workspace)
    run_id = first.create_run(fake_config(iters=100_000))
    pid = first.store.read_record(run_id).pid
    wait_until(lambda: first.describe(run_id)["step"] > 2)
    first.close()  # the console goes away; the trainer does not
    second = make_manager(workspace)
    decisions = {d.run_id: d.decision for d in second.detect(autodetect=True)}
    assert decisions[run_id] == "adopt" and second.active_run_ids() == [run_id]
    second.stop(run_id)
    wait_state(second, run_id, "stopped")
    # The first manager (its parent) reaps it; the second only watched it end.
    wait_until(lambda: not psutil.pid_exists(pid), message="the adopted trainer to be reaped")
    assert second.active_run_ids() == []


def _finished_run(store, run_id, train_rows=300):
    from training.contract.layout import RunRecord

    paths = store.create_run(RunRecord(run_id, run_id, 1.0, state="starting"), "iters: 50\n")
    rows = [{"seq": 1, "event": "run_start", "step": 0, "time": 1.0, "total_steps": 40}]
    rows.append({"seq": 2, "event": "status", "step": 0, "time": 1.0, "state": "running"})
    rows += [
        {"seq": i, "event": "train", "step": i, "time": 1.0 * i, "train_loss": 1.0 / i}
        for i in range(3, 3 + train_rows)
    ]
    end = 3 + train_rows
    rows.append({"seq": end, "event": "status", "step": end, "time": 9.0, "state": "finished"})
    paths.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def test_listing_runs_builds_no_metrics_index(manager):
    """The runs list reads the tail of each metrics file (cached by its size), never a full
    index: with more runs than the index cache holds, listing used to rebuild them all."""
    ids = [f"20260101-0000{i:02d}-aaaaaa" for i in range(40)]
    for run_id in ids:
        _finished_run(manager.store, run_id)
    runs = manager.list_runs()
    assert [r["run_id"] for r in runs] == sorted(ids, reverse=True)
    assert {(r["state"], r["step"], r["total_steps"], r["last_seq"]) for r in runs} == {
        ("finished", 302, 40, 303)
    }
    assert len(manager.store.metrics_cache._runs) == 0
    detail = manager.describe(ids[0])  # the run page's view: the same figures
    assert {k: detail[k] for k in runs[0]} == runs[-1] | {"run_id": ids[0], "name": ids[0]}


def test_one_unreadable_run_does_not_break_the_list(manager, monkeypatch):
    good, bad = "20260101-000001-aaaaaa", "20260101-000002-aaaaaa"
    _finished_run(manager.store, good)
    _finished_run(manager.store, bad)
    real = manager.store.summary

    def summary(run_id):
        if run_id == bad:
            raise OSError(5, "Input/output error")
        return real(run_id)

    monkeypatch.setattr(manager.store, "summary", summary)
    runs = {r["run_id"]: r for r in manager.list_runs()}
    assert runs[good]["state"] == "finished"
    assert runs[bad]["state"] == "unreadable" and "Input/output error" in runs[bad]["reason"]


def test_remote_reports_notify_only_on_first_contact_and_status(manager):
    """Train rows reach charts through the metrics stream; only a new run or a status
    change makes every client refresh the run."""
    notified = []
    manager.add_listener(notified.append)
    run_id = "20260202-000000-remote"

    def report(first, count, event="train", **extra):
        rows = [
            {"v": 1, "seq": s, "event": event, "time": 1.0, "step": s, **extra}
            for s in range(first, first + count)
        ]
        return manager.report_events(run_id, rows)

    report(1, 5)
    report(6, 5)
    report(11, 5)
    assert notified == [run_id]
    report(16, 1, event="status", state="finished")
    assert notified == [run_id, run_id]
    assert report(16, 1, event="status", state="finished")[0] == 0  # a retry: nothing new
    assert notified == [run_id, run_id]


def test_a_remote_run_without_checkpoint_is_not_restarted_here(manager):
    """Its config.yaml and its trainer are on the machine it ran on."""
    run_id = "20260202-000000-faraway"
    manager.report_events(
        run_id,
        [{"v": 1, "seq": 1, "event": "status", "time": 1.0, "step": 0, "state": "failed"}],
    )
    described = manager.describe(run_id)
    assert described["state"] == "failed" and described["restartable"] is False
    with pytest.raises(RunConflict, match="no config.yaml here"):
        manager.restart(run_id, confirm=True)
    assert manager.active_run_ids() == []


def test_start_up_reads_each_run_once_and_nothing_without_autodetect(workspace, monkeypatch):
    first = make_manager(workspace)
    first.queue_pause()
    queued = first.create_run(fake_config(), queue=True)
    created = [first.create_run(fake_config(iters=i), start=False) for i in (5, 6)]
    first.close()

    import training.console.manager as manager_module

    reads = []
    real = manager_module.RunStore.read_record
    monkeypatch.setattr(
        manager_module.RunStore, "read_record", lambda self, r: reads.append(r) or real(self, r)
    )
    scanning = make_manager(workspace)
    assert {d.run_id for d in scanning.detect(autodetect=True)} == {queued, *created}
    assert sorted(reads) == sorted([queued, *created])  # one read of each run.json
    reads.clear()
    quiet = make_manager(workspace)
    assert quiet.detect(autodetect=False) == [] and reads == []  # no start-up scan at all
    queue = quiet.queue_state()  # the queue comes back (paused) when first asked for
    assert queue["paused"] and queue["run_ids"] == [queued]


def _trainer_like(run_dir):
    """A process the process table takes for the run's trainer; SIGTERM ends it (code 0).
    Returned once its SIGTERM handler is installed: a stop before that would end it with
    -15 (the race this test once lost)."""
    code = (
        "import signal, sys, time;"
        " signal.signal(signal.SIGTERM, lambda *a: sys.exit(0));"
        " print('ready', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "training.continued_pretraining", "--run-dir", str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    with proc.stdout:  # it writes nothing more
        assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_trainer_whose_pid_was_never_recorded_is_adopted_and_stoppable(workspace):
    """The console died between spawning the trainer and recording its pid: the next one
    finds the trainer in the process table, follows it and can stop it."""
    first = make_manager(workspace)
    run_id = first.create_run(fake_config(), start=False)
    first.close()
    paths = first.store.paths(run_id)
    record = first.store.read_record(run_id)
    record.state = "starting"  # written before the spawn; the crash came before the pid
    first.store.write_record(record)
    trainer = _trainer_like(paths.root)
    try:
        console = make_manager(workspace)
        wait_until(lambda: console.trainers.get(run_id), 10, message="the trainer in the table")
        console.trainers.forget()
        [detection] = console.detect()
        assert detection.decision == "adopt" and "process table" in detection.reason
        assert state(console, run_id) == "starting"
        with pytest.raises(RunConflict):  # not resumable: it runs
            console.resume(run_id, confirm=True)
        assert console.stop(run_id) == "stopping"
        assert trainer.wait(timeout=10) == 0
        console.close()
    finally:
        trainer.kill()
        trainer.wait()


def test_a_command_line_trainer_counts_against_capacity_without_autodetect(workspace):
    """A trainer started from its own command line (no run.json) is listed as live and
    holds the machine: the console starts no second run beside it, even unscanned."""
    cli_run = Workspace(workspace).run("20260303-000000-cliiii")
    cli_run.root.mkdir(parents=True)
    trainer = _trainer_like(cli_run.root)
    try:
        console = make_manager(workspace)
        assert console.detect(autodetect=False) == []
        wait_until(lambda: console.trainers.get(cli_run.run_id), 10, message="the CLI trainer")
        console.trainers.forget()
        assert state(console, cli_run.run_id) == "starting"
        with pytest.raises(RunConflict, match=cli_run.run_id):
            console.create_run(fake_config())
        queued = console.create_run(fake_config(), queue=True)
        assert state(console, queued) == "queued"  # waits for the machine
        assert not (cli_run.run_json).exists()  # reading wrote nothing
        trainer.kill()
        trainer.wait()
        wait_until(lambda: state(console, cli_run.run_id) == "interrupted", 10)
        wait_until(lambda: state(console, queued) in ("starting", "running"), 10)
        assert console.stop(queued) == "stopping"
        wait_until(lambda: state(console, queued) == "stopped", 20)
        console.close()
    finally:
        trainer.kill()
        trainer.wait()


@pytest.mark.parametrize("damage", ["run.json wrong types", "metrics.jsonl FIFO"])
def test_a_damaged_run_reads_unreadable_and_only_delete_applies(manager, damage):
    good, bad = "20260101-000001-aaaaaa", "20260101-000002-aaaaaa"
    _finished_run(manager.store, good)
    paths = _finished_run(manager.store, bad)
    if damage.startswith("run.json"):
        paths.run_json.write_text(json.dumps({"name": "bad one", "exit": "boom", "pid": "7"}))
        says = "run.json has fields of the wrong type: pid must be"
    else:
        paths.metrics.unlink()
        os.mkfifo(paths.metrics)
        says = "metrics.jsonl is a FIFO"
    runs = {r["run_id"]: r for r in manager.list_runs()}
    assert runs[good]["state"] == "finished"
    assert runs[bad]["state"] == "unreadable" and says in runs[bad]["reason"]
    detail = manager.describe(bad)
    assert detail["state"] == "unreadable" and says in detail["reason"]
    assert not detail["resumable"] and manager.state(bad)[0] == "unreadable"
    for action in (
        lambda: manager.resume(bad, confirm=True),
        lambda: manager.start(bad),
        lambda: manager.queue_add(bad),
    ):
        with pytest.raises(RunConflict, match="unreadable"):
            action()
    if damage.startswith("run.json"):
        with pytest.raises(RunConflict, match="cannot be changed"):
            manager.rename(bad, "new name")
    manager.delete(bad, confirm=True)
    assert [r["run_id"] for r in manager.list_runs()] == [good]
