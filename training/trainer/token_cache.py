"""Tokenize a corpus once: memory-mapped token arrays in <workspace>/cache/tokens/<key>/.

The key hashes the tokenizer's files and the corpus files' *contents* (their bytes and
kind, not their names or times), so later runs, resumes and other runs on the same text
reuse the entry. A scan that served a run is remembered by the files' identity (path,
inode, size, times: corpus.files_fingerprint), so scanning the same unchanged files again
reads nothing. An entry
holds every document's tokens followed by EOS (`tokens.bin`, uint16 when the vocabulary
fits, else uint32) and the document start offsets (`doc_offsets.npy`); it is written into a
temporary folder, fsynced (files and folder) and renamed, so a reader never sees a partial
entry, even after a power loss. An entry whose files do not agree (tokens.bin shorter than
its offsets say) is rebuilt; temporary folders of writers that died are swept.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.contract.corpus import (
    CorpusError,
    file_kind,
    files_fingerprint,
    read_documents,
    read_file_documents,
)
from training.contract.errors import StopRequested
from training.contract.files import fsync_path, write_atomic
from training.contract.layout import TOKEN_CACHE_META

CACHE_VERSION = 2  # 2: corpora hashed from their files' bytes
TOKENS_FILE = "tokens.bin"
OFFSETS_FILE = "doc_offsets.npy"
META_FILE = TOKEN_CACHE_META
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
_BATCH_CHARS = 4_000_000  # text per encode_batch call: big enough for Rust's threads
_PROGRESS_MIN_CHARS = 20_000_000  # smaller corpora tokenize in a second or two: stay quiet
_PROGRESS_EVERY_S = 2.0
TMP_PREFIX = ".tmp-"
_TMP_PID_RE = re.compile(r"\.tmp-.*-(\d+)")  # .tmp-<key>-<pid>, .tmp-bad-<key>-<pid>

ProgressFn = Callable[[str], None]
_RACY_SECONDS = 2.0  # a file changed this recently is scanned again next time


@dataclass(frozen=True)
class CorpusScan:
    """One read of a corpus: proves it is usable text and fingerprints its content."""

    files: tuple[Path, ...]
    content_hash: str
    documents: int
    chars: int
    fingerprint: str = ""  # the files' identity when scanned (corpus.files_fingerprint)
    # False when a file changed moments before the scan: file times tick coarsely, so a
    # second write within the same tick could keep the fingerprint ("racy git").
    memoizable: bool = False


def scan_corpus(
    files: Iterable[Path], label: str = "corpus", memo_dir: Path | None = None
) -> CorpusScan:
    """Read every document once (CorpusError for binary, non-UTF-8, bad JSONL or empty),
    hashing each file's bytes as they are read. With `memo_dir`, files scanned before and
    unchanged since (remember_scan) are not read at all."""
    files = tuple(files)
    try:
        fingerprint = files_fingerprint(files)  # before reading: a write meanwhile changes it
        newest = max((max(f.stat().st_mtime, f.stat().st_ctime) for f in files), default=0.0)
    except OSError as exc:
        raise CorpusError(f"{label}: cannot read {exc.filename} ({exc.strerror})") from None
    settled = time.time() - newest > _RACY_SECONDS
    if memo_dir is not None:
        memo = _read_memo(memo_dir / f"{fingerprint}.json")
        if memo is not None:
            return CorpusScan(files, *memo, fingerprint=fingerprint, memoizable=settled)
    h = hashlib.sha256()
    documents = chars = 0
    for path in files:
        file_hash = hashlib.sha256()
        for doc in read_file_documents(path, file_hash.update):
            documents += 1
            chars += len(doc)
        h.update(file_kind(path).encode() + b"\0" + file_hash.digest())
    if documents == 0:
        where = files[0] if len(files) == 1 else f"{len(files)} files"
        raise CorpusError(f"{label} {where} is empty (no non-blank documents); add text to it")
    return CorpusScan(files, h.hexdigest(), documents, chars, fingerprint, settled)


def _read_memo(path: Path) -> tuple[str, int, int] | None:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
        content_hash, documents, chars = memo["content_hash"], memo["documents"], memo["chars"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if memo.get("version") != CACHE_VERSION or not isinstance(content_hash, str):
        return None
    return content_hash, int(documents), int(chars)


def remember_scan(scan: CorpusScan, memo_dir: Path) -> None:
    """Record a scan whose corpus served a run (its token cache entry exists), keyed by
    the files' identity: the next scan of the same unchanged files skips reading them."""
    if not (scan.fingerprint and scan.memoizable):
        return
    memo_dir.mkdir(parents=True, exist_ok=True)
    memo = {
        "version": CACHE_VERSION,
        "content_hash": scan.content_hash,
        "documents": scan.documents,
        "chars": scan.chars,
        "files": [str(f) for f in scan.files[:100]],
    }
    write_atomic(memo_dir / f"{scan.fingerprint}.json", json.dumps(memo, indent=2) + "\n")


