"""Extension objects created once and bound to the app in create_app (Flask's init_app
pattern), so any blueprint can register Socket.IO handlers on the same server."""

from __future__ import annotations

from flask_socketio import SocketIO

socketio = SocketIO()
