"""Packing, the token cache, the validation split and batch iteration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.contract.config import build_config
from training.contract.corpus import CorpusError, split_documents
from training.contract.corpus_formats import Start
from training.contract.errors import StopRequested
from training.trainer import tokenization
from training.trainer.corpus_scan import CorpusScan, Shard
from training.trainer.data import (
    DataError,
    EpochOrder,
    PackedSequences,
    RunData,
    TokenStream,
    corpus_run_data,
    fixed_batches,
    plan_total_steps,
    scan_inputs,
)
from training.trainer.mixture import single_source_batches
from training.trainer.token_cache import TokenizedCorpus, scan_corpus, tokenizer_fingerprint
from training.trainer.tokenization import load_or_tokenize


def _corpus(doc_lengths: list[int], eos: int = 0) -> TokenizedCorpus:
    """Synthetic tokenized corpus: document d is the tokens 1000*(d+1) + i, then EOS."""
    parts, offsets = [], [0]
    for d, n in enumerate(doc_lengths):
        parts.append(np.arange(n) + 1000 * (d + 1))
        parts.append(np.array([eos]))
        offsets.append(offsets[-1] + n + 1)
    tokens = np.concatenate(parts).astype(np.uint32)
    return TokenizedCorpus.single(tokens, np.asarray(offsets, np.int64), "k")


def _run_data(config: Any, corpus: TokenizedCorpus) -> RunData:
    """The data of a one-shard run on a synthetic corpus."""
    n = corpus.documents
    scan = CorpusScan((), "k", n, 0, shards=(Shard(0, n, 0, 0, Start(0, 1)),))
    return corpus_run_data(config, scan, corpus)


def _held_tokens(data: RunData, name: str = "val") -> set[int]:
    return {int(t) for tokens, _ in data.held_out[name].batches for t in tokens.ravel() if t}


def _config(**values: Any):
    base = {"model": "m", "data": "d", "max_seq_length": 16, "batch_size": 4}
    return build_config({**base, **values})[0]


def test_packing_trains_every_token_once_per_epoch_in_fixed_shapes() -> None:
    corpus = _corpus([3, 50, 7, 120, 1, 33])  # documents shorter and longer than L
    stream = TokenStream.from_ranges(corpus.tokens, [(0, corpus.n_tokens)])
    packed = PackedSequences(stream, 16)
    targets: list[int] = []
    batches = single_source_batches(packed, 4, seed=3)
    consumed = 0
    while consumed < len(packed):
        batch = next(batches)
        assert batch.tokens.shape == (4, 17) and batch.tokens.dtype == np.int32
        for row, (start, end) in zip(batch.tokens, batch.lengths, strict=True):
            assert start == 1  # mlx-lm's default_loss counts target steps start..end
            targets.extend(row[1 : end + 1].tolist())
        consumed += 4
    # Targets are every token but the stream's first, each exactly once (order shuffled;
    # the epoch's tail batch wraps into the next epoch, which we cut off here).
    first_epoch = targets[: packed.target_tokens]
    assert sorted(first_epoch) == sorted(corpus.tokens[1:].tolist())
    assert packed.target_tokens / corpus.n_tokens >= 0.98


def test_a_sequence_is_its_stream_window_across_segments() -> None:
    corpus = _corpus([10, 10, 10, 10])
    stream = TokenStream.from_documents(corpus, np.array([0, 2, 3]))  # document 1 held out
    assert len(stream) == 33
    expected = np.concatenate([corpus.tokens[0:11], corpus.tokens[22:44]])
    row = np.zeros(9, np.int32)
    packed = PackedSequences(stream, 8)
    for i in range(len(packed)):
        n = packed.fill(i, row)
        window = expected[i * 8 : i * 8 + 9]
        assert n == len(window) - 1
        assert row[: len(window)].tolist() == window.tolist()
        assert not row[len(window) :].any()


def test_order_is_a_function_of_seed_and_epoch_and_resumes_at_a_cursor() -> None:
    packed = PackedSequences(TokenStream.from_ranges(_corpus([300]).tokens, [(0, 301)]), 8)
    a = [
        b.tokens.copy()
        for _, b in zip(range(12), single_source_batches(packed, 4, seed=1), strict=False)
    ]
    resumed = single_source_batches(packed, 4, seed=1, start_cursor=5 * 4)
    for expected in a[5:]:
        assert np.array_equal(next(resumed).tokens, expected)
    other_seed = next(single_source_batches(packed, 4, seed=2)).tokens
    assert not np.array_equal(other_seed, a[0])
    order = EpochOrder(len(packed), seed=1)
    assert sorted(order.permutation(1).tolist()) == list(range(len(packed)))


def test_workers_split_each_global_batch() -> None:
    packed = PackedSequences(TokenStream.from_ranges(_corpus([200]).tokens, [(0, 201)]), 8)
    whole = next(single_source_batches(packed, 4, seed=0))
    halves = [next(single_source_batches(packed, 4, seed=0, rank=r, world=2)) for r in (0, 1)]
    assert np.array_equal(np.concatenate([h.tokens for h in halves]), whole.tokens)
    assert halves[0].targets == halves[1].targets == whole.targets
    with pytest.raises(ValueError):
        next(single_source_batches(packed, 3, seed=0, world=2))


def test_evaluation_batches_are_fixed_bounded_and_padded() -> None:
    packed = PackedSequences(TokenStream.from_ranges(_corpus([60]).tokens, [(0, 61)]), 8)
    assert len(packed) == 8
    every = fixed_batches(packed, 3, -1)
    assert len(every) == 3 and all(t.shape == (3, 9) for t, _ in every)
    assert every[-1][1][:, 1].tolist() == [8, 4, 0]  # short last sequence; padded row
    assert len(fixed_batches(packed, 3, 2)) == 2


def _tokens_of(packed: PackedSequences) -> set[int]:
    row = np.zeros(packed.seq_len + 1, np.int32)
    seen: set[int] = set()
    for i in range(len(packed)):
        packed.fill(i, row)
        seen.update(int(t) for t in row if t)
    return seen


def test_split_holds_out_whole_documents_independent_of_the_seed() -> None:
    held = split_documents(40, 0.1)
    assert len(held) == 4 and len(set(held.tolist())) == 4
    assert split_documents(40, 0.1).tolist() == held.tolist()
    assert len(split_documents(2, 0.01)) == 1 and len(split_documents(1, 0.5)) == 0
    corpus = _corpus([20] * 40)
    data = _run_data(_config(val_fraction=0.1, seed=5, val_batches=-1), corpus)
    val_docs = {t // 1000 for t in _held_tokens(data)}
    train_docs = {t // 1000 for t in _tokens_of(data.train.packed(0))}
    assert len(val_docs) == 4 and not (val_docs & train_docs)
    assert val_docs | train_docs == set(range(1, 41))
    report = data.report
    assert report["documents"] == 36 and report["validation"]["documents"] == 4
    assert {"documents", "tokens", "sequences", "tokens_per_step", "steps_per_epoch"} <= set(report)
    [source] = report["sources"]
    assert source["documents"] == 36 and source["weight"] == 1.0 and source["eval_key"] == "val"


def test_one_document_holds_out_its_tail() -> None:
    data = _run_data(_config(val_fraction=0.25), _corpus([99]))
    assert data.report["validation"]["tokens"] == 25
    assert len(data.train.packed(0).stream) == 75


def test_budget_in_epochs_and_tokens() -> None:
    report = {"sequences": 100, "tokens_per_step": 64}
    assert plan_total_steps(_config(epochs=1.5), report) == 38  # 150 sequences / 4 per step
    assert plan_total_steps(_config(train_tokens=1000), report) == 16
    assert plan_total_steps(_config(iters=7), report) == 7
    assert plan_total_steps(_config(), report) == 1000


# -- the token cache (real tokenizer of the tiny scratch model) --


@pytest.fixture(scope="module")
def tokenizer(tiny_assets: dict[str, Path]) -> Any:
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(tiny_assets["model"])


def test_cache_is_keyed_by_text_and_memory_mapped(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path]
) -> None:
    a = tmp_path / "a.txt"
    a.write_text("hello world\n" * 50)
    fp = tokenizer_fingerprint(tokenizer, tiny_assets["model"])
    cache = tmp_path / "cache"
    first = load_or_tokenize(scan_corpus([a]), tokenizer, fp, cache)
    assert not first.hit and isinstance(first.tokens, np.memmap)
    assert first.tokens[-1] == tokenizer.eos_token_id and first.documents == 1
    assert first.tokens[:-1].tolist() == tokenizer.encode("hello world\n" * 50)
    b = tmp_path / "renamed.md"  # same text elsewhere: same entry
    b.write_text(a.read_text())
    again = load_or_tokenize(scan_corpus([b]), tokenizer, fp, cache)
    assert again.hit and again.key == first.key
    a.write_text("different text")
    assert load_or_tokenize(scan_corpus([a]), tokenizer, fp, cache).key != first.key
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def test_large_corpus_prints_progress_and_can_be_stopped(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokenization, "_PROGRESS_MIN_CHARS", 0)
    monkeypatch.setattr(tokenization, "_PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(tokenization, "BATCH_CHARS", 1000)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"doc {i} " * 100}) + "\n" for i in range(30)))
    fp = tokenizer_fingerprint(tokenizer, tiny_assets["model"])
    lines: list[str] = []
    out = load_or_tokenize(
        scan_corpus([corpus]), tokenizer, fp, tmp_path / "c1", progress=lines.append
    )
    assert out.documents == 30 and any("tokenizing" in line and "ETA" in line for line in lines)
    with pytest.raises(StopRequested):
        load_or_tokenize(
            scan_corpus([corpus]), tokenizer, fp, tmp_path / "c2", should_stop=lambda: True
        )
    assert not any((tmp_path / "c2").iterdir())  # nothing half-written left behind


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "empty"),
        (b"   \n\n", "empty"),
        (b"text\x00\x01binary", "binary"),
        (b"caf\xe9 latin-1", "not UTF-8"),
    ],
)
def test_unusable_corpora_are_named_errors(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=fragment):
        scan_corpus([path])
    with pytest.raises(DataError) as info:
        scan_inputs(_config(data=str(path)), tmp_path)
    assert info.value.field == "data"


def test_inputs_pick_the_validation_source(tmp_path: Path) -> None:
    folder = tmp_path / "mlx"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"text": "a b c"}\n')
    (folder / "valid.jsonl").write_text('{"text": "d e f"}\n')
    assert scan_inputs(_config(data=str(folder)), tmp_path).valid_source == "valid.jsonl"
    other = tmp_path / "v.txt"
    other.write_text("held out")
    inputs = scan_inputs(_config(data=str(folder), valid_data=str(other)), tmp_path)
    assert inputs.valid is not None and inputs.valid.documents == 1
    sets = scan_inputs(_config(data=str(folder), eval_sets={"general": str(other)}), tmp_path)
    assert set(sets.eval_sets) == {"general"}
