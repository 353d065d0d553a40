"""train_embeddings (issue 12): a LoRA run that also trains the embeddings and the output head
fully, at their own learning-rate multiplier, with the real trainer on a tiny model (hidden
64, 2 layers, vocabulary 512) whose head is its own weight (untied).

- only the adapters, the embeddings and the head train; every other base weight stays;
- the multiplier is the embeddings' and head's own rate: after one Adam step their change
  is exactly `embedding_lr_scale` times the change at scale 1 (scaling their gradients
  instead would change nothing: Adam divides the scale out), and 0 keeps them fixed;
- a resume continues exactly (per-step losses equal the uninterrupted run's);
- init_from carries them: the new run's step-0 evaluation is the source's last;
- the fused and the adapter export load with mlx_lm.load and give the trained logits;
- the switch on a full run, or over quantized embeddings, is a clear config error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from tests.trainer_helpers import events, run_trainer, train_losses, write_config
from training.contract.config import ConfigError, build_config
from training.contract.layout import RunPaths, Workspace
from training.contract.model_source import resolve_run_source
from training.evaluate.exporting import export_source
from training.evaluate.models import load_model
from training.trainer.model_setup import embedding_modules

pytestmark = pytest.mark.slow

EMB = {
    "fine_tune_type": "lora",
    "train_embeddings": True,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.01,
    "save_every": 3,
    "steps_per_eval": 3,
}
FULL_WEIGHTS = {"model.embed_tokens.weight", "lm_head.weight"}
PROMPT = "def parse(text):\n    return"


def _ok(proc: Any) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def untied(tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny scratch model with an output head of its own (lm_head, not tied)."""
    out = tmp_path_factory.mktemp("untied") / "scratch-tiny-untied"
    shutil.copytree(tiny_assets["model"], out)
    config = json.loads((out / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config, indent=2))
    weights: dict[str, mx.array] = mx.load(str(out / "model.safetensors"))  # type: ignore[assignment]
    mx.random.seed(7)
    embed = weights["model.embed_tokens.weight"]
    weights["lm_head.weight"] = embed + 0.02 * mx.random.normal(embed.shape, dtype=embed.dtype)
    mx.save_safetensors(str(out / "model.safetensors"), weights, {"format": "mlx"})
    return out


