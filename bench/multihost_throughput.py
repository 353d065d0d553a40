"""Tokens per second of the trainer with two ranks (mlx.launch, ring backend) versus one
process, with the same global batch.

Three ways, alternated so machine noise hits all alike, `--repeats` times each:

- **one process**: `python -m training.continued_pretraining` (the reference);
- **2 ranks, 1 host**: `mlx.launch -n 2 --backend ring` on this machine (no SSH);
- **2 ranks, 2 hosts**: `mlx.launch --hostfile` across two stand-in hosts (network
  namespaces with their own sshd, tests/multihost.py: needs root), as the console runs
  it, with mlx.launch at the lowest priority (the console's way) and, for comparison, at
  the normal one.

The stand-in hosts share this machine's cores, but each rank sees its own address and so
uses as many OpenBLAS threads as there are cores (right for real machines); two such ranks
oversubscribe the cores. The trainer splits the threads itself only for ranks on
127.0.0.1, so the 2-host ways pass `--env OPENBLAS_NUM_THREADS=<cores / 2>`, as those
ranks get (`--blas-threads 0`: pass nothing, and measure the oversubscription too).

Each run trains `--steps` steps; the number is the median `tokens_per_second` of its
train reports (every 5 steps, the first left out: compilation), which counts the tokens of
the whole global batch per second of step time, so the ratio to one process is the
speed-up (below 1: overhead). On one machine the ranks share its cores: on 2 cores two
ranks measure the cost of the ring (the gradient all-reduce over TCP, each rank's own
Python and MLX) and of mlx.launch, not a speed-up.

    sudo .venv/bin/python bench/multihost_throughput.py [--size tiny|small] [--steps 60]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.demo import build_demo  # noqa: E402
from training.metrics.tailer import read_events  # noqa: E402

# The test suite's stand-in hosts (loaded by name: mypy checks bench/, not tests/).
stand_in_hosts = importlib.import_module("tests.multihost").stand_in_hosts

PYTHON = sys.executable
LAUNCHER = str(Path(PYTHON).with_name("mlx.launch"))


def trainer_args(config: Path, run_dir: Path) -> list[str]:
    return ["-m", "training.continued_pretraining", "-c", str(config), "--run-dir", str(run_dir)]


def measure(run_dir: Path) -> dict[str, Any]:
    rows = [r for r in read_events(run_dir / "metrics.jsonl") if r["event"] == "train"][1:]
    out: dict[str, Any] = {"tps": statistics.median(r["tokens_per_second"] for r in rows)}
    if rows and "ranks" in rows[0]:
        out["per_rank"] = [
            statistics.median(r["ranks"][i]["tokens_per_second"] for r in rows)
            for i in range(len(rows[0]["ranks"]))
        ]
    return out


def run(argv: list[str], ws: Path, nice_launcher: bool = False) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLX_CPT_HOME": str(ws)}
    tic = time.perf_counter()
    with subprocess.Popen(
        argv, cwd=ws, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True,
    ) as proc:  # fmt: skip
        if nice_launcher:
            psutil.Process(proc.pid).nice(19)
        _, err = proc.communicate(timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err.decode()[-2000:]}")
    return time.perf_counter() - tic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "small"), default="small")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=max(1, (psutil.cpu_count() or 2) // 2),
        help="OPENBLAS_NUM_THREADS for each stand-in host's rank (0: not set)",
    )
    args = parser.parse_args()

    ws = Path(tempfile.mkdtemp(prefix="bench-multihost-"))
    assets = build_demo(ws, size=args.size, domain_bytes=1_000_000, general_bytes=20_000)
    config = ws / "bench.yaml"
    base = {
        "model": str(assets["model"]), "data": str(assets["corpus"]), "fine_tune_type": "full",
        "max_seq_length": args.seq, "batch_size": args.batch, "iters": args.steps,
        "steps_per_report": 5, "steps_per_eval": 10**6, "save_every": 10**6, "val_fraction": 0,
        "learning_rate": 1e-4, "lr_schedule": "constant",
    }  # fmt: skip
    config.write_text(json.dumps(base))
    results: dict[str, list[dict[str, Any]]] = {}
    with stand_in_hosts(2) as hosts:
        hostfile = ws / "hosts.json"
        hostfile.write_text(json.dumps([{"ssh": a, "ips": [a]} for a in hosts.addresses]))
        for repeat in range(args.repeats):
            port = random.randint(20_000, 60_000)
            local = ["--hosts", "127.0.0.1", "-n", "2"]
            over_ssh = ["--hostfile", str(hostfile), "--cwd", str(ws), "--python", PYTHON,
                        "--env", f"PYTHONPATH={ROOT}", "--env", f"MLX_CPT_HOME={ws}",
                        "--env", "MLX_CPT_PLAIN_PROGRESS=1"]  # fmt: skip
            if args.blas_threads:
                over_ssh += ["--env", f"OPENBLAS_NUM_THREADS={args.blas_threads}"]
            ways = {
                "one process": ([PYTHON], False),
                "2 ranks, 1 host": ([LAUNCHER, *local, "--backend", "ring", "--starting-port",
                                     str(port), "--", PYTHON], False),
                "2 ranks, 2 hosts (launcher niced)": (
                    [LAUNCHER, *over_ssh, "--backend", "ring", "--starting-port",
                     str(port + 10), "--"], True),
                "2 ranks, 2 hosts (launcher not niced)": (
                    [LAUNCHER, *over_ssh, "--backend", "ring", "--starting-port",
                     str(port + 20), "--"], False),
            }  # fmt: skip
            for name, (head, nice) in ways.items():
                run_dir = ws / "runs" / f"{len(results.get(name, []))}-{name.replace(' ', '_')}"
                wall = run([*head, *trainer_args(config, run_dir)], ws, nice)
                results.setdefault(name, []).append({**measure(run_dir), "wall": wall})
                print(f"repeat {repeat + 1}: {name}: {results[name][-1]}", flush=True)

    reference = statistics.median(r["tps"] for r in results["one process"])
    cores = psutil.cpu_count()
    print(
        f"\n{args.size} model, seq {args.seq}, global batch {args.batch}, {args.steps} steps, "
        f"median of {args.repeats}, {cores} cores, load average {os.getloadavg()[0]:.1f}, "
        f"OpenBLAS threads per stand-in host's rank: {args.blas_threads or 'not set'}\n"
    )
    print("| way | tokens/s (global) | per rank | ratio to one process |")
    print("| --- | ---: | ---: | ---: |")
    for name, rows in results.items():
        tps = statistics.median(r["tps"] for r in rows)
        per = [r["per_rank"] for r in rows if "per_rank" in r]
        per_text = (
            " / ".join(f"{statistics.median(p[i] for p in per):,.0f}" for i in range(len(per[0])))
            if per
            else "–"
        )
        print(f"| {name} | {tps:,.0f} | {per_text} | {tps / reference:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
