"""Durable file writes: the one way every process replaces a file.

A reader sees the old file or the new one, never half of one, and after a power loss the
rename itself survives: write a temp file (a name unique to this writer) in the same
folder, fsync it, rename it over the target, fsync the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from training.contract.reading import DamagedFile, open_dir, opened, split_path


def fsync_path(path: Path) -> None:
    """Make a file's data, or a folder's entries (a rename into it), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` (text is UTF-8) durably; `mode` sets the permissions
    before the file appears under its name (0o600 for secrets)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            # A failed write or fsync names no file: name it, so a "no space left" error
            # says where (contract/disk.py).
            exc.filename = str(path)
        raise
    fsync_path(path.parent)


def write_json_atomic(path: Path, data: Any, mode: int | None = None) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n", mode)


def is_temp_name(name: str) -> bool:
    """A write_atomic temp file left by a writer that died (.NAME.XXXX.tmp)."""
    return name.startswith(".") and name.endswith(".tmp")


def open_append(path: Path, root: Path | None = None) -> int:
    """A descriptor appending to the regular file `path` (created if missing), reached from
    `root` (default: its own folder) without following a link: a link could point
    anywhere, a FIFO would block. DamagedFile otherwise. The descriptor blocks again once
    open, as a child's stdout must."""
    folder, rel = split_path(path, root)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
    with opened(open_dir(folder, rel.parent)) as dir_fd:
        try:
            fd = os.open(rel.name, flags | getattr(os, "O_CLOEXEC", 0), 0o644, dir_fd=dir_fd)
        except FileNotFoundError:
            raise  # the folder is gone
        except OSError as exc:
            raise DamagedFile(
                str(rel), f"cannot be appended to ({exc.strerror or exc}): a link or no file"
            ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DamagedFile(str(rel), "is not a regular file: not appended to")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_bytes(path: Path, data: bytes, root: Path | None = None) -> None:
    """Append `data` to a regular file in one write (open_append's rules); when the write
    fails part way (a full disk), what it wrote is cut off again: no torn line stays."""
    fd = open_append(path, root)
    try:
        start = os.fstat(fd).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)
