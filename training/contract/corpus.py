"""Corpus discovery and reading: which files make a corpus, and their documents.

A corpus is one file of a supported format (corpus_formats.py: text, jsonl, jsonl.gz,
jsonl.zst, a JSON array, parquet, arrow), a folder of them (read recursively, in sorted
order so a corpus reads the same everywhere), an mlx-lm data folder (train.jsonl /
valid.jsonl), or a Hugging Face `datasets` folder: what `save_to_disk` writes (a Dataset,
or a DatasetDict whose train split trains and validation split validates) or the Arrow
files of the `datasets` cache (`<name>-train.arrow`, `<name>-validation.arrow`). Every
problem is a CorpusError whose message says what is wrong and how to fix it. The held-out
split lives here too: the trainer and the evaluation worker must agree on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.contract.corpus_formats import (
    SUPPORTED,
    TEXT_FIELD,
    TEXT_SUFFIXES,
    CorpusError,
    RawFn,
    file_kind,
    is_corpus_file,
    read_file,
)

__all__ = ["TEXT_SUFFIXES", "CorpusError", "CorpusFiles", "file_kind", "find_corpus"]

JSONL_SUFFIXES = (".jsonl",)
# Split files of the `datasets` cache and of Hugging Face parquet exports.
_SPLIT_FILE = re.compile(
    r"(?:^|.*[-_])(train|validation|valid|test)(?:-\d{5}-of-\d{5})?\.(?:arrow|parquet)$"
)


@dataclass(frozen=True)
class CorpusFiles:
    """The files of a corpus, and the separate validation file(s) if the layout has them."""

    root: Path
    train: tuple[Path, ...]
    valid: tuple[Path, ...] = ()

    def fingerprint(self) -> str:
        """Changes whenever any file's path, size or modification time changes."""
        both = f"{files_fingerprint(self.train)}:{files_fingerprint(self.valid)}"
        return hashlib.sha256(both.encode()).hexdigest()[:16]


def files_fingerprint(files: Iterable[Path]) -> str:
    """The identity of a list of files without reading them: path, inode, size, and the
    modification and change times (ctime changes with any write, and cannot be set back),
    so any edit, replacement or touch changes it."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(
            f"{f.resolve()}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode()
        )
    return h.hexdigest()[:32]


def find_corpus(path: str | Path) -> CorpusFiles:
    """Resolve a corpus path into its files; CorpusError when there is nothing usable."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CorpusError(f"corpus not found: {root}; give a text file or a folder of text files")
    if root.is_file():
        file_kind(root)  # CorpusError for a format we do not read
        return CorpusFiles(root, (root,))
    if not root.is_dir():
        raise CorpusError(f"{root} is neither a file nor a folder")
    train, valid = root / "train.jsonl", root / "valid.jsonl"
    if train.is_file():  # mlx-lm's layout
        return CorpusFiles(root, (train,), (valid,) if valid.is_file() else ())
    found = _hf_dataset(root)
    if found is not None:
        return found
    files = tuple(
        sorted(
            p
            for p in root.rglob("*")
            if p.is_file()
            and is_corpus_file(p)
            and file_kind(p) != "json"  # a folder's .json files are metadata, not corpora
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    )
    if not files:
        raise CorpusError(
            f"no text files in {root}; add {SUPPORTED} files (records with a text field)"
        )
    splits = _split_files(files)
    return splits if splits is not None else CorpusFiles(root, files)


def _hf_dataset(root: Path) -> CorpusFiles | None:
    """A folder `datasets.save_to_disk` wrote: a DatasetDict (dataset_dict.json and one
    folder per split) or a Dataset (state.json naming its Arrow files)."""
    splits_file = root / "dataset_dict.json"
    if splits_file.is_file():
        try:
            splits = json.loads(splits_file.read_text(encoding="utf-8"))["splits"]
            names = [str(s) for s in splits]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorpusError(f"{splits_file}: not a datasets split list ({exc})") from None
        if "train" not in names:
            raise CorpusError(
                f"{root}: a datasets DatasetDict without a 'train' split (it has "
                f"{', '.join(names) or 'none'}); give the folder of the split to train on"
            )
        valid = next((s for s in ("validation", "valid") if s in names), None)
        train = _hf_dataset(root / "train")
        if train is None:
            raise CorpusError(f"{root / 'train'}: not a saved datasets split (no state.json)")
        valid_files = _hf_dataset(root / valid) if valid else None
        return CorpusFiles(root, train.train, valid_files.train if valid_files else ())
    state = root / "state.json"
    if not state.is_file():
        return None
    try:
        data_files = json.loads(state.read_text(encoding="utf-8"))["_data_files"]
        files = tuple(root / str(entry["filename"]) for entry in data_files)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorpusError(f"{state}: not a datasets state file ({exc})") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise CorpusError(f"{root}: a saved datasets folder missing {', '.join(missing)}")
    return CorpusFiles(root, files)


def _split_files(files: tuple[Path, ...]) -> CorpusFiles | None:
    """The `datasets` cache's split files (NAME-train.arrow, NAME-validation.arrow, their
    -0000N-of-0000M shards; test is left out), when the folder holds a train split."""
    split: dict[str, list[Path]] = {}
    for f in files:
        m = _SPLIT_FILE.fullmatch(f.name)
        if m:
            split.setdefault(m.group(1), []).append(f)
    if not split.get("train"):
        return None
    valid = split.get("validation") or split.get("valid") or []
    return CorpusFiles(files[0].parent, tuple(split["train"]), tuple(valid))


def read_documents(
    files: tuple[Path, ...] | list[Path], text_field: str = TEXT_FIELD
) -> Iterator[str]:
    """Yield the non-empty documents of the files: a text file is one document, a record
    with a non-blank `text_field` is one document."""
    for path in files:
        for doc in read_file(path, text_field):
            yield doc.text


def read_file_documents(
    path: Path, raw: RawFn | None = None, text_field: str = TEXT_FIELD
) -> Iterator[str]:
    """The documents of one file; `raw` is given every byte read, as read, for the kinds
    that are read whole (text, jsonl, json; corpus_formats.hashes_while_reading)."""
    for doc in read_file(path, text_field, raw=raw):
        yield doc.text


# The validation split does not depend on the run's seed, so runs on one corpus are
# compared on the same held-out documents.
SPLIT_SEED = 20240611


def split_documents(n_docs: int, fraction: float) -> np.ndarray:
    """Ids of held-out documents: round(fraction * n), at least 1, never all."""
    if fraction <= 0 or n_docs < 2:
        return np.zeros(0, dtype=np.int64)
    n_val = min(n_docs - 1, max(1, round(fraction * n_docs)))
    rng = np.random.default_rng(SPLIT_SEED)
    return np.sort(rng.choice(n_docs, size=n_val, replace=False)).astype(np.int64)
