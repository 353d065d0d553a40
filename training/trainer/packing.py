"""Packing: documents (each followed by EOS) form a token stream that is cut into
fixed-length sequences, and the fixed evaluation batches.

Sequence i of a stream reads stream[i*L : i*L + L + 1] (inputs and shifted targets overlap
by one token), the last one is shorter and masked. Nothing is truncated away and every
batch has the same shape, so the compiled step traces once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from training.trainer.token_cache import TokenizedCorpus


@dataclass(frozen=True)
class TokenStream:
    """A logical token sequence made of slices (segments) of token arrays."""

    arrays: tuple[np.ndarray, ...]
    which: np.ndarray  # int64: the array each segment is a slice of
    starts: np.ndarray  # int64: where each segment starts in its array
    cum: np.ndarray  # int64: cumulative segment lengths, len(starts) + 1 entries

    @classmethod
    def from_ranges(cls, tokens: np.ndarray, ranges: list[tuple[int, int]]) -> TokenStream:
        bounds = np.asarray([r for r in ranges if r[1] > r[0]], dtype=np.int64).reshape(-1, 2)
        return cls._merged((tokens,), np.zeros(len(bounds), dtype=np.int64), bounds)

    @classmethod
    def from_documents(cls, corpus: TokenizedCorpus, doc_ids: np.ndarray) -> TokenStream:
        """The documents in the order given (each part they are in must be tokenized)."""
        arrays, which, bounds = corpus.segments(np.asarray(doc_ids, dtype=np.int64))
        return cls._merged(tuple(arrays), which, bounds)

    @classmethod
    def _merged(
        cls, arrays: tuple[np.ndarray, ...], which: np.ndarray, bounds: np.ndarray
    ) -> TokenStream:
        """Adjacent slices of one array become one segment."""
        if len(bounds):
            joins = (which[1:] == which[:-1]) & (bounds[1:, 0] == bounds[:-1, 1])
            heads = np.flatnonzero(np.concatenate([[True], ~joins]))
            tails = np.concatenate([heads[1:], [len(bounds)]]) - 1
            which, starts = which[heads], bounds[heads, 0]
            lengths = bounds[tails, 1] - starts
        else:
            starts = lengths = np.zeros(0, dtype=np.int64)
        cum = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(arrays, which.astype(np.int64), starts.astype(np.int64), cum)

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
            out[done : done + take] = self.arrays[int(self.which[seg])][base : base + take]
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

    def targets_of(self, index: int) -> int:
        start = index * self.seq_len
        return max(0, min(self.seq_len + 1, len(self.stream) - start) - 1)


@dataclass
class Batch:
    tokens: np.ndarray  # int32 (rows, L + 1)
    lengths: np.ndarray  # int32 (rows, 2): targets counted from step lengths[:,0] to [:,1]
    cursor: int  # sequences consumed once this batch is done (global, all ranks)
    targets: int  # target tokens in this batch across all ranks
    # Once this batch is done (global, all ranks), per source: target tokens drawn, and
    # sequences drawn (the source's own cursor).
    tokens_by_source: dict[str, int] = field(default_factory=dict)
    source_cursors: dict[str, int] = field(default_factory=dict)


def empty_batch(rows: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.zeros((rows, seq_len + 1), dtype=np.int32)
    lengths = np.zeros((rows, 2), dtype=np.int32)
    lengths[:, 0] = 1  # mlx-lm's default_loss counts target steps lengths[:,0]..lengths[:,1]
    return tokens, lengths


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
        tokens, lengths = empty_batch(local, packed.seq_len)
        for r in range(local):
            index = b * batch_size + rank * local + r
            if index < len(packed):
                lengths[r, 1] = packed.fill(index, tokens[r])
        out.append((tokens, lengths))
    return out


def n_batches(packed: PackedSequences | None, batch_size: int, limit: int) -> int:
    if packed is None or len(packed) == 0:
        return 0
    n = math.ceil(len(packed) / batch_size)
    return n if limit == -1 else min(n, limit)
