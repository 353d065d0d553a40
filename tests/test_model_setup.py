"""Loading the base model, choosing what trains and saving final/ (real MLX, tiny model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training import model_setup
from training.config import build_config


def _config(assets: dict[str, Path], **values: object):
    config, _ = build_config(
        {"model": str(assets["model"]), "data": str(assets["corpus"]), **values}
    )
    return config


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else 0


def test_save_final_leaks_no_descriptor_when_fsync_fails(
    tiny_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tiny_assets, fine_tune_type="lora", num_layers=1)
    loaded = model_setup.load_base(config, tmp_path)
    model_setup.prepare_trainable(loaded.model, config)

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    before = _open_fds()
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        model_setup.save_final(tmp_path / "final", loaded, config, "base")
    monkeypatch.undo()
    assert _open_fds() == before
    assert [p.name for p in tmp_path.iterdir()] == []  # no final/, no temporary folder
