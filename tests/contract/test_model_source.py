"""Which folders make "base", "latest", a step or "final" of a run (no MLX)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from training.contract.checkpoints import write_bundle
from training.contract.layout import RunPaths, Workspace
from training.contract.model_source import (
    SourceError,
    checkpoint_names,
    latest_checkpoint,
    resolve_run_source,
    resolve_source,
    run_choices,
)


def _adapters(directory: Path) -> None:
    (directory / "adapters.safetensors").write_bytes(b"weights")
    (directory / "adapter_config.json").write_text('{"fine_tune_type": "lora"}')


def _run(root: Path, model: Path) -> RunPaths:
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}")
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(f"model: {model}\nfine_tune_type: lora\n")
    for step in (5, 10):
        write_bundle(root / "checkpoints", step, {}, _adapters)
    return RunPaths(root)


def test_latest_is_what_latest_json_says_and_nothing_is_guessed(tmp_path: Path) -> None:
    run = _run(tmp_path / "ws" / "runs" / "r1", tmp_path / "model")
    ws = Workspace(tmp_path / "ws")
    assert resolve_source(ws, "r1", "latest").checkpoint == "step-00000010"
    # A newer complete folder that latest.json does not name yet (a crash before the
    # pointer moved) is listed, but "latest" stays where the pointer is.
    write_bundle(run.checkpoints, 15, {}, _adapters)
    run.latest.write_text(json.dumps({"step": 10, "bundle": "step-00000010"}))
    assert latest_checkpoint(run) == "step-00000010"
    # Keys the trainer never writes are not read; no pointer means no latest.
    run.latest.write_text(json.dumps({"checkpoint": "step-00000015"}))
    assert latest_checkpoint(run) is None
    run.latest.unlink()
    with pytest.raises(SourceError, match="no checkpoint yet"):
        resolve_source(ws, "r1", "latest")


def test_listing_is_the_trainers_and_steps_are_named_any_way(tmp_path: Path) -> None:
    run = _run(tmp_path / "ws" / "runs" / "r1", tmp_path / "model")
    (run.checkpoints / "step-00000007").mkdir()
    (run.checkpoints / "step-00000007" / "state.json").write_text("{torn")  # not complete
    assert checkpoint_names(run) == ["step-00000005", "step-00000010"]
    ws = Workspace(tmp_path / "ws")
    for name in (5, "5", "step-5", "step-00000005"):
        assert resolve_source(ws, "r1", name).checkpoint == "step-00000005"
    with pytest.raises(SourceError, match="no checkpoint 'step-00000007'"):
        resolve_source(ws, "r1", 7)


def test_a_run_folder_anywhere(tmp_path: Path) -> None:
    run = _run(tmp_path / "somewhere" / "my-run", tmp_path / "model")
    source = resolve_run_source(run, "latest")
    assert source.adapter_path == run.checkpoints / "step-00000010"
    assert source.run_dir == run.root.resolve() and source.run_id == "my-run"
    assert source.to_json()["run_dir"] == str(run.root.resolve())


def test_a_relative_model_path_falls_back_to_the_one_the_trainer_recorded(
    tmp_path: Path,
) -> None:
    model = tmp_path / "models" / "base"
    run = _run(tmp_path / "moved" / "my-run", model)
    (run.config).write_text("model: models/base\nfine_tune_type: lora\n")  # relative to a cwd
    with pytest.raises(SourceError, match="not on this machine"):
        resolve_run_source(run, "base")
    write_bundle(run.checkpoints, 15, {"inputs": {"model": str(model)}}, _adapters)
    assert resolve_run_source(run, "base").model == model


def test_links_and_fifos_are_no_model_to_load(tmp_path: Path) -> None:
    run = _run(tmp_path / "ws" / "runs" / "r1", tmp_path / "model")
    ws = Workspace(tmp_path / "ws")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _adapters(elsewhere)
    run.final.symlink_to(elsewhere, target_is_directory=True)  # final/ leading out of the run
    assert [c["checkpoint"] for c in run_choices(ws, "r1")] == [
        "base",
        "step-00000005",
        "step-00000010",
    ]
    with pytest.raises(SourceError, match="no checkpoint 'final'"):
        resolve_source(ws, "r1", "final")
    # A bundle whose adapters are a link is no bundle: never offered, never loaded.
    adapters = run.checkpoints / "step-00000010" / "adapters.safetensors"
    adapters.unlink()
    adapters.symlink_to(elsewhere / "adapters.safetensors")
    assert checkpoint_names(run) == ["step-00000005"]
    # A FIFO at config.yaml is an error at once, never a blocked request.
    run.config.unlink()
    os.mkfifo(run.config)
    with pytest.raises(SourceError, match="config.yaml is a FIFO"):
        resolve_source(ws, "r1", "base")
