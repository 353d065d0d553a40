"""Console start-up: process start → first HTTP 200 from /api/health, versus a bare
Flask + Flask-SocketIO server (the floor for this stack) started the same way.

    .venv/bin/python bench/console_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent

BARE = """
import socket, sys
from flask import Flask
from flask_socketio import SocketIO
app = Flask(__name__)
sio = SocketIO(app, async_mode="threading")
@app.get("/api/health")
def health():
    return {"ok": True}
sock = socket.create_server(("127.0.0.1", 0))
print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/", flush=True)
from werkzeug.serving import make_server
port = sock.getsockname()[1]
make_server("127.0.0.1", port, app, threaded=True, fd=sock.fileno()).serve_forever()
"""


def time_to_200(argv: list[str], env: dict[str, str]) -> float:
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            url = None
            while True:
                if url is None:
                    out.seek(0)
                    text = out.read().decode(errors="replace")
                    if "listening on " in text:
                        url = text.split("listening on ", 1)[1].split()[0]
                    elif proc.poll() is not None:
                        raise RuntimeError(text)
                if url is not None:
                    try:
                        if requests.get(url + "api/health", timeout=1).status_code == 200:
                            return time.perf_counter() - start
                    except requests.RequestException:
                        pass
                time.sleep(0.002)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "MLX_CPT_TOKEN": "bench-token"}
    console_times, bare_times = [], []
    with tempfile.TemporaryDirectory() as ws:
        console = [
            sys.executable,
            str(ROOT / "start_web_interface.py"),
            "--workspace",
            ws,
            "--port",
            "0",
            "--no-browser",
        ]
        bare = [sys.executable, "-c", BARE]
        time_to_200(console, env)  # warm the OS file cache for both
        time_to_200(bare, env)
        for _ in range(args.repeats):
            console_times.append(time_to_200(console, env))
            bare_times.append(time_to_200(bare, env))
    c, b = statistics.median(console_times), statistics.median(bare_times)
    print(
        f"console start → first 200: median {c * 1000:.0f} ms "
        f"(min {min(console_times) * 1000:.0f}, max {max(console_times) * 1000:.0f})"
    )
    print(f"bare Flask-SocketIO server: median {b * 1000:.0f} ms")
    print(f"ratio console/bare: {c / b:.2f}x")


if __name__ == "__main__":
    main()
