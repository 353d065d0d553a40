"""Process verification (pid + start time + command line), never trusting a pid alone."""

from __future__ import annotations

import logging
import subprocess
import sys

import psutil
import pytest

from tests.helpers import wait_until
from training.console.detection import (
    TrainerTable,
    cmdline_names_run,
    detect_run,
    log_detection,
    verify_process,
)
from training.contract.layout import RunRecord, Workspace

# A process the process table takes for a trainer: it names the trainer module, and may
# hold a file of its run folder open, as the trainer holds metrics.jsonl.
HOLDS_OPEN = (
    "import sys, time; f = open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(60)"
)


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
    caplog.set_level(logging.INFO, logger="training.console.detection")
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


def _spawn(argv, cwd=None):
    return subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True)


@pytest.fixture
def procs():
    started = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_the_process_table_finds_trainers_run_json_does_not_name(paths, procs, tmp_path):
    runs_dir = paths.root.parent
    other = runs_dir / "20260101-000000-bbbbbb"
    other.mkdir()
    third = runs_dir / "20260101-000000-cccccc"
    third.mkdir()
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    module = "training.continued_pretraining"
    # Named by --run-dir (absolute), by a --run-dir relative to its working folder, by the
    # metrics file it holds open; and two that are not trainers of this workspace.
    procs.append(_spawn([*sleep, module, "--run-dir", str(paths.root)]))
    procs.append(_spawn([*sleep, module, f"--run-dir=runs/{other.name}"], cwd=runs_dir.parent))
    holder = _spawn([sys.executable, "-c", HOLDS_OPEN, str(third / "metrics.jsonl"), module])
    procs.append(holder)
    assert holder.stdout.readline().strip() == "ready"
    procs.append(_spawn([*sleep, "--run-dir", str(third)]))  # not the trainer
    procs.append(_spawn([*sleep, module, "--run-dir", str(tmp_path / "elsewhere" / "x")]))

    table = TrainerTable(runs_dir, ttl=0.0)
    found = wait_until(lambda: len(table.trainers()) == 3 and table.trainers(), 10)
    assert {run_id: p.pid for run_id, p in found.items()} == {
        paths.run_id: procs[0].pid,
        other.name: procs[1].pid,
        third.name: holder.pid,
    }
    procs[0].kill()
    procs[0].wait()
    assert table.get(paths.run_id) is None  # an ended trainer drops out before a re-read


def test_the_table_is_read_again_only_after_its_ttl(paths, procs):
    now = [0.0]
    table = TrainerTable(paths.root.parent, ttl=2.0, clock=lambda: now[0])
    assert table.trainers() == {}
    procs.append(
        _spawn(
            [
                sys.executable,
                "-c",
                "import time; time.sleep(60)",
                "training.continued_pretraining",
                "--run-dir",
                str(paths.root),
            ]
        )
    )
    # The command line reads empty while the child is between fork and exec.
    wait_until(lambda: psutil.Process(procs[0].pid).cmdline()[-1:] == [str(paths.root)], 10)
    assert table.trainers() == {}  # cached
    now[0] = 2.0
    assert table.get(paths.run_id).pid == procs[0].pid


def test_a_trainer_run_json_does_not_name_is_adopted(paths, trainer_like):
    # The console died between spawning the trainer and recording its pid.
    record = RunRecord(paths.run_id, "r", 1.0, state="starting")
    found = psutil.Process(trainer_like.pid)
    detection = detect_run(record, paths, None, found)
    assert detection.decision == "adopt" and detection.process is found
    assert "process table" in detection.reason and "no pid" in detection.reason
    assert detect_run(record, paths, None).decision == "interrupted"
    assert detect_run(record, paths, {"state": "stopped"}, found).decision == "final"
