"""A run's metrics as CSV (training/metrics/csv_export.py): one row per event of
metrics.jsonl, the union of their keys as columns, the numbers exactly as the file has
them, streamed in blocks with memory that does not grow with the file."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

from training.metrics.csv_export import LEADING, MetricsCsv
from training.metrics.writer import TrainingMetricsLogger


def read_csv(table: MetricsCsv) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO("".join(table))))
    return rows[0], rows[1:]


def json_text(value: Any) -> str:
    """What the CSV must hold for a value of the file (null: an empty cell)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_one_row_per_event_with_every_key_and_the_same_numbers(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with TrainingMetricsLogger(path) as log:
        log.emit("run_start", 0, versions={"mlx": "0.32"}, eval_sets=["general"], model="m")
        for step in range(1, 6):
            log.emit("train", step, train_loss=1 / 3 + step, learning_rate=1e-5, grad_norm=None)
        log.emit("eval", 5, val_loss=2.25, val_general_loss=3.0000000000000004, val_ppl=9.5)
        log.emit("checkpoint", 5, path="checkpoints/step-00000005", size=123, val_loss=None)
        log.warning(5, "loss_spike", 'a "spike", at step 5\nsee the chart', value=9.0)
        log.status(5, "finished", "trained, 5 steps")
    with path.open("a") as f:  # damage: a malformed line, a line without its newline yet
        f.write("not json\n")
        f.write('{"seq": 99, "event": "train"')
    events = [json.loads(line) for line in path.read_text().splitlines()[:-2]]

    header, rows = read_csv(MetricsCsv(path))
    assert len(rows) == len(events) == 10
    assert header[: len(LEADING)] == list(LEADING)
    assert set(header) == {key for event in events for key in event}
    for event, row in zip(events, rows, strict=True):
        cells = dict(zip(header, row, strict=True))
        for key in header:
            assert cells[key] == json_text(event.get(key)), (key, cells[key], event.get(key))
    # The numbers read back are the file's numbers, to the last bit.
    train = [dict(zip(header, r, strict=True)) for r in rows if r[1] == "train"]
    assert [float(r["train_loss"]) for r in train] == [1 / 3 + s for s in range(1, 6)]


def test_a_missing_file_is_a_header_only_table(tmp_path: Path) -> None:
    table = MetricsCsv(tmp_path / "metrics.jsonl")
    assert table.columns == [] and "".join(table) == "\n"


def test_streamed_in_blocks_with_bounded_memory(tmp_path: Path) -> None:
    """100,000 rows (about 25 MB of JSON): the text comes in many chunks, and the memory
    Python holds at any moment stays a small fraction of the file (it does not grow with
    it: a million rows take the same)."""
    path = tmp_path / "metrics.jsonl"
    line = (
        '{"v":1,"seq":%d,"event":"train","time":1796000000.125,"step":%d,"train_loss":%r,'
        '"learning_rate":0.0001,"tokens_per_second":1234.5,"trained_tokens":%d,'
        '"peak_memory":1.25,"grad_norm":0.5,"eta_seconds":100.0,"elapsed_seconds":%r}\n'
    )
    with path.open("w") as f:
        for i in range(1, 100_001):
            f.write(line % (i, i, 3.0 / (1 + i * 1e-4), i * 512, i * 0.3))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        table = MetricsCsv(path)
        chunks = rows = 0
        for chunk in table:
            chunks += 1
            rows += chunk.count("\n")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == 100_001 and chunks > 10  # the header, then every row
    assert peak < size / 5, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
