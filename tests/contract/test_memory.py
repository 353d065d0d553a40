"""The memory estimate's arithmetic (contract/memory.py), without MLX: its parts, what
changes them, and its chunking held to the trainer's loss (trainer/loss.py)."""

from __future__ import annotations

from typing import Any

import pytest

from training.contract.config import build_config
from training.contract.memory import chunk_positions, estimate_memory

LLAMA_70B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 8192,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "intermediate_size": 28672,
    "torch_dtype": "bfloat16",
}


def _estimate(model: dict[str, Any], **values: Any) -> dict[str, Any]:
    config, _ = build_config({"model": "m", "data": "d", **values})
    est = estimate_memory(model, config)
    assert est is not None
    return est


def test_full_training_of_a_70b_model_needs_far_more_than_lora() -> None:
    full = _estimate(LLAMA_70B, fine_tune_type="full")
    lora = _estimate(LLAMA_70B, fine_tune_type="lora")
    assert full["weights"] == lora["weights"] == pytest.approx(2 * 70.55e9, rel=0.01)
    assert full["gradients"] == full["weights"] and full["optimizer_state"] == 2 * full["weights"]
    assert lora["gradients"] < full["gradients"] / 100
    assert full["total"] > 4 * full["weights"] > lora["total"]


def test_quantized_weights_are_counted_packed() -> None:
    q4 = _estimate(
        {**LLAMA_70B, "quantization": {"bits": 4, "group_size": 64}}, fine_tune_type="lora"
    )
    plain = _estimate(LLAMA_70B, fine_tune_type="lora")
    assert q4["weights"] == pytest.approx(plain["weights"] * (0.5 + 4 / 64) / 2, rel=0.02)


def test_the_logits_follow_the_chunk_not_the_batch() -> None:
    small = _estimate(LLAMA_70B, fine_tune_type="lora", batch_size=4, max_seq_length=2048)
    large = _estimate(LLAMA_70B, fine_tune_type="lora", batch_size=16, max_seq_length=2048)
    # The hidden states before the head grow with the batch; the vocabulary-wide part does not.
    hidden_growth = 1.6 * (16 - 4) * 2048 * 8192 * 4
    assert large["logits"] - small["logits"] == pytest.approx(hidden_growth, rel=1e-6)
    assert large["activations"] == pytest.approx(4 * small["activations"], rel=1e-6)


def test_grad_checkpoint_and_fewer_layers_lower_the_activations() -> None:
    base = _estimate(LLAMA_70B, fine_tune_type="lora", max_seq_length=1024, num_layers=-1)
    ckpt = _estimate(LLAMA_70B, fine_tune_type="lora", max_seq_length=1024, grad_checkpoint=True)
    fewer = _estimate(LLAMA_70B, fine_tune_type="lora", max_seq_length=1024, num_layers=8)
    assert ckpt["activations"] < base["activations"] / 5
    assert fewer["activations"] == pytest.approx(base["activations"] * 8 / 80, rel=1e-6)


def test_a_config_without_the_dimensions_gives_no_estimate() -> None:
    config, _ = build_config({"model": "m", "data": "d"})
    assert estimate_memory({"model_type": "mystery"}, config) is None
    assert estimate_memory({**LLAMA_70B, "hidden_size": "big"}, config) is None


def test_the_chunk_is_the_trainers() -> None:
    from training.trainer import loss

    for vocab in (512, 32000, 65536, 151936):
        assert chunk_positions(vocab) == loss.chunk_tokens(vocab), vocab
    assert chunk_positions(65536) == 128
