"""Corpus discovery: every supported layout, and a clear error for each bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from training.contract.corpus import CorpusError, find_corpus, read_documents


def load_documents(path: Path) -> list[str]:
    """A corpus's training documents, as the trainer's scan reads them."""
    return list(read_documents(find_corpus(path).train))


def test_single_text_file(tmp_path: Path):
    (tmp_path / "a.txt").write_text("hello world")
    assert load_documents(tmp_path / "a.txt") == ["hello world"]


def test_folder_is_read_recursively_in_sorted_order_skipping_hidden(tmp_path: Path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.md").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.txt").write_text("hidden")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "blank.txt").write_text("   \n")
    assert load_documents(tmp_path) == ["first", "second"]


def test_jsonl_lines_are_documents(tmp_path: Path):
    rows = [{"text": "one"}, {"text": ""}, {"text": "two", "meta": 1}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_documents(tmp_path / "d.jsonl") == ["one", "two"]


def test_mlx_lm_layout_has_separate_validation(tmp_path: Path):
    (tmp_path / "train.jsonl").write_text('{"text": "t"}\n')
    (tmp_path / "valid.jsonl").write_text('{"text": "v"}\n')
    (tmp_path / "extra.txt").write_text("not part of the mlx-lm layout")
    files = find_corpus(tmp_path)
    assert files.train == (tmp_path / "train.jsonl",)
    assert list(read_documents(files.valid)) == ["v"]


def test_fingerprint_changes_with_content(tmp_path: Path):
    path = tmp_path / "a.txt"
    path.write_text("one")
    before = find_corpus(path).fingerprint()
    path.write_text("one, two")
    assert find_corpus(path).fingerprint() != before


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p / "missing.txt", "corpus not found"),
        (lambda p: (p / "e").mkdir() or p / "e", "no text files"),
        (lambda p: (p / "x.pdf").write_bytes(b"%PDF") and p / "x.pdf", "unsupported file type"),
        (lambda p: (p / "b.txt").write_bytes(b"ab\0cd") and p / "b.txt", "looks binary"),
        (lambda p: (p / "l.txt").write_bytes(b"ok\ncaf\xe9") and p / "l.txt", "not UTF-8"),
        (lambda p: (p / "j.jsonl").write_text("{bad") and p / "j.jsonl", "invalid JSON"),
        (
            lambda p: (p / "c.jsonl").write_text('{"messages": []}') and p / "c.jsonl",
            "needs a 'text' field",
        ),
    ],
)
def test_bad_corpus_gets_a_clear_error(tmp_path: Path, make, fragment):
    with pytest.raises(CorpusError, match=fragment):
        load_documents(make(tmp_path))


def test_unreadable_file(tmp_path: Path):
    path = tmp_path / "secret.txt"
    path.write_text("x")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anything; the message path is still covered
            path.unlink()
            path.mkdir()
            with pytest.raises(CorpusError, match="no text files"):
                load_documents(path)
        else:
            with pytest.raises(CorpusError, match="permission denied"):
                load_documents(path)
    finally:
        path.chmod(0o700)


def test_jsonl_is_streamed_line_by_line_and_hashed_as_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from training.contract.corpus import read_file_documents

    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"doc {i}"}) + "\n" for i in range(3)]
    path.write_text("".join(lines) + "{broken\n")

    def whole_file(self: Path) -> bytes:
        raise AssertionError(f"{self} read whole")

    monkeypatch.setattr(Path, "read_bytes", whole_file)
    monkeypatch.setattr(Path, "read_text", whole_file)
    seen: list[bytes] = []
    docs = read_file_documents(path, seen.append)
    assert [next(docs), next(docs), next(docs)] == ["doc 0", "doc 1", "doc 2"]
    assert b"".join(seen) == "".join(lines).encode()  # the bytes as read, nothing re-encoded
    with pytest.raises(CorpusError, match=r"d.jsonl:4: invalid JSON"):
        next(docs)
