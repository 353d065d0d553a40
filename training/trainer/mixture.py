"""The order sequences are trained in: each source's own order, and how batches draw from
the sources in proportion to their weights.

A source's order is a pure function of (seed, epoch, its index) and its shards' sizes:
epoch e visits the shards in an order drawn from (seed, e), GROUP of them at a time, and
shuffles the sequences of each group together. A source of one shard is one group: its
epoch is a permutation drawn from (seed, e) alone, as before shards existed. Reaching a
shard that is not tokenized yet only waits for it: the order never depends on how fast
tokenizing goes.

The sources are drawn by smooth weighted round-robin over trained tokens: each sequence
comes from the source furthest behind its share (its weight times the tokens so far, minus
its own tokens), in exact integer arithmetic, so over any window each source's share of
the tokens stays within about one sequence of its weight. The draw depends only on the
counts so far (state.json keeps them), so a resume continues it exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from training.trainer.packing import Batch, PackedSequences, empty_batch

GROUP = 4  # shards whose sequences are shuffled together
_SHARD_ORDER_TAG = 0x5A4D  # distinguishes the shard-order draw from the groups' draws
_WEIGHT_SCALE = 1 << 24


def _legacy_rng(seed: int, epoch: int, source: int) -> np.random.Generator:
    """The first source's one-shard order is drawn from (seed, epoch) alone, as the data
    order was before sources and shards: its runs resume exactly."""
    return np.random.default_rng([seed, epoch] if source == 0 else [seed, epoch, source])


class SourceOrder:
    """(shard, sequence in the shard) of a source's c-th trained sequence. `sizes(k)` is
    shard k's number of sequences (it may wait for the shard to be tokenized)."""

    def __init__(
        self,
        sizes: Callable[[int], int],
        n_shards: int,
        seed: int,
        source: int = 0,
        group: int = GROUP,
    ) -> None:
        if n_shards <= 0:
            raise ValueError("no shards to order")
        self.sizes, self.n_shards, self.seed, self.source = sizes, n_shards, seed, source
        self.group = group
        self._epoch_size: int | None = None
        self._reset()

    def _reset(self) -> None:
        self._epoch = 0
        self._epoch_start = 0
        self._g = -1
        self._group_start = 0
        self._shards = np.zeros(0, dtype=np.int64)
        self._local = np.zeros(0, dtype=np.int64)

    def shard_order(self, epoch: int) -> np.ndarray:
        if self.n_shards == 1:
            return np.zeros(1, dtype=np.int64)
        rng = np.random.default_rng([self.seed, epoch, self.source, _SHARD_ORDER_TAG])
        return rng.permutation(self.n_shards).astype(np.int64)

    def groups(self, epoch: int) -> list[np.ndarray]:
        order = self.shard_order(epoch)
        return [order[i : i + self.group] for i in range(0, self.n_shards, self.group)]

    def _load_group(self, epoch: int, g: int) -> None:
        shards = self.groups(epoch)[g]
        sizes = [self.sizes(int(k)) for k in shards]
        owner = np.repeat(shards, sizes)
        pieces = [np.arange(n, dtype=np.int64) for n in sizes]
        local = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        if self.n_shards == 1:
            perm = _legacy_rng(self.seed, epoch, self.source).permutation(len(owner))
        else:
            rng = np.random.default_rng([self.seed, epoch, self.source, 1 + g])
            perm = rng.permutation(len(owner))
        self._shards, self._local = owner[perm], local.astype(np.int64)[perm]

    def epoch_size(self) -> int:
        """Sequences per epoch (waits for every shard)."""
        if self._epoch_size is None:
            self._epoch_size = sum(self.sizes(k) for k in range(self.n_shards))
        return self._epoch_size

    def __getitem__(self, c: int) -> tuple[int, int]:
        if c < self._group_start or self._g < 0:
            self._reset()
            self._advance_group()
            if self._epoch_size is not None and c >= self._epoch_size:  # jump whole epochs
                if self._epoch_size == 0:
                    raise ValueError("the source has no sequences to train on")
                self._epoch = c // self._epoch_size
                self._epoch_start = self._group_start = self._epoch * self._epoch_size
                self._g = -1
                self._advance_group()
        empty_groups = 0
        while c >= self._group_start + len(self._shards):
            empty_groups = empty_groups + 1 if len(self._shards) == 0 else 0
            if empty_groups > self.n_shards:
                raise ValueError("the source has no sequences to train on")
            self._group_start += len(self._shards)
            self._advance_group()
        i = c - self._group_start
        return int(self._shards[i]), int(self._local[i])

    def _advance_group(self) -> None:
        self._g += 1
        if self._g == len(self.groups(self._epoch)):
            if self._epoch == 0:
                self._epoch_size = self._group_start - self._epoch_start
            self._epoch += 1
            self._epoch_start = self._group_start
            self._g = 0
        self._load_group(self._epoch, self._g)


