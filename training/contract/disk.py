"""A full disk, told plainly: which folder, how much space is left and how much was needed.

The OS says ENOSPC or EDQUOT, MLX only "[write] Unable to write N bytes to file." Every
process maps both to DiskFull here, so the trainer's status event, its exit code, the
console's HTTP 507 and the command lines all say the same thing (DESIGN.md "Metrics
events", "Exit codes").
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The status event's `reason` for a run that failed for lack of space.
DISK_FULL_REASON = "disk_full"
# MLX's writer raises RuntimeError with no errno: this message and nothing else.
_MLX_WRITE_FAILED = re.compile(r"\[write\] Unable to write (\d+) bytes")


def free_bytes(path: str | Path) -> int | None:
    """Bytes a writer may still use on the filesystem of `path` (or of its nearest
    existing parent); None when the OS cannot say."""
    for candidate in (Path(path), *Path(path).parents):
        try:
            st = os.statvfs(candidate)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
        return st.f_bavail * st.f_frsize
    return None


def format_bytes(n: int) -> str:
    """1588180 -> '1.6 MB' (decimal units, as the trainer's progress lines print)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def disk_full_message(
    path: str | Path, free: int | None, needed: int | None = None, what: str = ""
) -> str:
    """'disk full: 49152 bytes free in /runs/x (49.2 kB); the checkpoint needs about
    1652000 bytes (1.7 MB)': the folder, the space left and the space needed."""
    left = "an unknown number of" if free is None else str(free)
    text = f"disk full: {left} bytes free in {path}"
    if free is not None and free >= 1000:
        text += f" ({format_bytes(free)})"
    if needed is not None:
        text += f"; {what or 'the write'} needs about {needed} bytes ({format_bytes(needed)})"
    return text


class DiskFull(OSError):
    """A write that did not fit: an OSError with errno ENOSPC (whoever maps ENOSPC maps
    this too) that names the folder, the bytes left and, when known, the bytes needed."""

    def __init__(
        self,
        path: str | Path,
        free: int | None,
        needed: int | None = None,
        what: str = "",
        hint: str = "",
    ) -> None:
        self.path = str(path)
        self.free_bytes = free
        self.needed_bytes = needed
        self.what = what
        self.hint = hint
        super().__init__(errno.ENOSPC, self.message, self.path)

    @property
    def message(self) -> str:
        text = disk_full_message(self.path, self.free_bytes, self.needed_bytes, self.what)
        return f"{text}. {self.hint}" if self.hint else text

    def __str__(self) -> str:
        return self.message

    def remeasure(self) -> DiskFull:
        """Measure the space left again (after the partial files were removed)."""
        self.free_bytes = free_bytes(self.path)
        return self

    def event_fields(self) -> dict[str, Any]:
        """The keys a `status` event adds for it (DESIGN.md "Metrics events")."""
        return {
            "reason": DISK_FULL_REASON,
            "needed_bytes": self.needed_bytes,
            "free_bytes": self.free_bytes,
            "path": self.path,
        }


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(
    exc: BaseException,
    path: str | Path | None = None,
    needed: int | None = None,
    what: str = "",
    hint: str = "",
) -> DiskFull | None:
    """`exc` as a DiskFull when it is one: ENOSPC/EDQUOT, or MLX's bare "[write] Unable to
    write N bytes" while the disk is in fact full (call it before the partial files are
    removed). `path`: the folder being written (else the one the error names). None for
    any other error."""
    if isinstance(exc, DiskFull):
        return exc
    if path is None:
        filename = getattr(exc, "filename", None)
        path = Path(os.fsdecode(filename)).parent if filename else Path.cwd()
    if is_disk_full(exc):
        return DiskFull(path, free_bytes(path), needed, what, hint)
    if isinstance(exc, RuntimeError):
        match = _MLX_WRITE_FAILED.search(str(exc))
        free = free_bytes(path)
        # MLX says neither why nor where: an I/O error counts as a full disk only when
        # the space left could not have taken the write.
        if match and free is not None and free < max(int(match.group(1)), needed or 0):
            return DiskFull(path, free, needed, what, hint)
    return None


@contextlib.contextmanager
def disk_errors(path: str | Path, needed: int | None = None, what: str = "") -> Iterator[None]:
    """Turn a write into `path` that failed for lack of space into DiskFull, measured
    while the partial files still hold their space; other errors pass unchanged."""
    try:
        yield
    except DiskFull:
        raise
    except (OSError, RuntimeError) as exc:
        full = disk_full_error(exc, path, needed, what)
        if full is None:
            raise
        raise full from exc


def check_space(path: str | Path, needed: int, what: str, hint: str = "") -> None:
    """DiskFull before writing `needed` bytes into `path` when they cannot fit."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise DiskFull(path, free, needed, what, hint)
