"""Perplexity: `mlx_lm.perplexity`'s computation (`load_data` packing + `eval_ppl` loss),
made steppable so a job can report progress and stop."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.contract.corpus import CorpusError, find_corpus, read_documents, split_documents
from training.evaluate.models import EvaluationError, LoadedModel, ShouldStop

# mlx_lm.perplexity's defaults, so numbers are comparable with its command line.
DEFAULT_SEQUENCE_LENGTH = 512


DEFAULT_NUM_SAMPLES = 256


DEFAULT_BATCH_SIZE = 8


DEFAULT_DATA_SEED = 123


# Called after each batch with (batches done, batches in all).
BatchProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    loss: float  # mean cross-entropy per predicted token (nats): comparable to val_loss
    standard_error: float  # of the perplexity, by the delta method (as mlx_lm.perplexity)
    tokens: int  # predicted tokens evaluated
    sequences: int
    sequence_length: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_eval_documents(data: str | Path, field: str = "data") -> list[str]:
    """The documents to evaluate: a text/jsonl file, a folder of them, or valid.jsonl of an
    mlx-lm data folder (train.jsonl when it has none, as the trainer reads its eval sets)."""
    try:
        corpus = find_corpus(data)
        docs = list(read_documents(corpus.valid or corpus.train))
    except CorpusError as exc:
        raise EvaluationError(str(exc), field) from exc
    if not docs:
        raise EvaluationError(f"{data} has no text to evaluate (it is empty or blank)", field)
    return docs


def held_out_documents(documents: Sequence[str], fraction: float) -> list[str]:
    """The documents the trainer held out for validation (contract/corpus.py's split of the
    same corpus, which does not depend on the run's seed)."""
    if len(documents) < 2:
        raise EvaluationError(
            "this run's corpus is one document, whose validation part is a token range; "
            "evaluate a separate text file instead",
            "data",
        )
    return [documents[i] for i in split_documents(len(documents), fraction).tolist()]


def pack_documents(
    tokenizer: Any,
    documents: Sequence[str],
    sequence_length: int,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = DEFAULT_DATA_SEED,
) -> Any:
    """mlx_lm.perplexity.load_data's packing on local documents: each document tokenized by
    mlx-lm's TextDataset (EOS appended), taken in a seeded random order, concatenated and cut
    into rows of `sequence_length`. Differences: num_samples -1 really means all (0.32.2
    runs off the end), and text shorter than one row is evaluated as one shorter row."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.tuner.datasets import TextDataset

    if sequence_length < 2:
        raise EvaluationError("sequence_length must be at least 2", "sequence_length")
    dataset = TextDataset([{"text": d} for d in documents], tokenizer)
    # RandomState(seed).permutation is the legacy global stream that np.random.seed(seed)
    # sets in mlx_lm.perplexity, so both choose the same documents in the same order.
    order = np.random.RandomState(seed).permutation(len(dataset)).tolist()
    wanted = sequence_length * num_samples if num_samples > 0 else math.inf
    tokens: list[int] = []
    for index in order:
        if len(tokens) >= wanted:
            break
        tokens.extend(dataset.process(dataset[index])[0])
    rows = len(tokens) // sequence_length
    if num_samples > 0:
        rows = min(rows, num_samples)
    if rows == 0:
        if len(tokens) < 2:
            raise EvaluationError("the text is too short to evaluate (under 2 tokens)", "data")
        return mx.array([tokens])
    return mx.array(tokens[: rows * sequence_length]).reshape(rows, sequence_length)


def evaluate_perplexity(
    model: Any,
    data: Any,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: BatchProgress | None = None,
    should_stop: ShouldStop = lambda: False,
) -> PerplexityResult | None:
    """mlx_lm.perplexity.eval_ppl's computation, batch by batch with progress, no printing.
    Returns None when stopped."""
    import mlx.core as mx
    import mlx.nn as nn

    batches = (len(data) + batch_size - 1) // batch_size
    losses = []
    for i, start in enumerate(range(0, len(data), batch_size)):
        if should_stop():
            return None
        batch = data[start : start + batch_size]
        logits = model(batch[:, :-1]).astype(mx.float32)
        loss = nn.losses.cross_entropy(logits, batch[:, 1:], reduction="none")
        mx.eval(loss)
        losses.append(loss.flatten())
        if progress:
            progress(i + 1, batches)
    every = mx.concatenate(losses)
    mean: float = every.mean().item()  # type: ignore[assignment]
    ppl = math.exp(mean)
    std: float = 0.0
    if every.size > 1:
        std = mx.sqrt(mx.var(every, ddof=1)).item()  # type: ignore[assignment]
    return PerplexityResult(
        perplexity=ppl,
        loss=mean,
        standard_error=ppl * std / math.sqrt(every.size),
        tokens=int(every.size),
        sequences=int(data.shape[0]),
        sequence_length=int(data.shape[1]),
    )


def default_sequence_length(loaded: LoadedModel) -> int:
    limit = loaded.context_length
    return min(DEFAULT_SEQUENCE_LENGTH, limit) if limit else DEFAULT_SEQUENCE_LENGTH


def check_sequence_length(loaded: LoadedModel, sequence_length: int) -> None:
    limit = loaded.context_length
    if sequence_length < 2:
        raise EvaluationError("sequence_length must be at least 2", "sequence_length")
    if limit is not None and sequence_length > limit:
        raise EvaluationError(
            f"sequence_length {sequence_length} is over the model's context length of {limit}",
            "sequence_length",
        )
