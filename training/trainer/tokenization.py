"""Tokenizing a run's corpora into the token cache, in the background while it trains.

One worker thread builds every entry a run needs, one shard (token_cache: one part) at a
time, in the order the run will want them (`plan`), except that a shard someone is waiting
for (`wait`) goes first. Training starts once the shards its first batches and its
validation need are here, and waits, briefly, whenever it reaches a shard that is not:
what it trains never depends on how fast tokenizing goes. Shards of a corpus that cannot be
entered in the middle (compressed files, a JSON array) are tokenized in file order.

Memory stays bounded by one batch of text (token_cache.BATCH_CHARS) and its tokens: each
part is written to its file as it is tokenized and read back memory-mapped. Without a
worker thread (`run_here`, or a `wait` when none runs) the same work happens in the
calling thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.contract.errors import StopRequested
from training.trainer.corpus_scan import CorpusScan
from training.trainer.token_cache import (
    BATCH_CHARS,
    EntryBuilder,
    ProgressFn,
    StopFn,
    Stopped,
    TokenizedCorpus,
    cache_key,
    open_cached,
)

_PROGRESS_MIN_CHARS = 20_000_000  # smaller corpora tokenize in a second or two: stay quiet
_PROGRESS_EVERY_S = 2.0
_WAIT_POLL_S = 0.25


@dataclass
class _Job:
    """One entry being built."""

    scan: CorpusScan
    label: str
    builder: EntryBuilder
    corpus: TokenizedCorpus
    # A corpus read in file order: the next shard its reader is at, and the reader.
    next_shard: int = 0
    reader: Iterator[str] | None = None
    done_here: int = 0  # shards tokenized by this process
    tokens: int = 0  # tokens of the parts here (done by anyone)
    chars: int = 0
    documents: int = 0
    published: bool = False
    seconds: float = 0.0

    @property
    def shards(self) -> int:
        return len(self.scan.shards)

    @property
    def shards_done(self) -> int:
        return sum(p is not None for p in self.corpus.parts)


@dataclass
class _Stats:
    started: float = field(default_factory=time.perf_counter)
    tokens: int = 0  # written by this process
    chars: int = 0
    busy: float = 0.0  # seconds spent tokenizing
    finished: float | None = None
    last_line: float = 0.0


class Tokenization:
    """The token-cache entries of one run: complete ones opened, the others built."""

    def __init__(
        self,
        tokenizer: Any,
        tokenizer_fp: str,
        cache_dir: Path,
        *,
        progress: ProgressFn | None = None,
        batch_chars: int | None = None,
    ) -> None:
        self.tokenizer, self.tokenizer_fp, self.cache_dir = tokenizer, tokenizer_fp, cache_dir
        self.progress = progress
        self.batch_chars = batch_chars or BATCH_CHARS
        self._here = False  # tokenizing in the caller's thread: it may print progress
        self.cond = threading.Condition()
        self._jobs: list[_Job] = []
        self._plan: list[tuple[_Job, int]] = []
        self._demand: list[tuple[_Job, int]] = []
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = _Stats()

    # -- setting up -----------------------------------------------------------------------

    def add(self, scan: CorpusScan, label: str) -> TokenizedCorpus:
        """The corpus's entry: complete when cached, else one whose parts arrive as they
        are tokenized (reusing the parts a stopped run left)."""
        key = cache_key(scan, self.tokenizer_fp)
        for job in self._jobs:  # the same text twice in one run (a source and an eval set)
            if job.corpus.key == key:
                return job.corpus
        tic = time.perf_counter()
        cached = open_cached(self.cache_dir, key, self.progress, label)
        if cached is not None:
            assert isinstance(cached, TokenizedCorpus)
            return cached
        builder = EntryBuilder(self.cache_dir, key, scan, self.tokenizer)
        layout = [(s.first_doc, s.documents) for s in scan.shards]
        corpus = TokenizedCorpus(key, builder.folder, layout, builder.parts, hit=False)
        corpus.cond = self.cond
        corpus.seconds = time.perf_counter() - tic
        job = _Job(scan, label, builder, corpus)
        for part in builder.parts:
            if part is not None:
                job.tokens += part.n_tokens
                job.documents += part.documents
        job.chars = sum(s.chars for s, p in zip(scan.shards, builder.parts, strict=True) if p)
        self._jobs.append(job)
        if builder.complete:  # an earlier run left every part: publish now
            self._publish(job)
        return corpus

    def plan(self, items: Iterable[tuple[TokenizedCorpus, int]]) -> None:
        """The order to tokenize shards in (each a corpus and a shard index), best first;
        whatever it leaves out comes after, in file order."""
        jobs = {id(job.corpus): job for job in self._jobs}
        with self.cond:
            self._plan = [(jobs[id(c)], k) for c, k in items if id(c) in jobs]

    @property
    def pending(self) -> bool:
        return any(not job.published for job in self._jobs)

    def start(self) -> None:
        """Tokenize what is missing in a background thread."""
        if self._thread is None and self.pending:
            self.stats.started = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="tokenizer", daemon=True)
            self._thread.start()

    def run_here(self, should_stop: StopFn | None = None) -> None:
        """Tokenize everything that is missing in this thread (StopRequested on a stop)."""
        stop = should_stop or (lambda: False)
        self.stats.started = time.perf_counter()
        self._here = True
        try:
            while (item := self._next()) is not None:
                try:
                    self._work(*item, stop)
                except Stopped:
                    raise StopRequested(f"stopped while tokenizing the {item[0].label}") from None
        finally:
            self._here = False
        self.say_progress(final=True)

    # -- waiting for shards ---------------------------------------------------------------

    def wait(
        self,
        corpus: TokenizedCorpus,
        first_doc: int,
        end_doc: int,
        *,
        should_stop: StopFn | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        """Until documents first_doc..end_doc-1 of the corpus are tokenized (their shards go
        first). StopRequested when `should_stop` says so; the worker's error, if it
        failed."""
        if corpus.ready(first_doc, end_doc):
            return
        job = next(j for j in self._jobs if j.corpus is corpus)
        wanted = [(job, i) for i in corpus.parts_of(first_doc, end_doc)]
        with self.cond:
            self._demand = [*wanted, *self._demand]
            self.cond.notify_all()
        while not corpus.ready(first_doc, end_doc):
            if self._thread is None or not self._thread.is_alive():
                if self._error is not None:
                    raise self._error
                if self._stop.is_set():
                    raise RuntimeError("the tokenization was closed")
                item = self._next()
                if item is None:
                    raise RuntimeError(f"{corpus.key}: documents {first_doc}-{end_doc} missing")
                try:
                    self._work(*item, should_stop or (lambda: False))
                except Stopped:
                    raise StopRequested(f"stopped while tokenizing the {item[0].label}") from None
                continue
            with self.cond:
                self.cond.wait(_WAIT_POLL_S)
            if self._error is not None:
                raise self._error
            if should_stop is not None and should_stop():
                raise StopRequested("stopped while waiting for the corpus to be tokenized")
            if on_wait is not None:
                on_wait()

    # -- the work -------------------------------------------------------------------------

    def _next(self) -> tuple[_Job, int] | None:
        with self.cond:
            for queue in (self._demand, self._plan):
                while queue:
                    job, k = queue[0]
                    if job.corpus.parts[k] is None:
                        return job, k
                    queue.pop(0)
        for job in self._jobs:
            for k, part in enumerate(job.corpus.parts):
                if part is None:
                    return job, k
        return None

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and (item := self._next()) is not None:
                self._work(*item, self._stop.is_set)
        except Stopped:
            pass
        except BaseException as exc:  # handed to whoever waits
            self._error = exc
        finally:
            with self.cond:
                self.cond.notify_all()

    def _work(self, job: _Job, index: int, stop: StopFn) -> None:
        tic = time.perf_counter()
        if job.scan.seekable:
            self._write(job, index, job.scan.shard_documents(index), stop)
        else:  # in file order, through one reader
            if job.reader is None:
                job.reader = job.scan.documents_from(0, None)
            while job.next_shard <= index:
                k = job.next_shard
                docs = _take(job.reader, job.scan.shards[k].documents)
                if job.corpus.parts[k] is None:
                    self._write(job, k, docs, stop)
                else:
                    for _ in docs:  # done by an earlier run: read past it
                        pass
                job.next_shard += 1
        self.stats.busy += time.perf_counter() - tic
        job.seconds += time.perf_counter() - tic

    def _write(self, job: _Job, index: int, docs: Iterator[str], stop: StopFn) -> None:
        def on_batch(chars: int, tokens: int) -> None:
            with self.cond:
                job.chars += chars
                job.tokens += tokens
                self.stats.chars += chars
                self.stats.tokens += tokens
            if self._here:
                self.say_progress()

        part = job.builder.write_part(index, docs, stop, self.batch_chars, on_batch)
        with self.cond:
            job.corpus.parts[index] = part
            job.done_here += 1
            job.documents += part.documents
        if job.builder.complete:
            self._publish(job)
        with self.cond:
            self.cond.notify_all()

    def _publish(self, job: _Job) -> None:
        final = job.builder.publish()
        with self.cond:
            job.corpus.path = final
            job.published = True
            if not self.pending:
                self.stats.finished = time.perf_counter()

    def close(self) -> None:
        """Stop the worker (after its current batch) and let go of unfinished entries (a
        partial entry keeps its parts for the next run)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for job in self._jobs:
            if not job.published:
                job.builder.release()

    # -- progress -------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return not self.pending

    def failed(self) -> BaseException | None:
        return self._error

    def snapshot(self) -> dict[str, Any]:
        """Where tokenizing stands, per corpus (by label)."""
        with self.cond:
            now = self.stats.finished or time.perf_counter()
            seconds = max(1e-9, now - self.stats.started)
            corpora = {
                job.label: {
                    "key": job.corpus.key,
                    "shards": job.shards,
                    "shards_done": job.shards_done,
                    "documents": job.scan.documents,
                    "documents_done": job.documents,
                    "chars": job.scan.chars,
                    "chars_done": job.chars,
                    "tokens_done": job.tokens,
                    "done": job.published,
                }
                for job in self._jobs
            }
            return {
                "done": not self.pending,
                "seconds": round(seconds, 3),
                "tokens": self.stats.tokens,
                "tokens_per_second": round(self.stats.tokens / seconds, 1),
                "corpora": corpora,
            }

    def say_progress(self, final: bool = False) -> None:
        """A progress line every few seconds while a large corpus tokenizes, and one when
        it is done (quiet for small corpora)."""
        if self.progress is None:
            return
        big = sum(job.scan.chars for job in self._jobs) >= _PROGRESS_MIN_CHARS
        now = time.perf_counter()
        if not big or (not final and now - self.stats.last_line < _PROGRESS_EVERY_S):
            return
        self.stats.last_line = now
        snap = self.snapshot()
        chars = sum(c["chars"] for c in snap["corpora"].values())
        done = sum(c["chars_done"] for c in snap["corpora"].values())
        tokens = sum(c["tokens_done"] for c in snap["corpora"].values())
        if final or snap["done"]:
            self.progress(
                f"tokenized {tokens:,} tokens in {snap['seconds']:,.1f}s "
                f"({snap['tokens_per_second'] / 1e3:,.0f}k tok/s; cached for later runs)"
            )
            return
        share = done / max(1, chars)
        rate = self.stats.chars / max(1e-9, snap["seconds"])  # characters per second here
        eta = (chars - done) / rate if rate > 0 else float("nan")
        labels = ", ".join(c for c, v in snap["corpora"].items() if not v["done"])
        self.progress(
            f"tokenizing {labels}: {share:6.1%} of {chars / 1e6:,.0f}M chars, "
            f"{tokens / 1e6:,.1f}M tokens, {snap['tokens_per_second'] / 1e3:,.0f}k tok/s, "
            f"ETA {eta:,.0f}s"
        )


def _take(docs: Iterator[str], n: int) -> Iterator[str]:
    for _, doc in zip(range(n), docs, strict=False):
        yield doc


def load_or_tokenize(
    scan: CorpusScan,
    tokenizer: Any,
    tokenizer_fp: str,
    cache_dir: Path,
    *,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    label: str = "corpus",
) -> TokenizedCorpus:
    """The complete cached entry for this corpus and tokenizer, tokenizing it first (in
    this thread) if needed."""
    tokenization = Tokenization(tokenizer, tokenizer_fp, cache_dir, progress=progress)
    try:
        corpus = tokenization.add(scan, label)
        tokenization.run_here(should_stop)
    finally:
        tokenization.close()
    return corpus
