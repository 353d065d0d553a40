"""Tokenize a corpus once: memory-mapped token arrays in <workspace>/cache/tokens/<key>/.

The key hashes the tokenizer's files and the corpus files' *contents* (their bytes, kind and
the field read, not their names or times), so later runs, resumes and other runs on the
same text reuse the entry. An entry holds every document's tokens followed by EOS (uint16
when the vocabulary fits, else uint32), in parts: one per shard of the scan
(corpus_scan.py), `part-00000.bin` with its documents' start offsets `part-00000.npy`
(entries written before parts existed hold one `tokens.bin` + `doc_offsets.npy`, read the
same way).

An entry is built in `.partial-<key>/`, locked by its writer (flock) and written one part
at a time, in any order: each part is written under a temporary name, fsynced and renamed,
so the folder only ever holds whole parts, and a run that stops (or crashes) leaves the
parts done for the next run to continue from. When every part is there, meta.json is
written and the folder is renamed to `<key>` (fsynced, then the cache folder too), so a
complete entry appears whole or not at all, even after a power loss. A writer that finds
the partial folder locked by another builds its own `.tmp-<key>-<pid>/` (temporary
folders of writers that died are swept). A complete entry whose files do not agree is
rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.contract.corpus import CorpusError
from training.contract.files import fsync_path
from training.contract.layout import TOKEN_CACHE_META
from training.trainer.corpus_scan import CorpusScan, remember_scan, scan_corpus

__all__ = ["CorpusScan", "remember_scan", "scan_corpus"]

CACHE_VERSION = 2  # in the key: 2, corpora hashed from their files' bytes
LAYOUT_VERSION = 3  # meta.json "version" of an entry in parts (2: one tokens.bin)
TOKENS_FILE = "tokens.bin"  # layout 2
OFFSETS_FILE = "doc_offsets.npy"  # layout 2
META_FILE = TOKEN_CACHE_META
PARTIAL_META = "partial.json"
LOCK_FILE = ".lock"
# Files that define a tokenizer's behaviour (whatever of them a model folder has).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "tiktoken.model",
)
BATCH_CHARS = 4_000_000  # text per encode_batch call: big enough for Rust's threads
TMP_PREFIX = ".tmp-"
PARTIAL_PREFIX = ".partial-"
_TMP_PID_RE = re.compile(r"\.tmp-.*-(\d+)")  # .tmp-<key>-<pid>, .tmp-bad-<key>-<pid>

ProgressFn = Callable[[str], None]
StopFn = Callable[[], bool]


def tokenizer_fingerprint(tokenizer: Any, model_path: Path) -> str:
    """Hash of the tokenizer's defining files plus its special token ids."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = model_path / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    h.update(f"eos={tokenizer.eos_token_id};bos={getattr(tokenizer, 'bos_token', None)}".encode())
    return h.hexdigest()[:20]


def cache_key(scan: CorpusScan, tokenizer_fp: str) -> str:
    blob = f"v{CACHE_VERSION}\0{tokenizer_fp}\0{scan.content_hash}".encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def part_name(index: int) -> str:
    return f"part-{index:05d}"


@dataclass(frozen=True)
class Part:
    """The tokens of a run of consecutive documents, each followed by EOS."""

    first_doc: int
    tokens: np.ndarray  # 1-D memmap
    offsets: np.ndarray  # int64: each document's start in `tokens`, documents + 1 entries

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])


