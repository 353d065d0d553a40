"""The trainer with OpenBLAS preloaded (its default on Linux) vs MLX's bundled BLAS.

Runs the real trainer twice on the offline demo assets, alternating, with
MLX_CPT_OPENBLAS=1 and =0, and prints the median `tokens_per_second` of its train events
(evaluation excluded) and the ratio.

    .venv/bin/python bench/openblas_speedup.py [--size tiny|small] [--steps 40] [--seq 128]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.demo import build_demo  # noqa: E402
from training.metrics.tailer import read_events  # noqa: E402


def run(ws: Path, args: argparse.Namespace, openblas: str, tag: str) -> tuple[float, str]:
    run_dir = ws / "runs" / f"blas-{openblas}-{tag}"
    argv = [
        sys.executable, "-m", "training.continued_pretraining", "-c", "demo.yaml",
        "--run-dir", str(run_dir), "--iters", str(args.steps), "--max-seq-length",
        str(args.seq), "--batch-size", str(args.batch), "--steps-per-report", "5",
        "--steps-per-eval", "100000", "--save-every", "100000", "--val-fraction", "0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLX_CPT_HOME": str(ws)}
    env["MLX_CPT_OPENBLAS"] = openblas
    env.pop("LD_PRELOAD", None)
    subprocess.run(argv, cwd=ws, env=env, check=True, capture_output=True)
    rows = list(read_events(run_dir / "metrics.jsonl"))
    rates = [r["tokens_per_second"] for r in rows if r["event"] == "train"][1:]  # warm only
    return statistics.median(rates), rows[0]["versions"]["blas"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "small"), default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-blas-") as tmp:
        ws = Path(tmp)
        build_demo(ws, args.size, domain_bytes=400_000, general_bytes=20_000)
        results: dict[str, list[float]] = {"1": [], "0": []}
        names = {}
        for i in range(args.repeats):
            for flag in ("1", "0"):
                rate, names[flag] = run(ws, args, flag, str(i))
                results[flag].append(rate)
        fast, slow = statistics.median(results["1"]), statistics.median(results["0"])
        print(f"{args.size} model, batch {args.batch} x seq {args.seq}, {args.steps} steps")
        print(f"  {names['1']:<50} {fast:>10,.0f} tok/s")
        print(f"  {names['0']:<50} {slow:>10,.0f} tok/s")
        print(f"  speedup {fast / slow:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
