"""metrics.jsonl events and the HTTP reporter (a real server on a loopback port)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers import wait_until
from tests.trainer_helpers import EventCollector
from training.contract.protocol import EVENTS, TOKEN_ENV
from training.metrics.tailer import read_events
from training.metrics.writer import (
    HttpReporter,
    TrainingMetricsLogger,
    read_last_seq,
    repair_torn_tail,
)


def test_every_event_has_the_common_keys_and_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with TrainingMetricsLogger(path) as log:
        log.emit("run_start", 0, total_steps=3)
        log.emit("train", 1, train_loss=2.5, trained_tokens=10)
        log.status(1, "stopped", "bye")
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    for seq, row in enumerate(rows, start=1):
        assert {"v", "seq", "event", "time", "step"} <= set(row)
        assert row["seq"] == seq and row["event"] in EVENTS
    assert rows[1]["train_loss"] == 2.5 and rows[2]["state"] == "stopped"


def test_seq_continues_across_reopen_and_a_torn_tail_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with TrainingMetricsLogger(path) as log:
        for step in range(3):
            log.emit("train", step, train_loss=1.0)
    with path.open("a") as f:  # a writer killed mid-line
        f.write('{"v":1,"seq":4,"event":"tr')
    assert read_last_seq(path) == 3
    with TrainingMetricsLogger(path) as log:
        event = log.emit("eval", 3, val_loss=1.0)
    assert event["seq"] == 4
    assert [r["seq"] for r in read_events(path)] == [1, 2, 3, 4]
    assert not repair_torn_tail(path)  # nothing left to repair


def test_seq_continues_after_a_cleared_file(tmp_path: Path) -> None:
    """--restart removes metrics.jsonl; the run's seq still only grows (readers follow it)."""
    path = tmp_path / "metrics.jsonl"
    with TrainingMetricsLogger(path, first_seq=41) as log:
        assert log.emit("status", 0, state="running", message="restarted")["seq"] == 42
    with TrainingMetricsLogger(path, first_seq=7) as log:  # the file's own seq is higher
        assert log.emit("train", 1, train_loss=1.0)["seq"] == 43


def test_non_finite_values_become_null_and_unknown_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with TrainingMetricsLogger(path) as log:
        log.emit("train", 1, train_loss=float("nan"), grad_norm=float("inf"))
        with pytest.raises(ValueError):
            log.emit("trian", 1)
        with pytest.raises(ValueError):
            log.warning(1, "nonsense", "x")
    row = json.loads(path.read_text())
    assert row["train_loss"] is None and row["grad_norm"] is None


def test_disabled_logger_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    log = TrainingMetricsLogger(path, enabled=False)
    assert log.emit("train", 1)["seq"] == 1
    log.close()
    assert not path.exists()


def test_console_modules_do_not_import_mlx() -> None:
    """The console lists checkpoints and reads event names without ever loading MLX."""
    code = (
        "import sys, training.contract.checkpoints, training.metrics.writer, training.console;"
        "sys.exit(1 if any(m == 'mlx' or m.startswith('mlx.') for m in sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_reporter_posts_the_same_events_batched_with_the_token_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    server = EventCollector(fail_first=2)  # retried with backoff until the console answers
    try:
        reporter = HttpReporter(server.url)
        with TrainingMetricsLogger(tmp_path / "m.jsonl", reporter=reporter) as log:
            for step in range(25):
                log.emit("train", step, train_loss=1.0)
        wait_until(lambda: len(server.events()) == 25, timeout=20, message="all events posted")
        assert server.events() == list(read_events(tmp_path / "m.jsonl"))
        assert all(h["Authorization"] == "Bearer s3cret" for h in server.headers)
        assert len(server.bodies) < 25  # batched
    finally:
        server.close()


def test_reporter_never_blocks_and_drops_oldest_when_the_console_is_gone() -> None:
    reporter = HttpReporter("http://127.0.0.1:9/api/callbacks/x", token="t", max_queue=10)
    for i in range(1000):  # put never waits: a full queue loses its oldest event
        reporter.put({"seq": i})
    # At most a queue's worth waits and one batch (drawn from the queue) is in flight.
    assert reporter.dropped >= 1000 - 2 * 10
    reporter.close(timeout=2)


def test_reporter_rejects_a_non_http_url() -> None:
    with pytest.raises(ValueError):
        HttpReporter("file:///etc/passwd")
