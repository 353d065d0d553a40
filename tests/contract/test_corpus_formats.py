"""The formats a corpus comes in: each read as a stream, with a clear error for bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from training.contract.corpus import CorpusError, find_corpus, read_documents
from training.contract.corpus_formats import Start, content_kind, read_file, row_count

DOCS = [f"document {i} " + "word " * (i % 7) for i in range(40)]


def _jsonl_bytes(docs: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def write_corpus(folder: Path, kind: str, docs: list[str] = DOCS, field: str = "text") -> Path:
    """A corpus of `docs` in one format, as the tests of the trainer build them too."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        path = folder / "c.jsonl"
        path.write_bytes(_jsonl_bytes(docs, field))
    elif kind == "jsonl.gz":
        path = folder / "c.jsonl.gz"
        path.write_bytes(gzip.compress(_jsonl_bytes(docs, field)))
    elif kind == "jsonl.zst":
        path = folder / "c.jsonl.zst"
        path.write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(docs, field)))
    elif kind == "json":
        path = folder / "c.json"
        path.write_text(json.dumps([{field: d} for d in docs], indent=1))
    elif kind == "parquet":
        path = folder / "c.parquet"
        table = pa.table({field: docs, "id": list(range(len(docs)))})
        pq.write_table(table, path, row_group_size=7)  # several row groups
    elif kind == "hf":
        import datasets

        path = folder / "hf"
        datasets.Dataset.from_dict({field: docs}).save_to_disk(str(path))
    else:
        raise AssertionError(kind)
    return path


FORMATS = ["jsonl", "jsonl.gz", "jsonl.zst", "json", "parquet", "hf"]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_the_same_documents(tmp_path: Path, kind: str) -> None:
    path = write_corpus(tmp_path, kind)
    files = find_corpus(path)
    assert list(read_documents(files.train)) == DOCS


@pytest.mark.parametrize("kind", FORMATS)
def test_text_field_names_the_column(tmp_path: Path, kind: str) -> None:
    path = write_corpus(tmp_path, kind, field="content")
    assert list(read_documents(find_corpus(path).train, "content")) == DOCS
    with pytest.raises(CorpusError) as info:
        list(read_documents(find_corpus(path).train))
    message = str(info.value)
    assert "'text'" in message and "text_field" in message and "content" in message
    assert str(find_corpus(path).train[0]) in message  # names the file


def test_document_counts_are_the_rows_pyarrow_reports(tmp_path: Path) -> None:
    parquet = write_corpus(tmp_path / "p", "parquet")
    hf = write_corpus(tmp_path / "h", "hf")
    [arrow] = find_corpus(hf).train
    assert row_count(parquet) == pq.ParquetFile(parquet).metadata.num_rows == len(DOCS)
    assert row_count(arrow) == len(DOCS)
    assert sum(1 for _ in read_documents([parquet])) == len(DOCS)


def test_seekable_files_start_again_from_a_recorded_place(tmp_path: Path) -> None:
    for kind in ("jsonl", "parquet", "hf", "jsonl.gz", "json"):
        path = find_corpus(write_corpus(tmp_path / kind, kind)).train[0]
        docs = list(read_file(path))
        middle = docs[23]
        again = list(read_file(path, start=Start(middle.offset, middle.number, middle.part)))
        assert [d.text for d in again] == DOCS[23:], kind


def test_a_datasets_dict_trains_on_train_and_validates_on_validation(tmp_path: Path) -> None:
    import datasets

    folder = tmp_path / "dd"
    train = datasets.Dataset.from_dict({"text": DOCS[:30]})
    valid = datasets.Dataset.from_dict({"text": DOCS[30:]})
    test = datasets.Dataset.from_dict({"text": ["never read"]})
    datasets.DatasetDict({"train": train, "validation": valid, "test": test}).save_to_disk(
        str(folder)
    )
    files = find_corpus(folder)
    assert list(read_documents(files.train)) == DOCS[:30]
    assert list(read_documents(files.valid)) == DOCS[30:]


def test_the_datasets_cache_split_files(tmp_path: Path) -> None:
    """The Arrow files of ~/.cache/huggingface/datasets: NAME-train.arrow and its shards."""
    folder = tmp_path / "cache"
    folder.mkdir()
    for name, docs in (
        ("wiki-train-00000-of-00002.arrow", DOCS[:10]),
        ("wiki-train-00001-of-00002.arrow", DOCS[10:20]),
        ("wiki-validation.arrow", DOCS[20:25]),
        ("wiki-test.arrow", DOCS[25:]),
    ):
        table = pa.table({"text": docs})
        with (
            pa.OSFile(str(folder / name), "wb") as sink,
            pa.ipc.new_stream(sink, table.schema) as writer,
        ):
            writer.write_table(table, max_chunksize=3)
    (folder / "dataset_info.json").write_text("{}")
    files = find_corpus(folder)
    assert list(read_documents(files.train)) == DOCS[:20]
    assert list(read_documents(files.valid)) == DOCS[20:25]


def test_blank_and_null_texts_are_no_documents(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a", None, "  ", "b"]}), path)
    assert list(read_documents([path])) == ["a", "b"]
    array = tmp_path / "a.json"
    array.write_text('[{"text": "a"}, "plain string", {"text": null}, {"text": ""}]')
    assert list(read_documents([array])) == ["a", "plain string"]


def test_the_content_kind_keeps_legacy_hashes_and_names_other_fields() -> None:
    assert content_kind(Path("a.jsonl")) == "jsonl" and content_kind(Path("a.md")) == "text"
    assert content_kind(Path("a.jsonl"), "content") == "jsonl:content"
    assert content_kind(Path("a.txt"), "content") == "text"
    assert content_kind(Path("a.parquet")) == "parquet"


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("x.csv", b"text\nhello\n", "unsupported file type '.csv'"),
        ("d.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
        ("d.jsonl.gz", gzip.compress(b'{"text": "a"}\n')[:-9], "not a complete gzip file"),
        ("d.jsonl.gz", b"not gzip at all", "not a readable gzip file"),
        ("d.jsonl.zst", b"not zstd", "zstd"),
        ("d.json", b'{"text": "an object, not an array"}', "one array of records"),
        ("d.json", b'[{"text": "a"}, {"text": ', "invalid JSON"),
        ("d.json", b'[{"text": "a"} {"text": "b"}]', "expected ',' or ']'"),
        ("d.json", b'[{"text": 5}]', "must be text"),
        ("d.arrow", b"not arrow", "not a readable Arrow file"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(
    tmp_path: Path, name: str, content: bytes, fragment: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=fragment) as info:
        list(read_documents(find_corpus(path).train))
    assert str(path) in str(info.value)


def test_a_column_that_is_not_text_is_named(tmp_path: Path) -> None:
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3]}), path)
    with pytest.raises(CorpusError, match=r"column 'text' \(text_field\) holds int64"):
        list(read_documents([path]))


def test_a_json_array_is_parsed_one_record_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records longer than the read size are reassembled; the buffer never holds the file."""
    from training.contract import corpus_formats

    monkeypatch.setattr(corpus_formats, "_JSON_CHUNK", 64)
    docs = ["é" * 300, "short", "x" * 1000]
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": d} for d in docs * 20]))
    assert list(read_documents([path])) == docs * 20
