"""Loading the base model, choosing what trains and saving final/ (real MLX, tiny model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.contract.config import build_config
from training.trainer import model_setup


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


def test_a_hub_id_is_resolved_once(
    tiny_assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlx_lm.utils

    real = mlx_lm.utils._download
    hub_lookups: list[str] = []

    def download(path_or_repo: str, *args: object, **kwargs: object) -> Path:
        if not Path(path_or_repo).exists():  # a hub id: what would go to the network
            hub_lookups.append(path_or_repo)
            return Path(tiny_assets["model"])
        return real(path_or_repo, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mlx_lm.utils, "_download", download)
    loaded = model_setup.load_base(_config(tiny_assets, model="org/tiny-model"), tmp_path)
    assert hub_lookups == ["org/tiny-model"] and loaded.path == Path(tiny_assets["model"])


def test_quantized_layers_that_full_fine_tuning_would_train(
    tiny_assets: dict[str, Path], quantized_model: Path, tmp_path: Path
) -> None:
    assets = {**tiny_assets, "model": quantized_model}
    loaded = model_setup.load_base(_config(assets, fine_tune_type="lora"), tmp_path)
    every = model_setup.quantized_to_train(loaded.model, _config(assets))
    names = {name for name, _ in every}
    # Both blocks' projections and the embedding.
    assert {
        "model.embed_tokens",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
    } <= names
    last = model_setup.quantized_to_train(loaded.model, _config(assets, num_layers=1))
    assert last and all(name.startswith("model.layers.1.") for name, _ in last)
    assert (
        model_setup.quantized_to_train(loaded.model, _config(assets, fine_tune_type="lora")) == []
    )
    name, module = last[0]
    assert (
        model_setup.describe_quantized(name, module)
        == f"{name}: QuantizedLinear, 4-bit, group size 32"
    )
    plain = model_setup.load_base(_config(tiny_assets), tmp_path)
    assert model_setup.quantized_to_train(plain.model, _config(tiny_assets)) == []
