"""The chunked cross-entropy (trainer/loss.py) against mlx-lm's default_loss: the same loss
and gradients, less memory, and mlx-lm's loss kept for a model it does not fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from training.contract.config import build_config
from training.trainer import model_setup
from training.trainer.loop import default_loss
from training.trainer.loss import _chunked_train, chunked_loss, make_loss, output_head

SMALL_CHUNKS = 16  # positions per chunk


def _model(assets: dict[str, Path], **values: Any) -> nn.Module:
    config, _ = build_config(
        {"model": str(assets["model"]), "data": str(assets["corpus"]), **values}
    )
    loaded = model_setup.load_base(config, Path.cwd())
    model_setup.prepare_trainable(loaded.model, config)
    return loaded.model


def _batch(rows: int, length: int, vocab: int = 512) -> tuple[mx.array, mx.array]:
    rng = np.random.default_rng(0)
    tokens = mx.array(rng.integers(0, vocab, (rows, length + 1), dtype=np.int32))
    lengths = mx.array(np.array([[1 + i % 3, length - i % 5] for i in range(rows)], np.int32))
    return tokens, lengths


def _grads(model: nn.Module, loss: Any, batch: tuple[mx.array, mx.array]) -> tuple[float, dict]:
    (value, _), grads = nn.value_and_grad(model, loss)(model, *batch)
    mx.eval(value, grads)
    return float(value.item()), dict(tree_flatten(grads))


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_same_loss_and_gradients_as_mlx_lm(kind: str, tiny_assets: dict[str, Path]) -> None:
    model = _model(tiny_assets, fine_tune_type=kind, num_layers=-1, seed=3)
    loss, note = make_loss(model, SMALL_CHUNKS)
    assert "16 positions per chunk" in note
    batch = _batch(3, 40)  # 120 positions: 8 chunks, the last one short
    model.train()
    ours, ours_grads = _grads(model, loss, batch)
    theirs, their_grads = _grads(model, default_loss, batch)
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)
    assert sorted(ours_grads) == sorted(their_grads)
    head = "model.embed_tokens.weight"  # tied: trained by full, frozen under lora
    assert (head in ours_grads) == (kind == "full")
    for name, grad in their_grads.items():
        np.testing.assert_allclose(np.array(ours_grads[name]), np.array(grad), rtol=1e-4, atol=1e-7)
    model.eval()
    value, count = loss(model, *batch)
    ref_value, ref_count = default_loss(model, *batch)
    assert int(count.item()) == int(ref_count.item())
    assert float(value.item()) == pytest.approx(float(ref_value.item()), rel=1e-6)


def test_peak_memory_follows_the_chunk(tiny_assets: dict[str, Path]) -> None:
    """The head's part of a step, alone: 4,096 positions × 512 tokens are 8 MB per copy of
    the whole batch's logits (mlx-lm's way: several copies at once); chunks of 16
    positions hold 32 KB each."""
    model = _model(tiny_assets, fine_tune_type="full")
    weight = model.model.embed_tokens.weight
    rng = np.random.default_rng(0)
    hidden = mx.array(rng.standard_normal((4096, 64), dtype=np.float32))
    targets = mx.array(rng.integers(0, 512, (4096,), dtype=np.int32))
    mask = mx.ones((4096,), dtype=mx.float32)

    def whole(h: mx.array, w: mx.array) -> mx.array:
        return (nn.losses.cross_entropy(h @ w.T, targets) * mask).sum()

    def chunked(h: mx.array, w: mx.array) -> mx.array:
        return _chunked_train(h, w, targets, mask, SMALL_CHUNKS, True)

    def peak(fn: Any) -> tuple[int, Any]:
        mx.synchronize()
        mx.clear_cache()
        mx.reset_peak_memory()
        base = mx.get_active_memory()
        out = mx.value_and_grad(fn, argnums=(0, 1))(hidden, weight)
        mx.eval(out)
        return mx.get_peak_memory() - base, out

    (theirs, (ref, ref_grads)), (ours, (value, grads)) = peak(whole), peak(chunked)
    assert float(value.item()) == pytest.approx(float(ref.item()), rel=1e-6)
    for a, b in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4)
    logits_bytes = 4096 * 512 * 4
    assert theirs > 2 * logits_bytes  # what the chunks save
    assert ours < logits_bytes, (ours, theirs)


class _Scaled(nn.Module):
    """A model whose output is not its head's: the logits are scaled (as cohere's)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.model
        self.args = model.args

    def __call__(self, inputs: mx.array) -> mx.array:
        logits = self.model.embed_tokens.as_linear(self.model(inputs))
        return 3.0 * logits


def test_a_model_whose_output_is_not_its_head_keeps_mlx_lms_loss(
    tiny_assets: dict[str, Path],
) -> None:
    model = _model(tiny_assets)
    assert output_head(model) is not None
    loss, note = make_loss(_Scaled(model))
    assert loss is default_loss and "disagreed" in note
    inner, head = output_head(model)  # type: ignore[misc]
    assert chunked_loss(inner, head, True, 16) is not default_loss
