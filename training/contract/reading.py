"""Reading run-folder files defensively: the one way every reader opens what a trainer, a
remote trainer, a copied folder or a person may have left in a run folder.

A run folder is data, not trusted: anything may sit at a file's name. So every read here
- walks from the root's descriptor one name at a time with O_NOFOLLOW: a symbolic link
  anywhere below the root is refused, never followed, and there is no check-then-open
  race (each step opens relative to the descriptor of the step before);
- opens with O_NONBLOCK and reads only regular files (fstat): a FIFO, socket or device in
  a file's place never blocks a thread and is never read;
- is bounded: whole-file reads have a size limit, line reads a line limit (a longer line
  is malformed: skipped, its end searched for without keeping its bytes, and never
  searched for twice).

What cannot be read that way is a DamagedFile: an OSError (so every `except OSError`
already treats it as unreadable) naming the file, relative to the root, and what is
wrong with it. A missing file stays FileNotFoundError: that is normal, not damage. The
root itself (a run folder Workspace.existing_run found to be a real folder, or a
trainer's --run-dir) is trusted and opened as given.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

# A metrics line is a few hundred bytes; a megabyte is damage, not data.
MAX_LINE_BYTES = 1 << 20
# run.json, state.json, latest.json, config.yaml, adapter_config.json: kilobytes each.
MAX_RECORD_BYTES = 4 << 20
DEFAULT_BLOCK = 1 << 20

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_STEP_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC


class DamagedFile(OSError):
    """A file that is not read: a link, not a regular file, over its size bound, not
    valid text or JSON, or with fields of the wrong type. `file` is its path relative to
    the folder it was read from; str() says what is wrong."""

    def __init__(self, file: str, problem: str) -> None:
        super().__init__(f"{file} {problem}")
        self.file = file
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.file, self.problem))


def describe_mode(mode: int) -> str:
    """What a file is, in words, for an error message."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "not a regular file"


def _names(rel: str | PurePath) -> list[str]:
    parts = [p for p in PurePath(rel).parts if p not in ("", ".")]
    if PurePath(rel).is_absolute() or ".." in parts:
        raise ValueError(f"{rel!s} must be a path inside the folder, without '..'")
    return parts


def _open_step(dir_fd: int, name: str, shown: str, *, directory: bool) -> int:
    """Open one name inside dir_fd, never following a link, never blocking; the result is
    a folder (directory) or a regular file, else DamagedFile."""
    try:
        fd = os.open(name, _STEP_FLAGS | (os.O_DIRECTORY if directory else 0), dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _why_not(dir_fd, name, shown, directory, exc) from None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not (stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode)):
        os.close(fd)
        wanted = "a folder" if directory else "a regular file"
        raise DamagedFile(shown, f"is {describe_mode(mode)}, not {wanted}: not read")
    return fd


def _why_not(dir_fd: int, name: str, shown: str, directory: bool, exc: OSError) -> DamagedFile:
    try:
        mode: int | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISLNK(mode):
        return DamagedFile(shown, "is a symbolic link: links in a run folder are not followed")
    if mode is not None and directory and not stat.S_ISDIR(mode):
        return DamagedFile(shown, f"is {describe_mode(mode)}, not a folder: not read")
    if mode is not None and not directory and not stat.S_ISREG(mode):
        return DamagedFile(shown, f"is {describe_mode(mode)}, not a regular file: not read")
    return DamagedFile(shown, f"cannot be opened: {exc.strerror or exc}")


def open_dir(root: str | Path, rel: str | PurePath = "") -> int:
    """A descriptor of the folder root/rel, walked from root without following links."""
    names = _names(rel)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | _CLOEXEC)
    try:
        for i, name in enumerate(names):
            shown = "/".join(names[: i + 1])
            next_fd = _open_step(fd, name, shown, directory=True)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(root: str | Path, rel: str | PurePath) -> int:
    """A descriptor of the regular file root/rel (read-only, non-blocking), walked from root
    without following links. FileNotFoundError when it is not there, DamagedFile when it
    is not a regular file or a link is in the way."""
    names = _names(rel)
    if not names:
        raise ValueError("name a file inside the folder")
    dir_fd = open_dir(root, PurePath(*names[:-1]) if len(names) > 1 else "")
    try:
        return _open_step(dir_fd, names[-1], "/".join(names), directory=False)
    finally:
        os.close(dir_fd)


