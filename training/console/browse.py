"""Files the console may show: folder listings for the pickers, corpus previews and the
tokenization caches. Every path is confined to allowed roots after resolving symlinks.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.contract.corpus import CorpusError, find_corpus, read_documents
from training.contract.errors import InputError
from training.contract.layout import TOKEN_CACHE_META, Workspace
from training.contract.limits import path_problem

MAX_ENTRIES = 2000
PREVIEW_CHARS = 2000
# A data report reads at most this much text; beyond it the figures are extrapolated.
REPORT_BYTES = 64 * 1024 * 1024
# Rough bytes per token for English and code with a BPE tokenizer: an estimate only.
BYTES_PER_TOKEN = 4.0


class PathError(InputError):
    """A path outside the allowed roots, or not a path at all (HTTP 400)."""

    default_field = "path"


def confine(path: Any, roots: Sequence[Path], base: Path, field: str = "path") -> Path:
    """The real path of `path` (relative ones resolve against `base`), if it lies inside
    one of `roots` after resolving symlinks; PathError otherwise."""
    if not isinstance(path, str) or not path.strip():
        raise PathError("give a path as text", field)
    problem = path_problem(path)
    if problem:
        raise PathError(problem, field)
    # os.path's expanduser leaves `~nosuchuser` as it is; pathlib's raises RuntimeError.
    candidate = Path(os.path.expanduser(path.strip()))
    if not candidate.is_absolute():
        candidate = base / candidate
    real = Path(os.path.realpath(candidate))
    if _inside(real, roots):
        return real
    allowed = ", ".join(str(r) for r in roots)
    raise PathError(f"{path} is outside the folders the console may read ({allowed})", field)


def _inside(real: Path, roots: Sequence[Path]) -> bool:
    return any(real.is_relative_to(os.path.realpath(root)) for root in roots)


def display_path(real: Path, workspace: Path) -> str:
    """Workspace-relative when inside it (configs then move with the workspace)."""
    ws = Path(os.path.realpath(workspace))
    if real == ws:
        return "."
    return str(real.relative_to(ws)) if real.is_relative_to(ws) else str(real)


def list_folder(
    path: Any, roots: Sequence[Path], workspace: Path, show_hidden: bool = False
) -> dict[str, Any]:
    """A folder's entries for the model and corpus pickers."""
    folder = confine(path, roots, workspace)
    entries: list[dict[str, Any]] = []
    truncated = False
    try:
        if not folder.is_dir():
            raise PathError(f"{path} is not a folder")
        scanned = sorted(os.scandir(folder), key=lambda e: e.name.lower())
    except OSError as exc:
        raise PathError(f"{path}: {exc.strerror or exc}") from None
    for entry in scanned:
        if not show_hidden and entry.name.startswith("."):
            continue
        real = Path(os.path.realpath(entry.path))
        if not _inside(real, roots):
            continue  # a symlink out of the allowed roots is not shown
        try:
            is_dir = real.is_dir()
            size = None if is_dir else real.stat().st_size
        except OSError:
            continue
        if len(entries) >= MAX_ENTRIES:
            truncated = True
            break
        entries.append(
            {
                "name": entry.name,
                "path": display_path(real, workspace),
                "type": "dir" if is_dir else "file",
                "size": size,
                "is_model": is_dir and (real / "config.json").is_file(),
            }
        )
    parent = folder.parent
    parent_allowed = parent != folder and _inside(parent, roots)
    return {
        "path": display_path(folder, workspace),
        "absolute": str(folder),
        "parent": display_path(parent, workspace) if parent_allowed else None,
        "entries": entries,
        "truncated": truncated,
    }


def data_report(path: Any, roots: Sequence[Path], workspace: Path) -> dict[str, Any]:
    """Documents, bytes, an estimated token count and a preview of a corpus (read-only,
    no tokenizer: the trainer's data report has the exact figures)."""
    real = confine(path, roots, workspace, field="data")
    try:
        return _data_report(path, real, workspace)
    except OSError as exc:  # unreadable, a name the file system refuses, gone meanwhile
        raise PathError(f"{path}: {exc.strerror or exc}", "data") from None


