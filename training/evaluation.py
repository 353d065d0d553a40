"""Test a model: streamed generation and perplexity, on mlx-lm's own pieces.

Generation is mlx-lm's `stream_generate` with `make_sampler`; perplexity is the
computation of `mlx_lm.perplexity` (`load_data` packing + `eval_ppl` loss), made
steppable so a job can report progress and stop. MLX is imported inside the functions
only: the console may import this module's names without loading MLX, and the work
itself runs in the evaluation worker (training/eval_worker.py) or the command line.

    python -m training.evaluation generate --model DIR [--adapter-path DIR] --prompt TEXT
        [--max-tokens N] [--temp T] [--top-p P] [--seed S]
    python -m training.evaluation perplexity --model DIR [--adapter-path DIR] --data FILE|FOLDER
        [--sequence-length N] [--num-samples N] [--batch-size N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.corpus import CorpusError, find_corpus, read_documents
from training.errors import InputError
from training.model_source import ModelSource

# mlx_lm.perplexity's defaults, so numbers are comparable with its command line.
DEFAULT_SEQUENCE_LENGTH = 512
DEFAULT_NUM_SAMPLES = 256
DEFAULT_BATCH_SIZE = 8
DEFAULT_DATA_SEED = 123
# config.json keys that name a model's context length, most common first.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")

# Past this, sampling is noise; the console's form and API use the same bound.
MAX_TEMPERATURE = 5.0

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


class EvaluationError(InputError):
    """Bad input for an evaluation; `field` names the input to fix (API: {"error", "field"})."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    config: dict[str, Any]

    @property
    def context_length(self) -> int | None:
        return context_length(self.config)


def context_length(config: dict[str, Any]) -> int | None:
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_model_dir(model: str | Path, field: str = "model") -> Path:
    """A local model folder, checked before mlx-lm sees it: mlx_lm.load would treat a
    missing path as a Hugging Face id and try the network."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise EvaluationError(f"no model folder at {path}; give a folder with config.json", field)
    if not (path / "config.json").is_file():
        raise EvaluationError(f"{path} has no config.json: not a model folder", field)
    return path


def check_adapter_dir(adapter: str | Path, field: str = "adapter_path") -> Path:
    path = Path(adapter).expanduser()
    for name in ("adapter_config.json", "adapters.safetensors"):
        if not (path / name).is_file():
            raise EvaluationError(
                f"{path} is not an adapter folder (no {name}); give a LoRA/DoRA adapter "
                "folder such as a run's final/ or a checkpoint",
                field,
            )
    return path


def load_model(model: str | Path, adapter_path: str | Path | None = None) -> LoadedModel:
    """mlx_lm.load with checked paths; any failure to load becomes an EvaluationError."""
    model_dir = check_model_dir(model)
    adapter_dir = check_adapter_dir(adapter_path) if adapter_path else None
    from mlx_lm import load

    try:
        result: Any = load(
            str(model_dir),
            adapter_path=str(adapter_dir) if adapter_dir else None,
            return_config=True,
        )
    # mlx-lm raises many types here (FileNotFoundError, ValueError, KeyError, safetensors
    # errors); to the person they all mean the same thing: this model does not load.
    except Exception as exc:  # noqa: BLE001
        field = "adapter_path" if adapter_dir and "adapter" in str(exc).lower() else "model"
        raise EvaluationError(f"could not load the model at {model_dir}: {exc}", field) from exc
    loaded, tokenizer, config = result
    return LoadedModel(loaded, tokenizer, config)


def load_source(source: ModelSource) -> LoadedModel:
    """Load a resolved model choice: the base folder, with its adapters when it has some."""
    return load_model(source.model, source.adapter_path)


# -- generation -----------------------------------------------------------------------------


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


# -- perplexity -----------------------------------------------------------------------------


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
    """The documents the trainer held out for validation (training/data.py's split of the
    same corpus, which does not depend on the run's seed)."""
    from training.data import split_documents

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
    progress: Progress | None = None,
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


# -- command line ---------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluation",
        description="Test a model: streamed generation or perplexity on a text file.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="continue a prompt, streaming the text")
    per = sub.add_parser("perplexity", help="perplexity on a text file or folder")
    for p in (gen, per):
        p.add_argument("--model", required=True, help="model folder (config.json + weights)")
        p.add_argument("--adapter-path", help="LoRA/DoRA adapter folder to apply")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-tokens", type=int, default=GenerationSettings.max_tokens)
    gen.add_argument("--temp", type=float, default=GenerationSettings.temp, help="0: greedy")
    gen.add_argument("--top-p", type=float, default=GenerationSettings.top_p)
    gen.add_argument("--seed", type=int, default=GenerationSettings.seed)
    per.add_argument("--data", required=True, help="text/jsonl file, folder or mlx-lm folder")
    per.add_argument("--sequence-length", type=int, help="default: 512 or the context length")
    per.add_argument("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES, help="-1: all")
    per.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    per.add_argument("--seed", type=int, default=DEFAULT_DATA_SEED, help="document order")
    per.add_argument("--json", action="store_true", help="also print the result as JSON")
    return parser


def _run_generate(args: argparse.Namespace) -> None:
    settings = GenerationSettings(args.max_tokens, args.temp, args.top_p, args.seed)
    settings.check()
    loaded = load_model(args.model, args.adapter_path)
    last: Token | None = None
    for last in generate_tokens(loaded, args.prompt, settings):
        sys.stdout.write(last.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if last is not None:
        print(
            f"[{last.generation_tokens} tokens, {last.generation_tps:.1f} tokens/s, "
            f"{last.finish_reason}]",
            file=sys.stderr,
        )


def _run_perplexity(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise EvaluationError("batch_size must be at least 1", "batch_size")
    documents = read_eval_documents(args.data)
    loaded = load_model(args.model, args.adapter_path)
    length = args.sequence_length or default_sequence_length(loaded)
    check_sequence_length(loaded, length)
    data = pack_documents(loaded.tokenizer, documents, length, args.num_samples, args.seed)

    def progress(done: int, total: int) -> None:
        print(f"\r  batch {done}/{total}", end="", file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = evaluate_perplexity(loaded.model, data, args.batch_size, progress)
    assert result is not None  # nothing asks the command line to stop
    print(file=sys.stderr)
    print(f"tokens: {result.tokens} in {result.sequences} sequences of {result.sequence_length}")
    print(f"loss: {result.loss:.4f} (± {result.standard_error / result.perplexity:.4f})")
    print(f"seconds: {time.perf_counter() - started:.2f}")
    if args.json:
        print(json.dumps(result.to_json()))
    print(f"perplexity: {result.perplexity:.4f}")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    # Local folders only: never let a typo turn into a Hugging Face download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Documents longer than the context are packed, not fed whole: transformers' warning
    # about "sequence length is longer than the maximum" does not apply.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        if args.command == "generate":
            _run_generate(args)
        else:
            _run_perplexity(args)
    except EvaluationError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"error{where}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from training.blas import reexec_with_openblas

    reexec_with_openblas()  # before MLX loads: the CPU wheel's own BLAS is far slower
    sys.exit(main())
