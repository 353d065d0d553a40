"""The data order: sharded epochs from (seed, epoch), and batches drawn from weighted
sources, on synthetic streams (no MLX)."""

from __future__ import annotations

import numpy as np
import pytest

from training.trainer.data import EpochOrder
from training.trainer.mixture import Feed, MixState, SourceOrder, mixed_batches
from training.trainer.packing import PackedSequences, TokenStream

L = 8


def _packed(n_tokens: int, base: int) -> PackedSequences:
    """A stream whose tokens are base, base+1, ... (so a batch row tells where it came from)."""
    tokens = (np.arange(n_tokens) + base).astype(np.uint32)
    return PackedSequences(TokenStream.from_ranges(tokens, [(0, n_tokens)]), L)


def _source(name: str, weight: float, shard_tokens: list[int], index: int, seed: int = 3) -> Feed:
    shards = [_packed(n, 100_000 * (index + 1) + 10_000 * k) for k, n in enumerate(shard_tokens)]
    order = SourceOrder(lambda k: len(shards[k]), len(shards), seed, index)
    return Feed(name, weight, order, lambda k: shards[k])


def test_one_shard_is_the_order_from_before_shards() -> None:
    """A one-shard source is a permutation per epoch drawn from (seed, epoch) alone: runs
    from before shards resume in the same order."""
    order = SourceOrder(lambda _: 37, 1, seed=5)
    legacy = EpochOrder(37, seed=5)
    assert [order[c][1] for c in range(200)] == [legacy[c] for c in range(200)]
    assert {order[c][0] for c in range(200)} == {0}


def test_an_epoch_visits_every_sequence_of_every_shard_once_in_groups() -> None:
    sizes = [5, 0, 9, 3, 7, 4, 6, 2, 8, 1]
    order = SourceOrder(lambda k: sizes[k], len(sizes), seed=1, group=3)
    n = sum(sizes)
    for epoch in range(3):
        seen = [order[epoch * n + c] for c in range(n)]
        assert sorted(seen) == sorted((k, i) for k, size in enumerate(sizes) for i in range(size))
        # Groups of 3 shards (in the epoch's shard order) are trained one after another.
        groups = order.groups(epoch)
        where = {int(k): g for g, members in enumerate(groups) for k in members}
        assert [where[k] for k, _ in seen] == sorted(where[k] for k, _ in seen)
    assert order.shard_order(0).tolist() != order.shard_order(1).tolist()  # reshuffled
    # Random access (a resume) gives what walking there gave.
    again = SourceOrder(lambda k: sizes[k], len(sizes), seed=1, group=3)
    assert [again[c] for c in (100, 3, 57, 0, 140)] == [order[c] for c in (100, 3, 57, 0, 140)]


def test_sizes_are_asked_only_for_the_shards_reached() -> None:
    """Training can start once its first group is tokenized: nothing else is needed."""
    asked: set[int] = set()

    def size(k: int) -> int:
        asked.add(k)
        return 10

    order = SourceOrder(size, 12, seed=0, group=4)
    order[0]
    assert asked == set(order.groups(0)[0].tolist())


def _shares(batches: list, names: list[str], window: int) -> float:
    """The largest distance (in points) of a source's token share from its weight, over
    every window of `window` batches."""
    totals = [[b.tokens_by_source[n] for n in names] for b in batches]
    worst = 0.0
    for end in range(window, len(totals)):
        begin = totals[end - window]
        done = [totals[end][i] - begin[i] for i in range(len(names))]
        for i, weight in enumerate((0.8, 0.2)):
            worst = max(worst, abs(done[i] / sum(done) - weight) * 100)
    return worst


def test_two_sources_keep_their_shares_in_every_window_and_resume_exactly() -> None:
    feeds = [
        _source("domain", 0.8, [400, 333, 517, 90], 0),
        _source("general", 0.2, [123, 77], 1),  # short: repeated many times
    ]
    batches = [b for _, b in zip(range(600), mixed_batches(feeds, 2, L), strict=False)]
    assert _shares(batches, ["domain", "general"], 100) <= 1.0
    last = batches[-1]
    assert sum(last.tokens_by_source.values()) == sum(b.targets for b in batches)
    general_epoch = (123 - 1 + 7) // 8 + (77 - 1 + 7) // 8
    assert last.source_cursors["general"] > 5 * general_epoch  # its epochs went on
    # A resume at batch 250 from the counts a checkpoint keeps continues identically.
    at = batches[249]
    state = MixState(
        at.cursor,
        [at.source_cursors["domain"], at.source_cursors["general"]],
        [at.tokens_by_source["domain"], at.tokens_by_source["general"]],
    )
    fresh = [
        _source("domain", 0.8, [400, 333, 517, 90], 0),
        _source("general", 0.2, [123, 77], 1),
    ]
    resumed = mixed_batches(fresh, 2, L, start=state)
    for expected in batches[250:]:
        got = next(resumed)
        assert np.array_equal(got.tokens, expected.tokens)
        assert got.tokens_by_source == expected.tokens_by_source


def test_a_source_of_weight_zero_is_never_drawn_and_ranks_split_batches() -> None:
    feeds = [_source("domain", 1.0, [300, 300], 0), _source("held", 0.0, [100], 1)]
    batches = [b for _, b in zip(range(50), mixed_batches(feeds, 4, L), strict=False)]
    assert batches[-1].tokens_by_source["held"] == 0
    halves = [next(mixed_batches(feeds, 4, L, rank=r, world=2)) for r in (0, 1)]
    assert np.array_equal(np.concatenate([h.tokens for h in halves]), batches[0].tokens)
    assert halves[0].tokens_by_source == halves[1].tokens_by_source
    with pytest.raises(ValueError, match="divisible"):
        next(mixed_batches(feeds, 3, L, world=2))
