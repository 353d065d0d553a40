"""The columnar metrics index: incremental refresh, rows after a seq, downsampled
history with spikes, and what happens when the file is rewritten."""

from __future__ import annotations

import json

from training.contract.reading import MAX_LINE_BYTES
from training.metrics.store import MetricsCache, RunMetrics


def write(path, rows):
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def train(seq, loss=1.0):
    return {
        "v": 1,
        "seq": seq,
        "event": "train",
        "time": 1.0 * seq,
        "step": seq,
        "train_loss": loss,
    }


def test_incremental_refresh_and_rows_after(tmp_path):
    path = tmp_path / "metrics.jsonl"
    metrics = RunMetrics(path)
    assert metrics.refresh() == 0 and metrics.last_seq == 0
    write(path, [train(i) for i in range(1, 11)])
    assert metrics.refresh() == 10
    write(path, [train(11)])
    assert metrics.refresh() == 1
    assert [r["seq"] for r in metrics.rows_after(8)] == [9, 10, 11]
    assert [r["seq"] for r in metrics.rows_after(0, limit=2)] == [1, 2]
    assert metrics.rows_after(11) == []
    assert metrics.last("train")["seq"] == 11 and metrics.last("eval") is None


def test_half_written_line_waits_for_its_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    metrics = RunMetrics(path)
    text = json.dumps(train(1))
    path.write_text(text[:10])
    assert metrics.refresh() == 0
    with path.open("a") as f:
        f.write(text[10:] + "\n")
    assert metrics.refresh() == 1


def test_replayed_and_malformed_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, [train(1), train(2), train(2), {"event": "train"}])
    with path.open("a") as f:
        f.write("garbage\n")
    metrics = RunMetrics(path)
    metrics.refresh()
    assert metrics.count == 2
    assert metrics.malformed == 2  # no seq, not JSON


