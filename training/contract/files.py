"""Durable file writes: the one way every process replaces a file.

A reader sees the old file or the new one, never half of one, and after a power loss the
rename itself survives: write a temp file (a name unique to this writer) in the same
folder, fsync it, rename it over the target, fsync the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


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