def open_file_at(dir_fd: int, name: str, shown: str | None = None) -> int:
    """open_file for one name inside an open folder."""
    return _open_step(dir_fd, name, shown or name, directory=False)


def open_dir_at(dir_fd: int, name: str, shown: str | None = None) -> int:
    """open_dir for one name inside an open folder."""
    return _open_step(dir_fd, name, shown or name, directory=True)


@contextmanager
def opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def split_path(path: str | Path, root: str | Path | None = None) -> tuple[Path, PurePath]:
    """(root, path relative to it); the root defaults to the file's own folder."""
    path = Path(path)
    if root is None:
        return path.parent, PurePath(path.name)
    return Path(root), path.relative_to(root)


# -- whole files ------------------------------------------------------------------------------


def read_fd(fd: int, limit: int, shown: str) -> bytes:
    """All of an open regular file, at most `limit` bytes (DamagedFile beyond)."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise DamagedFile(shown, f"is {size} bytes, over the {limit} bytes it may hold: not read")
    chunks: list[bytes] = []
    total = 0
    try:
        while total <= limit:
            chunk = os.pread(fd, min(limit + 1 - total, DEFAULT_BLOCK), total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise DamagedFile(shown, f"cannot be read: {exc.strerror or exc}") from None
    if total > limit:  # it grew while read
        raise DamagedFile(shown, f"is over the {limit} bytes it may hold: not read")
    return b"".join(chunks)


def read_bytes(root: str | Path, rel: str | PurePath, limit: int = MAX_RECORD_BYTES) -> bytes:
    with opened(open_file(root, rel)) as fd:
        return read_fd(fd, limit, str(PurePath(rel)))


def decode_text(data: bytes, shown: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DamagedFile(shown, f"is not UTF-8 text (byte {exc.start}): not read") from None


def decode_json(data: bytes, shown: str) -> Any:
    try:
        return json.loads(decode_text(data, shown))
    except ValueError as exc:
        raise DamagedFile(shown, f"is not valid JSON ({exc}): not read") from None
    except RecursionError:  # thousands of nested brackets
        raise DamagedFile(shown, "is not valid JSON (nested too deeply): not read") from None


def read_text(root: str | Path, rel: str | PurePath, limit: int = MAX_RECORD_BYTES) -> str:
    """A UTF-8 text file: DamagedFile when it is not one, or over `limit` bytes."""
    return decode_text(read_bytes(root, rel, limit), str(PurePath(rel)))


def read_json(root: str | Path, rel: str | PurePath, limit: int = MAX_RECORD_BYTES) -> Any:
    return decode_json(read_bytes(root, rel, limit), str(PurePath(rel)))


def read_json_object(
    root: str | Path, rel: str | PurePath, limit: int = MAX_RECORD_BYTES
) -> dict[str, Any]:
    data = read_json(root, rel, limit)
    if not isinstance(data, dict):
        raise DamagedFile(str(PurePath(rel)), "does not hold a JSON object: not read")
    return data


def read_json_followed(path: str | Path, limit: int = MAX_RECORD_BYTES) -> Any:
    """A JSON file outside run folders (a model's config.json): links are followed, as
    model folders are often made of them (the Hugging Face cache), but only a regular file
    is read, never blocking, at most `limit` bytes."""
    shown = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise DamagedFile(shown, f"cannot be opened: {exc.strerror or exc}") from None
    with opened(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DamagedFile(shown, "is not a regular file: not read")
        return decode_json(read_fd(fd, limit, shown), shown)


def read_json_object_at(dir_fd: int, name: str, shown: str, limit: int = MAX_RECORD_BYTES) -> Any:
    with opened(open_file_at(dir_fd, name, shown)) as fd:
        data = decode_json(read_fd(fd, limit, shown), shown)
    if not isinstance(data, dict):
        raise DamagedFile(shown, "does not hold a JSON object: not read")
    return data


# -- folders ----------------------------------------------------------------------------------


def file_kind(root: str | Path, rel: str | PurePath) -> str | None:
    """What root/rel is, walked without following links: "dir", "file" or "other" (a
    link, FIFO, device...); None when it is not there or a link is on the way."""
    names = _names(rel)
    if not names:
        return "dir"
    try:
        with opened(open_dir(root, PurePath(*names[:-1]) if len(names) > 1 else "")) as fd:
            mode = os.stat(names[-1], dir_fd=fd, follow_symlinks=False).st_mode
    except OSError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def is_real_dir(root: str | Path, rel: str | PurePath) -> bool:
    """root/rel is a folder, reached without a link (final/ may not lead elsewhere)."""
    return file_kind(root, rel) == "dir"


def tree_size(root: str | Path, rel: str | PurePath, max_entries: int = 100_000) -> int:
    """Bytes of the regular files under root/rel; links are neither followed nor counted,
    and at most max_entries entries are looked at (a size is a hint, not an inventory)."""
    try:
        top = open_dir(root, rel)
    except OSError:
        return 0
    total, seen = 0, 0
    stack = [top]
    try:
        while stack and seen < max_entries:
            fd = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        seen += 1
                        if entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                        elif entry.is_dir(follow_symlinks=False):
                            try:
                                stack.append(open_dir_at(fd, entry.name))
                            except OSError:
                                continue
            except OSError:
                pass
            finally:
                os.close(fd)
    finally:
        for fd in stack:
            os.close(fd)
    return total


# -- lines ------------------------------------------------------------------------------------


def find_newline(fd: int, start: int, end: int, block: int = DEFAULT_BLOCK) -> int:
    """Offset of the first newline in [start, end) of an open file, or -1; reads a block at
    a time and keeps nothing."""
    pos = start
    while pos < end:
        chunk = os.pread(fd, min(block, end - pos), pos)
        if not chunk:
            break
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i
        pos += len(chunk)
    return -1


def rfind_newline(fd: int, before: int, floor: int = 0, block: int = DEFAULT_BLOCK) -> int:
    """Offset of the last newline in [floor, before) of an open file, or -1."""
    pos = before
    while pos > floor:
        start = max(floor, pos - block)
        chunk = os.pread(fd, pos - start, start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i
        if len(chunk) < pos - start:
            break
        pos = start
    return -1


class LineReader:
    """Whole lines of a growing file from an offset, in blocks, with bounded memory.

    `offset` is just past the last whole line returned or skipped. A line longer than
    `max_line` is malformed: it is skipped (counted in `skipped`) and never held in memory;
    its end is searched for from where the previous search stopped, so a huge line that is
    still being written is read once, not once per call."""

    def __init__(self, offset: int = 0, max_line: int = MAX_LINE_BYTES) -> None:
        self.offset = offset
        self.max_line = max_line
        self.skipped = 0
        self._scan: int | None = None  # inside an overlong line: where its end is looked for

    def skip_line_at(self, position: int) -> None:
        """`position` lies inside an overlong line: resume after its end."""
        self._scan = position

    def read(self, fd: int, size: int, max_bytes: int) -> tuple[int, bytes]:
        """(offset, whole lines ending in a newline) of about max_bytes; b"" when no whole
        line is there yet. A line longer than max_bytes (within max_line) comes alone."""
        while True:
            if self._scan is not None:
                end = find_newline(fd, self._scan, size)
                if end < 0:
                    self._scan = max(self._scan, size)
                    return self.offset, b""
                self.offset, self._scan = end + 1, None
                self.skipped += 1
            start = self.offset
            want = min(size - start, max_bytes)
            if want <= 0:
                return start, b""
            data = os.pread(fd, want, start)
            cut = data.rfind(b"\n")
            if cut < 0 and len(data) <= self.max_line and start + len(data) < size:
                # One line longer than a block: read on to its end, up to the limit.
                data += os.pread(fd, self.max_line + 1 - len(data), start + len(data))
                cut = data.find(b"\n")
            if cut >= 0:
                self.offset = start + cut + 1
                return start, data[: cut + 1]
            if len(data) <= self.max_line:
                return start, b""  # an unterminated last line: not yet
            self._scan = start + len(data)


def iter_lines(
    fd: int, start: int = 0, max_line: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its newline) of every whole line of an open file from
    `start`; lines over max_line are skipped, an unterminated last line is "not yet"."""
    reader = LineReader(start, max_line)
    size = os.fstat(fd).st_size
    while True:
        offset, block = reader.read(fd, size, max_line)
        if not block:
            return
        for line in block.split(b"\n")[:-1]:
            yield offset, line
            offset += len(line) + 1
