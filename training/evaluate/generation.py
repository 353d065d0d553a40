"""Streamed generation on mlx-lm's own pieces (`stream_generate` with `make_sampler`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from training.contract.protocol import MAX_TEMPERATURE
from training.evaluate.models import EvaluationError, LoadedModel, ShouldStop


@dataclass(frozen=True)
class GenerationSettings:
    max_tokens: int = 100
    temp: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.max_tokens <= 100_000:
            raise EvaluationError("max_tokens must be between 1 and 100000", "max_tokens")
        if not (math.isfinite(self.temp) and 0.0 <= self.temp <= MAX_TEMPERATURE):
            raise EvaluationError(
                f"temp must be between 0 (greedy) and {MAX_TEMPERATURE:g}", "temp"
            )
        if not (math.isfinite(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise EvaluationError("top_p must be greater than 0 and at most 1", "top_p")
        if self.seed < 0:
            raise EvaluationError("seed must be 0 or more", "seed")


@dataclass(frozen=True)
class Token:
    """One streamed piece: `text` may be empty while a multi-byte character is incomplete."""

    text: str
    token: int
    generation_tokens: int
    prompt_tokens: int
    generation_tps: float
    finish_reason: str | None


def prepare_prompt(loaded: LoadedModel, prompt: str) -> list[int]:
    """Tokenize as stream_generate does; refuse a prompt that does not fit the context."""
    if not prompt:
        raise EvaluationError("the prompt is empty; type some text to continue", "prompt")
    tokenizer = loaded.tokenizer
    add_special = tokenizer.bos_token is None or not prompt.startswith(tokenizer.bos_token)
    tokens: list[int] = list(tokenizer.encode(prompt, add_special_tokens=add_special))
    limit = loaded.context_length
    if limit is not None and len(tokens) >= limit:
        raise EvaluationError(
            f"the prompt is {len(tokens)} tokens, over the model's context length of {limit}; "
            "shorten it",
            "prompt",
        )
    return tokens


def generate_tokens(
    loaded: LoadedModel,
    prompt: str,
    settings: GenerationSettings,
    should_stop: ShouldStop = lambda: False,
) -> Iterator[Token]:
    """Stream a continuation with mlx-lm's stream_generate and make_sampler.

    The seed is set right before sampling starts, so two models given the same seed draw
    the same random numbers (side by side). Generation stops early when `should_stop()`."""
    import mlx.core as mx
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    settings.check()
    tokens = prepare_prompt(loaded, prompt)
    limit = loaded.context_length
    # Keep prompt + continuation inside the context instead of failing halfway.
    max_tokens = (
        settings.max_tokens if limit is None else min(settings.max_tokens, limit - len(tokens))
    )
    mx.random.seed(settings.seed)
    sampler = make_sampler(temp=settings.temp, top_p=settings.top_p)
    stream = stream_generate(
        loaded.model, loaded.tokenizer, tokens, max_tokens=max_tokens, sampler=sampler
    )
    for response in stream:
        stop = should_stop()
        yield Token(
            text=response.text,
            token=int(response.token),
            generation_tokens=response.generation_tokens,
            prompt_tokens=response.prompt_tokens,
            generation_tps=float(response.generation_tps),
            finish_reason="stopped"
            if stop and response.finish_reason is None
            else response.finish_reason,
        )
        if stop:
            stream.close()
            return