class TokenizedCorpus:
    """A corpus's tokens, in parts that may still be arriving (a background tokenization
    fills them in and notifies `cond` as each arrives). `layout` gives each part's
    (first document, documents), whether it is here or not; documents are numbered as the
    scan reads them."""

    def __init__(
        self,
        key: str,
        path: Path,
        layout: Sequence[tuple[int, int]],
        parts: Sequence[Part | None],
        *,
        hit: bool,
        seconds: float = 0.0,
        cond: threading.Condition | None = None,
    ) -> None:
        self.key, self.path, self.hit, self.seconds = key, path, hit, seconds
        self.layout = [(int(a), int(b)) for a, b in layout]
        self.parts: list[Part | None] = list(parts)
        self.cond = cond or threading.Condition()
        self._firsts = np.asarray([a for a, _ in self.layout], dtype=np.int64)

    @classmethod
    def single(
        cls, tokens: np.ndarray, offsets: np.ndarray, key: str = "", path: Path = Path(".")
    ) -> TokenizedCorpus:
        """A corpus of one part (tests, and entries written before parts existed)."""
        part = Part(0, tokens, np.asarray(offsets, dtype=np.int64))
        return cls(key, path, [(0, part.documents)], [part], hit=True)

    @property
    def documents(self) -> int:
        return sum(n for _, n in self.layout)

    @property
    def complete(self) -> bool:
        return all(p is not None for p in self.parts)

    def _part(self, index: int) -> Part:
        part = self.parts[index]
        if part is None:
            raise RuntimeError(f"part {index} of {self.key} is not tokenized yet")
        return part

    @property
    def tokens(self) -> np.ndarray:
        """The token array of a one-part corpus."""
        if len(self.parts) != 1:
            raise ValueError("a corpus in several parts has no single token array")
        return self._part(0).tokens

    @property
    def doc_offsets(self) -> np.ndarray:
        """Document start offsets of a one-part corpus."""
        if len(self.parts) != 1:
            raise ValueError("a corpus in several parts has no single offset array")
        return self._part(0).offsets

    @property
    def n_tokens(self) -> int:
        """Tokens of the whole corpus (every part must be here)."""
        return sum(self._part(i).n_tokens for i in range(len(self.parts)))

    def parts_of(self, first_doc: int, end_doc: int) -> range:
        """Indices of the parts that hold documents first_doc..end_doc-1."""
        lo = int(np.searchsorted(self._firsts, first_doc, side="right")) - 1
        hi = int(np.searchsorted(self._firsts, max(first_doc, end_doc - 1), side="right"))
        return range(max(lo, 0), hi)

    def ready(self, first_doc: int, end_doc: int) -> bool:
        """Whether every part holding documents first_doc..end_doc-1 is here."""
        return all(self.parts[i] is not None for i in self.parts_of(first_doc, end_doc))

    def segments(self, doc_ids: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Where the documents' tokens are: (arrays, array index per document, start and
        end within it as an (n, 2) array); every part they are in must be here."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        arrays: list[np.ndarray] = []
        which = np.zeros(len(doc_ids), dtype=np.int64)
        bounds = np.zeros((len(doc_ids), 2), dtype=np.int64)
        located = np.searchsorted(self._firsts, doc_ids, side="right") - 1
        for index in np.unique(located).tolist():
            part = self._part(int(index))
            mask = located == index
            local = doc_ids[mask] - part.first_doc
            which[mask] = len(arrays)
            arrays.append(part.tokens)
            bounds[mask, 0] = part.offsets[local]
            bounds[mask, 1] = part.offsets[local + 1]
        return arrays, which, bounds


class BrokenEntry(ValueError):
    """A cache entry whose files are missing, unreadable or disagree: rebuild it."""


def _memmap(path: Path, dtype: np.dtype[Any], n: int) -> np.ndarray:
    size = path.stat().st_size
    if size != n * dtype.itemsize:
        raise BrokenEntry(f"{path} holds {size} bytes, not {n} tokens")
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)


def _offsets(path: Path) -> np.ndarray:
    offsets = np.load(path)
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or (np.diff(offsets) < 0).any():
        raise BrokenEntry(f"{path} is not a list of document offsets")
    return offsets.astype(np.int64, copy=False)


def read_part(folder: Path, index: int, first_doc: int, dtype: np.dtype[Any]) -> Part:
    offsets = _offsets(folder / f"{part_name(index)}.npy")
    tokens = _memmap(folder / f"{part_name(index)}.bin", dtype, int(offsets[-1]))
    return Part(first_doc, tokens, offsets)


def open_entry(path: Path, key: str, hit: bool, seconds: float) -> TokenizedCorpus:
    """Memory-map a complete entry after checking that its files agree (BrokenEntry
    otherwise)."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        dtype = np.dtype(meta["dtype"])
        if meta.get("version") == LAYOUT_VERSION:
            firsts = [int(first) for first, _ in meta["parts"]]
            parts = [read_part(path, i, first, dtype) for i, first in enumerate(firsts)]
            for part, (_, documents) in zip(parts, meta["parts"], strict=True):
                if part.documents != int(documents):
                    raise BrokenEntry(f"{path}: a part does not hold the documents it should")
        else:
            offsets = _offsets(path / OFFSETS_FILE)
            parts = [Part(0, _memmap(path / TOKENS_FILE, dtype, int(offsets[-1])), offsets)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, BrokenEntry):
            raise
        raise BrokenEntry(f"{path}: {exc}") from None
    layout = [(p.first_doc, p.documents) for p in parts]
    return TokenizedCorpus(key, path, layout, parts, hit=hit, seconds=seconds)


# -- building an entry ------------------------------------------------------------------------


def _encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    """Batch encoding through the Rust `tokenizers` backend when there is one (parallel,
    no per-document Python; `encode_batch_fast` skips the character offsets nobody reads
    and gives the same ids), else the tokenizer's own encode."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is not None:
        fast = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return lambda texts: [e.ids for e in fast(texts, add_special_tokens=True)]
    return lambda texts: [list(tokenizer.encode(t)) for t in texts]