@dataclass
class Feed:
    """One source as the batches draw from it."""

    name: str
    weight: float
    order: SourceOrder
    packed: Callable[[int], PackedSequences]  # shard → its sequences


@dataclass
class MixState:
    """Where the draw stands: sequences drawn in all, and per source its sequences and
    target tokens."""

    cursor: int = 0
    cursors: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def integer_weights(weights: Sequence[float]) -> list[int]:
    total = sum(weights)
    return [round(w / total * _WEIGHT_SCALE) for w in weights]


def mixed_batches(
    feeds: Sequence[Feed],
    batch_size: int,
    seq_len: int,
    *,
    start: MixState | None = None,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Batch]:
    """Endless training micro-batches. Each holds `batch_size` global sequences, of which
    this rank gets its contiguous share, so the data trained does not depend on the number
    of workers; each sequence is drawn from the source furthest behind its share."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by {world} workers")
    local = batch_size // world
    state = start or MixState()
    cursors = list(state.cursors) or [0] * len(feeds)
    if len(feeds) == 1 and not state.cursors:
        cursors = [state.cursor]
    drawn = list(state.tokens) or [0] * len(feeds)
    cursor = state.cursor
    weights = integer_weights([f.weight for f in feeds])
    scale = sum(weights)
    live = [i for i, w in enumerate(weights) if w > 0]
    names = [f.name for f in feeds]
    while True:
        tokens, lengths = empty_batch(local, seq_len)
        targets = 0
        for j in range(batch_size):
            if len(live) == 1:
                i = live[0]
            else:
                total = sum(drawn) + seq_len
                i = max(live, key=lambda s: (weights[s] * total - scale * drawn[s], -s))
            feed = feeds[i]
            shard, index = feed.order[cursors[i]]
            packed = feed.packed(shard)
            if rank * local <= j < (rank + 1) * local:
                n = packed.fill(index, tokens[j - rank * local])
                lengths[j - rank * local, 1] = n
            else:
                n = packed.targets_of(index)
            cursors[i] += 1
            drawn[i] += n
            targets += n
        cursor += batch_size
        yield Batch(
            tokens,
            lengths,
            cursor,
            targets,
            dict(zip(names, drawn, strict=True)),
            dict(zip(names, cursors, strict=True)),
        )


def single_source_batches(
    packed: PackedSequences,
    batch_size: int,
    *,
    seed: int,
    start_cursor: int = 0,
    rank: int = 0,
    world: int = 1,
    name: str = "data",
) -> Iterator[Batch]:
    """mixed_batches over one source of one shard: a permutation per epoch drawn from
    (seed, epoch)."""
    order = SourceOrder(lambda _: len(packed), 1, seed)
    feed = Feed(name, 1.0, order, lambda _: packed)
    start = MixState(start_cursor, [start_cursor], [0])
    return mixed_batches([feed], batch_size, packed.seq_len, start=start, rank=rank, world=world)
