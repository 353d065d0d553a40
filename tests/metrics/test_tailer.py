"""The JSONL follower: whole lines only, truncation and replacement without loss or
repeat, malformed lines counted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.contract.test_reading import within
from training.contract.reading import MAX_LINE_BYTES, DamagedFile
from training.metrics.tailer import EventTailer, JsonlTailer, decode_event, read_events


def line(seq: int, **extra) -> str:
    return json.dumps({"v": 1, "seq": seq, "event": "train", "step": seq, **extra}) + "\n"


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(text)


def test_missing_file_then_created(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tailer = EventTailer(path)
    assert tailer.poll() == []
    append(path, line(1))
    assert [r["seq"] for r in tailer.poll()] == [1]


def test_a_line_written_in_two_chunks_is_one_event_after_its_newline(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tailer = EventTailer(path)
    text = line(1, train_loss=2.5)
    append(path, text[:17])
    assert tailer.poll() == []
    append(path, text[17:-1])
    assert tailer.poll() == []  # still no newline: "not yet"
    append(path, "\n")
    rows = tailer.poll()
    assert len(rows) == 1 and rows[0]["train_loss"] == 2.5
    assert tailer.poll() == []


def test_many_lines_in_one_write_and_blank_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, line(1) + "\n" + line(2) + line(3))
    assert [r["seq"] for r in EventTailer(path).poll()] == [1, 2, 3]


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, line(1) + "{not json\n" + "[1, 2]\n" + line(2))
    tailer = EventTailer(path)
    assert [r["seq"] for r in tailer.poll()] == [1, 2]
    assert tailer.malformed == 2


def test_truncation_restarts_without_repeating(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, line(1) + line(2) + line(3))
    tailer = EventTailer(path)
    assert len(tailer.poll()) == 3
    path.write_text(line(1) + line(2) + line(3) + line(4))  # truncated and rewritten
    assert [r["seq"] for r in tailer.poll()] == [4]


def test_truncation_to_a_shorter_file_keeps_following(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, line(1) + line(2) + line(3))
    tailer = EventTailer(path)
    tailer.poll()
    path.write_text("")
    assert tailer.poll() == []
    append(path, line(4))
    assert [r["seq"] for r in tailer.poll()] == [4]


def test_replacement_drains_the_old_file_first(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, line(1))
    tailer = EventTailer(path)
    assert [r["seq"] for r in tailer.poll()] == [1]
    # The writer appends a last line to the old file, then a new file takes its place.
    with path.open("a") as old:
        old.write(line(2))
        replacement = tmp_path / "metrics.jsonl.new"
        replacement.write_text(line(1) + line(2) + line(3))
        os.replace(replacement, path)
        old.write(line(99))  # still reaches the old inode only
    rows = tailer.poll()
    assert [r["seq"] for r in rows] == [2, 99]  # old file drained, new file's 1..3 not repeated
    append(path, line(100))
    assert [r["seq"] for r in tailer.poll()] == [100]


def test_offsets_point_at_the_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, line(1) + line(2))
    with JsonlTailer(path) as tailer:
        lines, reset = tailer.read_lines()
        assert not reset
        for offset, raw in lines:
            assert tailer.read_at(offset, len(raw)) == raw


def test_nan_is_read_like_python_writes_it():
    row = decode_event(b'{"seq": 1, "train_loss": NaN, "grad_norm": -Infinity}')
    assert row == {"seq": 1, "train_loss": None, "grad_norm": None}  # as JSON can carry them
    assert decode_event(b"[]") is None
    assert decode_event(b"{") is None


def test_crlf_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line(1).replace("\n", "\r\n").encode())
    assert [r["seq"] for r in EventTailer(path).poll()] == [1]


def test_read_events_streams_whole_valid_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, "".join(line(i) for i in range(1, 501)) + "not json\n[1, 2]\n")
    append(path, line(501)[:10])  # a half-written last line: not yet
    assert [r["seq"] for r in read_events(path)] == list(range(1, 501))
    assert list(read_events(tmp_path / "missing")) == []


def test_an_overlong_line_is_malformed_and_skipped_unread(tmp_path):
    path = tmp_path / "metrics.jsonl"
    big = json.dumps({"seq": 2, "event": "train", "pad": "x" * (2 * MAX_LINE_BYTES)}) + "\n"
    append(path, line(1) + big + line(3))
    tailer = EventTailer(path)
    assert [r["seq"] for r in tailer.poll()] == [1, 3]
    assert tailer.malformed == 1
    # Within a block larger than the limit, an overlong line is malformed all the same.
    assert decode_event(big[:-1].encode()) is None
    assert [r["seq"] for r in read_events(path)] == [1, 3]


def test_links_and_fifos_are_refused_without_blocking(tmp_path):
    secret = tmp_path / "secret.jsonl"
    secret.write_text(line(1, marker="OUTSIDE"))
    path = tmp_path / "metrics.jsonl"
    path.symlink_to(secret)
    tailer = EventTailer(path)
    with pytest.raises(DamagedFile, match="symbolic link"):
        within(5, tailer.poll)
    with pytest.raises(DamagedFile, match="symbolic link"):
        within(5, lambda: list(read_events(path)))
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(DamagedFile, match="FIFO"):
        within(5, tailer.poll)
    with pytest.raises(DamagedFile, match="FIFO"):
        within(5, lambda: list(read_events(path)))
    # A regular file back at the name is followed again.
    path.unlink()
    append(path, line(1) + line(2))
    assert [r["seq"] for r in tailer.poll()] == [1, 2]


def test_a_followed_file_replaced_by_a_link_stops_there_and_resets_after(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, line(1) + line(2))
    lines = JsonlTailer(path)
    assert len(lines.read_lines()[0]) == 2
    secret = tmp_path / "secret"
    secret.write_text(line(3) * 3)
    path.unlink()
    path.symlink_to(secret)
    with pytest.raises(DamagedFile):
        lines.read_lines()
    path.unlink()
    path.write_text(line(7))
    got, reset = lines.read_lines()
    assert reset and [offset for offset, _ in got] == [0]  # offsets restart with the new file


def test_brackets_nested_too_deeply_are_a_malformed_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append(path, line(1) + "[" * 100_000 + "\n" + '{"a":' * 50_000 + "\n" + line(2))
    tailer = EventTailer(path)
    assert [r["seq"] for r in tailer.poll()] == [1, 2] and tailer.malformed == 2