def _vocab_size(tokenizer: Any) -> int | None:
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    try:
        return int(len(hf))
    except TypeError:
        size = getattr(hf, "vocab_size", None)
        return int(size) if isinstance(size, int) else None


def token_dtype(tokenizer: Any) -> np.dtype[Any]:
    vocab = _vocab_size(tokenizer)
    small = vocab is not None and vocab <= np.iinfo(np.uint16).max
    return np.dtype(np.uint16 if small else np.uint32)


def batches(docs: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class Stopped(Exception):
    """The tokenization was asked to stop between two batches."""


class EntryBuilder:
    """Writes one entry's parts (the scan's shards) and, once all are there, publishes it.

    The parts go into `.partial-<key>/`, whose lock this builder holds, so parts done by an
    earlier run are reused; when another process holds it, into a private temporary
    folder instead."""

    def __init__(self, cache_dir: Path, key: str, scan: CorpusScan, tokenizer: Any) -> None:
        self.cache_dir, self.key, self.scan = cache_dir, key, scan
        eos = tokenizer.eos_token_id
        if eos is None:
            raise CorpusError("the model's tokenizer has no EOS token to separate documents")
        self.eos = int(eos)
        self.dtype = token_dtype(tokenizer)
        self.encode = _encoder(tokenizer)
        self.published: Path | None = None
        self._lock_fd: int | None = None
        cache_dir.mkdir(parents=True, exist_ok=True)
        sweep_stale(cache_dir)
        self.folder = self._claim()
        self.parts: list[Part | None] = self._adopt()

    def _layout(self) -> dict[str, Any]:
        return {
            "version": LAYOUT_VERSION,
            "dtype": self.dtype.name,
            "eos_token_id": self.eos,
            "documents": self.scan.documents,
            "shards": [[s.first_doc, s.documents] for s in self.scan.shards],
        }

    def _claim(self) -> Path:
        partial = self.cache_dir / f"{PARTIAL_PREFIX}{self.key}"
        try:
            partial.mkdir(exist_ok=True)
            fd = os.open(partial / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
            else:
                self._lock_fd = fd
                return partial
        private = self.cache_dir / f"{TMP_PREFIX}{self.key}-{os.getpid()}"
        shutil.rmtree(private, ignore_errors=True)
        private.mkdir()
        return private

    def _adopt(self) -> list[Part | None]:
        """The parts an earlier writer finished (when its layout is this scan's)."""
        parts: list[Part | None] = [None] * len(self.scan.shards)
        meta = self.folder / PARTIAL_META
        try:
            same = json.loads(meta.read_text()) == self._layout()
        except (OSError, ValueError):
            same = False
        for entry in list(self.folder.iterdir()):
            if entry.name.startswith(".part-") or (not same and entry.name != LOCK_FILE):
                _remove(entry)
        if not same:
            _write_durably(meta, json.dumps(self._layout()).encode())
            return parts
        for i, shard in enumerate(self.scan.shards):
            try:
                part = read_part(self.folder, i, shard.first_doc, self.dtype)
            except (OSError, ValueError):
                continue
            if part.documents == shard.documents:
                parts[i] = part
        return parts

    def write_part(
        self,
        index: int,
        docs: Iterable[str],
        stop: StopFn,
        batch_chars: int = BATCH_CHARS,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> Part:
        """Tokenize one shard's documents into its part; CorpusError when they are not the
        documents the scan saw (the file changed since), Stopped on a stop request.
        `on_batch(chars, tokens)` follows its progress."""
        shard = self.scan.shards[index]
        name = part_name(index)
        tmp_bin, tmp_npy = self.folder / f".{name}.bin.tmp", self.folder / f".{name}.npy.tmp"
        offsets = [0]
        n_tokens = chars = 0
        too_big = self.dtype == np.uint16
        try:
            with tmp_bin.open("wb") as f:
                for texts in batches(docs, batch_chars):
                    if stop():
                        raise Stopped
                    encoded = self.encode(texts)
                    for ids in encoded:
                        if not ids or ids[-1] != self.eos:
                            ids.append(self.eos)
                        n_tokens += len(ids)
                        offsets.append(n_tokens)
                    count = n_tokens - offsets[-len(encoded) - 1]
                    flat = np.fromiter(itertools.chain.from_iterable(encoded), np.int64, count)
                    if too_big and count and int(flat.max()) > np.iinfo(np.uint16).max:
                        raise AssertionError("token id above the tokenizer's vocabulary size")
                    f.write(flat.astype(self.dtype).tobytes())
                    batch_chars_done = sum(len(t) for t in texts)
                    chars += batch_chars_done
                    if on_batch is not None:
                        on_batch(batch_chars_done, count)
            if len(offsets) - 1 != shard.documents or chars != shard.chars:
                where = self.scan.files[shard.file]
                raise CorpusError(
                    f"{where}: the corpus changed since it was scanned (documents "
                    f"{shard.first_doc + 1}-{shard.first_doc + shard.documents} read "
                    "differently); start the run again"
                )
            with tmp_npy.open("wb") as f:
                np.save(f, np.asarray(offsets, dtype=np.int64))
            fsync_path(tmp_bin)
            fsync_path(tmp_npy)
            os.rename(tmp_bin, self.folder / f"{name}.bin")
            os.rename(tmp_npy, self.folder / f"{name}.npy")  # last: the part is whole
        except BaseException:
            _remove(tmp_bin)
            _remove(tmp_npy)
            raise
        part = read_part(self.folder, index, shard.first_doc, self.dtype)
        self.parts[index] = part
        return part

    @property
    def complete(self) -> bool:
        return all(p is not None for p in self.parts)

    def publish(self) -> Path:
        """Every part is here: write meta.json and rename the folder into place."""
        meta = {
            **self._layout(),
            "parts": [[p.first_doc, p.documents] for p in self.parts if p is not None],
            "chars": self.scan.chars,
            "text_field": self.scan.text_field,
            "files": [str(f) for f in self.scan.files[:100]],
            "created": time.time(),
        }
        (self.folder / META_FILE).write_text(json.dumps(meta, indent=2))
        fsync_path(self.folder / META_FILE)  # (each part was fsynced before its rename)
        _remove(self.folder / PARTIAL_META)
        _remove(self.folder / LOCK_FILE)
        fsync_path(self.folder)
        final = self.cache_dir / self.key
        try:
            os.rename(self.folder, final)
            fsync_path(self.cache_dir)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(self.folder, ignore_errors=True)
        self.published = final
        self.release()
        return final

    def release(self) -> None:
        """Let go of the folder: a private one is removed, a partial one kept for the next
        run (unless it holds no part at all)."""
        if self.published is None:
            if self._lock_fd is None:
                shutil.rmtree(self.folder, ignore_errors=True)
            elif not any(p is not None for p in self.parts):
                shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    fsync_path(tmp)
    os.rename(tmp, path)


def open_cached(cache_dir: Path, key: str, progress: ProgressFn | None, label: str) -> Any:
    """The complete entry `key`, or None (a damaged one is moved away to be rebuilt)."""
    path = cache_dir / key
    tic = time.perf_counter()
    if not path.exists():
        return None
    try:
        return open_entry(path, key, True, time.perf_counter() - tic)
    except BrokenEntry as exc:
        if progress is not None:
            progress(f"token cache entry is damaged ({exc}); tokenizing {label} again")
        _discard(path)
        return None


def _discard(path: Path) -> None:
    """Move a broken entry out of the way (one rename, so no reader sees it half-deleted)."""
    doomed = path.with_name(f"{TMP_PREFIX}bad-{path.name}-{os.getpid()}")
    try:
        os.rename(path, doomed)
    except OSError:
        return  # another process moved or replaced it first
    shutil.rmtree(doomed, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_stale(cache_dir: Path) -> list[str]:
    """Remove temporary folders whose writer (the pid in the name) is gone."""
    removed = []
    for p in cache_dir.iterdir() if cache_dir.is_dir() else ():
        m = _TMP_PID_RE.fullmatch(p.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def default_progress(message: str) -> None:
    print(message, file=sys.stdout, flush=True)