def tokenizer_fingerprint(tokenizer: Any, model_path: Path) -> str:
    """Hash of the tokenizer's defining files plus its special token ids."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = model_path / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    h.update(f"eos={tokenizer.eos_token_id};bos={getattr(tokenizer, 'bos_token', None)}".encode())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class TokenizedCorpus:
    tokens: np.ndarray  # 1-D memmap: doc0 EOS doc1 EOS ...
    doc_offsets: np.ndarray  # int64, documents + 1 entries
    key: str
    path: Path
    hit: bool
    seconds: float

    @property
    def documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.doc_offsets[-1])


def cache_key(scan: CorpusScan, tokenizer_fp: str) -> str:
    blob = f"v{CACHE_VERSION}\0{tokenizer_fp}\0{scan.content_hash}".encode()
    return hashlib.sha256(blob).hexdigest()[:24]


class BrokenEntry(ValueError):
    """A cache entry whose files are missing, unreadable or disagree: rebuild it."""


def open_entry(path: Path, key: str, hit: bool, seconds: float) -> TokenizedCorpus:
    """Memory-map an entry after checking that its files agree (BrokenEntry otherwise)."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        offsets = np.load(path / OFFSETS_FILE)
        dtype = np.dtype(meta["dtype"])
        size = (path / TOKENS_FILE).stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BrokenEntry(f"{path}: {exc}") from None
    if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0:
        raise BrokenEntry(f"{path}/{OFFSETS_FILE} is not a list of document offsets")
    n = int(offsets[-1])
    if size != n * dtype.itemsize:
        raise BrokenEntry(f"{path}/{TOKENS_FILE} holds {size} bytes, not {n} tokens")
    tokens = (
        np.memmap(path / TOKENS_FILE, dtype=dtype, mode="r", shape=(n,))
        if n
        else np.zeros(0, dtype)
    )
    return TokenizedCorpus(tokens, offsets, key, path, hit, seconds)


