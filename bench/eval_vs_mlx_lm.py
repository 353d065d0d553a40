"""Evaluation benchmark: the console's evaluation path against mlx-lm called directly.

On a scratch model built offline (default size `small`: hidden 256, 4 layers, vocab 4096),
in one run:

- perplexity: training.evaluation (packing + batched loss with progress) vs
  mlx_lm.perplexity.eval_ppl on the same token rows: seconds and the ratio (goal ~1.0:
  ours is the same computation, made steppable);
- generation: training.evaluation.generate_tokens vs mlx_lm.generate.stream_generate
  in-process: tokens/s and the ratio;
- through the console's worker (EvalJobs → training/eval_worker.py, a fresh process per
  job): time to the first streamed token (process start + MLX import + model load) and
  streamed tokens/s, against the in-process figures.

    .venv/bin/python bench/eval_vs_mlx_lm.py [--size tiny|small] [--tokens 200] [--repeats 3]

Like the trainer and the workers, this process runs on OpenBLAS on Linux when it is
installed (training/contract/blas.py), so in-process and worker figures use the same BLAS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_perplexity(model_dir: Path, text: Path, repeats: int) -> None:
    import mlx_lm.perplexity as mlx_ppl

    from training.evaluate.models import load_model
    from training.evaluate.perplexity import (
        evaluate_perplexity,
        pack_documents,
        read_eval_documents,
    )

    loaded = load_model(model_dir)
    docs = read_eval_documents(text)
    data = pack_documents(loaded.tokenizer, docs, 256, num_samples=64)
    ours = _best(lambda: evaluate_perplexity(loaded.model, data, 8, lambda d, t: None), repeats)
    theirs = _best(lambda: mlx_ppl.eval_ppl(loaded.model, data, batch_size=8), repeats)
    tokens = data.shape[0] * (data.shape[1] - 1)
    print(f"\nperplexity, {data.shape[0]} rows x {data.shape[1]} tokens, batch 8")
    print(f"  training.evaluation     {ours:7.3f} s  {tokens / ours:9.0f} tok/s")
    print(f"  mlx_lm eval_ppl         {theirs:7.3f} s  {tokens / theirs:9.0f} tok/s")
    print(f"  ratio ours / mlx-lm     {ours / theirs:7.3f}")


def bench_generation(model_dir: Path, n_tokens: int, repeats: int) -> float:
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from training.evaluate.generation import GenerationSettings, generate_tokens
    from training.evaluate.models import load_model

    loaded = load_model(model_dir)
    prompt = "def parse(text):\n"
    settings = GenerationSettings(max_tokens=n_tokens, temp=0.8, seed=1)

    def ours() -> int:
        return sum(1 for _ in generate_tokens(loaded, prompt, settings))

    def theirs() -> int:
        sampler = make_sampler(0.8)
        return sum(
            1
            for _ in stream_generate(
                loaded.model, loaded.tokenizer, prompt, n_tokens, sampler=sampler
            )
        )

    t_ours = _best(ours, repeats)
    t_theirs = _best(theirs, repeats)
    print(f"\ngeneration, {n_tokens} tokens (temp 0.8), in-process")
    print(f"  training.evaluation     {n_tokens / t_ours:9.1f} tok/s")
    print(f"  mlx_lm stream_generate  {n_tokens / t_theirs:9.1f} tok/s")
    print(f"  ratio ours / mlx-lm     {t_theirs / t_ours:7.3f} (throughput)")
    return n_tokens / t_theirs


def bench_worker(model_dir: Path, n_tokens: int, repeats: int, in_process_tps: float) -> None:
    from training.console.eval_jobs import EvalJobs
    from training.contract.model_source import folder_source

    firsts, rates = [], []
    for _ in range(repeats):
        stamps: list[float] = []
        lock = threading.Lock()

        def on_event(job, event, stamps=stamps, lock=lock) -> None:
            if event.get("event") == "token":
                with lock:
                    stamps.append(time.perf_counter())

        jobs = EvalJobs(on_event)
        spec = {
            "prompt": "def parse(text):\n",
            "models": [folder_source(model_dir).to_json()],
            "max_tokens": n_tokens,
            "temp": 0.8,
            "seed": 1,
        }
        start = time.perf_counter()
        job = jobs.start("generate", spec)
        job.finished.wait(300)
        assert job.state == "done", job.error
        firsts.append(stamps[0] - start)
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    print(f"\ngeneration through the console's worker process ({repeats} jobs)")
    print(f"  first token after       {statistics.median(firsts):7.2f} s (spawn, import, load)")
    print(f"  streamed                {statistics.median(rates):9.1f} tok/s")
    print(f"  ratio worker / in-process mlx-lm {statistics.median(rates) / in_process_tps:7.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=("tiny", "small"))
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from training.contract.blas import blas_in_use
    from training.demo import build_demo

    with tempfile.TemporaryDirectory() as tmp:
        paths = build_demo(tmp, size=args.size, domain_bytes=600_000, general_bytes=200_000)
        print(f"model: scratch-{args.size}; BLAS in this process: {blas_in_use()}")
        bench_perplexity(paths["model"], paths["general"], args.repeats)
        tps = bench_generation(paths["model"], args.tokens, args.repeats)
        bench_worker(paths["model"], args.tokens, args.repeats, tps)
    return 0


if __name__ == "__main__":
    from training.contract.blas import reexec_with_openblas

    reexec_with_openblas()
    sys.exit(main())
