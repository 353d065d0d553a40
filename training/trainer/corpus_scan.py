"""One read of a corpus before anything is created: proves it is usable text, hashes its
content (the token cache's key) and cuts it into shards.

A shard is a fixed range of documents of about SHARD_CHARS characters, fixed by the text
alone: the unit the token cache is built in (tokenized in the background while training
starts) and the data order shuffles. The scan records where each shard's first record
starts (its file and place), so a shard can be read again on its own.

A scan that served a run is remembered by the files' identity (path, inode, size, times:
corpus.files_fingerprint) and the field read, so scanning the same unchanged files again
reads nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from training.contract.corpus import files_fingerprint
from training.contract.corpus_formats import (
    SEEKABLE_KINDS,
    TEXT_FIELD,
    CorpusError,
    Doc,
    Start,
    content_kind,
    file_hash,
    file_kind,
    hashes_while_reading,
    read_file,
)
from training.contract.files import write_atomic
from training.contract.protocol import SHARD_CHARS_ENV

# Characters per shard: about a second of tokenizing ($MLX_CPT_SHARD_CHARS changes it).
SHARD_CHARS = max(1000, int(os.environ.get(SHARD_CHARS_ENV) or 4_000_000))
MEMO_VERSION = 3  # 3: shards recorded
_RACY_SECONDS = 2.0  # a file changed this recently is scanned again next time


@dataclass(frozen=True)
class Shard:
    """A range of documents and where its first record starts."""

    first_doc: int
    documents: int
    chars: int
    file: int  # index of the file its first record is in
    start: Start  # that record's place in the file

    def to_json(self) -> list[int]:
        return [self.first_doc, self.documents, self.chars, self.file, *self.start]

    @classmethod
    def from_json(cls, row: list[int]) -> Shard:
        first, documents, chars, file, offset, number, part = (int(v) for v in row)
        return cls(first, documents, chars, file, Start(offset, number, part))


@dataclass(frozen=True)
class CorpusScan:
    """One read of a corpus: proves it is usable text and fingerprints its content."""

    files: tuple[Path, ...]
    content_hash: str
    documents: int
    chars: int
    fingerprint: str = ""  # the files' identity when scanned (and the field read)
    # False when a file changed moments before the scan: file times tick coarsely, so a
    # second write within the same tick could keep the fingerprint ("racy git").
    memoizable: bool = False
    text_field: str = TEXT_FIELD
    shards: tuple[Shard, ...] = ()

    @property
    def seekable(self) -> bool:
        """Whether a shard can be read without reading the ones before it."""
        return all(file_kind(f) in SEEKABLE_KINDS for f in self.files)

    def shard_documents(self, index: int) -> Iterator[str]:
        """The documents of one shard, read from its recorded place."""
        shard = self.shards[index]
        return _take(self.documents_from(shard.file, shard.start), shard.documents)

    def documents_from(self, file: int, start: Start | None) -> Iterator[str]:
        for i in range(file, len(self.files)):
            for doc in read_file(self.files[i], self.text_field, start if i == file else None):
                yield doc.text


def _take(docs: Iterator[str], n: int) -> Iterator[str]:
    for _, doc in zip(range(n), docs, strict=False):
        yield doc


def _identity(files: tuple[Path, ...], text_field: str) -> str:
    fingerprint = files_fingerprint(files)
    return hashlib.sha256(f"{fingerprint}\0{text_field}".encode()).hexdigest()[:32]


def scan_corpus(
    files: Iterable[Path],
    label: str = "corpus",
    memo_dir: Path | None = None,
    text_field: str = TEXT_FIELD,
) -> CorpusScan:
    """Read every document once (CorpusError for binary, non-UTF-8, bad records or empty),
    hashing each file's bytes as they are read. With `memo_dir`, files scanned before and
    unchanged since (remember_scan) are not read at all."""
    files = tuple(files)
    try:
        fingerprint = _identity(files, text_field)  # before reading: a write changes it
        newest = max((max(f.stat().st_mtime, f.stat().st_ctime) for f in files), default=0.0)
    except OSError as exc:
        raise CorpusError(f"{label}: cannot read {exc.filename} ({exc.strerror})") from None
    settled = time.time() - newest > _RACY_SECONDS
    if memo_dir is not None:
        memo = _read_memo(memo_dir / f"{fingerprint}.json")
        if memo is not None:
            content_hash, n_docs, n_chars, memo_shards = memo
            return CorpusScan(
                files, content_hash, n_docs, n_chars, fingerprint, settled, text_field, memo_shards
            )
    h = hashlib.sha256()
    documents = chars = 0
    shards: list[Shard] = []
    first = shard_chars = 0
    start: tuple[int, Doc] | None = None
    for index, path in enumerate(files):
        whole = not hashes_while_reading(path)
        digest = file_hash(path) if whole else b""
        file_hash_ = hashlib.sha256()
        for doc in read_file(path, text_field, raw=None if whole else file_hash_.update):
            if start is None:
                start = (index, doc)
            elif shard_chars >= SHARD_CHARS:
                shards.append(_shard(first, documents - first, shard_chars, start))
                first, shard_chars, start = documents, 0, (index, doc)
            documents += 1
            chars += len(doc.text)
            shard_chars += len(doc.text)
        h.update(content_kind(path, text_field).encode() + b"\0" + (digest or file_hash_.digest()))
    if documents == 0 or start is None:
        where = files[0] if len(files) == 1 else f"{len(files)} files"
        raise CorpusError(f"{label} {where} is empty (no non-blank documents); add text to it")
    shards.append(_shard(first, documents - first, shard_chars, start))
    return CorpusScan(
        files, h.hexdigest(), documents, chars, fingerprint, settled, text_field, tuple(shards)
    )


def _shard(first: int, documents: int, chars: int, start: tuple[int, Doc]) -> Shard:
    file, doc = start
    return Shard(first, documents, chars, file, Start(doc.offset, doc.number, doc.part))


def _read_memo(path: Path) -> tuple[str, int, int, tuple[Shard, ...]] | None:
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
        content_hash, documents, chars = memo["content_hash"], memo["documents"], memo["chars"]
        if memo.get("version") != MEMO_VERSION or memo.get("shard_chars") != SHARD_CHARS:
            return None
        shards = tuple(Shard.from_json(row) for row in memo["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(content_hash, str) or sum(s.documents for s in shards) != documents:
        return None
    return content_hash, int(documents), int(chars), shards


def remember_scan(scan: CorpusScan, memo_dir: Path) -> None:
    """Record a scan whose corpus served a run, keyed by the files' identity: the next
    scan of the same unchanged files skips reading them."""
    if not (scan.fingerprint and scan.memoizable):
        return
    memo_dir.mkdir(parents=True, exist_ok=True)
    memo = {
        "version": MEMO_VERSION,
        "content_hash": scan.content_hash,
        "documents": scan.documents,
        "chars": scan.chars,
        "text_field": scan.text_field,
        "shard_chars": SHARD_CHARS,
        "shards": [s.to_json() for s in scan.shards],
        "files": [str(f) for f in scan.files[:100]],
    }
    write_atomic(memo_dir / f"{scan.fingerprint}.json", json.dumps(memo) + "\n")
