"""The runs list's view of a metrics file: the newest row of each kind from its tail."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.contract.test_reading import within
from tests.metrics.test_store import train, write
from training.contract.reading import MAX_LINE_BYTES, DamagedFile
from training.metrics.store import RunMetrics
from training.metrics.summary import MetricsSummary


def status(seq, state="running"):
    return {"v": 1, "seq": seq, "event": "status", "time": 1.0 * seq, "step": 0, "state": state}


def test_summary_reads_the_last_row_of_each_kind_from_the_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    start = {"v": 1, "seq": 1, "event": "run_start", "time": 1.0, "step": 0, "total_steps": 9}
    # The run_start and status rows lie far before the tail (megabytes of train rows).
    rows = [start, status(2)] + [{**train(i), "pad": "x" * 200} for i in range(3, 20_000)]
    write(path, rows)
    with path.open("a") as f:
        f.write('{"seq": 20000, "event": "tr')  # half written: not yet a row
    summary = MetricsSummary(path)
    summary.refresh()
    assert summary.last("run_start") == start and summary.last("status") == status(2)
    assert summary.last("train") == rows[-1] and summary.last("eval") is None
    assert summary.last_seq == 19_999 and summary.last_time == 19_999.0
    index = RunMetrics(path)
    index.refresh()
    for kind in ("run_start", "status", "train", "eval"):
        assert summary.last(kind) == index.last(kind)

    # Appended rows are read forward from where the summary stopped, and only those.
    with path.open("a") as f:
        f.write('ain", "time": 1.0, "step": 1, "train_loss": 2.0}\n')
    write(path, [{"seq": 20_001, "event": "eval", "val_loss": 3.0, "time": 5.0}, status(20_002)])
    summary.refresh()
    assert summary.last("train")["seq"] == 20_000 and summary.last("eval")["val_loss"] == 3.0
    assert summary.last("status")["seq"] == 20_002 and summary.last_seq == 20_002

    # Rewritten (a new file at the path): read afresh.
    path.unlink()
    write(path, [train(1)])
    summary.refresh()
    assert summary.last_seq == 1 and summary.last("status") is None
    path.write_text("")
    summary.refresh()
    assert summary.last_seq == 0 and summary.last("train") is None


def test_a_line_over_a_block_followed_by_more_lines_ends_at_once(tmp_path):
    """A >1 MiB line used to send the backwards scan into an endless loop."""
    path = tmp_path / "metrics.jsonl"
    start = {"v": 1, "seq": 1, "event": "run_start", "time": 1.0, "step": 0}
    huge = {"seq": 3, "event": "train", "pad": "x" * (2 * MAX_LINE_BYTES)}
    near = {"seq": 4, "event": "eval", "val_loss": 2.0, "pad": "y" * (MAX_LINE_BYTES - 100)}
    write(path, [start, status(2), huge, near, train(5)])
    began = time.monotonic()
    summary = MetricsSummary(path)
    summary.refresh()
    assert time.monotonic() - began < 2
    assert summary.last("run_start") == start and summary.last("status") == status(2)
    assert summary.last("eval") == near  # long, but within the limit: read
    assert summary.last("train") == train(5) and summary.last_seq == 5
    # Appended: an overlong line, still unterminated, is passed over once its end comes.
    with path.open("a") as f:
        f.write('{"seq": 6, "event": "status", "pad": "' + "z" * (2 * MAX_LINE_BYTES))
    summary.refresh()
    summary.refresh()
    assert summary.last_seq == 5
    with path.open("a") as f:
        f.write('"}\n')
    write(path, [status(7, "finished")])
    summary.refresh()
    assert summary.last("status") == status(7, "finished") and summary.last_seq == 7
    # The same file read afresh: the same answers.
    again = MetricsSummary(path)
    again.refresh()
    assert again.last("status") == status(7, "finished") and again.last("run_start") == start


def test_the_scan_limit_bounds_a_tail_without_newlines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, [train(1)])
    with path.open("a") as f:
        f.write("x" * 5000)
    summary = MetricsSummary(path, block_size=512, scan_limit=4096)
    summary.refresh()
    assert summary.last_seq == 0  # nothing within the limit: nothing, and no endless scan
    with path.open("a") as f:
        f.write("\n")
    write(path, [train(2)])
    summary.refresh()
    assert summary.last_seq == 2


def test_a_fifo_or_a_link_is_refused(tmp_path):
    path = tmp_path / "metrics.jsonl"
    os.mkfifo(path)
    with pytest.raises(DamagedFile, match="FIFO"):
        within(5, MetricsSummary(path).refresh)
    path.unlink()
    (tmp_path / "secret").write_text(json.dumps(train(1)) + "\n")
    path.symlink_to(tmp_path / "secret")
    with pytest.raises(DamagedFile, match="symbolic link"):
        MetricsSummary(path).refresh()
