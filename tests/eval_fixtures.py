"""Session fixtures for the evaluation, export and playground tests: a workspace holding a
short LoRA run in the run-folder layout, trained with mlx-lm's own tuner utilities.

Registered in conftest.py, so every module shares one build per test session.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from training.config import build_config
from training.run_store import Workspace

LORA_RUN_ID = "20260101-000000-lora01"
LORA_PARAMETERS = {"rank": 4, "scale": 20.0, "dropout": 0.0}
SEQ = 64


def train_lora_adapter(
    model_dir: Path, corpus: Path, out: Path, steps: int, seed: int = 0
) -> list[float]:
    """A few Adam steps of LoRA on packed corpus text; saves mlx-lm's adapter folder at `out`
    (adapters.safetensors + adapter_config.json) and returns the losses."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.trainer import default_loss
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from training.evaluation import pack_documents, read_eval_documents

    mx.random.seed(seed)
    model, tokenizer = load(str(model_dir))
    model.freeze()
    linear_to_lora_layers(model, 2, LORA_PARAMETERS, use_dora=False)
    data = pack_documents(
        tokenizer, read_eval_documents(corpus), SEQ + 1, num_samples=32, seed=seed
    )
    optimizer = optim.Adam(learning_rate=2e-2)
    step_fn = nn.value_and_grad(model, default_loss)
    lengths = mx.array([[1, SEQ]] * 8)
    losses = []
    for step in range(steps):
        batch = data[(step * 8) % 32 : (step * 8) % 32 + 8]
        (loss, _), grads = step_fn(model, batch, lengths)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state, loss)
        losses.append(loss.item())
    out.mkdir(parents=True)
    mx.save_safetensors(
        str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    adapter_config = {
        "model": str(model_dir),
        "fine_tune_type": "lora",
        "num_layers": 2,
        "lora_parameters": LORA_PARAMETERS,
    }
    (out / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return losses


def _events(losses: list[float]) -> list[dict[str, Any]]:
    now = time.time()
    rows: list[dict[str, Any]] = [
        {
            "event": "run_start",
            "step": 0,
            "versions": {"mlx": "test", "mlx-lm": "test"},
            "data": {
                "documents": 10,
                "tokens": 2048,
                "sequences": 32,
                "tokens_per_step": 512,
                "steps_per_epoch": 4,
            },
        }
    ]
    for step, loss in enumerate(losses, start=1):
        rows.append({"event": "train", "step": step, "train_loss": loss})
        if step % 5 == 0:
            # domain loss falls, general loss rises: what the forgetting monitor shows
            rows.append(
                {
                    "event": "eval",
                    "step": step,
                    "val_loss": loss + 0.1,
                    "val_ppl": 2.718 ** (loss + 0.1),
                    "val_general_loss": 6.0 + step / 100,
                }
            )
    rows.append({"event": "status", "step": len(losses), "state": "finished", "message": "done"})
    return [{"v": 1, "seq": i + 1, "time": now + i, **row} for i, row in enumerate(rows)]


@pytest.fixture(scope="session")
def lora_workspace(
    tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Workspace:
    """A workspace with one finished LoRA run (checkpoints at steps 5 and 10, final/) in the
    run-folder layout of DESIGN.md. Read-only for tests: copy before writing into it."""
    ws = Workspace(tmp_path_factory.mktemp("lora-ws"))
    run = ws.run(LORA_RUN_ID)
    (run.checkpoints).mkdir(parents=True)
    scratch = run.root / ".train"
    half = train_lora_adapter(tiny_assets["model"], tiny_assets["corpus"], scratch / "a", 5)
    rest = train_lora_adapter(tiny_assets["model"], tiny_assets["corpus"], scratch / "b", 10)
    shutil.move(scratch / "a", run.checkpoints / "step-00000005")
    shutil.copytree(scratch / "b", run.checkpoints / "step-00000010")
    shutil.move(scratch / "b", run.final)
    shutil.rmtree(scratch)
    for step in (5, 10):
        state = {"step": step, "val_loss": None, "time": time.time()}
        (run.checkpoints / f"step-{step:08d}" / "state.json").write_text(json.dumps(state))
    (run.latest).write_text(json.dumps({"checkpoint": "step-00000010", "step": 10}))
    config, _ = build_config(
        {
            "model": str(tiny_assets["model"]),
            "data": str(tiny_assets["corpus"]),
            "eval_sets": {"general": str(tiny_assets["general"])},
            "fine_tune_type": "lora",
            "num_layers": 2,
            "lora_parameters": LORA_PARAMETERS,
            "max_seq_length": SEQ,
            "iters": 10,
        }
    )
    run.config.write_text(config.to_yaml())
    losses = half + rest[5:]
    run.metrics.write_text("".join(json.dumps(e) + "\n" for e in _events(losses)))
    return ws
