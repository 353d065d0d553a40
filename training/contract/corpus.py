"""Corpus discovery and reading: which files make a corpus, and their documents.

A corpus is a .txt/.md file, a .jsonl file with a `text` field per line, a folder
of those (read recursively, in sorted order so a corpus reads the same everywhere),
or an mlx-lm data folder (train.jsonl / valid.jsonl). Every problem is a CorpusError
whose message says what is wrong and how to fix it. The held-out split lives here too:
the trainer and the evaluation worker must agree on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.contract.errors import InputError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl",)
# A file with a NUL byte in its first block is binary, not text.
_SNIFF_BYTES = 8192


class CorpusError(InputError):
    """A corpus that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class CorpusFiles:
    """The files of a corpus, and the separate validation file(s) if the layout has them."""

    root: Path
    train: tuple[Path, ...]
    valid: tuple[Path, ...] = ()

    def fingerprint(self) -> str:
        """Changes whenever any file's path, size or modification time changes."""
        both = f"{files_fingerprint(self.train)}:{files_fingerprint(self.valid)}"
        return hashlib.sha256(both.encode()).hexdigest()[:16]


def files_fingerprint(files: Iterable[Path]) -> str:
    """The identity of a list of files without reading them: path, inode, size, and the
    modification and change times (ctime changes with any write, and cannot be set back),
    so any edit, replacement or touch changes it."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(
            f"{f.resolve()}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode()
        )
    return h.hexdigest()[:32]


def find_corpus(path: str | Path) -> CorpusFiles:
    """Resolve a corpus path into its files; CorpusError when there is nothing usable."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(f"corpus not found: {root}; give a text file or a folder of text files")
    if root.is_file():
        _check_suffix(root)
        return CorpusFiles(root, (root,))
    if not root.is_dir():
        raise CorpusError(f"{root} is neither a file nor a folder")
    train, valid = root / "train.jsonl", root / "valid.jsonl"
    if train.is_file():  # mlx-lm's layout
        return CorpusFiles(root, (train,), (valid,) if valid.is_file() else ())
    files = tuple(
        sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    )
    if not files:
        raise CorpusError(
            f"no text files in {root}; add .txt, .md or .jsonl files (with a 'text' field)"
        )
    return CorpusFiles(root, files)


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() not in TEXT_SUFFIXES + JSONL_SUFFIXES:
        raise CorpusError(
            f"{path}: unsupported file type '{path.suffix}'; use .txt, .md or .jsonl "
            "(one JSON object with a 'text' field per line)"
        )


RawFn = Callable[[bytes], None]


def read_documents(files: tuple[Path, ...] | list[Path]) -> Iterator[str]:
    """Yield the non-empty documents of the files: a text file is one document, a
    .jsonl line with a non-empty `text` is one document."""
    for path in files:
        yield from read_file_documents(path)


def file_kind(path: Path) -> str:
    return "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "text"


def read_file_documents(path: Path, raw: RawFn | None = None) -> Iterator[str]:
    """The documents of one file; `raw` is given every byte read, as read (to hash the
    file while it is parsed, without encoding the documents again). A .jsonl file is
    streamed line by line."""
    if file_kind(path) == "jsonl":
        yield from _read_jsonl(path, raw)
        return
    data = _read_bytes(path)
    if raw is not None:
        raw(data)
    text = _decode(path, data)
    if text.strip():
        yield text


def _unreadable(path: Path, exc: OSError) -> CorpusError:
    if isinstance(exc, PermissionError):
        return CorpusError(f"{path}: permission denied; make the file readable")
    return CorpusError(f"{path}: cannot read ({exc.strerror})")


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None
    if b"\0" in data[:_SNIFF_BYTES]:
        raise CorpusError(f"{path}: looks binary (contains NUL bytes); give plain UTF-8 text")
    return data


def _not_utf8(path: Path, line: int) -> CorpusError:
    return CorpusError(
        f"{path}: not UTF-8 (invalid byte at line {line}); convert it, e.g. "
        f"`iconv -f latin1 -t utf-8 {path.name}`"
    )


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data[: exc.start].count(b"\n") + 1) from None


def _read_jsonl(path: Path, raw: RawFn | None) -> Iterator[str]:
    try:
        f = path.open("rb")
    except OSError as exc:
        raise _unreadable(path, exc) from None
    with f:
        try:
            if b"\0" in f.read(_SNIFF_BYTES):
                raise CorpusError(
                    f"{path}: looks binary (contains NUL bytes); give plain UTF-8 text"
                )
            f.seek(0)
            number = 0
            for data in f:
                if raw is not None:
                    raw(data)
                number += 1
                try:
                    line = data.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise _not_utf8(path, number) from None
                # (old Mac line ends: a bare CR never occurs inside valid JSON)
                for part in line.split("\r") if "\r" in line.rstrip("\r\n") else (line,):
                    text = _document(path, number, part)
                    if text is not None:
                        yield text
        except OSError as exc:
            raise _unreadable(path, exc) from None


def _document(path: Path, number: int, line: str) -> str | None:
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict) or "text" not in row:
        raise CorpusError(
            f"{path}:{number}: each line needs a 'text' field for continued pre-training "
            "(chat or prompt/completion data is not raw text)"
        )
    if not isinstance(row["text"], str):
        raise CorpusError(f"{path}:{number}: 'text' must be a string")
    return row["text"] if row["text"].strip() else None


# The validation split does not depend on the run's seed, so runs on one corpus are
# compared on the same held-out documents.
SPLIT_SEED = 20240611


def split_documents(n_docs: int, fraction: float) -> np.ndarray:
    """Ids of held-out documents: round(fraction * n), at least 1, never all."""
    if fraction <= 0 or n_docs < 2:
        return np.zeros(0, dtype=np.int64)
    n_val = min(n_docs - 1, max(1, round(fraction * n_docs)))
    rng = np.random.default_rng(SPLIT_SEED)
    return np.sort(rng.choice(n_docs, size=n_val, replace=False)).astype(np.int64)