def _data_report(path: str, real: Path, workspace: Path) -> dict[str, Any]:
    try:
        corpus = find_corpus(real)
    except CorpusError as exc:
        raise PathError(str(exc), "data") from None
    documents = total_bytes = 0
    preview = ""
    complete = True
    try:
        for doc in read_documents(corpus.train):
            if not preview:
                preview = doc[:PREVIEW_CHARS]
            documents += 1
            total_bytes += len(doc.encode("utf-8"))
            if total_bytes >= REPORT_BYTES:
                complete = False
                break
    except CorpusError as exc:
        raise PathError(str(exc), "data") from None
    if documents == 0:
        raise PathError(f"{path}: the corpus is empty (no non-blank documents)", "data")
    file_bytes = sum(f.stat().st_size for f in corpus.train)
    # Past REPORT_BYTES, extrapolate by file size (text bytes track file bytes closely).
    scale = 1.0 if complete else max(1.0, file_bytes / max(1, total_bytes))
    return {
        "path": display_path(real, workspace),
        "files": len(corpus.train),
        "valid_files": len(corpus.valid),
        "documents": int(documents * scale),
        "bytes": int(total_bytes * scale),
        "file_bytes": file_bytes,
        "tokens_estimate": int(total_bytes * scale / BYTES_PER_TOKEN),
        "estimated": True,
        "complete": complete,
        "preview": preview,
    }


# -- tokenization caches ----------------------------------------------------------------------


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for f in path.rglob("*"):
        try:
            if f.is_file() and not f.is_symlink():
                total += f.stat().st_size
        except OSError:
            continue
    return total


def list_caches(workspace: Workspace) -> list[dict[str, Any]]:
    """The tokenization caches (one entry per cached corpus+tokenizer), largest first,
    with what each holds (from its meta.json). Entries still being written (hidden temp
    folders of a tokenization in progress) are not listed, so never deleted."""
    root = workspace.token_cache_dir
    try:
        entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        path = Path(entry.path)
        try:
            mtime = path.lstat().st_mtime
        except OSError:
            continue
        out.append(
            {
                "name": entry.name,
                "path": display_path(path, workspace.root),
                "size": _tree_size(path),
                "modified": mtime,
                "age_seconds": max(0.0, time.time() - mtime),
                **_cache_contents(path, workspace.root),
            }
        )
    return sorted(out, key=lambda c: -c["size"])


def _cache_contents(entry: Path, workspace: Path) -> dict[str, Any]:
    """The corpus an entry tokenized (its first file, how many files and documents)."""
    try:
        meta = json.loads((entry / TOKEN_CACHE_META).read_text(encoding="utf-8"))
        files = [str(f) for f in meta["files"]]
        documents = int(meta["documents"])
    except (OSError, ValueError, TypeError, KeyError):
        return {"corpus": None, "files": None, "documents": None}
    corpus = display_path(Path(files[0]), workspace) if files else None
    return {"corpus": corpus, "files": len(files), "documents": documents}


def delete_caches(workspace: Workspace, names: Sequence[str] | None) -> list[str]:
    """Remove the named caches (all when `names` is None); only entries directly inside
    the token cache folder, never anything else."""
    root = workspace.token_cache_dir
    known = {c["name"] for c in list_caches(workspace)}
    targets = sorted(known) if names is None else list(names)
    unknown = [n for n in targets if n not in known]
    if unknown:
        raise PathError(f"no such cache: {', '.join(map(str, unknown))}", "names")
    removed = []
    for name in targets:
        path = root / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path)
        removed.append(name)
    return removed


# -- presets ----------------------------------------------------------------------------------


def load_presets(workspace: Path, examples: Path | None) -> list[dict[str, Any]]:
    """Ready-made configs for the new-run form: the workspace's demo.yaml (from --demo)
    and the project's examples/*.yaml. A preset that does not parse is listed with its
    error instead of its config."""
    from training.contract.config import ConfigError, read_yaml
    from training.contract.layout import DEMO_CONFIG

    sources: list[tuple[str, str, Path]] = []
    demo = workspace / DEMO_CONFIG
    if demo.is_file():
        sources.append(("demo", "Demo: a scratch model on Python source (offline)", demo))
    if examples is not None and examples.is_dir():
        for path in sorted(examples.glob("*.yaml")):
            sources.append((path.stem, path.stem.replace("_", " ").replace("-", " "), path))
    out: list[dict[str, Any]] = []
    for name, title, path in sources:
        entry: dict[str, Any] = {"name": name, "title": title, "source": str(path)}
        try:
            entry["config"] = read_yaml(path)
        except ConfigError as exc:
            entry["config"], entry["error"] = None, str(exc)
        out.append(entry)
    return out