@pytest.fixture(scope="module")
def runs(
    untied: Path, tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One step at embedding_lr_scale 0, 0.5 and 1; six steps straight; three steps then
    extended to six; a run initialized from the six-step one; two steps of DoRA on the
    last block."""
    ws = tmp_path_factory.mktemp("embeddings")
    assets = {**tiny_assets, "model": untied}
    for scale in (0.0, 0.5, 1.0):
        config = write_config(ws / f"s{scale}.yaml", assets, **EMB, embedding_lr_scale=scale)
        _ok(
            run_trainer(
                ws, "-c", config, "--run-dir", ws / "runs" / f"scale-{scale}", "--iters", "1"
            )
        )
    config = write_config(ws / "emb.yaml", assets, **EMB, embedding_lr_scale=0.3, iters=6)
    _ok(run_trainer(ws, "-c", config, "--run-dir", ws / "runs" / "straight"))
    _ok(run_trainer(ws, "-c", config, "--run-dir", ws / "runs" / "resumed", "--iters", "3"))
    _ok(run_trainer(ws, "--resume", "--run-dir", ws / "runs" / "resumed", "--iters", "6"))
    child = write_config(
        ws / "child.yaml", assets, **EMB, embedding_lr_scale=0.3, iters=1, init_from="straight"
    )
    _ok(run_trainer(ws, "-c", child, "--run-dir", ws / "runs" / "child"))
    last_block = {**EMB, "fine_tune_type": "dora", "num_layers": 1}
    dora = write_config(ws / "dora.yaml", assets, **last_block, iters=2)
    _ok(run_trainer(ws, "-c", dora, "--run-dir", ws / "runs" / "dora"))
    return {"ws": ws, "model": untied, "assets": assets}


def _trained(run_dir: Path) -> dict[str, np.ndarray]:
    weights = mx.load(str(run_dir / "final" / "adapters.safetensors"))
    return {k: np.array(v) for k, v in weights.items()}  # type: ignore[union-attr]


def _base(model: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(model / "model.safetensors")).items()}  # type: ignore[union-attr]


def test_only_the_adapters_embeddings_and_head_train(runs: dict[str, Any]) -> None:
    run = runs["ws"] / "runs" / "straight"
    trained, base = _trained(run), _base(runs["model"])
    adapters = {k for k in trained if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")}
    assert adapters and set(trained) == adapters | FULL_WEIGHTS
    for name in FULL_WEIGHTS:  # trained fully: every row the batches touched moved
        assert not np.array_equal(trained[name], base[name]), name
    start = events(run, "run_start")[0]
    assert start["trainable_parameters"] == sum(v.size for v in trained.values())
    config = json.loads((run / "final" / "adapter_config.json").read_text())
    assert config["full_modules"] == ["model.embed_tokens", "lm_head"]
    assert "python -m training.export" in (run / "final" / "README.md").read_text()
    # Every other base weight is the base's: the trained model, loaded as the evaluation
    # worker and the playground load it, holds them unchanged.
    loaded = load_model(runs["model"], run / "final")
    params = dict(tree_flatten(loaded.model.parameters()))
    for name, value in base.items():
        if name in FULL_WEIGHTS:
            assert np.array_equal(np.array(params[name]), trained[name]), name
        else:
            key = name if name in params else name.replace(".weight", ".linear.weight")
            assert np.array_equal(np.array(params[key]), value), name


def test_the_multiplier_is_the_embeddings_own_rate(runs: dict[str, Any]) -> None:
    base = _base(runs["model"])
    after = {s: _trained(runs["ws"] / "runs" / f"scale-{s}") for s in (0.0, 0.5, 1.0)}
    for name in FULL_WEIGHTS:
        step1 = after[1.0][name] - base[name]
        half = after[0.5][name] - base[name]
        assert np.abs(step1).max() > 1e-4, name
        # AdamW's first update is lr * (m/(sqrt(v)+eps) + wd * w): linear in the rate.
        np.testing.assert_allclose(half, 0.5 * step1, rtol=1e-3, atol=1e-8)
        assert np.array_equal(after[0.0][name], base[name]), name  # a rate of 0: unchanged
    # The adapters train at the schedule's own rate whatever the multiplier.
    adapters = [k for k in after[1.0] if k not in FULL_WEIGHTS]
    for name in adapters:
        assert np.array_equal(after[0.0][name], after[1.0][name]), name
    # The checkpoint's optimizer state: two groups, the second at the multiplier's rate.
    state = mx.load(
        str(
            runs["ws"]
            / "runs"
            / "scale-0.5"
            / "checkpoints"
            / "step-00000001"
            / "optimizer.safetensors"
        )
    )
    assert state["states.1.learning_rate"].item() == pytest.approx(
        0.5 * state["states.0.learning_rate"].item()
    )
    assert {"states.1.model.embed_tokens.weight.m", "states.1.lm_head.weight.v"} <= set(state)
    rates = {s: events(runs["ws"] / "runs" / f"scale-{s}", "train")[0] for s in (0.0, 1.0)}
    assert rates[0.0]["learning_rate"] == rates[1.0]["learning_rate"] == pytest.approx(3e-3)


def test_a_resume_continues_exactly(runs: dict[str, Any]) -> None:
    straight = train_losses(runs["ws"] / "runs" / "straight")
    resumed = train_losses(runs["ws"] / "runs" / "resumed")
    assert sorted(straight) == sorted(resumed) == list(range(1, 7))
    assert resumed == straight
    a, b = _trained(runs["ws"] / "runs" / "straight"), _trained(runs["ws"] / "runs" / "resumed")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    starts = events(runs["ws"] / "runs" / "resumed", "run_start")
    assert [s["resumed_from"] for s in starts] == [None, 3]


def test_init_from_carries_the_embeddings_and_head(runs: dict[str, Any]) -> None:
    last = events(runs["ws"] / "runs" / "straight", "eval")[-1]
    first = events(runs["ws"] / "runs" / "child", "eval")[0]
    assert first["step"] == 0 and last["step"] == 6
    assert first["val_loss"] == pytest.approx(last["val_loss"], abs=1e-5)


def _logits(model: Any, tokenizer: Any) -> np.ndarray:
    return np.array(model(mx.array([tokenizer.encode(PROMPT)])).astype(mx.float32))


@pytest.mark.parametrize("run", ["straight", "dora"])
def test_fused_and_adapter_exports_load_with_mlx_lm(
    run: str, runs: dict[str, Any], tmp_path: Path
) -> None:
    from mlx_lm import load

    ws = Workspace(runs["ws"])
    source = resolve_run_source(RunPaths(runs["ws"] / "runs" / run), "final", None)
    trained = load_model(source.model, source.adapter_path)
    expected = _logits(trained.model, trained.tokenizer)
    fused = export_source(source, tmp_path / "fused", "model", ws)
    adapter = export_source(source, tmp_path / "adapter", "adapter", ws)

    model, tokenizer = load(str(fused.path))
    np.testing.assert_allclose(_logits(model, tokenizer), expected, rtol=1e-4, atol=1e-4)
    model, tokenizer = load(str(adapter.path), adapter_path=str(adapter.path))
    np.testing.assert_allclose(_logits(model, tokenizer), expected, rtol=1e-5, atol=1e-5)
    # The embeddings and head matter: the base with the adapters alone is another model.
    model, tokenizer = load(str(runs["model"]), adapter_path=str(adapter.path))
    assert np.abs(_logits(model, tokenizer) - expected).max() > 1e-3
    saved = mx.load(str(adapter.path / "adapters.safetensors"))
    assert not FULL_WEIGHTS & set(saved)  # mlx-lm's loader takes adapter weights only
    assert "adapter_path=" in (adapter.path / "README.md").read_text()


def test_the_switch_on_a_full_run_is_a_config_error(tiny_assets: dict[str, Path]) -> None:
    base = {"model": str(tiny_assets["model"]), "data": str(tiny_assets["corpus"])}
    with pytest.raises(ConfigError) as caught:
        build_config({**base, "fine_tune_type": "full", "train_embeddings": True})
    [error] = caught.value.errors
    assert error.field == "train_embeddings" and "lora/dora" in error.message
    config, _ = build_config({**base, "fine_tune_type": "dora", "train_embeddings": True})
    assert config.train_embeddings and config.embedding_lr_scale == 0.2
    with pytest.raises(ConfigError, match="embedding_lr_scale"):
        build_config({**base, "fine_tune_type": "lora", "embedding_lr_scale": -1})


def test_the_trainer_refuses_bad_combinations(
    tiny_assets: dict[str, Path], quantized_model: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "full.yaml", tiny_assets, train_embeddings=True, iters=1)
    proc = run_trainer(tmp_path, "-c", config)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "train_embeddings" in proc.stderr and "lora/dora" in proc.stderr
    quantized = write_config(
        tmp_path / "q.yaml",
        {**tiny_assets, "model": quantized_model},
        fine_tune_type="lora",
        train_embeddings=True,
        iters=1,
    )
    proc = run_trainer(tmp_path, "-c", quantized)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "train_embeddings" in proc.stderr and "quantized" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_embeddings_of_a_tied_model_are_its_head(tiny_assets: dict[str, Path]) -> None:
    from mlx_lm import load

    model, _ = load(str(tiny_assets["model"]))
    assert [name for name, _ in embedding_modules(model)] == ["model.embed_tokens"]


def test_init_from_a_run_with_trained_embeddings_needs_the_switch(runs: dict[str, Any]) -> None:
    ws = runs["ws"]
    config = write_config(
        ws / "plain-child.yaml",
        runs["assets"],
        **{**EMB, "train_embeddings": False},
        iters=1,
        init_from="straight",
    )
    proc = run_trainer(ws, "-c", config, "--run-dir", ws / "runs" / "plain-child")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "init_from" in proc.stderr and "turn train_embeddings on" in proc.stderr
    assert not (ws / "runs" / "plain-child").exists()


def test_embeddings_and_head_are_found_outside_the_blocks_at_any_depth() -> None:
    import mlx.nn as nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relative = nn.Embedding(8, 4)  # inside a block: the adapters' business
            self.proj = nn.Linear(4, 4)

    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(16, 4)
            self.wpe = nn.Embedding(8, 4)
            self.layers = [Block(), Block()]
            self.lm_head = nn.Linear(4, 16, bias=False)

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.language_model = Inner()

        @property
        def layers(self) -> list[Block]:
            return self.language_model.layers

    names = [name for name, _ in embedding_modules(Wrapper())]
    assert names == ["language_model.wpe", "language_model.wte", "language_model.lm_head"]

    class NoEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = [Block()]

    with pytest.raises(ValueError, match="no token embedding"):
        embedding_modules(NoEmbedding())
