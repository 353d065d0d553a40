"""Running the real trainer (python -m training.continued_pretraining) from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT
from training.metrics.tailer import read_events

# Shapes shared with the console's end-to-end test, so MLX's CPU kernels compile once.
TINY = {
    "fine_tune_type": "full",
    "max_seq_length": 64,
    "batch_size": 2,
    "learning_rate": 3e-3,
    "warmup_steps": 2,
    "steps_per_report": 1,
    "steps_per_eval": 1000,
    "val_batches": 2,
    "save_every": 1000,
}


def write_config(path: Path, assets: dict[str, Path], **values: Any) -> Path:
    config = {"model": str(assets["model"]), "data": str(assets["corpus"]), **TINY, **values}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def trainer_env(workspace: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLX_CPT_HOME": str(workspace), **extra}
    return env


def trainer_argv(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "training.continued_pretraining", *map(str, args)]


def run_trainer(
    workspace: Path, *args: str | Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the trainer to completion with cwd = the workspace (as the console does)."""
    workspace.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        trainer_argv(*args),
        cwd=workspace,
        env=trainer_env(workspace, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_trainer(workspace: Path, *args: str | Path, log: Path) -> subprocess.Popen[bytes]:
    workspace.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            trainer_argv(*args),
            cwd=workspace,
            env=trainer_env(workspace),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def events(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    rows = list(read_events(run_dir / "metrics.jsonl"))
    return [r for r in rows if kind is None or r["event"] == kind]


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> train_loss; a resumed run's rows overwrite what it re-did."""
    return {r["step"]: r["train_loss"] for r in events(run_dir, "train")}


def last_step_seen(run_dir: Path) -> int:
    rows = events(run_dir, "train")
    return rows[-1]["step"] if rows else 0


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


class EventCollector:
    """A loopback HTTP server that records POSTed bodies; answers 503 `fail_first` times."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_first = fail_first
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if collector.fail_first > 0:
                    collector.fail_first -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                collector.bodies.append(json.loads(body))
                collector.headers.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok": true}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/callbacks/run-1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [e for body in self.bodies for e in body["events"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
