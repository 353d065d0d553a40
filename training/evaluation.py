"""Test a model: streamed generation and perplexity, on mlx-lm's own pieces.

The command line of training/evaluate/ (generation.py, perplexity.py); the console runs
the same code in the evaluation worker (training/eval_worker.py).

    python -m training.evaluation generate --model DIR [--adapter-path DIR] --prompt TEXT
        [--max-tokens N] [--temp T] [--top-p P] [--seed S]
    python -m training.evaluation perplexity --model DIR [--adapter-path DIR] --data FILE|FOLDER
        [--sequence-length N] [--num-samples N] [--batch-size N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from training.contract.blas import reexec_with_openblas
from training.contract.protocol import EXIT_BAD_INPUT, EXIT_OK
from training.evaluate.generation import GenerationSettings, Token, generate_tokens
from training.evaluate.models import EvaluationError, load_model
from training.evaluate.perplexity import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATA_SEED,
    DEFAULT_NUM_SAMPLES,
    check_sequence_length,
    default_sequence_length,
    evaluate_perplexity,
    pack_documents,
    read_eval_documents,
)


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
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    reexec_with_openblas()  # before MLX loads: the CPU wheel's own BLAS is far slower
    sys.exit(main())
