"""Start the MLX CPT console: python start_web_interface.py [--help]

Binds 127.0.0.1 (port 5055, or the next free one), prints the URL with its token once,
and opens it in the browser through a local redirect file (so the token never sits in
a process's argv). Starting never starts, resumes, creates, rewrites or deletes
anything of a run: prior sessions are only detected (read-only; --no-autodetect turns
even that off) and resumed on an explicit request (--resume RUN_ID, or the UI).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from training.console.runtime import (
    AlreadyRunning,
    acquire_lock,
    build_demo_async,
    open_browser,
    running_console,
    write_console_json,
)
from training.contract.disk import disk_full_error
from training.contract.protocol import TOKEN_ENV

DEFAULT_PORT = 5055  # not 5000: macOS AirPlay holds it
PORT_TRIES = 10
TRAINER_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

log = logging.getLogger("console")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python start_web_interface.py",
        description="The MLX continued-pretraining console (a local web app).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port (default {DEFAULT_PORT}, or the next free one; 0 picks any free port)",
    )
    p.add_argument(
        "--workspace",
        help="runs, caches and models live here (default $MLX_CPT_HOME or the "
        "per-user data folder)",
    )
    p.add_argument(
        "--token",
        help=f"the access token (default: random per launch). Prefer ${TOKEN_ENV}: a flag "
        "is visible to other users in the process list",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument(
        "--no-autodetect",
        action="store_true",
        help="skip the read-only start-up scan of earlier runs (they are still listed, "
        "and a live trainer is followed when its run is opened)",
    )
    p.add_argument("--resume", metavar="RUN_ID", help="resume this run after start-up")
    p.add_argument(
        "--async-mode",
        choices=("threading", "eventlet"),
        default="threading",
        help="Socket.IO server mode (default threading; eventlet is opt-in)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--demo",
        action="store_true",
        help="build the offline demo (scratch model + corpus) in the workspace if missing "
        "and offer its preset; it never starts a run by itself",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="an extra Host name to accept (beyond localhost and the bind address)",
    )
    p.add_argument(
        "--browse-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder the model/corpus pickers may show (default: the workspace and your "
        "home folder)",
    )
    p.add_argument(
        "--max-concurrent-runs", type=int, default=1, help="runs training at once (default 1)"
    )
    p.add_argument(
        "--stop-grace",
        type=float,
        default=120.0,
        help="seconds a stopping trainer gets to checkpoint before SIGKILL (default 120)",
    )
    p.add_argument(
        "--no-keep-awake",
        action="store_true",
        help="macOS: do not hold `caffeinate -i` while a run trains",
    )
    p.add_argument("--trainer-module", default=None, help=argparse.SUPPRESS)  # tests only
    return p


# -- binding ----------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def bind(host: str, port: int | None) -> socket.socket:
    """A listening socket: the given port, or the default and the next free ones, then any.
    Holding the socket (rather than probing) leaves no window for another process."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = (
        [port]
        if port is not None
        else [
            *range(DEFAULT_PORT, DEFAULT_PORT + PORT_TRIES),
            0,
        ]
    )
    last: OSError | None = None
    for candidate in candidates:
        try:
            return socket.create_server((host, candidate), family=family, backlog=128)
        except OSError as exc:
            last = exc
    assert last is not None
    raise last


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


# -- logging ----------------------------------------------------------------------------------


class RedactTokens(logging.Filter):
    """Belt and braces: no log line carries the token, whatever logged it."""

    def __init__(self, token: str):
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message or "token=" in message:
            message = message.replace(self.token, "[token]")
            record.msg = re.sub(r"token=[^&\s\"']+", "token=[token]", message)
            record.args = None
        return True


