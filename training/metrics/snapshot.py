"""A saved copy of a run's metrics index (metrics/store.py RunMetrics), so a console that
starts again does not read a million-row metrics.jsonl from the start to draw its charts.

One file per metrics file in the workspace's cache (never in a run folder): a JSON header
line, then the index's columns as raw bytes. It is only ever a shortcut: the index trusts
it while the metrics file is the same file (device, inode, first bytes) holding the last
indexed line at its recorded offset, and reads only what was appended since. Anything else
(a damaged, foreign or stale snapshot) is ignored and the file is indexed from the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import zlib
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.contract.files import write_atomic
from training.contract.reading import read_bytes

# A snapshot of a million-row index is about 50 MB; a larger file is not one of ours.
MAX_SNAPSHOT_BYTES = 1 << 30

VERSION = 1
SUFFIX = ".idx"


def snapshot_file(directory: Path, metrics_path: Path) -> Path:
    """Where the snapshot of one metrics file lives (named by a hash of its path)."""
    digest = hashlib.sha256(str(metrics_path).encode()).hexdigest()[:32]
    return directory / f"{digest}{SUFFIX}"


def write_snapshot(path: Path, header: dict[str, Any], columns: Sequence[array[Any]]) -> None:
    """Header + columns, replaced atomically: readers see all or nothing."""
    body = [column.tobytes() for column in columns]
    meta = {
        **header,
        "v": VERSION,
        "byteorder": sys.byteorder,
        "typecodes": [column.typecode for column in columns],
        "sizes": [len(b) for b in body],
        "crc": [zlib.crc32(b) for b in body],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(meta).encode() + b"\n" + b"".join(body))


def read_snapshot(path: Path) -> tuple[dict[str, Any], list[array[Any]]] | None:
    """(header, columns), or None for a missing, damaged or foreign snapshot."""
    try:
        # Never a link, a FIFO or a runaway file: the cache is a folder anyone may damage.
        data = read_bytes(path.parent, path.name, MAX_SNAPSHOT_BYTES)
    except OSError:
        return None
    cut = data.find(b"\n")
    try:
        header = json.loads(data[:cut])
        if header.get("v") != VERSION or header.get("byteorder") != sys.byteorder:
            return None
        columns: list[array[Any]] = []
        pos = cut + 1
        layout = zip(header["typecodes"], header["sizes"], header["crc"], strict=True)
        for code, size, crc in layout:
            chunk = data[pos : pos + size]
            if len(chunk) != size or zlib.crc32(chunk) != crc:
                return None
            column = array(code)
            column.frombytes(chunk)
            columns.append(column)
            pos += size
    except (ValueError, TypeError, KeyError):
        return None
    return header, columns


def remove_snapshot(directory: Path, metrics_path: Path) -> None:
    with contextlib.suppress(OSError):
        snapshot_file(directory, metrics_path).unlink()
