"""A corpus of a gigabyte: time to the first training step, and tokenization throughput.

Builds a `.jsonl` corpus offline (the standard library's sources and the prose of
`pydoc_data.topics`, repeated with a numbered header per copy so no two documents are
equal) and the `small` scratch model, then, in one run:

- **reference**: the `tokenizers` library's own `encode_batch` over the same text (the
  model's `tokenizer.json`, batches of ~4 MB, the time spent in `encode_batch` only);
- **uncached**: the trainer on the corpus in a fresh workspace (no token cache): seconds
  from process start to its first `train` event, and, left running until its final
  `tokenization` event, the total tokenization throughput (tokens / seconds of tokenizing,
  while training runs beside it); then stopped with SIGTERM;
- **cached**: the trainer again in the same workspace (a new run folder, the cache now
  complete): seconds to its first `train` event;
- the trainers' peak RSS (VmHWM, polled from /proc).

The Done-when targets of issue 11 are printed as ratios: first step uncached ≤ 1/10 of the
encode_batch time, tokenization ≥ 0.9× encode_batch, peak RSS < 1.5 GB.

    .venv/bin/python bench/corpus_scale.py [--size-mb 1024] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.demo import prose_documents, stdlib_documents  # noqa: E402
from training.metrics.tailer import read_events  # noqa: E402
from training.scratch import build_scratch_model  # noqa: E402

BATCH_CHARS = 4_000_000


def build_corpus(path: Path, size_bytes: int) -> int:
    """Write ~size_bytes of JSON lines; returns the number of documents."""
    base = stdlib_documents(60_000_000) + prose_documents(10_000_000)
    written, n, copy = 0, 0, 0
    with path.open("w", encoding="utf-8") as out:
        while written < size_bytes:
            for doc in base:
                line = json.dumps({"text": f"# copy {copy}\n{doc}"}) + "\n"
                out.write(line)
                written += len(line.encode())
                n += 1
                if written >= size_bytes:
                    break
            copy += 1
    return n


def iter_text_batches(path: Path) -> Any:
    batch: list[str] = []
    chars = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            batch.append(text)
            chars += len(text)
            if chars >= BATCH_CHARS:
                yield batch
                batch, chars = [], 0
    if batch:
        yield batch


def reference(tokenizer_json: Path, corpus: Path) -> tuple[int, float]:
    """(tokens, seconds in encode_batch) for the whole corpus."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokens, seconds = 0, 0.0
    for batch in iter_text_batches(corpus):
        tic = time.perf_counter()
        encodings = tokenizer.encode_batch(batch, add_special_tokens=False)
        seconds += time.perf_counter() - tic
        tokens += sum(len(e.ids) for e in encodings) + len(batch)  # + an EOS per document
    return tokens, seconds


def _hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_trainer(
    ws: Path, config: Path, run_dir: Path, until_tokenized: bool, timeout: float
) -> dict[str, Any]:
    """Start the trainer; time its first step; optionally wait for tokenization to end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLX_CPT_HOME": str(ws)}
    argv = [sys.executable, "-m", "training.continued_pretraining", "-c", str(config)]
    ws.mkdir(parents=True, exist_ok=True)
    log = (ws / f"{run_dir.name}.log").open("wb")
    tic = time.perf_counter()
    proc = subprocess.Popen(
        [*argv, "--run-dir", str(run_dir)], cwd=ws, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    first_step: float | None = None
    final: dict[str, Any] | None = None
    peak = 0
    deadline = tic + timeout
    try:
        while time.perf_counter() < deadline:
            peak = max(peak, _hwm_kb(proc.pid))
            if proc.poll() is not None:
                break
            rows = list(read_events(run_dir / "metrics.jsonl")) if run_dir.exists() else []
            if first_step is None and any(r.get("event") == "train" for r in rows):
                first_step = time.perf_counter() - tic
            if until_tokenized:
                done = [r for r in rows if r.get("event") == "tokenization" and r.get("done")]
                start = [r for r in rows if r.get("event") == "run_start"]
                if done:
                    final = done[-1]
                elif start and start[0]["data"]["tokenization"]["done"]:
                    final = start[0]["data"]["tokenization"]  # all tokenized before step 1
            if first_step is not None and (not until_tokenized or final is not None):
                break
            time.sleep(0.05)  # a poll interval, not a wait for something
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
    if first_step is None:
        raise SystemExit(f"no training step within {timeout}s; see {ws / run_dir.name}.log")
    return {"first_step_s": first_step, "peak_rss_kb": peak, "tokenization": final}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=float, default=1024.0, help="corpus size (MB)")
    parser.add_argument("--work", help="a folder to keep (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="corpus-scale-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = work / "corpus.jsonl"
        tic = time.perf_counter()
        documents = build_corpus(corpus, int(args.size_mb * 1e6))
        size = corpus.stat().st_size
        print(f"corpus: {size / 1e6:,.0f} MB, {documents:,} documents "
              f"(built in {time.perf_counter() - tic:.0f}s)", flush=True)  # fmt: skip
        model = work / "model"
        if not model.exists():
            sample = work / "sample.jsonl"
            with corpus.open() as f, sample.open("w") as out:
                for _, line in zip(range(2000), f, strict=False):
                    out.write(line)
            build_scratch_model(sample, model, size="small")
        config = work / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "model": str(model),
                    "data": str(corpus),
                    "fine_tune_type": "full",
                    "iters": 1_000_000,
                    "max_seq_length": 256,
                    "batch_size": 2,
                    "steps_per_report": 1,
                    "steps_per_eval": 1_000_000,
                    "val_batches": 1,
                    "save_every": 1_000_000,
                }
            )  # fmt: skip
        )

        ref_tokens, ref_s = reference(model / "tokenizer.json", corpus)
        ref_rate = ref_tokens / ref_s
        print(f"encode_batch: {ref_tokens:,} tokens in {ref_s:,.1f}s "
              f"({ref_rate / 1e6:.2f}M tok/s)", flush=True)  # fmt: skip

        ws = work / "ws"
        uncached = run_trainer(ws, config, ws / "runs" / "uncached", True, args.timeout)
        tok = uncached["tokenization"]
        if tok is None:
            raise SystemExit("tokenizing did not finish before the timeout")
        tok_rate = tok["tokens"] / tok["seconds"]
        print(f"uncached: first step after {uncached['first_step_s']:,.1f}s; tokenized "
              f"{tok['tokens']:,} tokens in {tok['seconds']:,.1f}s ({tok_rate / 1e6:.2f}M tok/s, "
              f"training beside it); peak RSS {uncached['peak_rss_kb'] / 1e6:.2f} GB",
              flush=True)  # fmt: skip
        cached = run_trainer(ws, config, ws / "runs" / "cached", False, args.timeout)
        print(f"cached: first step after {cached['first_step_s']:,.1f}s; "
              f"peak RSS {cached['peak_rss_kb'] / 1e6:.2f} GB", flush=True)  # fmt: skip

        peak = max(uncached["peak_rss_kb"], cached["peak_rss_kb"]) / 1e6
        first = uncached["first_step_s"] / ref_s
        rate = tok_rate / ref_rate
        print()
        print(f"first step uncached / encode_batch time: {first:.3f}  (goal <= 0.1)")
        print(f"tokenization throughput / encode_batch:  {rate:.2f}  (goal >= 0.9)")
        print(f"peak RSS: {peak:.2f} GB  (goal < 1.5)")
        print(f"tokens: trainer {tok['tokens']:,}, encode_batch {ref_tokens:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
