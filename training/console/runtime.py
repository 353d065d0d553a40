"""What a running console keeps outside its process: the workspace lock, console.json, the
browser's redirect file, and the demo build in the background.

No Flask here: the command line (start_web_interface.py) calls these around create_app.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import webbrowser
from pathlib import Path
from typing import Any

# The command line's logger: these lines read as the console's own.
log = logging.getLogger("console")


# -- the workspace lock and runtime file ------------------------------------------------------


class AlreadyRunning(RuntimeError):
    """Another console holds this workspace's lock."""


def acquire_lock(path: Path) -> int:
    """flock on console.lock: the kernel drops it when a console dies, however it dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(str(path)) from None
    return fd


def running_console(workspace: Path) -> str:
    """Where the console holding the lock serves (from its console.json), without token."""
    try:
        info = json.loads((workspace / "console.json").read_text())
        return f"{info['url'].split('?', 1)[0]} (pid {info.get('pid')})"
    except (OSError, ValueError, KeyError, AttributeError):
        return "an address it has not published yet"


def write_console_json(path: Path, info: dict[str, Any]) -> None:
    from training.contract.files import write_atomic

    write_atomic(path, json.dumps(info, indent=2) + "\n", mode=0o600)


# -- the browser ------------------------------------------------------------------------------


def open_browser(url_with_token: str) -> Path | None:
    """Open a local file that redirects to the URL: the token stays out of argv."""
    fd, name = tempfile.mkstemp(prefix="mlx-cpt-open-", suffix=".html")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(
            '<!DOCTYPE html><html><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="0;url={url_with_token}">'
            "<title>MLX CPT console</title></head><body>"
            f'<p>Opening <a href="{url_with_token}">the MLX CPT console</a>...</p>'
            "</body></html>"
        )
    path = Path(name)
    threading.Thread(
        target=lambda: webbrowser.open(path.as_uri()), name="browser", daemon=True
    ).start()
    return path


# -- the demo ---------------------------------------------------------------------------------


def demo_ready(workspace: Path) -> bool:
    from training.contract.layout import DEMO_CONFIG, DOMAIN_CORPUS, GENERAL_SET, demo_model_dir

    model = workspace / demo_model_dir("small")
    return (
        all(
            p.exists()
            for p in (workspace / DOMAIN_CORPUS, workspace / GENERAL_SET, workspace / DEMO_CONFIG)
        )
        and (model / "config.json").is_file()
    )


def build_demo_async(workspace: Path, console: Any) -> None:
    """Build the demo assets in a subprocess (MLX never loads in the console process)."""
    if demo_ready(workspace):
        console.demo_state = "ready"
        return
    log_path = workspace / "demo-build.log"
    argv = [sys.executable, "-m", "training.demo", "--workspace", str(workspace), "--size", "small"]
    from training.console.trainer_process import child_env

    env = child_env()
    log.info("demo: building the scratch model and corpus in the background (log: %s)", log_path)

    def run() -> None:
        with log_path.open("ab") as out:
            code = subprocess.call(
                argv,
                cwd=workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        console.demo_state = "ready" if code == 0 else f"failed: exit code {code}, see {log_path}"
        log.info("demo: %s", console.demo_state)

    threading.Thread(target=run, name="demo-build", daemon=True).start()
