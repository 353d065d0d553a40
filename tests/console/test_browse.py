"""Path confinement, folder listings, corpus reports and caches, without the web layer."""

from __future__ import annotations

import json

import pytest

from training.console.browse import (
    PathError,
    confine,
    data_report,
    delete_caches,
    list_caches,
    list_folder,
    load_presets,
)
from training.contract.layout import Workspace


@pytest.fixture
def roots(tmp_path):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "a.txt").write_text("alpha document\n")
    (ws / "data" / "b.md").write_text("beta document\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    return ws, outside


@pytest.mark.parametrize(
    "path", ["../outside", "data/../../outside/secret.txt", "/etc/passwd", "data\x00", "", 5, None]
)
def test_confine_refuses_what_is_outside(roots, path):
    ws, _ = roots
    with pytest.raises(PathError):
        confine(path, [ws], ws)


def test_confine_resolves_symlinks(roots):
    ws, outside = roots
    (ws / "link").symlink_to(outside)
    (ws / "inner").symlink_to(ws / "data")
    with pytest.raises(PathError):
        confine("link/secret.txt", [ws], ws)
    assert confine("inner/a.txt", [ws], ws) == (ws / "data" / "a.txt").resolve()
    assert confine(str(outside), [ws, outside], ws) == outside.resolve()


def test_list_folder(roots):
    ws, _ = roots
    (ws / ".hidden").write_text("x")
    listing = list_folder("data", [ws], ws)
    assert [e["name"] for e in listing["entries"]] == ["a.txt", "b.md"]
    assert listing["parent"] == "." and listing["path"] == "data"
    assert list_folder(".", [ws], ws)["parent"] is None  # the root's parent is outside
    assert ".hidden" in [e["name"] for e in list_folder(".", [ws], ws, show_hidden=True)["entries"]]


def test_data_report(roots):
    ws, _ = roots
    report = data_report("data", [ws], ws)
    assert report["documents"] == 2 and report["files"] == 2 and report["estimated"]
    assert report["tokens_estimate"] == report["bytes"] // 4
    assert report["preview"] == "alpha document\n"
    (ws / "empty.txt").write_text("  \n")
    with pytest.raises(PathError, match="empty"):
        data_report("empty.txt", [ws], ws)


def test_caches(tmp_path):
    ws = Workspace(tmp_path)
    assert list_caches(ws) == []
    (ws.token_cache_dir / "one").mkdir(parents=True)
    (ws.token_cache_dir / "one" / "t.bin").write_bytes(b"1" * 10)
    (ws.token_cache_dir / "two.npy").write_bytes(b"2" * 20)
    assert [c["name"] for c in list_caches(ws)] == ["two.npy", "one"]
    with pytest.raises(PathError):
        delete_caches(ws, ["../../runs"])
    assert delete_caches(ws, None) == ["one", "two.npy"]
    assert list_caches(ws) == []


def test_a_cache_says_what_it_holds_and_one_being_written_is_not_listed(tmp_path):
    ws = Workspace(tmp_path)
    entry = ws.token_cache_dir / "abc123"
    entry.mkdir(parents=True)
    corpus = [str(tmp_path / "corpora" / "a.txt"), str(tmp_path / "corpora" / "b.txt")]
    (entry / "meta.json").write_text(json.dumps({"files": corpus, "documents": 7}))
    (ws.token_cache_dir / ".tmp-def456-4242").mkdir()  # a tokenization in progress
    [cache] = list_caches(ws)
    assert (cache["name"], cache["corpus"], cache["files"], cache["documents"]) == (
        "abc123",
        "corpora/a.txt",
        2,
        7,
    )
    with pytest.raises(PathError, match="no such cache"):
        delete_caches(ws, [".tmp-def456-4242"])
    assert (ws.token_cache_dir / ".tmp-def456-4242").is_dir()


def test_presets(tmp_path):
    (tmp_path / "demo.yaml").write_text("model: m\ndata: d\n")
    examples = tmp_path / "examples"
    examples.mkdir()
    (examples / "lora_local.yaml").write_text("model: x\n")
    (examples / "broken.yaml").write_text("model: [\n")
    presets = load_presets(tmp_path, examples)
    assert [p["name"] for p in presets] == ["demo", "broken", "lora_local"]
    assert presets[0]["config"] == {"model": "m", "data": "d"}
    assert presets[1]["config"] is None and "invalid YAML" in presets[1]["error"]
