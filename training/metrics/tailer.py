"""Follow a JSON-lines file that another process appends to (the trainer's metrics.jsonl).

Only complete lines are ever returned: a line written in two chunks is one line, after
its newline (a half-written tail is "not yet", as TensorBoard's loader treats it).
Truncation and replacement (a new inode at the path) are detected; the old file is
drained first, then reading restarts at offset 0 of the new content. `EventTailer`
adds decoding, counts malformed lines, and drops rows whose `seq` was already seen, so
a restarted file neither loses nor repeats events.

Polling is a stat and a pread: cheap enough to run every 50 ms per followed file, and
unlike inotify/FSEvents it also works on network filesystems and in containers. Files are
opened through contract/reading.py (no link followed, only a regular file, never blocking)
and lines are bounded: a line over MAX_LINE_BYTES is malformed, skipped unread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from training.contract.reading import (
    MAX_LINE_BYTES,
    LineReader,
    iter_lines,
    open_file,
    opened,
    split_path,
)

# The first bytes of the file identify its content: if they change under the same
# inode, the file was truncated and rewritten between two polls.
_HEAD_BYTES = 64
DEFAULT_BLOCK = 8 << 20

_decoder = msgspec.json.Decoder()


def decode_event(raw: bytes) -> dict[str, Any] | None:
    """One JSON object per line, or None for a malformed line (one over MAX_LINE_BYTES
    included: no reader decodes megabytes of one line)."""
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        row = _decoder.decode(raw)
    except msgspec.DecodeError:
        # Python's json writes NaN/Infinity (a diverged loss); msgspec is strict JSON. They
        # read as null, as the trainer writes them: a browser's JSON.parse refuses NaN.
        try:
            row = json.loads(raw, parse_constant=lambda _name: None)
        except (ValueError, RecursionError):
            return None
    except RecursionError:  # brackets nested thousands deep: damage, not an event
        return None
    return row if isinstance(row, dict) else None


class JsonlTailer:
    """Complete lines of a growing file, with their byte offsets in the current file.

    `root` is the folder the file is reached from without following links (default: the
    file's own folder); a file that cannot be read safely raises DamagedFile (an OSError)
    from read_block, and reading resumes when a regular file is back."""

    def __init__(
        self,
        path: str | Path,
        block_size: int = DEFAULT_BLOCK,
        root: str | Path | None = None,
        max_line: int = MAX_LINE_BYTES,
    ):
        self.path = Path(path)
        self._root, self._rel = split_path(self.path, root)
        self.block_size = block_size
        self.max_line = max_line
        self.generation = 0  # bumps when the file is truncated or replaced
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._head = b""
        self._lines = LineReader(0, max_line)
        self._skipped_before = 0  # overlong lines of earlier files, for take_skipped
        self._skipped_taken = 0
        self._reset_pending = False

    @property
    def offset(self) -> int:
        """Just past the last complete line returned (or skipped as overlong)."""
        return self._lines.offset

    def take_skipped(self) -> int:
        """Overlong lines skipped since the last call (a reader counts them malformed)."""
        total = self._skipped_before + self._lines.skipped
        new, self._skipped_taken = total - self._skipped_taken, total
        return new

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
            return self.offset, b"", reset
        start, block = self._lines.read(self._fd, self._fstat_size(), max_bytes or self.block_size)
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
        if self._fd is not None or self.offset:
            return False
        try:
            fd = open_file(self._root, self._rel)
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
        self._fd, self._ident, self._head = fd, ident, head
        self._lines = LineReader(offset, self.max_line)
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
            # lstat: a link or a FIFO put at the name is another file, never followed.
            st = os.lstat(self.path)
        except FileNotFoundError:
            return self._take_reset()  # removed: keep reading what the descriptor still has
        if self._fd is None:
            self._open()
            return self._take_reset() or self.generation > 0
        if (st.st_dev, st.st_ino) != self._ident:
            # Drain the old file first: lines appended to it before the swap are not lost.
            if self._fstat_size() > self.offset and self._has_complete_line():
                return False
            self.close()
            self._restart()
            self._open()  # DamagedFile when the new file is not a regular one
            return self._take_reset()
        size = self._fstat_size()
        if size < self.offset or (self._head and self._head_changed()):
            self._restart()
            return self._take_reset()
        return self._take_reset()

    def _restart(self) -> None:
        """Offsets restart at 0 (a truncated or replaced file); the reset is reported with
        the next block, even when opening the new file fails first."""
        self._skipped_before += self._lines.skipped
        self._lines = LineReader(0, self.max_line)
        self._head = b""
        self.generation += 1
        self._reset_pending = True

    def _take_reset(self) -> bool:
        reset, self._reset_pending = self._reset_pending, False
        return reset

    def _open(self) -> None:
        fd = open_file(self._root, self._rel)
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)

    def _fstat_size(self) -> int:
        assert self._fd is not None
        return os.fstat(self._fd).st_size

    def _head_changed(self) -> bool:
        assert self._fd is not None
        return os.pread(self._fd, len(self._head), 0) != self._head

    def _has_complete_line(self) -> bool:
        assert self._fd is not None
        return b"\n" in os.pread(self._fd, self.block_size, self.offset)


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

    def __init__(self, path: str | Path, after_seq: int = 0, root: str | Path | None = None):
        self.lines = JsonlTailer(path, root=root)
        self.last_seq = after_seq
        self.malformed = 0

    def poll(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            lines, _reset = self.lines.read_lines()
            self.malformed += self.lines.take_skipped()
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


def read_events(path: str | Path, root: str | Path | None = None) -> Iterator[dict[str, Any]]:
    """Every complete, valid event of a JSON-lines file, streamed from its start (an
    unterminated last line is "not yet"); nothing when the file is missing. The file is
    reached from `root` (default: its own folder) without following links; DamagedFile when
    it cannot be read safely."""
    folder, rel = split_path(path, root)
    try:
        fd = open_file(folder, rel)
    except FileNotFoundError:
        return
    with opened(fd):
        for _offset, raw in iter_lines(fd):
            row = decode_event(raw) if raw.strip() else None
            if row is not None:
                yield row
