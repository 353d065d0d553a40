"""queue.json: loading never writes; a waiting queue comes back paused."""

from __future__ import annotations

import json

import pytest

from training.console.run_queue import QueueError, RunQueue
from training.contract.errors import InputError


def test_load_never_writes_and_comes_back_paused(tmp_path):
    path = tmp_path / "queue.json"
    path.write_text(json.dumps({"order": ["a", "b"], "stop_on_failure": True}))
    mtime = path.stat().st_mtime_ns
    queue = RunQueue(path)
    assert queue.paused and queue.order == ["a", "b"] and queue.stop_on_failure
    assert queue.pop_next() is None  # paused: nothing starts
    assert path.stat().st_mtime_ns == mtime
    queue.resume()
    assert queue.pop_next() == "a"
    assert json.loads(path.read_text())["order"] == ["b"]


def test_empty_or_corrupt_queue(tmp_path):
    path = tmp_path / "queue.json"
    assert not RunQueue(path).paused
    path.write_text("{oops")
    assert RunQueue(path).order == []


def test_reorder_must_be_a_permutation(tmp_path):
    queue = RunQueue(tmp_path / "queue.json")
    for run_id in "abc":
        queue.add(run_id)
    queue.reorder(["c", "a", "b"])
    assert queue.order == ["c", "a", "b"]
    for bad, says in (
        (["a", "b"], "missing: c"),
        (["a", "b", "c", "c"], "listed twice: c"),
        (["a", "b", "x"], "not queued: x"),
    ):
        with pytest.raises(QueueError, match=says) as caught:
            queue.reorder(bad)
        assert isinstance(caught.value, InputError) and caught.value.field == "run_ids"
    assert queue.order == ["c", "a", "b"]


def test_orphans_join_in_memory_only(tmp_path):
    queue = RunQueue(tmp_path / "queue.json")
    queue.adopt_orphans(["z", "y"])
    assert queue.order == ["y", "z"] and queue.paused
    assert not (tmp_path / "queue.json").exists()
