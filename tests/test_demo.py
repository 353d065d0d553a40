"""The offline demo assets: built without network, valid as a run config, never overwritten."""

from __future__ import annotations

from pathlib import Path

from training.contract.config import build_config, read_yaml
from training.contract.corpus import find_corpus, read_documents
from training.demo import build_demo


def test_demo_assets_make_a_valid_config(tiny_assets):
    config, warnings = build_config(
        read_yaml(tiny_assets["config"]), check_paths=True, base_dir=tiny_assets["workspace"]
    )
    assert not warnings
    assert config.eval_sets == {"general": "corpora/general-prose.jsonl"}
    docs = list(read_documents(find_corpus(tiny_assets["corpus"]).train))
    # Long documents (median well over a sequence): the case packing exists for.
    assert sorted(map(len, docs))[len(docs) // 2] > 4 * config.max_seq_length
    assert list(read_documents(find_corpus(tiny_assets["general"]).train))


def test_build_demo_keeps_existing_files(tmp_path: Path, tiny_assets):
    config = tmp_path / "demo.yaml"
    config.write_text("# mine\n")
    paths = build_demo(tmp_path, size="tiny", domain_bytes=50_000, general_bytes=5_000)
    assert config.read_text() == "# mine\n"
    assert paths["model"].is_dir() and (paths["model"] / "config.json").is_file()


def test_demo_yaml_is_written_whole_or_not_at_all(tmp_path: Path, tiny_assets, monkeypatch):
    import os
    import shutil

    import pytest

    for key in ("corpus", "general", "model"):
        rel = Path(tiny_assets[key]).relative_to(tiny_assets["workspace"])
        copy = shutil.copytree if Path(tiny_assets[key]).is_dir() else shutil.copy
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        copy(tiny_assets[key], tmp_path / rel)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        build_demo(tmp_path, size="tiny")
    monkeypatch.undo()
    assert not [p.name for p in tmp_path.iterdir() if "demo.yaml" in p.name]
    build_demo(tmp_path, size="tiny")
    assert read_yaml(tmp_path / "demo.yaml")["fine_tune_type"] == "full"
