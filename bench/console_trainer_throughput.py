"""Trainer throughput through the console with 10 Socket.IO clients attached, versus the
same trainer launched bare from the command line (goal: ratio >= 0.97). Runs alternate
(bare, console, bare, console, ...) so drifting machine load hits both alike.

    .venv/bin/python bench/console_trainer_throughput.py [--iters 150] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import wait_until  # noqa: E402
from tests.live_server import LiveServer  # noqa: E402
from training.demo import build_demo  # noqa: E402


def tokens_per_second(metrics: Path, skip: int = 2) -> float:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tps = [r["tokens_per_second"] for r in rows if r.get("event") == "train"][skip:]
    return statistics.median(tps)


def bare(ws: Path, config: dict, name: str) -> float:
    cfg = ws / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    run_dir = ws / "runs" / name
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with (ws / f"{name}.log").open("wb") as log:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training.continued_pretraining",
                "-c",
                str(cfg),
                "--run-dir",
                str(run_dir),
            ],
            cwd=ws,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=1200,
        )
    return tokens_per_second(run_dir / "metrics.jsonl")


def console(ws: Path, config: dict, clients: int, cpu: list[float]) -> float:
    with LiveServer(ws) as server:
        # The pages are open before the run starts, as in the console.
        received = [0] * clients
        sockets = []
        for i in range(clients):
            sio = server.socket()
            sio.on("run_metrics", lambda d, i=i: received.__setitem__(i, received[i] + 1))
            sockets.append(sio)
        assert server.process is not None
        proc = psutil.Process(server.process.pid)
        proc.cpu_percent(None)
        run_id = server.post("/api/runs", {"config": config}).json()["run_id"]
        for sio in sockets:
            sio.call("join_run", {"run_id": run_id, "after_seq": 0})
        # Poll gently: a status request 20 times a second would cost the trainer CPU here.
        server.wait_for_state(run_id, "finished", "failed", timeout=1200, interval=2.0)
        cpu.append(proc.cpu_percent(None))  # the console's own CPU while the run trained
        wait_until(lambda: min(received, default=1) > 0)
        assert server.run(run_id)["state"] == "finished", server.run(run_id)["reason"]
        return tokens_per_second(ws / "runs" / run_id / "metrics.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    args = parser.parse_args()
    os.environ.setdefault("MLX_CPT_TOKEN", "bench-token")
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        assets = build_demo(ws, size=args.size, domain_bytes=400_000, general_bytes=60_000)
        config = {
            "model": str(assets["model"]),
            "data": str(assets["corpus"]),
            "fine_tune_type": "full",
            "max_seq_length": 128,
            "batch_size": 4,
            "iters": args.iters,
            "learning_rate": 1e-3,
            "steps_per_report": 5,
            "steps_per_eval": 10_000,
            "val_batches": 1,
            "save_every": 10_000,
        }
        bare_tps: list[float] = []
        console_tps: list[float] = []
        cpu: list[float] = []
        for i in range(args.rounds):
            # Alternate which goes first: load that drifts within a round cancels out.
            order = ("bare", "console") if i % 2 == 0 else ("console", "bare")
            for kind in order:
                if kind == "bare":
                    bare_tps.append(bare(ws, config, f"bare-{i}"))
                else:
                    console_tps.append(console(ws, config, args.clients, cpu))
            print(
                f"round {i + 1}: bare {bare_tps[-1]:,.0f} tok/s, "
                f"console+{args.clients} clients {console_tps[-1]:,.0f} tok/s, "
                f"ratio {console_tps[-1] / bare_tps[-1]:.2f}",
                flush=True,
            )
    b, c = statistics.median(bare_tps), statistics.median(console_tps)
    print(
        f"console process CPU while a run trained: median {statistics.median(cpu):.1f}% of one core"
    )
    print(
        f"bare CLI: median {b:,.0f} tokens/s; through the console with {args.clients} "
        f"clients: {c:,.0f} tokens/s"
    )
    print(f"ratio console/bare: {c / b:.3f} (goal >= 0.97)")


if __name__ == "__main__":
    main()
