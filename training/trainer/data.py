"""Data for continued pre-training: validation split, packing, batches and the data report.

Documents (each followed by EOS) form one token stream that is cut into fixed-length
sequences: sequence i reads stream[i*L : i*L + L + 1] (inputs and shifted targets overlap
by one token), the last one is shorter and masked. Nothing is truncated away and every
batch has the same shape, so the compiled step traces once. The training order is the
sequence of per-epoch permutations drawn from (seed, epoch); a data cursor (sequences
consumed) is all a resume needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.contract.config import RunConfig, resolve_path
from training.contract.corpus import CorpusError, CorpusFiles, find_corpus, split_documents
from training.contract.errors import InputError
from training.contract.layout import Workspace
from training.trainer.token_cache import CorpusScan, TokenizedCorpus, scan_corpus

# -- token streams and packing ----------------------------------------------------------------


@dataclass(frozen=True)
class TokenStream:
    """A logical token sequence made of slices (segments) of one token array."""

    tokens: np.ndarray
    starts: np.ndarray  # int64: where each segment starts in `tokens`
    cum: np.ndarray  # int64: cumulative segment lengths, len(starts) + 1 entries

    @classmethod
    def from_ranges(cls, tokens: np.ndarray, ranges: list[tuple[int, int]]) -> TokenStream:
        merged: list[list[int]] = []
        for start, end in ranges:
            if end <= start:
                continue
            if merged and merged[-1][1] == start:
                merged[-1][1] = end
            else:
                merged.append([start, end])
        starts = np.asarray([m[0] for m in merged], dtype=np.int64)
        lengths = np.asarray([m[1] - m[0] for m in merged], dtype=np.int64)
        cum = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(tokens, starts, cum)

    @classmethod
    def from_documents(cls, corpus: TokenizedCorpus, doc_ids: np.ndarray) -> TokenStream:
        off = corpus.doc_offsets
        return cls.from_ranges(corpus.tokens, [(int(off[d]), int(off[d + 1])) for d in doc_ids])

    def __len__(self) -> int:
        return int(self.cum[-1])

    def read(self, start: int, count: int, out: np.ndarray) -> int:
        """Copy up to `count` tokens from logical position `start` into `out`; returns how
        many were copied (fewer at the end of the stream)."""
        count = max(0, min(count, len(self) - start))
        done = 0
        seg = int(np.searchsorted(self.cum, start, side="right")) - 1
        while done < count:
            offset = start + done - int(self.cum[seg])
            take = min(count - done, int(self.cum[seg + 1] - self.cum[seg]) - offset)
            base = int(self.starts[seg]) + offset
            out[done : done + take] = self.tokens[base : base + take]
            done += take
            seg += 1
        return done


@dataclass(frozen=True)
class PackedSequences:
    """Fixed-length windows over a stream: L inputs and L targets each (the last shorter)."""

    stream: TokenStream
    seq_len: int

    def __len__(self) -> int:
        n = len(self.stream)
        return 0 if n < 2 else math.ceil((n - 1) / self.seq_len)

    @property
    def target_tokens(self) -> int:
        """Tokens that are predicted once per pass: all but the stream's first."""
        return max(0, len(self.stream) - 1)

    def fill(self, index: int, row: np.ndarray) -> int:
        """Write sequence `index` into `row` (length L+1, zero-padded); returns its number
        of targets."""
        got = self.stream.read(index * self.seq_len, self.seq_len + 1, row)
        row[got:] = 0
        return max(0, got - 1)


@dataclass
class Batch:
    tokens: np.ndarray  # int32 (rows, L + 1)
    lengths: np.ndarray  # int32 (rows, 2): targets counted from step lengths[:,0] to [:,1]
    cursor: int  # sequences consumed once this batch is done (global, all ranks)
    targets: int  # target tokens in this batch across all ranks


def _empty_batch(rows: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((rows, seq_len + 1), dtype=np.int32)
    lengths = np.zeros((rows, 2), dtype=np.int32)
    lengths[:, 0] = 1  # mlx-lm's default_loss counts target steps lengths[:,0]..lengths[:,1]
    return tokens, lengths


class EpochOrder:
    """Sequence index at a global cursor: epoch e is a permutation drawn from (seed, e)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        if n <= 0:
            raise ValueError("no sequences to order")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._epoch = -1
        self._perm = np.arange(0)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            self._epoch = epoch
        return self._perm

    def __getitem__(self, cursor: int) -> int:
        return int(self.permutation(cursor // self.n)[cursor % self.n])


def iterate_batches(
    packed: PackedSequences,
    batch_size: int,
    *,
    seed: int,
    start_cursor: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Batch]:
    """Endless training micro-batches from `start_cursor`. Each holds `batch_size` global
    sequences, of which this rank gets its contiguous share, so the data trained does not
    depend on the number of workers."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by {world} workers")
    local = batch_size // world
    order = EpochOrder(len(packed), seed)
    cursor = start_cursor
    while True:
        tokens, lengths = _empty_batch(local, packed.seq_len)
        targets = 0
        for j in range(batch_size):
            index = order[cursor + j]
            if rank * local <= j < (rank + 1) * local:
                lengths[j - rank * local, 1] = packed.fill(index, tokens[j - rank * local])
                targets += int(lengths[j - rank * local, 1])
            else:
                targets += _targets_of(packed, index)
        cursor += batch_size
        yield Batch(tokens, lengths, cursor, targets)


