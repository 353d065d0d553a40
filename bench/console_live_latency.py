"""Live metrics latency: a line appended to metrics.jsonl → the row received by Socket.IO
clients (10 clients, 100 events/s), through the console (tail → coalesce → rooms), versus
a bare python-socketio server that emits each event the moment it is made. Also the
tailer alone: append → read.

    .venv/bin/python bench/console_live_latency.py [--seconds 10] [--clients 10] [--rate 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.live_server import LiveServer  # noqa: E402
from training.contract.layout import RunRecord, Workspace, write_record  # noqa: E402
from training.metrics.tailer import EventTailer  # noqa: E402

RUN_ID = "20260101-000000-bench0"

BARE = """
import socket, sys, time, threading
import socketio
from werkzeug.serving import make_server
sio = socketio.Server(async_mode="threading")
app = socketio.WSGIApp(sio)
state = {"n": 0}
@sio.on("join_run")
def join(sid, data):
    sio.enter_room(sid, "run")
    return {"ok": True}
@sio.on("go")
def go(sid, data):
    def emitter():
        seconds, rate = data["seconds"], data["rate"]
        for seq in range(1, int(seconds * rate) + 1):
            row = {"v": 1, "seq": seq, "event": "train", "time": time.time(), "step": seq,
                   "train_loss": 1.0}
            sio.emit("run_metrics", {"run_id": "r", "rows": [row], "last_seq": seq}, to="run")
            time.sleep(1.0 / rate)
    threading.Thread(target=emitter, daemon=True).start()
    return {"ok": True}
sock = socket.create_server(("127.0.0.1", 0))
print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
port = sock.getsockname()[1]
make_server("127.0.0.1", port, app, threaded=True, fd=sock.fileno()).serve_forever()
"""


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def clients(url: str, n: int, auth: dict | None, run_id: str) -> tuple[list, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    conns = []
    for _ in range(n):
        c = socketio.Client(reconnection=False)

        def on_rows(data, lock=lock):
            now = time.time()
            with lock:
                latencies.extend(now - r["time"] for r in data["rows"])

        c.on("run_metrics", on_rows)
        c.connect(url, auth=auth, transports=["websocket"], wait_timeout=10)
        c.call("join_run", {"run_id": run_id, "after_seq": 0}, timeout=10)
        conns.append(c)
    return conns, latencies


def console_run(seconds: float, n: int, rate: float) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        paths = ws.run(RUN_ID)
        paths.root.mkdir(parents=True)
        write_record(paths, RunRecord(RUN_ID, "bench", time.time(), state="running", remote=True))
        paths.metrics.write_text("")
        with LiveServer(ws.root) as server:
            conns, latencies = clients(server.base_url, n, {"token": server.token}, RUN_ID)
            with paths.metrics.open("a") as f:
                for seq in range(1, int(seconds * rate) + 1):
                    row = {
                        "v": 1,
                        "seq": seq,
                        "event": "train",
                        "time": time.time(),
                        "step": seq,
                        "train_loss": 1.0,
                    }
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    time.sleep(1.0 / rate)
            time.sleep(1.0)
            for c in conns:
                c.disconnect()
    return latencies


def bare_run(seconds: float, n: int, rate: float) -> list[float]:
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-c", BARE], stdout=out, stderr=subprocess.STDOUT)
        try:
            while True:
                out.seek(0)
                text = out.read().decode()
                if "listening on " in text:
                    url = text.split("listening on ", 1)[1].split()[0]
                    break
                time.sleep(0.01)
            conns, latencies = clients(url, n, None, "r")
            conns[0].call("go", {"seconds": seconds, "rate": rate}, timeout=10)
            time.sleep(seconds + 1.0)
            for c in conns:
                c.disconnect()
        finally:
            proc.kill()
            proc.wait()
    return latencies


def tailer_run(seconds: float, rate: float, poll: float = 0.05) -> list[float]:
    """The console's tailer alone: polled every `poll` seconds as the broadcaster does."""
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.jsonl"
        path.write_text("")
        tailer = EventTailer(path)
        done = threading.Event()

        def reader():
            while not done.is_set():
                now = time.time()
                latencies.extend(now - r["time"] for r in tailer.poll())
                time.sleep(poll)

        thread = threading.Thread(target=reader)
        thread.start()
        with path.open("a") as f:
            for seq in range(1, int(seconds * rate) + 1):
                f.write(json.dumps({"seq": seq, "time": time.time()}) + "\n")
                f.flush()
                time.sleep(1.0 / rate)
        time.sleep(2 * poll)
        done.set()
        thread.join()
    return latencies


def report(name: str, lat: list[float]) -> tuple[float, float]:
    p50, p99 = percentile(lat, 50) * 1000, percentile(lat, 99) * 1000
    print(
        f"{name:<34} rows {len(lat):>6}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
        f"max {max(lat) * 1000:7.1f} ms"
    )
    return p50, p99


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    os.environ.setdefault("MLX_CPT_TOKEN", "bench-token")
    tail = tailer_run(args.seconds, args.rate)
    report("tailer append → read (50 ms poll)", tail)
    console = console_run(args.seconds, args.clients, args.rate)
    bare = bare_run(args.seconds, args.clients, args.rate)
    expected = int(args.seconds * args.rate) * args.clients
    c50, c99 = report(f"console, {args.clients} clients", console)
    b50, b99 = report(f"bare python-socketio, {args.clients} clients", bare)
    print(f"rows delivered: console {len(console)}/{expected}, bare {len(bare)}/{expected}")
    print(
        f"ratio console/bare: p50 {c50 / b50:.1f}x, p99 {c99 / b99:.1f}x "
        "(the console coalesces to at most 10 emits/s per run by design)"
    )
    # A training run reports about once a second: then no row waits for coalescing.
    slow = console_run(min(args.seconds, 5.0), args.clients, 2.0)
    report(f"console, {args.clients} clients, 2 rows/s", slow)


if __name__ == "__main__":
    main()
