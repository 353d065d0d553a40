"""Safe reads of run-folder files: no link followed, only regular files, never blocking,
bounded sizes and lines (contract/reading.py)."""

from __future__ import annotations

import os
import pickle
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from training.contract import reading
from training.contract.reading import (
    DamagedFile,
    LineReader,
    file_kind,
    find_newline,
    is_real_dir,
    iter_lines,
    open_dir,
    open_file,
    opened,
    read_bytes,
    read_json,
    read_json_object,
    read_text,
    rfind_newline,
    tree_size,
)


def within(seconds: float, call: Callable[[], Any]) -> Any:
    """call() in a thread; fail (instead of hanging the suite) if it blocks."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for over {seconds} s"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A run-like folder with one of each thing a damaged folder may hold, and an
    outside folder its links point into."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("OUTSIDE-MARKER\n")
    run = tmp_path / "run"
    (run / "sub").mkdir(parents=True)
    (run / "file.txt").write_text("hello\n")
    (run / "sub" / "inner.json").write_text('{"a": 1}')
    (run / "link.txt").symlink_to(outside / "secret.txt")
    (run / "inner-link.txt").symlink_to("file.txt")  # even a link inside is refused
    (run / "dirlink").symlink_to(outside, target_is_directory=True)
    os.mkfifo(run / "fifo")
    return run


@pytest.mark.parametrize(
    ("rel", "says"),
    [
        ("link.txt", "is a symbolic link"),
        ("inner-link.txt", "is a symbolic link"),
        ("dirlink/secret.txt", "dirlink is a symbolic link"),
        ("fifo", "is a FIFO, not a regular file"),
        ("sub", "is a folder, not a regular file"),
        ("file.txt/x", "file.txt is a regular file, not a folder"),
    ],
)
def test_what_is_not_a_regular_file_below_the_root_is_refused(
    folder: Path, rel: str, says: str
) -> None:
    with pytest.raises(DamagedFile) as info:
        within(5, lambda: read_bytes(folder, rel))
    assert says in str(info.value) and str(info.value).startswith(rel.split("/")[0])
    assert isinstance(info.value, OSError)  # every `except OSError` treats it as unreadable
    assert "OUTSIDE" not in str(info.value)


def test_a_socket_is_refused_without_blocking(tmp_path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    path = tmp_path / "s"
    server.bind(str(path))
    try:
        with pytest.raises(DamagedFile, match="socket|cannot be opened"):
            within(5, lambda: read_bytes(tmp_path, "s"))
    finally:
        server.close()


def test_missing_stays_file_not_found_and_regular_files_read(folder: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_bytes(folder, "missing")
    with pytest.raises(FileNotFoundError):
        read_bytes(folder, "nowhere/x")
    assert read_text(folder, "file.txt") == "hello\n"
    assert read_json_object(folder, "sub/inner.json") == {"a": 1}
    # The root itself is trusted and may be reached through a link.
    alias = folder.parent / "alias"
    alias.symlink_to(folder, target_is_directory=True)
    assert read_text(alias, "file.txt") == "hello\n"


def test_paths_must_stay_inside(folder: Path) -> None:
    for bad in ("../outside/secret.txt", "/etc/passwd"):
        with pytest.raises(ValueError):
            read_bytes(folder, bad)


def test_sizes_text_and_json_are_checked(folder: Path) -> None:
    (folder / "big").write_bytes(b"x" * 101)
    with pytest.raises(DamagedFile, match="101 bytes, over the 100"):
        read_bytes(folder, "big", limit=100)
    assert read_bytes(folder, "big", limit=101) == b"x" * 101
    (folder / "latin1").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DamagedFile, match="not UTF-8 text"):
        read_text(folder, "latin1")
    (folder / "deep").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DamagedFile, match="not valid JSON"):
        read_json(folder, "deep")
    (folder / "list").write_text("[1, 2]")
    with pytest.raises(DamagedFile, match="does not hold a JSON object"):
        read_json_object(folder, "list")
    (folder / "torn").write_text('{"step": 2, "to')
    with pytest.raises(DamagedFile, match="not valid JSON"):
        read_json_object(folder, "torn")


def test_damaged_file_pickles_and_names_the_file() -> None:
    exc = DamagedFile("checkpoints/latest.json", "is a FIFO")
    again = pickle.loads(pickle.dumps(exc))
    assert (again.file, again.problem, str(again)) == (exc.file, exc.problem, str(exc))


def test_open_dir_and_kinds(folder: Path) -> None:
    with opened(open_dir(folder, "sub")) as fd:
        assert sorted(os.listdir(fd)) == ["inner.json"]
    with pytest.raises(DamagedFile, match="dirlink is a symbolic link"):
        open_dir(folder, "dirlink")
    assert [file_kind(folder, n) for n in ("sub", "file.txt", "fifo", "link.txt", "x")] == [
        "dir",
        "file",
        "other",
        "other",
        None,
    ]
    assert is_real_dir(folder, "sub") and not is_real_dir(folder, "dirlink")
    assert file_kind(folder, "dirlink/secret.txt") is None  # a link on the way


def test_tree_size_never_follows_links(folder: Path) -> None:
    size = tree_size(folder.parent, folder.name)
    assert size == len("hello\n") + len('{"a": 1}')  # not the outside file, not the FIFO
    assert tree_size(folder, "dirlink") == 0


def _write_lines(path: Path, *lines: bytes, tail: bytes = b"") -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines) + tail)


def test_iter_lines_skips_overlong_lines_and_the_unterminated_tail(tmp_path: Path) -> None:
    path = tmp_path / "m"
    long = b"y" * 3000
    _write_lines(path, b"one", long, b"", b"two", tail=b"half")
    with opened(open_file(tmp_path, "m")) as fd:
        got = list(iter_lines(fd, max_line=1000))
    assert got == [(0, b"one"), (3005, b""), (3006, b"two")]
    with opened(open_file(tmp_path, "m")) as fd:
        assert [line for _, line in iter_lines(fd, max_line=3000)][1] == long


class CountingPread:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        real = os.pread

        def pread(fd: int, n: int, offset: int) -> bytes:
            data = real(fd, n, offset)
            self.bytes += len(data)
            return data

        monkeypatch.setattr(reading.os, "pread", pread)


def test_line_reader_skips_an_overlong_line_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m"
    _write_lines(path, b"a", tail=b"z" * 5000)  # an overlong line, still being written
    reads = CountingPread(monkeypatch)
    reader = LineReader(0, max_line=1000)
    with opened(open_file(tmp_path, "m")) as fd:
        size = os.fstat(fd).st_size
        assert reader.read(fd, size, 64) == (0, b"a\n")
        assert reader.read(fd, size, 64) == (2, b"")
        before = reads.bytes
        assert reader.read(fd, size, 64) == (2, b"")
        assert reads.bytes == before  # the overlong line is not read again
    with path.open("ab") as f:
        f.write(b"zz\nb\n")
    with opened(open_file(tmp_path, "m")) as fd:
        size = os.fstat(fd).st_size
        before = reads.bytes
        assert reader.read(fd, size, 64) == (5005, b"b\n")
        assert reads.bytes - before < 64  # only what was appended
    assert reader.skipped == 1


def test_line_reader_returns_a_line_longer_than_a_block_within_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "m"
    _write_lines(path, b"x" * 500, b"next")
    reader = LineReader(0, max_line=1000)
    with opened(open_file(tmp_path, "m")) as fd:
        size = os.fstat(fd).st_size
        assert reader.read(fd, size, 64) == (0, b"x" * 500 + b"\n")
        assert reader.read(fd, size, 64) == (501, b"next\n")


def test_newline_search(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"ab\ncd\nef")
    with opened(open_file(tmp_path, "m")) as fd:
        assert find_newline(fd, 0, 8, block=2) == 2 and find_newline(fd, 6, 8) == -1
        assert rfind_newline(fd, 8, block=2) == 5 and rfind_newline(fd, 5, block=2) == 2
        assert rfind_newline(fd, 5, floor=3) == -1 and rfind_newline(fd, 2) == -1