def _encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    """Batch encoding through the Rust `tokenizers` backend when there is one (parallel,
    no per-document Python), else the tokenizer's own encode."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is not None:
        return lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=True)]
    return lambda texts: [list(tokenizer.encode(t)) for t in texts]


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc)
        if size >= _BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def load_or_tokenize(
    scan: CorpusScan,
    tokenizer: Any,
    tokenizer_fp: str,
    cache_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    label: str = "corpus",
) -> TokenizedCorpus:
    """The cached entry for this corpus and tokenizer, tokenizing it first if needed."""
    key = cache_key(scan, tokenizer_fp)
    path = cache_dir / key
    tic = time.perf_counter()
    if path.exists():
        try:
            return open_entry(path, key, True, time.perf_counter() - tic)
        except BrokenEntry as exc:
            if progress is not None:
                progress(f"token cache entry is damaged ({exc}); tokenizing {label} again")
            _discard(path)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CorpusError("the model's tokenizer has no EOS token to separate documents")
    cache_dir.mkdir(parents=True, exist_ok=True)
    sweep_stale(cache_dir)
    tmp = cache_dir / f"{TMP_PREFIX}{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        dtype = _write_tokens(scan, tokenizer, eos, tmp, progress, should_stop, label)
        meta_text = json.dumps(
            {
                "version": CACHE_VERSION,
                "dtype": np.dtype(dtype).name,
                "eos_token_id": int(eos),
                "documents": scan.documents,
                "chars": scan.chars,
                "files": [str(f) for f in scan.files[:100]],
                "created": time.time(),
            },
            indent=2,
        )
        (tmp / META_FILE).write_text(meta_text)
        for name in (TOKENS_FILE, OFFSETS_FILE, META_FILE):
            fsync_path(tmp / name)
        fsync_path(tmp)
        try:
            os.rename(tmp, path)
            fsync_path(cache_dir)
        except OSError:  # another process finished the same entry first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_entry(path, key, False, time.perf_counter() - tic)


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


def _write_tokens(
    scan: CorpusScan,
    tokenizer: Any,
    eos: int,
    out: Path,
    progress: ProgressFn | None,
    should_stop: Callable[[], bool] | None,
    label: str,
) -> type[np.unsignedinteger[Any]]:
    encode = _encoder(tokenizer)
    dtype: type[np.unsignedinteger[Any]] = np.uint16
    vocab = _vocab_size(tokenizer)
    if vocab is None or vocab > np.iinfo(np.uint16).max:
        dtype = np.uint32
    offsets = [0]
    done_chars = 0
    n_tokens = 0
    tic = last = time.perf_counter()
    loud = progress is not None and scan.chars >= _PROGRESS_MIN_CHARS
    with (out / TOKENS_FILE).open("wb") as f:
        for texts in _batches(read_documents(scan.files)):
            if should_stop is not None and should_stop():
                raise StopRequested(f"stopped while tokenizing the {label}")
            encoded = encode(texts)
            for ids in encoded:
                if not ids or ids[-1] != eos:
                    ids.append(eos)
                n_tokens += len(ids)
                offsets.append(n_tokens)
            count = n_tokens - offsets[-len(encoded) - 1]
            flat = np.fromiter(itertools.chain.from_iterable(encoded), np.int64, count)
            if dtype is np.uint16 and count and int(flat.max()) > np.iinfo(np.uint16).max:
                raise AssertionError("token id above the tokenizer's vocabulary size")
            f.write(flat.astype(dtype).tobytes())
            done_chars += sum(len(t) for t in texts)
            now = time.perf_counter()
            if loud and progress is not None and now - last >= _PROGRESS_EVERY_S:
                last = now
                rate = n_tokens / (now - tic)
                share = done_chars / max(1, scan.chars)
                eta = (now - tic) * (1 - share) / max(share, 1e-9)
                progress(
                    f"tokenizing {label}: {share:6.1%} of {scan.chars / 1e6:,.0f}M chars, "
                    f"{n_tokens / 1e6:,.1f}M tokens, {rate / 1e3:,.0f}k tok/s, ETA {eta:,.0f}s"
                )
    np.save(out / OFFSETS_FILE, np.asarray(offsets, dtype=np.int64))
    if loud and progress is not None:
        progress(
            f"tokenized {label}: {n_tokens:,} tokens in {time.perf_counter() - tic:,.1f}s "
            "(cached for later runs)"
        )
    return dtype


def _vocab_size(tokenizer: Any) -> int | None:
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    try:
        return int(len(hf))
    except TypeError:
        size = getattr(hf, "vocab_size", None)
        return int(size) if isinstance(size, int) else None


def default_progress(message: str) -> None:
    print(message, file=sys.stdout, flush=True)