def _targets_of(packed: PackedSequences, index: int) -> int:
    start = index * packed.seq_len
    return max(0, min(packed.seq_len + 1, len(packed.stream) - start) - 1)


def fixed_batches(
    packed: PackedSequences, batch_size: int, max_batches: int, rank: int = 0, world: int = 1
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The evaluation set: the first `max_batches` batches in stream order (-1: all), built
    once. A short last batch is padded with empty, fully masked rows (same shape)."""
    local = batch_size // world
    n_batches = math.ceil(len(packed) / batch_size)
    if max_batches != -1:
        n_batches = min(n_batches, max_batches)
    out = []
    for b in range(n_batches):
        tokens, lengths = _empty_batch(local, packed.seq_len)
        for r in range(local):
            index = b * batch_size + rank * local + r
            if index < len(packed):
                lengths[r, 1] = packed.fill(index, tokens[r])
        out.append((tokens, lengths))
    return out


# -- inputs: which files, checked before anything is created ------------------------------------


@dataclass(frozen=True)
class DataInputs:
    """The corpus files of a run, each read once and fingerprinted (see scan_inputs)."""

    train: CorpusScan
    valid: CorpusScan | None
    valid_source: str
    eval_sets: dict[str, CorpusScan] = field(default_factory=dict)


class DataError(InputError):
    """Bad data input, naming the config field it came from."""


def _find(value: str, base_dir: Path, field_name: str) -> CorpusFiles:
    try:
        return find_corpus(resolve_path(value, base_dir))
    except CorpusError as exc:
        raise DataError(str(exc), field_name) from None


def _scan(
    files: tuple[Path, ...], field_name: str, label: str, memo_dir: Path | None
) -> CorpusScan:
    try:
        return scan_corpus(files, label, memo_dir)
    except CorpusError as exc:
        raise DataError(str(exc), field_name) from None


def scan_memo_dir(workspace: Workspace) -> Path:
    """Where token_cache.remember_scan records scanned corpora: beside the token cache, not
    in it (the console lists and deletes the cache's entries)."""
    return workspace.cache_dir / "scans"


def scan_inputs(config: RunConfig, base_dir: Path, memo_dir: Path | None = None) -> DataInputs:
    """Find and read every corpus the run uses; DataError names the field at fault.
    `memo_dir`: token_cache.remember_scan's records (files scanned before, unchanged)."""
    corpus = _find(config.data, base_dir, "data")
    train = _scan(corpus.train, "data", "training corpus", memo_dir)
    valid: CorpusScan | None = None
    if config.valid_data:
        vfiles = _find(config.valid_data, base_dir, "valid_data")
        files = vfiles.valid or vfiles.train
        valid = _scan(files, "valid_data", "validation data", memo_dir)
        source = str(config.valid_data)
    elif corpus.valid:
        valid = _scan(corpus.valid, "data", "validation file", memo_dir)
        source = str(corpus.valid[0].name)
    elif config.val_fraction > 0:
        source = f"{config.val_fraction:g} of the documents held out"
    else:
        source = "none"
    sets = {}
    for name, path in (config.eval_sets or {}).items():
        found = _find(path, base_dir, "eval_sets")
        sets[name] = _scan(found.valid or found.train, "eval_sets", f"eval set '{name}'", memo_dir)
    return DataInputs(train, valid, source, sets)


# -- the run's data ---------------------------------------------------------------------------


@dataclass
class RunData:
    train: PackedSequences
    val: PackedSequences | None
    eval_sets: dict[str, PackedSequences]
    report: dict[str, Any]


def build_run_data(
    config: RunConfig,
    train: TokenizedCorpus,
    valid: TokenizedCorpus | None,
    eval_sets: dict[str, TokenizedCorpus],
    *,
    valid_source: str,
    world: int = 1,
) -> RunData:
    """Split, pack and describe the data (the report goes to data_report.json and run_start)."""
    seq_len = config.max_seq_length
    held_out = np.zeros(0, dtype=np.int64)
    val_stream: TokenStream | None = None
    if valid is not None:
        val_stream = TokenStream.from_ranges(valid.tokens, [(0, valid.n_tokens)])
        train_stream = TokenStream.from_ranges(train.tokens, [(0, train.n_tokens)])
    elif config.val_fraction > 0 and train.documents >= 2:
        held_out = split_documents(train.documents, config.val_fraction)
        keep = np.setdiff1d(np.arange(train.documents), held_out)
        train_stream = TokenStream.from_documents(train, keep)
        val_stream = TokenStream.from_documents(train, held_out)
    elif config.val_fraction > 0:  # one document: hold out its tail instead
        cut = max(2, int(train.n_tokens * (1 - config.val_fraction)))
        train_stream = TokenStream.from_ranges(train.tokens, [(0, cut)])
        val_stream = TokenStream.from_ranges(train.tokens, [(cut, train.n_tokens)])
        valid_source = f"last {config.val_fraction:g} of the only document's tokens"
    else:
        train_stream = TokenStream.from_ranges(train.tokens, [(0, train.n_tokens)])
    packed = PackedSequences(train_stream, seq_len)
    if len(packed) == 0:
        raise DataError("the training corpus has fewer than 2 tokens; add more text", "data")
    val = PackedSequences(val_stream, seq_len) if val_stream is not None else None
    if val is not None and len(val) == 0:
        val = None
    sets = {
        name: PackedSequences(TokenStream.from_ranges(tc.tokens, [(0, tc.n_tokens)]), seq_len)
        for name, tc in eval_sets.items()
    }
    seqs_per_step = config.batch_size * config.grad_accumulation_steps
    val_batches = _n_batches(val, config.batch_size, config.val_batches)
    report: dict[str, Any] = {
        "documents": train.documents - len(held_out),
        "tokens": len(train_stream),
        "sequences": len(packed),
        "tokens_per_step": seqs_per_step * seq_len,
        "steps_per_epoch": math.ceil(len(packed) / seqs_per_step),
        "max_seq_length": seq_len,
        "packing": "documents joined with EOS, cut into fixed-length sequences (no truncation)",
        "target_tokens_per_epoch": packed.target_tokens,
        "trained_share": packed.target_tokens / max(1, len(train_stream)),
        "world_size": world,
        "validation": {
            "source": valid_source if val is not None else "none",
            "documents": 0 if val is None else valid.documents if valid else len(held_out),
            "tokens": len(val.stream) if val is not None else 0,
            "sequences": len(val) if val is not None else 0,
            "batches": val_batches,
        },
        "eval_sets": {
            name: {
                "documents": eval_sets[name].documents,
                "tokens": len(p.stream),
                "sequences": len(p),
                "batches": _n_batches(p, config.batch_size, config.val_batches),
            }
            for name, p in sets.items()
        },
        "cache": {
            name: {"key": tc.key, "hit": tc.hit, "seconds": round(tc.seconds, 3)}
            for name, tc in [("train", train), ("valid", valid), *eval_sets.items()]
            if tc is not None
        },
    }
    return RunData(packed, val, sets, report)


def _n_batches(packed: PackedSequences | None, batch_size: int, limit: int) -> int:
    if packed is None or len(packed) == 0:
        return 0
    n = math.ceil(len(packed) / batch_size)
    return n if limit == -1 else min(n, limit)


def plan_total_steps(config: RunConfig, report: dict[str, Any]) -> int:
    """Optimizer steps for the run's budget (iters, epochs or train_tokens)."""
    iters = config.effective_iters
    if iters is not None:
        return int(iters)
    seqs_per_step = config.batch_size * config.grad_accumulation_steps
    if config.epochs is not None:
        return max(1, math.ceil(config.epochs * report["sequences"] / seqs_per_step))
    return max(1, math.ceil(config.train_tokens / report["tokens_per_step"]))


def format_report(report: dict[str, Any]) -> str:
    """The data report for a person: a few aligned lines."""
    val = report["validation"]
    lines = [
        "data:",
        f"  training   {report['documents']:,} documents, {report['tokens']:,} tokens "
        f"-> {report['sequences']:,} sequences of {report['max_seq_length']} "
        f"({report['trained_share']:.2%} of tokens trained per epoch)",
        f"  per step   {report['tokens_per_step']:,} tokens; "
        f"{report['steps_per_epoch']:,} steps per epoch",
        f"  validation {val['source']}: {val['tokens']:,} tokens, {val['batches']} batches",
    ]
    for name, s in report["eval_sets"].items():
        lines.append(f"  eval set   {name}: {s['tokens']:,} tokens, {s['batches']} batches")
    hits = [f"{k} {'hit' if v['hit'] else 'built'}" for k, v in report["cache"].items()]
    lines.append(f"  token cache {', '.join(hits)}")
    return "\n".join(lines)
