"""The runs list's view of a metrics file: the newest row of each kind from its tail."""

from __future__ import annotations

from tests.metrics.test_store import train, write
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
