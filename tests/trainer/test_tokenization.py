"""Tokenizing in the background, part by part, with the tiny scratch model's tokenizer: the
parts hold the same tokens as one pass, the training order does not depend on how far
tokenizing got, and stopped or damaged builds are continued or redone."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.contract.config import build_config
from training.contract.corpus import CorpusError
from training.contract.errors import StopRequested
from training.trainer import corpus_scan
from training.trainer.data import Waiter, build_run_data, make_sources, scan_inputs
from training.trainer.mixture import MixState
from training.trainer.token_cache import TokenizedCorpus, scan_corpus, tokenizer_fingerprint
from training.trainer.tokenization import Tokenization


@pytest.fixture(scope="module")
def tokenizer(tiny_assets: dict[str, Path]) -> Any:
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(tiny_assets["model"])


@pytest.fixture
def small_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_scan, "SHARD_CHARS", 6_000)


def _docs(assets: dict[str, Path], key: str = "corpus") -> list[str]:
    return [json.loads(line)["text"] for line in assets[key].read_text().splitlines()]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    data = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _tokens(corpus: TokenizedCorpus, doc: int) -> list[int]:
    arrays, which, bounds = corpus.segments(np.asarray([doc]))
    return arrays[int(which[0])][bounds[0, 0] : bounds[0, 1]].tolist()


def _fp(tokenizer: Any, assets: dict[str, Path]) -> str:
    return tokenizer_fingerprint(tokenizer, assets["model"])


@pytest.mark.parametrize("name", ["c.jsonl", "c.jsonl.gz"])
def test_parts_tokenized_in_any_order_hold_each_documents_tokens(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path], small_shards: None, name: str
) -> None:
    docs = [d[:3000] for d in _docs(tiny_assets)] * 4  # 22 shards of 6,000 characters
    path = _write_jsonl(tmp_path / name, docs)
    scan = scan_corpus([path])
    assert len(scan.shards) > 10 and scan.seekable == (name == "c.jsonl")
    cache = tmp_path / "cache"
    tokenization = Tokenization(tokenizer, _fp(tokenizer, tiny_assets), cache)
    corpus = tokenization.add(scan, "corpus")
    tokenization.plan((corpus, k) for k in reversed(range(len(scan.shards))))
    tokenization.start()
    try:
        tokenization.wait(corpus, 0, 1)  # the first shard is wanted now: it goes first
        assert corpus.ready(0, 1)
        tokenization.wait(corpus, 0, scan.documents)
    finally:
        tokenization.close()
    eos = tokenizer.eos_token_id
    for d in (0, 7, len(docs) // 2, len(docs) - 1):
        assert _tokens(corpus, d) == [*tokenizer.encode(docs[d]), eos]
    assert corpus.path == cache / corpus.key and not list(cache.glob(".partial-*"))
    again = Tokenization(tokenizer, _fp(tokenizer, tiny_assets), cache)
    cached = again.add(scan, "corpus")
    assert cached.hit and cached.complete and cached.n_tokens == corpus.n_tokens
    assert _tokens(cached, 5) == _tokens(corpus, 5)


def _config(assets: dict[str, Path], **values: Any) -> Any:
    return build_config(
        {
            "model": str(assets["model"]),
            "data": [
                str(assets["corpus"]),
                {"path": str(assets["general"]), "weight": 0.25, "name": "general"},
            ],
            "max_seq_length": 32,
            "batch_size": 4,
            "val_batches": 3,
            **values,
        }
    )[0]


def _batches(
    config: Any, tokenizer: Any, fp: str, cache: Path, reverse: bool, n: int
) -> tuple[list[np.ndarray], dict[str, Any]]:
    inputs = scan_inputs(config, Path.cwd())
    tokenization = Tokenization(tokenizer, fp, cache)
    wait = Waiter(tokenization)
    try:
        corpora = {s.content_hash: tokenization.add(s, s.content_hash) for s in inputs.scans()}
        sources = make_sources(config, inputs, corpora, wait)
        plan = [(s.corpus, k) for s in sources for k in range(len(s.corpus.parts))]
        tokenization.plan(reversed(plan) if reverse else plan)
        tokenization.start()
        data = build_run_data(config, inputs, corpora, wait, sources=sources)
        batches = data.batches(config, MixState())
        rows = [next(batches).tokens for _ in range(n)]
        held = {name: [t.copy() for t, _ in h.batches] for name, h in data.held_out.items()}
        return rows, held
    finally:
        tokenization.close()


def test_what_trains_does_not_depend_on_how_far_tokenizing_got(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path], small_shards: None
) -> None:
    config = _config(tiny_assets)
    fp = _fp(tokenizer, tiny_assets)
    # Tokenized backwards while training reads forwards: every early shard is waited for.
    streamed, held = _batches(config, tokenizer, fp, tmp_path / "a", True, 300)
    cached, held_cached = _batches(config, tokenizer, fp, tmp_path / "a", False, 300)
    fresh, held_fresh = _batches(config, tokenizer, fp, tmp_path / "b", False, 300)
    for a, b, c in zip(streamed, cached, fresh, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)
    assert set(held) == {"val", "general"}
    for name in held:
        assert all(np.array_equal(a, b) for a, b in zip(held[name], held_cached[name], strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(held[name], held_fresh[name], strict=True))


def test_a_stopped_build_keeps_its_parts_and_a_damaged_part_is_redone(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path], small_shards: None
) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", [d[:3000] for d in _docs(tiny_assets)] * 3)
    scan = scan_corpus([path])
    cache, fp = tmp_path / "cache", _fp(tokenizer, tiny_assets)
    first = Tokenization(tokenizer, fp, cache)
    corpus = first.add(scan, "corpus")
    with pytest.raises(StopRequested):
        first.run_here(lambda: sum(p is not None for p in corpus.parts) >= 5)
    first.close()
    [partial] = cache.glob(".partial-*")
    assert sorted(p.name for p in partial.glob("part-*.npy")) == [
        f"part-0000{i}.npy" for i in range(5)
    ]
    (partial / "part-00002.npy").unlink()  # a crash between a part's two renames
    (partial / ".part-00005.bin.tmp").write_bytes(b"half")  # a crash while writing
    second = Tokenization(tokenizer, fp, cache)
    again = second.add(scan, "corpus")
    assert [p is not None for p in again.parts[:6]] == [True, True, False, True, True, False]
    second.run_here()
    second.close()
    snap = second.snapshot()["corpora"]["corpus"]
    assert snap["done"] and snap["shards_done"] == len(scan.shards)
    assert second.stats.tokens < again.n_tokens  # the kept parts were not tokenized again
    assert not list(cache.glob(".partial-*")) and (cache / again.key / "meta.json").is_file()
    first_doc = json.loads(path.read_text().split("\n")[0])["text"]
    assert _tokens(again, 0) == [*tokenizer.encode(first_doc), tokenizer.eos_token_id]


def test_a_corpus_changed_since_its_scan_fails_naming_the_file(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path]
) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", ["one two three", "four five"])
    scan = scan_corpus([path])
    _write_jsonl(path, ["one two three", "four five six seven"])
    tokenization = Tokenization(tokenizer, _fp(tokenizer, tiny_assets), tmp_path / "cache")
    tokenization.add(scan, "corpus")
    with pytest.raises(CorpusError, match="changed since it was scanned") as info:
        tokenization.run_here()
    tokenization.close()
    assert str(path) in str(info.value)


def test_a_build_locked_by_another_writer_goes_to_a_private_folder(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path]
) -> None:
    path = _write_jsonl(tmp_path / "c.jsonl", _docs(tiny_assets, "general")[:5])
    scan = scan_corpus([path])
    cache, fp = tmp_path / "cache", _fp(tokenizer, tiny_assets)
    holder, other = Tokenization(tokenizer, fp, cache), Tokenization(tokenizer, fp, cache)
    a, b = holder.add(scan, "corpus"), other.add(scan, "corpus")
    assert a.path.name.startswith(".partial-") and b.path.name.startswith(".tmp-")
    other.run_here()
    other.close()
    holder.run_here()  # the same entry finished meanwhile: its own copy is dropped
    holder.close()
    assert sorted(p.name for p in cache.iterdir()) == [a.key]
    assert _tokens(a, 3) == _tokens(b, 3)
