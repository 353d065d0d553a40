"""Saved metrics indexes: a new index of the same file starts from the saved copy and
reads only what was appended; a copy of another file, a rewritten file or a damaged copy
is ignored, and the index is built from the file as if there were none."""

from __future__ import annotations

import json
import os

import pytest

import training.metrics.store as metrics_store
from tests.metrics.test_store import train, write
from training.metrics.snapshot import read_snapshot, snapshot_file
from training.metrics.store import MetricsCache, RunMetrics

ROWS = 50


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch):
    # The real threshold (100k rows) only decides when saving pays off.
    monkeypatch.setattr(metrics_store, "SNAPSHOT_MIN_ROWS", 20)


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "runs" / "r1" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    rows = [train(i, loss=10.0 if i == 7 else 1.0 / i) for i in range(1, ROWS + 1)]
    rows.insert(5, {"v": 1, "seq": 0, "event": "bogus"})  # malformed: counted
    write(path, rows)
    return path, tmp_path / "cache" / "metrics"


def view(metrics):
    return (
        metrics.count,
        metrics.last_seq,
        metrics.malformed,
        metrics.downsampled(10),
        metrics.rows_after(ROWS - 3),
        metrics.last("train"),
    )


def test_a_saved_index_is_picked_up_and_only_appended_rows_are_read(run, monkeypatch):
    path, saved = run
    first = RunMetrics(path, saved)
    first.refresh()
    assert snapshot_file(saved, path).is_file()
    expected = view(first)

    read = []
    real = RunMetrics._index_block
    monkeypatch.setattr(
        RunMetrics,
        "_index_block",
        lambda self, start, block: read.append(block) or real(self, start, block),
    )
    second = RunMetrics(path, saved)
    assert second.refresh() == 0 and read == []  # nothing read again
    assert view(second) == expected

    write(path, [train(ROWS + 1), train(ROWS + 2)])
    assert second.refresh() == 2
    assert b"".join(read).count(b"\n") == 2
    assert second.last_seq == ROWS + 2 and second.count == expected[0] + 2


def test_a_copy_is_ignored_when_the_file_is_another_one(run):
    path, saved = run
    RunMetrics(path, saved).refresh()
    plain = RunMetrics(path)  # no saved copy: built from the file
    plain.refresh()
    expected = view(plain)
    for _ in range(3):
        fresh = RunMetrics(path, saved)
        fresh.refresh()
        assert view(fresh) == expected

    # Replaced (a new inode with the same text): read from the start.
    text = path.read_bytes()
    path.unlink()
    path.write_bytes(text)
    replaced = RunMetrics(path, saved)
    assert replaced.refresh() == expected[0]

    # Rewritten in place with other rows (same inode, same first bytes): the last
    # indexed line is not where the copy says.
    RunMetrics(path, saved).refresh()
    with path.open("r+b") as f:
        f.truncate(0)
    write(path, [train(i, loss=2.0) for i in range(1, 30)])
    rewritten = RunMetrics(path, saved)
    assert rewritten.refresh() == 29 and rewritten.last("train")["train_loss"] == 2.0


def test_a_damaged_or_foreign_copy_is_ignored(run):
    path, saved = run
    RunMetrics(path, saved).refresh()
    file = snapshot_file(saved, path)
    data = bytearray(file.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the columns
    file.write_bytes(bytes(data))
    assert read_snapshot(file) is None
    damaged = RunMetrics(path, saved)
    assert damaged.refresh() == ROWS

    header, _, body = file.read_bytes().partition(b"\n")
    meta = json.loads(header)
    meta["byteorder"] = "big" if meta["byteorder"] == "little" else "little"
    file.write_bytes(json.dumps(meta).encode() + b"\n" + body)
    assert read_snapshot(file) is None
    file.write_bytes(b"not a snapshot")
    assert RunMetrics(path, saved).refresh() == ROWS


def test_closing_saves_what_grew_and_dropping_a_run_removes_its_copy(run):
    path, saved = run
    cache = MetricsCache(capacity=2, snapshot_dir=saved)
    metrics = cache.get(path)
    write(path, [train(ROWS + 1)])
    metrics.refresh()  # below the next save threshold: not saved yet
    metrics.close()
    header, _ = read_snapshot(snapshot_file(saved, path))
    assert header["count"] == ROWS + 1
    cache.drop(path)
    assert not snapshot_file(saved, path).exists()
    assert os.listdir(saved) == []
