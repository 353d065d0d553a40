"""The token cache survives crashes: durable entries, damaged ones rebuilt, dead temps swept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.trainer import corpus_scan, token_cache
from training.trainer.token_cache import scan_corpus, tokenizer_fingerprint
from training.trainer.tokenization import load_or_tokenize


@pytest.fixture(scope="module")
def tokenizer(tiny_assets: dict[str, Path]) -> Any:
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(tiny_assets["model"])


def _entry(tmp_path: Path, tokenizer: Any, assets: dict[str, Path], **kw: Any):
    text = tmp_path / "a.txt"
    if not text.exists():
        text.write_text("hello world\n" * 50)
    fp = tokenizer_fingerprint(tokenizer, assets["model"])
    return load_or_tokenize(scan_corpus([text]), tokenizer, fp, tmp_path / "cache", **kw)


def test_a_truncated_entry_is_rebuilt(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path]
) -> None:
    first = _entry(tmp_path, tokenizer, tiny_assets)
    expected = first.tokens.tolist()
    del first
    tokens = tmp_path / "cache" / _entry(tmp_path, tokenizer, tiny_assets).key / "part-00000.bin"
    with tokens.open("r+b") as f:  # a crash that lost the end of the file
        f.truncate(tokens.stat().st_size // 2)
    said: list[str] = []
    again = _entry(tmp_path, tokenizer, tiny_assets, progress=said.append)
    assert not again.hit and again.tokens.tolist() == expected
    assert any("damaged" in line for line in said)
    assert _entry(tmp_path, tokenizer, tiny_assets).hit


def test_files_and_folder_are_fsynced_before_the_rename(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[str] = []
    monkeypatch.setattr(token_cache, "fsync_path", lambda p: log.append(f"fsync {p.name}"))
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        log.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(token_cache.os, "rename", rename)
    entry = _entry(tmp_path, tokenizer, tiny_assets)
    assert log == [
        "fsync .partial.json.tmp",  # the layout of the parts being built
        "rename",
        "fsync .part-00000.bin.tmp",  # each part: both files, then renamed into place
        "fsync .part-00000.npy.tmp",
        "rename",
        "rename",
        "fsync meta.json",  # every part is there: the entry is published
        f"fsync .partial-{entry.key}",
        "rename",
        "fsync cache",
    ]


def test_temporary_folders_of_dead_writers_are_swept(
    tmp_path: Path, tokenizer: Any, tiny_assets: dict[str, Path]
) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    cache = tmp_path / "cache"
    stale = cache / f".tmp-0123abcd-{dead.stdout.strip()}"
    alive = cache / f".tmp-4567cdef-{os.getppid()}"  # a live writer's: left alone
    for folder in (stale, alive):
        folder.mkdir(parents=True)
        (folder / "tokens.bin").write_bytes(b"\0" * 10)
    _entry(tmp_path, tokenizer, tiny_assets)
    assert not stale.exists() and alive.exists()


def test_a_scan_that_served_a_run_is_not_read_again_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "one"}\n{"text": "two"}\n')
    memo = tmp_path / "scans"
    fresh = token_cache.scan_corpus([corpus], memo_dir=memo)
    token_cache.remember_scan(fresh, memo)  # written moments ago: not remembered
    assert not memo.exists()
    monkeypatch.setattr(corpus_scan, "_RACY_SECONDS", -1.0)  # (as if written long ago)
    first = token_cache.scan_corpus([corpus], memo_dir=memo)
    token_cache.remember_scan(first, memo)
    reads: list[Path] = []
    real = corpus_scan.read_file
    monkeypatch.setattr(
        corpus_scan, "read_file", lambda p, *a, **k: reads.append(p) or real(p, *a, **k)
    )
    again = token_cache.scan_corpus([corpus], memo_dir=memo)
    assert reads == [] and again == first
    corpus.write_text('{"text": "one"}\n{"text": "three"}\n')
    changed = token_cache.scan_corpus([corpus], memo_dir=memo)
    assert reads == [corpus] and changed.content_hash != first.content_hash
    assert (changed.documents, changed.chars) == (2, 8)
