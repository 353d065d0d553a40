"""Start the REAL console (python start_web_interface.py) as a subprocess, for tests.

    from tests.live_server import LiveServer, live_server

    with live_server(tmp_path / "ws") as server:      # waits until /api/health answers
        server.get("/api/runs").json()               # Bearer token added for you
        server.post("/api/runs", {"config": {...}})  # JSON body
        sio = server.socket()                        # a connected python-socketio Client
        server.url_with_token                        # what a browser opens (sets the cookie)
    # leaving the block always terminates it (SIGINT, then SIGKILL)

LiveServer(workspace, token=..., args=[...], env={...}, trainer_module=..., async_mode=...)
- The console binds 127.0.0.1 on a free port (--port 0), gets the token through the
  environment (never argv), and writes its output to `log_path` (stdout and stderr).
- `fake_trainer=True` runs tests/fake_trainer.py instead of the real trainer.
- `start()`, `stop(sig)` (returns the exit code), `kill()` (SIGKILL: a crashed console),
  `restart()`, `output()`, `request(method, path, ...)`, `get/post/patch/delete(...)`,
  `socket(auth=True, **headers)`, `wait_for_state(run_id, *states)`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
import socketio

from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
LISTENING_RE = re.compile(r"listening on (http://[^\s/]+/)")
DEFAULT_TOKEN = "live-test-token-0123456789"


class LiveServer:
    def __init__(
        self,
        workspace: str | Path,
        *,
        token: str = DEFAULT_TOKEN,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        fake_trainer: bool = False,
        trainer_module: str | None = None,
        async_mode: str = "threading",
        port: int = 0,
    ):
        self.workspace = Path(workspace)
        self.token = token
        self.args = list(args or [])
        self.env = dict(env or {})
        self.trainer_module = "tests.fake_trainer" if fake_trainer else trainer_module
        self.async_mode = async_mode
        self.port_arg = port
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.port = 0
        self.log_path = self.workspace.parent / f"{self.workspace.name}-console-{id(self)}.log"
        self._sockets: list[socketio.Client] = []
        self.session = requests.Session()

    # -- lifecycle --

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            str(ROOT / "start_web_interface.py"),
            "--workspace",
            str(self.workspace),
            "--port",
            str(self.port_arg),
            "--no-browser",
            "--async-mode",
            self.async_mode,
            *self.args,
        ]
        if self.trainer_module:
            argv += ["--trainer-module", self.trainer_module]
        return argv

    def start(self, timeout: float = 30.0, expect_ready: bool = True) -> LiveServer:
        self.workspace.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLX_CPT_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}
        env.update(self.env)
        self._log = self.log_path.open("ab")
        self._log_start = self.log_path.stat().st_size
        self.process = subprocess.Popen(
            self.argv(),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if expect_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def listening() -> str | None:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"console exited with {self.process.returncode}:\n{self.output()}"
                )
            m = LISTENING_RE.search(self.output())
            return m.group(1) if m else None

        self.base_url = wait_until(listening, timeout, message="the console to listen")
        self.port = int(self.base_url.rstrip("/").rsplit(":", 1)[1])
        wait_until(self._healthy, timeout, message="/api/health")

    def _healthy(self) -> bool:
        try:
            return requests.get(self.base_url + "api/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def output(self) -> str:
        """Everything the console printed since start() (stdout and stderr)."""
        try:
            data = self.log_path.read_bytes()[self._log_start :]
        except (FileNotFoundError, AttributeError):
            return ""
        return data.decode("utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int | None:
        """Signal the console and wait for it; SIGKILL if it does not exit in time.
        Clients are dropped after the server is gone (a polite client-side disconnect
        waits seconds for the server's close)."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            code = self.process.returncode
            self._log.close()
        for sio in self._sockets:
            with contextlib.suppress(Exception):
                sio.disconnect()
        self._sockets.clear()
        return code

    def kill(self) -> int | None:
        """SIGKILL: the console dies as in a crash (no cleanup runs)."""
        return self.stop(signal.SIGKILL)

    def restart(self, **changes: Any) -> LiveServer:
        self.stop()
        for key, value in changes.items():
            setattr(self, key, value)
        self.port_arg = self.port  # same address, so an open browser reconnects
        return self.start()

    def __enter__(self) -> LiveServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP --

    @property
    def url_with_token(self) -> str:
        return f"{self.base_url}?token={self.token}"

    def request(
        self, method: str, path: str, json: Any = None, *, auth: bool = True, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", None) or {})
        if auth:
            headers.setdefault("Authorization", f"Bearer {self.token}")
        if json is not None:
            kwargs["json"] = json
        return self.session.request(
            method, self.base_url + path.lstrip("/"), headers=headers, timeout=30, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, {} if json is None else json, **kwargs)

    def patch(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("PATCH", path, {} if json is None else json, **kwargs)

    def delete(self, path: str, json: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, {} if json is None else json, **kwargs)

    def run(self, run_id: str) -> dict[str, Any]:
        response = self.get(f"/api/runs/{run_id}")
        assert response.status_code == 200, response.text
        return response.json()["run"]

    def wait_for_state(
        self, run_id: str, *states: str, timeout: float = 60.0, interval: float = 0.05
    ) -> dict[str, Any]:
        return wait_until(
            lambda: (run := self.run(run_id))["state"] in states and run,
            timeout,
            interval,
            message=f"run {run_id} to reach {states}",
        )

    # -- Socket.IO --

    def socket(self, auth: bool = True, **headers: str) -> socketio.Client:
        """A python-socketio client connected over WebSocket with the token in `auth`."""
        sio = socketio.Client(reconnection=False)
        sio.connect(
            self.base_url,
            auth={"token": self.token} if auth else None,
            headers=headers or None,
            transports=["websocket"],
            wait_timeout=10,
        )
        self._sockets.append(sio)
        return sio


@contextlib.contextmanager
def live_server(workspace: str | Path, **kwargs: Any) -> Iterator[LiveServer]:
    server = LiveServer(workspace, **kwargs)
    try:
        yield server.start()
    finally:
        server.stop()