def test_nan_loss_is_indexed_and_kept_by_downsampling(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with path.open("w") as f:
        for i in range(1, 5001):
            loss = "NaN" if i == 2500 else "1.0"
            f.write(f'{{"seq": {i}, "event": "train", "step": {i}, "train_loss": {loss}}}\n')
    metrics = RunMetrics(path)
    metrics.refresh()
    assert metrics.count == 5000
    seqs = [r["seq"] for r in metrics.downsampled(50)]
    assert 2500 in seqs and len(seqs) <= 50


def test_downsampled_keeps_spikes_and_every_kind(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = []
    for i in range(1, 20_001):
        rows.append(train(i, 9.0 if i == 12_345 else 1.0))
    rows.append({"v": 1, "seq": 20_001, "event": "eval", "step": 20_000, "val_loss": 1.5})
    rows.append({"v": 1, "seq": 20_002, "event": "status", "step": 20_000, "state": "finished"})
    write(path, rows)
    metrics = RunMetrics(path)
    metrics.refresh()
    out = metrics.downsampled(100)
    kinds = {r["event"] for r in out}
    assert kinds == {"train", "eval", "status"}
    assert any(r["seq"] == 12_345 for r in out)
    assert sum(r["event"] == "train" for r in out) <= 100
    assert [r["seq"] for r in out] == sorted(r["seq"] for r in out)


def test_rewritten_file_is_reindexed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, [train(i) for i in range(1, 6)])
    metrics = RunMetrics(path)
    metrics.refresh()
    path.write_text("")
    write(path, [train(i) for i in range(1, 4)])
    metrics.refresh()
    assert metrics.count == 3 and metrics.last_seq == 3
    assert [r["seq"] for r in metrics.rows_after(0)] == [1, 2, 3]


def test_cache_is_bounded(tmp_path):
    cache = MetricsCache(capacity=2)
    for name in "abc":
        write(tmp_path / f"{name}.jsonl", [train(1)])
        assert cache.get(tmp_path / f"{name}.jsonl").count == 1
    assert len(cache._runs) == 2
    cache.close()


def test_fast_and_careful_paths_agree(tmp_path):
    """Clean blocks take the comprehension path, blocks with replays or bad lines the
    line-by-line one; offsets and last rows must come out the same either way."""
    clean, messy = tmp_path / "clean.jsonl", tmp_path / "messy.jsonl"
    rows = [
        train(i, loss=i / 7)
        if i % 5
        else {"seq": i, "event": "eval", "val_loss": 1.0 * i, "note": "x" * i}
        for i in range(1, 300)
    ]
    write(clean, rows)
    write(messy, rows[:100] + [rows[50]] + rows[100:])  # a replay forces the careful path
    with messy.open("a") as f:
        f.write("not json\n")
    a, b = RunMetrics(clean), RunMetrics(messy)
    a.refresh()
    b.refresh()
    assert a.count == b.count == 299 and b.malformed == 1
    assert a.rows_after(0) == b.rows_after(0) == rows
    assert a.last("eval") == b.last("eval") == rows[294]
    assert a.last("train") == rows[-1]


def test_an_evicted_index_still_serves_whoever_holds_it(tmp_path):
    """Eviction only forgets an index: a thread still holding it (a join, a history
    request) reads its rows, and asking again revives the same index, never a second."""
    cache = MetricsCache(capacity=1)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write(a, [train(i) for i in range(1, 6)])
    write(b, [train(1)])
    held = cache.get(a)
    cache.get(b)  # evicts a
    assert held.last_seq == 5 and [r["seq"] for r in held.rows_after(0)] == [1, 2, 3, 4, 5]
    assert cache.get(a) is held
    cache.close()


def test_a_seq_beyond_64_bits_is_a_malformed_line_not_a_broken_index(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, [train(1), train(2**63), train(3), train(4)])
    metrics = RunMetrics(path)
    metrics.refresh()
    assert metrics.malformed == 1 and metrics.count == 3
    assert [r["seq"] for r in metrics.rows_after(0)] == [1, 3, 4]
    assert metrics.downsampled(10)[-1]["seq"] == 4
    write(path, [train(5), {**train(6), "step": 2**70}])
    metrics.refresh()  # refreshes keep working
    assert [r["seq"] for r in metrics.rows_after(3)] == [4, 5, 6]


def test_rows_of_one_kind(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [
        train(i) if i % 3 else {"seq": i, "event": "eval", "val_loss": 1.0} for i in range(1, 10)
    ]
    write(path, rows)
    metrics = RunMetrics(path)
    metrics.refresh()
    assert [r["seq"] for r in metrics.rows_of("eval")] == [3, 6, 9]
    assert metrics.rows_of("status") == []


def test_overlong_lines_are_malformed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    huge = {**train(2), "pad": "x" * (MAX_LINE_BYTES + 10)}
    write(path, [train(1), huge, train(3)])
    metrics = RunMetrics(path)
    metrics.refresh()
    assert [r["seq"] for r in metrics.rows_after(0)] == [1, 3] and metrics.malformed == 1
    # Longer than the tailer's block too: skipped by the tailer, counted all the same.
    write(path, [{**train(4), "pad": "y" * (9 << 20)}, train(5)])
    metrics.refresh()
    assert [r["seq"] for r in metrics.rows_after(3)] == [5] and metrics.malformed == 2


def test_brackets_nested_too_deeply_are_malformed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, [train(1)])
    with path.open("a") as f:
        f.write('{"seq": 2, "a": ' + "[" * 100_000 + "\n" + '{"a":' * 50_000 + "\n")
    write(path, [train(3)])
    metrics = RunMetrics(path)
    metrics.refresh()
    assert [r["seq"] for r in metrics.rows_after(0)] == [1, 3] and metrics.malformed == 2


def test_a_seq_that_is_not_a_whole_number_in_the_row_is_malformed(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write(path, [train(1), {**train(2), "seq": "2"}, {**train(3), "seq": 3.0}, train(4)])
    metrics = RunMetrics(path)
    metrics.refresh()
    assert [r["seq"] for r in metrics.rows_after(0)] == [1, 4] and metrics.malformed == 2
