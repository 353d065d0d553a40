"""The console's Flask application factory (the Flask tutorial's create_app pattern).

    app = create_app({"WORKSPACE": "/path", "TOKEN": "..."})

Nothing here imports MLX or scans runs: building an app is fast and has no side effect
on any run folder. The command line (web/cli.py, run as start_web_interface.py) adds the
start-up scan, the workspace lock and the server.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from training.console.broadcaster import Broadcaster
from training.console.eval_jobs import EvalJobs
from training.console.manager import ManagerSettings, TrainingManager
from training.console.run_store import RunStore
from training.contract.layout import PROJECT_ROOT, Workspace, default_workspace
from web import evaluation, security
from web.console import Console
from web.errors import register_error_handlers
from web.extensions import socketio
from web.limits import MAX_BODY_BYTES, BoundedJSONProvider, socket_json

VERSION = "0.1.0"

DEFAULTS: dict[str, Any] = {
    "WORKSPACE": None,  # default_workspace() when not given
    "TOKEN": None,  # a random token per app when not given
    "PORT": None,  # known to the command line; names the cookie
    "HOST": "127.0.0.1",
    "ALLOWED_HOSTS": None,  # loopback names, HOST and EXTRA_HOSTS when not given
    "EXTRA_HOSTS": (),
    "BROWSE_ROOTS": None,  # the workspace and the home folder when not given
    "ASYNC_MODE": "threading",  # pinned: Flask-SocketIO would pick eventlet if installed
    "AUTODETECT": True,
    "TRAINER_MODULE": "training.continued_pretraining",
    "STOP_GRACE_SECONDS": 120.0,
    # The SSH client of the console's own host checks (runs on several machines).
    "SSH_COMMAND": "ssh",
    "MAX_CONCURRENT_RUNS": 1,
    "KEEP_AWAKE": True,
    "POLL_INTERVAL": 0.05,
    "MIN_EMIT_INTERVAL": 0.1,
    "DEMO": False,
    "VERSION": VERSION,
    # Bodies over this are refused (413) before they are read: web/limits.py.
    "MAX_CONTENT_LENGTH": MAX_BODY_BYTES,
}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(
        __name__,
        root_path=str(PROJECT_ROOT),
        static_folder="static",
        template_folder="templates",
    )
    app.config.from_mapping(DEFAULTS)
    app.config.update(config or {})
    app.config["TOKEN"] = app.config["TOKEN"] or secrets.token_urlsafe(32)
    # Request bodies parse within web/limits.py's bounds (nesting, NaN, lone surrogates).
    app.json = BoundedJSONProvider(app)
    app.json.sort_keys = False

    workspace = Workspace(Path(app.config["WORKSPACE"] or default_workspace()).resolve())
    workspace.root.mkdir(parents=True, exist_ok=True)
    app.config["WORKSPACE"] = str(workspace.root)
    if app.config["ALLOWED_HOSTS"] is None:
        app.config["ALLOWED_HOSTS"] = security.allowed_hosts(
            app.config["HOST"], app.config["EXTRA_HOSTS"]
        )
    roots = app.config["BROWSE_ROOTS"] or [workspace.root, Path.home()]
    app.config["BROWSE_ROOTS"] = [str(Path(r).expanduser().resolve()) for r in roots]

    app.extensions["console"] = _build_console(app, workspace)

    register_error_handlers(app)
    security.init_app(app)
    # live and evaluation register Socket.IO handlers on import.
    from web import api, live, pages, runs  # noqa: F401

    app.register_blueprint(api.bp)
    app.register_blueprint(runs.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(evaluation.bp)
    # A run an evaluation job reads or writes is not deleted under it.
    app.extensions["console"].manager.add_busy_check(
        lambda run_id: evaluation.busy_reason(app, run_id)
    )

    socketio.init_app(
        app,
        async_mode=app.config["ASYNC_MODE"],
        # Same-origin only (engine.io compares Origin with Host); HostGuard checks too.
        cors_allowed_origins=None,
        manage_session=False,
        json=socket_json,  # Socket.IO packets parse within the same bounds
        # A packet is at most a request body's size (engine.io's default is 1 MB too).
        max_http_buffer_size=MAX_BODY_BYTES,
        logger=False,
        engineio_logger=False,
    )
    # After init_app, so the guard sits in front of /socket.io/ as well.
    app.wsgi_app = security.HostGuard(app.wsgi_app, app.config["ALLOWED_HOSTS"])  # type: ignore[method-assign]
    return app


def _build_console(app: Flask, workspace: Workspace) -> Console:
    store = RunStore(workspace)
    manager = TrainingManager(
        ManagerSettings(
            workspace=workspace.root,
            trainer_module=app.config["TRAINER_MODULE"],
            stop_grace_seconds=float(app.config["STOP_GRACE_SECONDS"]),
            max_concurrent_runs=int(app.config["MAX_CONCURRENT_RUNS"]),
            keep_awake=bool(app.config["KEEP_AWAKE"]),
            ssh=str(app.config["SSH_COMMAND"]),
        ),
        store,
    )

    def emit(event: str, data: dict[str, Any], to: str | None) -> None:
        socketio.emit(event, data, to=to)

    broadcaster = Broadcaster(
        store,
        emit,
        lambda run_id: manager.describe(run_id, detail=False),
        active_runs=manager.active_run_ids,
        poll_interval=float(app.config["POLL_INTERVAL"]),
        min_emit_interval=float(app.config["MIN_EMIT_INTERVAL"]),
        start_task=socketio.start_background_task,
        sleep=socketio.sleep,
    )
    manager.add_listener(broadcaster.run_changed)
    return Console(
        workspace=workspace,
        store=store,
        manager=manager,
        broadcaster=broadcaster,
        browse_roots=[Path(r) for r in app.config["BROWSE_ROOTS"]],
        demo_state="building" if app.config["DEMO"] else None,
        eval_jobs=EvalJobs(evaluation.forward),
    )
