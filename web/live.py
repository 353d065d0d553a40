"""Socket.IO handlers: authenticated connect, and per-run rooms for live metrics.

Client → server: `join_run {run_id, after_seq}` (ack: {ok, last_seq} or {ok: false,
error}: always an ack; a damaged run's names the file), `leave_run {run_id}`. Server →
client: `run_metrics {run_id, rows, last_seq}` and `run_status {run_id, state, ...}` (see
training/console/broadcaster.py).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import request
from flask_socketio import ConnectionRefusedError, join_room, leave_room

from training.console.broadcaster import room_of
from training.contract.layout import RunNotFound, is_valid_run_id
from training.contract.reading import DamagedFile
from web.console import console
from web.extensions import socketio
from web.security import socket_authorized

log = logging.getLogger(__name__)


@socketio.on_error_default
def on_event_error(exc: Exception) -> Any:
    """An event handler that raised (a client sent arguments it cannot take): the client
    gets an error ack instead of silence (it would wait for its ack until its timeout),
    and an error never opens a connection."""
    event = getattr(request, "event", None) or {}
    name = event.get("message")
    log.warning("Socket.IO event %r: %s: %s", name, type(exc).__name__, exc)
    if name == "connect":
        return False
    return {"ok": False, "error": f"cannot handle {name!r} with these arguments", "field": None}


@socketio.on("connect")
def on_connect(auth: Any = None) -> None:
    # Host and Origin were checked by HostGuard on the handshake request already.
    if not socket_authorized(auth):
        raise ConnectionRefusedError("unauthorized: connect with auth {token} or the cookie")


@socketio.on("disconnect")
def on_disconnect(*_reason: Any) -> None:
    console().broadcaster.leave(request.sid)  # type: ignore[attr-defined]


def _run_id(data: Any) -> str | None:
    run_id = data.get("run_id") if isinstance(data, dict) else None
    return run_id if isinstance(run_id, str) and is_valid_run_id(run_id) else None


@socketio.on("join_run")
def on_join_run(data: Any = None) -> dict[str, Any]:
    run_id = _run_id(data)
    if run_id is None:
        return {"ok": False, "error": "send {run_id, after_seq}", "field": "run_id"}
    after_seq = data.get("after_seq", 0)
    if after_seq is None:
        after_seq = 0
    if not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0:
        return {"ok": False, "error": "after_seq must be a whole number >= 0", "field": "after_seq"}
    c = console()
    sid = request.sid  # type: ignore[attr-defined]
    try:
        c.manager.adopt_if_alive(run_id)  # opening a run adopts its live trainer
        last_seq = c.broadcaster.join(
            sid, run_id, after_seq, enter_room=lambda: join_room(room_of(run_id))
        )
        socketio.emit("run_status", c.manager.describe(run_id, detail=False), to=sid)
    except RunNotFound:
        return {"ok": False, "error": f"no run {run_id!r}", "field": "run_id"}
    except DamagedFile as exc:
        return {"ok": False, "error": str(exc), "field": None, "file": exc.file}
    except Exception as exc:  # a client waiting for its ack must get one, whatever broke
        log.exception("join_run %s failed", run_id)
        return {"ok": False, "error": f"internal error: {type(exc).__name__}", "field": None}
    return {"ok": True, "run_id": run_id, "last_seq": last_seq}


@socketio.on("leave_run")
def on_leave_run(data: Any = None) -> dict[str, Any]:
    run_id = _run_id(data)
    if run_id is None:
        return {"ok": False, "error": "send {run_id}", "field": "run_id"}
    leave_room(room_of(run_id))
    console().broadcaster.leave(request.sid, run_id)  # type: ignore[attr-defined]
    return {"ok": True, "run_id": run_id}
