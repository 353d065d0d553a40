"""Process verification (pid + start time + command line), never trusting a pid alone."""

from __future__ import annotations

import logging
import subprocess
import sys

import psutil
import pytest

from training.detection import cmdline_names_run, detect_run, log_detection, verify_process
from training.run_store import RunRecord, Workspace


@pytest.fixture
def paths(tmp_path):
    p = Workspace(tmp_path).run("20260101-000000-aaaaaa")
    p.root.mkdir(parents=True)
    return p


@pytest.fixture
def trainer_like(paths):
    """A live process whose command line names the run, like a real trainer's."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "--run-dir", str(paths.root)]
    )
    yield proc
    proc.kill()
    proc.wait()


def rec(paths, proc, **kw):
    return RunRecord(
        paths.run_id,
        "r",
        1.0,
        state="starting",
        pid=proc.pid,
        pid_create_time=psutil.Process(proc.pid).create_time(),
        **kw,
    )


def test_a_live_trainer_is_verified(paths, trainer_like):
    verdict = verify_process(rec(paths, trainer_like), paths)
    assert verdict.alive and verdict.process.pid == trainer_like.pid


def test_reused_pid_with_another_start_time_is_not_ours(paths, trainer_like):
    record = rec(paths, trainer_like)
    record.pid_create_time -= 3600
    verdict = verify_process(record, paths)
    assert not verdict.alive and "reused" in verdict.reason


def test_a_foreign_process_with_the_right_start_time_is_not_ours(paths):
    # This test process: alive, its own start time recorded, but not naming the run.
    me = psutil.Process()
    record = RunRecord(paths.run_id, "r", 1.0, pid=me.pid, pid_create_time=me.create_time())
    verdict = verify_process(record, paths)
    assert not verdict.alive and "another command" in verdict.reason


def test_a_gone_process(paths, trainer_like):
    record = rec(paths, trainer_like)
    trainer_like.kill()
    trainer_like.wait()
    assert "gone" in verify_process(record, paths).reason


def test_cmdline_must_name_this_run(paths):
    assert cmdline_names_run(["python", "--run-dir", str(paths.root)], paths)
    assert cmdline_names_run(["python", f"--run-dir={paths.root}"], paths)
    assert not cmdline_names_run(["python", "--run-dir", "/elsewhere/other"], paths)
    assert not cmdline_names_run(["python", str(paths.root)], paths)


def test_detect_decisions_and_one_log_line_each(paths, trainer_like, caplog):
    caplog.set_level(logging.INFO, logger="training.detection")
    decisions = [
        detect_run(rec(paths, trainer_like), paths, None),
        detect_run(RunRecord(paths.run_id, "r", 1.0, pid=999_999_999), paths, None),
        detect_run(RunRecord(paths.run_id, "r", 1.0, state="queued"), paths, None),
        detect_run(RunRecord(paths.run_id, "r", 1.0, pid=1), paths, {"state": "finished"}),
    ]
    assert [d.decision for d in decisions] == ["adopt", "interrupted", "queued", "final"]
    for d in decisions:
        log_detection(d)
    assert len(caplog.records) == 4
    assert all(paths.run_id in r.getMessage() for r in caplog.records)
