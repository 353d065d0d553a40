"""Samples during training: at each evaluation the model continues each `sample_prompts`
prompt greedily (mlx-lm's stream_generate with its default argmax sampler), so a person
reads what it writes as it learns. Greedy decoding draws no random numbers and the model
is in eval mode (no dropout), so the same weights write the same text: a resumed run's
samples equal an uninterrupted run's."""

from __future__ import annotations

from typing import Any


def generate_samples(
    model: Any, tokenizer: Any, prompts: list[str], max_tokens: int
) -> list[tuple[str, str]]:
    """(prompt, continuation) for each prompt; the model is left in the mode it was in."""
    from mlx_lm.generate import stream_generate

    was_training = bool(getattr(model, "training", False))
    model.eval()
    out: list[tuple[str, str]] = []
    try:
        for prompt in prompts:
            pieces = [
                response.text
                for response in stream_generate(model, tokenizer, prompt, max_tokens=max_tokens)
            ]
            out.append((prompt, "".join(pieces)))
    finally:
        model.train(was_training)
    return out
