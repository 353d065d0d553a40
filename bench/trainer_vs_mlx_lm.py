"""This trainer vs `python -m mlx_lm lora --fine-tune-type full` on a corpus of long documents.

Both get the same scratch model (the `small` size), the same documents (mlx-lm's layout:
train.jsonl / valid.jsonl with `text`), seq length, batch, steps, learning rate, optimizer,
evaluation schedule and OpenBLAS (preloaded into both). Printed per trainer:

- the share of the corpus's tokens one epoch trains (mlx-lm truncates each document to
  max_seq_length and drops the rest; this trainer packs);
- tokens in the loss, and per wall second (process start to exit): raw throughput;
- distinct corpus tokens trained (a token trained twice counts once), and per wall second:
  the effective rate at which the run learns the corpus;
- the validation share of the wall time;

and the ratios. The default run (30 steps of 4 x 512 tokens on ~1 MB of Python sources)
is longer than mlx-lm's epoch (documents / batch steps) and shorter than this trainer's,
so mlx-lm cycles over its truncated documents while this trainer sees new text every
step. mlx-lm's tokens are counted exactly by replaying its own batch iterator and seed.

    .venv/bin/python bench/trainer_vs_mlx_lm.py [--steps 30] [--seq 512] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.contract.blas import find_openblas  # noqa: E402
from training.demo import stdlib_documents  # noqa: E402
from training.metrics.tailer import read_events  # noqa: E402
from training.scratch import build_scratch_model  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def build_assets(work: Path, corpus_bytes: int, min_valid: int) -> tuple[Path, Path, list[str]]:
    """Long stdlib sources as the corpus (mlx-lm layout) and a `small` scratch model."""
    docs = stdlib_documents(corpus_bytes * 2)  # source files of 2,000+ characters
    total, picked = 0, []
    for d in docs:
        picked.append(d)
        total += len(d.encode())
        if total >= corpus_bytes:
            break
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    n_val = max(min_valid, len(picked) // 20)
    for name, part in (("train", picked[n_val:]), ("valid", picked[:n_val])):
        with (data / f"{name}.jsonl").open("w") as f:
            for doc in part:
                f.write(json.dumps({"text": doc}) + "\n")
    model = work / "model"
    if not model.exists():
        build_scratch_model(data / "train.jsonl", model, size="small")
    return data, model, picked[n_val:]


def env_with_openblas(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    lib = find_openblas()
    if lib and sys.platform == "linux":
        env["LD_PRELOAD"] = lib  # ours would re-exec with it anyway: set it for both alike
    return env


def run_ours(args: argparse.Namespace, work: Path, data: Path, model: Path) -> dict[str, Any]:
    """Our trainer on the same data folder (it reads valid.jsonl as the validation set)."""
    run_dir = work / "runs" / f"ours-{int(time.time())}"
    argv = [
        sys.executable, "-m", "training.continued_pretraining",
        "--model", str(model), "--data", str(data), "--run-dir", str(run_dir),
        "--fine-tune-type", "full", "--num-layers", "-1", "--dtype", "float32",
        "--iters", str(args.steps), "--batch-size", str(args.batch),
        "--max-seq-length", str(args.seq), "--learning-rate", str(args.lr),
        "--lr-schedule", "constant", "--optimizer", "adamw", "--grad-clip", "0",
        "--steps-per-report", "10", "--steps-per-eval", str(args.eval_every),
        "--val-batches", str(args.val_batches), "--save-every", str(args.steps),
    ]  # fmt: skip
    tic = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=work, env=env_with_openblas(MLX_CPT_HOME=str(work)), capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"this trainer failed:\n{proc.stdout}\n{proc.stderr}")
    rows = list(read_events(run_dir / "metrics.jsonl"))
    start = next(r for r in rows if r["event"] == "run_start")
    train = [r for r in rows if r["event"] == "train"]
    val_time = sum(r["val_time"] for r in rows if r["event"] == "eval")
    return {
        "wall": wall,
        "in_loss": train[-1]["trained_tokens"],
        "share": start["data"]["trained_share"],
        "val_time": val_time,
        "tokenize_s": sum(c["seconds"] for c in start["data"]["cache"].values()),
        "blas": start["versions"]["blas"],
    }


def run_mlx_lm(args: argparse.Namespace, work: Path, data: Path, model: Path) -> dict[str, Any]:
    argv = [
        sys.executable, "-m", "mlx_lm", "lora", "--train", "--model", str(model),
        "--data", str(data), "--fine-tune-type", "full", "--num-layers", "-1",
        "--iters", str(args.steps), "--batch-size", str(args.batch),
        "--max-seq-length", str(args.seq), "--learning-rate", str(args.lr),
        "--optimizer", "adamw", "--steps-per-report", "10",
        "--steps-per-eval", str(args.eval_every), "--val-batches", str(args.val_batches),
        "--save-every", str(args.steps), "--adapter-path", str(work / "mlx_lm_adapters"),
        "--seed", "0",
    ]  # fmt: skip
    tic = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=work, env=env_with_openblas(), capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - tic
    if proc.returncode != 0:
        raise SystemExit(f"mlx_lm lora failed:\n{proc.stdout}\n{proc.stderr}")
    out = ANSI.sub("", proc.stdout + proc.stderr)
    val_time = sum(float(m.group(1)) for m in re.finditer(r"\bval\s+[\d.]+\s+([\d.]+)s", out))
    return {
        "wall": wall,
        "val_time": val_time,
    }


def mlx_lm_trained_tokens(
    args: argparse.Namespace, model: Path, docs: list[str]
) -> tuple[int, int, float]:
    """mlx-lm's (tokens in the loss, distinct corpus tokens in the loss, share of the corpus
    one epoch trains), exactly: `mlx_lm lora` seeds numpy with --seed and then draws its
    batches from this same iterator, which we replay without a model."""
    from mlx_lm.tuner import trainer
    from mlx_lm.tuner.datasets import CacheDataset, TextDataset
    from mlx_lm.tuner.trainer import iterate_batches
    from mlx_lm.utils import load_tokenizer

    trainer.rprint = lambda *a, **k: None  # its truncation warning, once per batch

    tokenizer = load_tokenizer(model)
    train = CacheDataset(TextDataset([{"text": d} for d in docs], tokenizer))
    lengths = np.array([len(train[i][0]) for i in range(len(train))])
    share = float((np.minimum(lengths, args.seq) - 1).sum()) / float(lengths.sum())
    np.random.seed(0)
    in_loss = 0
    seen: dict[tuple[int, ...], int] = {}
    batches = iterate_batches(train, args.batch, args.seq, loop=True)
    for _, (batch, lens) in zip(range(args.steps), batches, strict=False):
        rows = np.array(batch)
        width = rows.shape[1]
        for row, n in zip(rows, np.array(lens)[:, 1], strict=True):
            # Its mask counts target steps 1..n; when the row is shorter than the batch the
            # last of them targets padding: the real tokens are min(n, width - 1) - 1 or so.
            real = int(min(n, width - 1) - (1 if n <= width - 1 else 0))
            in_loss += real
            key = (int(n), *row[:48].tolist())
            seen[key] = real  # a repeated document counts once
    return in_loss, sum(seen.values()), share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, help="default: at the start and the end")
    parser.add_argument("--val-batches", type=int, default=1)
    parser.add_argument("--corpus-mb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating")
    parser.add_argument("--workdir", help="keep assets and runs here (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        data, model, docs = build_assets(work, int(args.corpus_mb * 1e6), args.batch)
        from mlx_lm.utils import load_tokenizer

        tok = load_tokenizer(model)
        lengths = sorted(len(tok.encode(d)) + 1 for d in docs)  # + EOS, as both trainers do
        corpus_tokens = sum(lengths)
        args.eval_every = args.eval_every or args.steps
        in_loss, distinct, mlx_share = mlx_lm_trained_tokens(args, model, docs)
        # Alternate (A B B A ...) and keep each trainer's median run: a shared machine's
        # load drifts, and both should see the same drift.
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": []}
        for i in range(args.repeats):
            order = ("theirs", "ours") if i % 2 == 0 else ("ours", "theirs")
            for who in order:
                run = run_ours if who == "ours" else run_mlx_lm
                runs[who].append(run(args, work, data, model))
        ours, theirs = (median_run(runs[k]) for k in ("ours", "theirs"))
        ours["tokenize_s"] = max(r["tokenize_s"] for r in runs["ours"])
        theirs.update(in_loss=in_loss, distinct=distinct, share=mlx_share)
        # One pass over every packed sequence comes before any repeats.
        ours["distinct"] = min(ours["in_loss"], corpus_tokens - 1)
        print(
            f"corpus: {len(docs)} documents, {corpus_tokens:,} tokens, median document "
            f"{lengths[len(lengths) // 2]:,} tokens; seq {args.seq}, batch {args.batch}, "
            f"{args.steps} steps each; BLAS: {ours['blas']} (both)"
        )
        report(ours, theirs)
    return 0


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    walls = sorted(runs, key=lambda r: r["wall"])
    out = dict(walls[(len(walls) - 1) // 2])
    out["walls"] = [round(r["wall"], 1) for r in runs]
    return out


ROWS = [
    ("share of corpus tokens trained per epoch", "share", "{:.1%}"),
    ("tokens in the loss (repeats included)", "in_loss", "{:,.0f}"),
    ("  per wall second", "raw_tps", "{:,.0f}"),
    ("distinct corpus tokens trained", "distinct", "{:,.0f}"),
    ("  per wall second (effective)", "tps", "{:,.0f}"),
    ("wall seconds (process start to exit)", "wall", "{:.1f}"),
    ("validation share of wall time", "val_share", "{:.1%}"),
]


def report(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    for r in (ours, theirs):
        r["raw_tps"] = r["in_loss"] / r["wall"]
        r["tps"] = r["distinct"] / r["wall"]
        r["val_share"] = r["val_time"] / r["wall"]
    print(f"{'':42} {'this trainer':>14} {'mlx_lm lora':>14} {'ratio':>8}")
    for label, key, fmt in ROWS:
        ratio = ours[key] / theirs[key] if theirs[key] else float("nan")
        print(
            f"{label:42} {fmt.format(ours[key]):>14} {fmt.format(theirs[key]):>14} {ratio:>7.2f}x"
        )
    print(f"walls of each run: this trainer {ours['walls']}, mlx_lm lora {theirs['walls']}")
    print(
        f"(this trainer's first run includes tokenizing into its cache: {ours['tokenize_s']:.1f}s)"
    )


if __name__ == "__main__":
    sys.exit(main())
