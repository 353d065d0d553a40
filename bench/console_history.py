"""History for charts: GET /api/runs/<run_id>/metrics?max_points=N on a 1,000,000-row
run, through a live console (cold: the first request indexes the file; warm: later
requests and any run the console already follows; after a restart: the first request of
a new console, which reads the index the last one saved), versus a naive handler that
parses the whole file with json on every request.

    .venv/bin/python bench/console_history.py [--rows 1000000] [--max-points 2000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live_server import LiveServer  # noqa: E402
from training.contract.layout import RunRecord, Workspace, write_record  # noqa: E402

RUN_ID = "20260101-000000-hist00"


def write_metrics(path: Path, rows: int) -> list[int]:
    rng = random.Random(0)
    spikes = sorted(rng.sample(range(1, rows), 5))
    with path.open("w") as f:
        for seq in range(1, rows + 1):
            if seq % 500 == 0:
                row = {
                    "v": 1,
                    "seq": seq,
                    "event": "eval",
                    "time": 1.7e9 + seq,
                    "step": seq,
                    "val_loss": 2.0 - seq / rows,
                }
            else:
                loss = 2.5 - seq / rows + rng.random() * 0.05
                row = {
                    "v": 1,
                    "seq": seq,
                    "event": "train",
                    "time": 1.7e9 + seq,
                    "step": seq,
                    "train_loss": 40.0 if seq in spikes else loss,
                    "learning_rate": 1e-4,
                    "tokens_per_second": 12000.0,
                    "iterations_per_second": 3.1,
                    "trained_tokens": seq * 4096,
                    "peak_memory": 3.2,
                }
            f.write(json.dumps(row) + "\n")
    return spikes


def naive(path: Path) -> int:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    losses = [r.get("train_loss") for r in rows]
    return len(rows) + len([x for x in losses if x])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--max-points", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        paths = ws.run(RUN_ID)
        paths.root.mkdir(parents=True)
        write_record(paths, RunRecord(RUN_ID, "history", time.time(), state="running", remote=True))
        t = time.perf_counter()
        spikes = write_metrics(paths.metrics, args.rows)
        size = paths.metrics.stat().st_size
        print(f"wrote {args.rows:,} rows ({size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s")
        url = f"/api/runs/{RUN_ID}/metrics?max_points={args.max_points}"
        with LiveServer(ws.root) as server:
            t = time.perf_counter()
            first = server.get(url)
            cold = time.perf_counter() - t
            warm = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                response = server.get(url)
                warm.append(time.perf_counter() - t)
            data = response.json()
            assert first.status_code == 200 and data["total"] == args.rows
            kept = {r["seq"] for r in data["rows"]}
            assert set(spikes) <= kept, "a spike was lost"
            tail = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                server.get(f"/api/runs/{RUN_ID}/metrics?after_seq={args.rows - 100}")
                tail.append(time.perf_counter() - t)
        # A console started again: its first request reads the index the last one saved.
        with open(paths.metrics, "a") as f:  # and the run went on meanwhile
            f.write(json.dumps({"v": 1, "seq": args.rows + 1, "event": "status"}) + "\n")
        with LiveServer(ws.root) as server:
            t = time.perf_counter()
            again = server.get(url)
            restarted = time.perf_counter() - t
            assert again.json()["total"] == args.rows + 1
        t = time.perf_counter()
        naive(paths.metrics)
        naive_time = time.perf_counter() - t
    w = statistics.median(warm)
    print(
        f"rows returned: {len(data['rows'])} (all {len(spikes)} loss spikes kept), "
        f"{len(response.content) / 1e3:.0f} kB"
    )
    print(f"console, first request (indexes the file): {cold * 1000:.0f} ms")
    print(f"console started again, first request (saved index): {restarted * 1000:.0f} ms")
    print(f"console, warm request (median of {args.repeats}): {w * 1000:.0f} ms")
    print(f"console, last 100 rows (after_seq): {statistics.median(tail) * 1000:.1f} ms")
    print(f"naive json parse of the whole file per request: {naive_time * 1000:.0f} ms")
    print(
        f"ratio naive/console: cold {naive_time / cold:.1f}x, after a restart "
        f"{naive_time / restarted:.0f}x, warm {naive_time / w:.0f}x"
    )


if __name__ == "__main__":
    main()
