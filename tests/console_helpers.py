"""Shared pieces of the console's tests: a workspace the fake trainer can run in, and
an in-process TrainingManager wired to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.console.manager import ManagerSettings, TrainingManager

FAKE_TRAINER = "tests.fake_trainer"


def make_workspace(root: Path) -> Path:
    """A workspace with a model folder and a corpus that pass build_config's path checks
    (the fake trainer never loads them)."""
    (root / "models" / "tiny").mkdir(parents=True, exist_ok=True)
    (root / "models" / "tiny" / "config.json").write_text(
        json.dumps({"model_type": "llama", "max_position_embeddings": 4096})
    )
    (root / "corpus.txt").write_text("Some text to train on.\n" * 20)
    return root


def fake_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": "models/tiny",
        "data": "corpus.txt",
        "iters": 200,
        "save_every": 20,
    }
    config.update(overrides)
    return config


def set_fake_mode(workspace: Path, **knobs: Any) -> None:
    """Behaviour of the next fake trainer started in this workspace (tests/fake_trainer.py)."""
    (workspace / "fake-trainer.json").write_text(json.dumps(knobs))


def make_manager(workspace: Path, **settings: Any) -> TrainingManager:
    options: dict[str, Any] = {"trainer_module": FAKE_TRAINER, "stop_grace_seconds": 10.0}
    options.update(settings)
    return TrainingManager(ManagerSettings(workspace=workspace, **options))


def snapshot(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, tuple[int, int, int]]:
    """Every path under root with (mode, size, mtime_ns): equal snapshots mean nothing was
    created, rewritten or deleted."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel in ignore:
            continue
        st = path.lstat()
        out[rel] = (st.st_mode, st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return out