class QuietClosedWebSockets(logging.Filter):
    """After a WebSocket closes, Werkzeug may read the client's close frame as an HTTP
    request and log "Bad request syntax": noise, not an error of ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Bad request syntax" not in record.getMessage()


def setup_logging(level: str, token: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactTokens(token))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Werkzeug logs every request line (with its query string): keep it to warnings.
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.WARNING if level != "debug" else logging.DEBUG)
    werkzeug.addFilter(QuietClosedWebSockets())
    for noisy in ("engineio", "socketio", "engineio.server", "socketio.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# -- serving ----------------------------------------------------------------------------------


def serve(app: Any, sock: socket.socket, async_mode: str) -> None:
    if async_mode == "eventlet":
        import eventlet.wsgi

        eventlet.wsgi.server(sock, app, log_output=False)
        return
    from werkzeug.serving import make_server

    from web.limits import JsonErrorRequestHandler

    # Werkzeug's threaded server with simple-websocket, as socketio.run would do
    # (allow_unsafe_werkzeug: this is a local, single-user server), on our own socket;
    # the errors it answers itself (414, 431) are JSON like the app's.
    server = make_server(
        sock.getsockname()[0],
        sock.getsockname()[1],
        app,
        threaded=True,
        request_handler=JsonErrorRequestHandler,
        fd=sock.fileno(),
    )
    sock.close()
    server.serve_forever()


def cannot_write(path: Path, exc: OSError) -> str:
    """Why the console cannot start, in one line: "disk full: N bytes free in <folder>"
    when that is the reason."""
    reason = disk_full_error(exc, path.parent) or exc.strerror or exc
    return f"error: the console cannot start: cannot write {path}: {reason}"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.async_mode == "eventlet":
        import eventlet

        eventlet.monkey_patch()  # before anything creates threads, locks or sockets

    from training.contract.layout import Workspace, default_workspace

    token = args.token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32)
    setup_logging(args.log_level, token)
    if args.trainer_module and not TRAINER_MODULE_RE.fullmatch(args.trainer_module):
        print(
            f"error: --trainer-module must be a module name, got {args.trainer_module!r}",
            file=sys.stderr,
        )
        return 2
    if not is_loopback(args.host):
        if not (args.token or os.environ.get(TOKEN_ENV)):
            print(
                f"error: binding to {args.host} exposes the console to the network; set a "
                f"token first (${TOKEN_ENV}=... or --token)",
                file=sys.stderr,
            )
            return 2
        log.warning(
            "binding to %s: anyone who can reach this address and has the token can start "
            "processes on this machine",
            args.host,
        )

    workspace = Workspace(Path(args.workspace or default_workspace()).expanduser().resolve())
    workspace.root.mkdir(parents=True, exist_ok=True)
    try:
        lock_fd = acquire_lock(workspace.console_lock)
    except AlreadyRunning:
        print(
            f"A console is already running on this workspace ({workspace.root}) at "
            f"{running_console(workspace.root)}. Open that one, or start this one with "
            "--workspace DIR.",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:
        print(cannot_write(workspace.console_lock, exc), file=sys.stderr)
        return 1
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(
            f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}; choose "
            "another --port (or omit it)",
            file=sys.stderr,
        )
        os.close(lock_fd)
        return 1
    port = sock.getsockname()[1]
    base_url = url_for(args.host, port)
    url = f"{base_url}?token={token}"
    try:
        write_console_json(
            workspace.console_json,
            {
                "url": url,
                "port": port,
                "pid": os.getpid(),
                "token": token,
                "host": args.host,
                "workspace": str(workspace.root),
                "started": time.time(),
            },
        )
    except OSError as exc:
        # A full workspace: one plain line, no traceback, before anything else is built.
        sock.close()
        os.close(lock_fd)
        print(cannot_write(workspace.console_json, exc), file=sys.stderr)
        return 1

    from web.app import create_app

    app = create_app(
        {
            "WORKSPACE": workspace.root,
            "TOKEN": token,
            "PORT": port,
            "HOST": args.host,
            "EXTRA_HOSTS": args.allow_host,
            "ASYNC_MODE": args.async_mode,
            "AUTODETECT": not args.no_autodetect,
            "BROWSE_ROOTS": [workspace.root, *args.browse_root] if args.browse_root else None,
            "MAX_CONCURRENT_RUNS": args.max_concurrent_runs,
            "STOP_GRACE_SECONDS": args.stop_grace,
            "KEEP_AWAKE": not args.no_keep_awake,
            "DEMO": args.demo,
            **({"TRAINER_MODULE": args.trainer_module} if args.trainer_module else {}),
        }
    )
    console = app.extensions["console"]
    # Prior sessions: read-only detection, one log line per run (nothing with the flag off).
    console.manager.detect(autodetect=not args.no_autodetect)
    if args.resume:
        try:
            console.manager.resume(args.resume, confirm=True)
        except Exception as exc:  # the console still serves; the person sees why
            log.error("--resume %s: %s", args.resume, exc)
    if args.demo:
        build_demo_async(workspace.root, console)

    print(f"MLX CPT console: {url}", flush=True)
    import psutil

    started_in = time.time() - psutil.Process().create_time()
    log.info(
        "listening on %s (workspace %s, %s mode, started in %.2f s)",
        base_url,
        workspace.root,
        args.async_mode,
        started_in,
    )
    redirect = None if args.no_browser else open_browser(url)

    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        serve(app, sock, args.async_mode)
    except KeyboardInterrupt:
        pass
    finally:
        live = console.close()
        if live:
            log.info(
                "console stopped; %d trainer(s) keep running (%s): a new console adopts them",
                len(live),
                ", ".join(live),
            )
        else:
            log.info("console stopped")
        with contextlib.suppress(FileNotFoundError):
            workspace.console_json.unlink()
        if redirect is not None:
            with contextlib.suppress(FileNotFoundError):
                redirect.unlink()
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    code = main()
    # Cleanup is done (console.json, lock, log line). Open WebSocket threads of clients
    # that went quiet must not hold the process: Ctrl-C means stop now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
