"""The console's runtime pieces outside create_app: the browser's redirect file (the lock,
console.json and the demo build are exercised through the real command line in
test_start_web_interface.py)."""

from __future__ import annotations

import stat

import training.console.runtime as console_runtime
from tests.helpers import wait_until


def test_the_browser_gets_a_redirect_file_not_the_token(monkeypatch):
    opened = []
    monkeypatch.setattr(console_runtime.webbrowser, "open", lambda url: opened.append(url))
    path = console_runtime.open_browser("http://127.0.0.1:5055/?token=secret")
    wait_until(lambda: opened)
    assert opened == [path.as_uri()] and "secret" not in opened[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "http://127.0.0.1:5055/?token=secret" in path.read_text()
    path.unlink()
