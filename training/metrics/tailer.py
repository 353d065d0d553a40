"""Follow a JSON-lines file that another process appends to (the trainer's metrics.jsonl).

Only complete lines are ever returned: a line written in two chunks is one line, after
its newline (a half-written tail is "not yet", as TensorBoard's loader treats it).
Truncation and replacement (a new inode at the path) are detected; the old file is
drained first, then reading restarts at offset 0 of the new content. `EventTailer`
adds decoding, counts malformed lines, and drops rows whose `seq` was already seen, so
a restarted file neither loses nor repeats events.

Polling is a stat and a pread: cheap enough to run every 50 ms per followed file, and
unlike inotify/FSEvents it also works on network filesystems and in containers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

# The first bytes of the file identify its content: if they change under the same
# inode, the file was truncated and rewritten between two polls.
_HEAD_BYTES = 64
DEFAULT_BLOCK = 8 << 20

_decoder = msgspec.json.Decoder()


def decode_event(raw: bytes) -> dict[str, Any] | None:
    """One JSON object per line, or None for a malformed line."""
    try:
        row = _decoder.decode(raw)
    except msgspec.DecodeError:
        # Python's json writes NaN/Infinity (a diverged loss); msgspec is strict JSON.
        try:
            row = json.loads(raw)
        except ValueError:
            return None
    return row if isinstance(row, dict) else None


class JsonlTailer:
    """Complete lines of a growing file, with their byte offsets in the current file."""

    def __init__(self, path: str | Path, block_size: int = DEFAULT_BLOCK):
        self.path = Path(path)
        self.block_size = block_size
        self.generation = 0  # bumps when the file is truncated or replaced
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._head = b""
        self._offset = 0  # just past the last complete line returned

    @property
    def offset(self) -> int:
        return self._offset

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JsonlTailer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_block(self, max_bytes: int | None = None) -> tuple[int, bytes, bool]:
        """(offset, bytes of whole lines, reset): new complete lines as one block ending in
        a newline (empty when there is none yet). `reset` says the file was truncated or
        replaced since the last call, so offsets restarted at 0."""
        reset = self._check_file()
        if self._fd is None:
            return self._offset, b"", reset
        start = self._offset
        block = self._read_complete(max_bytes or self.block_size)
        if block and not self._head:
            self._head = os.pread(self._fd, _HEAD_BYTES, 0)
        return start, block, reset

    def read_lines(self, max_bytes: int | None = None) -> tuple[list[tuple[int, bytes]], bool]:
        """New complete lines as (offset, line without its newline), and the reset flag."""
        start, block, reset = self.read_block(max_bytes)
        return split_lines(start, block), reset

    def read_at(self, offset: int, length: int) -> bytes:
        """Bytes of the current file (for re-reading a line by its offset)."""
        if self._fd is None:
            return b""
        return os.pread(self._fd, length, offset)

    def resume(self, ident: tuple[int, int], offset: int, head: bytes) -> bool:
        """Continue after `offset` of the file whose (device, inode) and first bytes are
        these (an index saved earlier): False, and nothing changed, when the file is
        another one now, shorter, or begins differently."""
        if self._fd is not None or self._offset:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        st = os.fstat(fd)
        if (
            (st.st_dev, st.st_ino) != ident
            or st.st_size < offset
            or os.pread(fd, len(head), 0) != head
        ):
            os.close(fd)
            return False
        self._fd, self._ident, self._offset, self._head = fd, ident, offset, head
        return True

    @property
    def identity(self) -> tuple[tuple[int, int], bytes] | None:
        """(device, inode) and first bytes of the file being read (None before any)."""
        if self._ident is None or self._fd is None:
            return None
        return self._ident, self._head or os.pread(self._fd, _HEAD_BYTES, 0)

    def _check_file(self) -> bool:
        """Open, reopen after replacement, or rewind after truncation; True on a reset."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # removed: keep reading what the open descriptor still has
        ident = (st.st_dev, st.st_ino)
        if self._fd is None:
            self._open(ident)
            return self.generation > 0
        if ident != self._ident:
            # Drain the old file first: lines appended to it before the swap are not lost.
            if self._fstat_size() > self._offset and self._has_complete_line():
                return False
            self.close()
            self._open(ident)
            self.generation += 1
            return True
        size = self._fstat_size()
        if size < self._offset or (self._head and self._head_changed()):
            self._offset, self._head = 0, b""
            self.generation += 1
            return True
        return False

    def _open(self, ident: tuple[int, int]) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)
        self._ident = ident
        self._offset, self._head = 0, b""

    def _fstat_size(self) -> int:
        assert self._fd is not None
        return os.fstat(self._fd).st_size

    def _head_changed(self) -> bool:
        assert self._fd is not None
        return os.pread(self._fd, len(self._head), 0) != self._head

    def _has_complete_line(self) -> bool:
        assert self._fd is not None
        return b"\n" in os.pread(self._fd, self.block_size, self._offset)

    def _read_complete(self, max_bytes: int) -> bytes:
        assert self._fd is not None
        size = self._fstat_size()
        want = min(size - self._offset, max_bytes)
        if want <= 0:
            return b""
        data = os.pread(self._fd, want, self._offset)
        cut = data.rfind(b"\n")
        while cut < 0 and self._offset + len(data) < size:
            # One line longer than max_bytes: keep reading until its newline.
            more = os.pread(self._fd, max_bytes, self._offset + len(data))
            if not more:
                break
            data += more
            cut = data.rfind(b"\n")
        if cut < 0:
            return b""
        self._offset += cut + 1
        return data[: cut + 1]


def split_lines(start: int, block: bytes) -> list[tuple[int, bytes]]:
    """(offset, line) pairs of a block of whole lines; blank lines are skipped."""
    out: list[tuple[int, bytes]] = []
    pos = start
    for line in block.split(b"\n")[:-1]:
        stripped = line.rstrip(b"\r")
        if stripped.strip():
            out.append((pos, stripped))
        pos += len(line) + 1
    return out


class EventTailer:
    """Decoded events of a JSONL file: malformed lines skipped and counted, and rows
    whose `seq` is not above the last one seen dropped (a rewritten file's replay)."""

    def __init__(self, path: str | Path, after_seq: int = 0):
        self.lines = JsonlTailer(path)
        self.last_seq = after_seq
        self.malformed = 0

    def poll(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            lines, _reset = self.lines.read_lines()
            if not lines:
                return rows
            for _offset, raw in lines:
                row = decode_event(raw)
                if row is None:
                    self.malformed += 1
                    continue
                seq = row.get("seq")
                if isinstance(seq, int) and not isinstance(seq, bool):
                    if seq <= self.last_seq:
                        continue
                    self.last_seq = seq
                rows.append(row)

    def close(self) -> None:
        self.lines.close()


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete, valid event of a JSON-lines file, streamed from its start (an
    unterminated last line is "not yet"); nothing when the file is missing."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    return
                row = decode_event(raw)
                if row is not None:
                    yield row
    except FileNotFoundError:
        return
