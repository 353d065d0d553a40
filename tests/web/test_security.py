"""The security model (DESIGN.md), against a LIVE console: Flask-SocketIO's test client
skips Origin checks, so Host, Origin, cookie and handshake cases go over real sockets."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests
import socketio
import websocket

from tests.console_helpers import fake_config, make_workspace, set_fake_mode
from tests.helpers import wait_until
from tests.live_server import ROOT, LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workspace = make_workspace(tmp_path_factory.mktemp("security") / "ws")
    with LiveServer(workspace, fake_trainer=True) as live:
        yield live


def raw(server, method, path, **kwargs):
    """A request with exactly the headers given (no token unless passed)."""
    return requests.request(method, server.base_url + path.lstrip("/"), timeout=10, **kwargs)


def bearer(server):
    return {"Authorization": f"Bearer {server.token}"}


# -- Host allowlist (DNS rebinding) --


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:{port}",
        "127.0.0.1.evil.example:{port}",
        "localhost.evil.example",
        "attacker:{port}",
        "",
    ],
)
@pytest.mark.parametrize(
    "path", ["/api/health", "/api/runs", "/", "/socket.io/?EIO=4&transport=polling"]
)
def test_foreign_host_headers_are_refused_everywhere(server, host, path):
    headers = {"Host": host.format(port=server.port), **bearer(server)}
    response = raw(server, "GET", path, headers=headers)
    assert response.status_code in (403, 421), (host, path)
    assert response.json()["field"] == "Host"


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
def test_loopback_names_are_allowed(server, host):
    response = raw(server, "GET", "/api/health", headers={"Host": host.format(port=server.port)})
    assert response.status_code == 200


# -- Origin --


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "null",
        "http://127.0.0.1:{port}.evil.example",
        "http://127.0.0.1:1",
        "https://127.0.0.1:{port}",
        "http://localhost:{port}",
        "http://127.0.0.1:{port}/",
        "http://127.0.0.1",
    ],
)
def test_foreign_origins_are_refused(server, origin):
    headers = {"Origin": origin.format(port=server.port), **bearer(server)}
    response = raw(server, "POST", "/api/queue/pause", json={}, headers=headers)
    assert response.status_code == 403 and response.json()["field"] == "Origin"


def test_the_exact_origin_is_accepted(server):
    headers = {"Origin": f"http://127.0.0.1:{server.port}", **bearer(server)}
    assert raw(server, "POST", "/api/queue/pause", json={}, headers=headers).status_code == 200


def test_cross_site_fetch_metadata_is_refused(server):
    headers = {"Sec-Fetch-Site": "cross-site", **bearer(server)}
    assert raw(server, "GET", "/api/runs", headers=headers).status_code == 403


# -- the token --


def test_token_cookie_login(server):
    session = requests.Session()
    response = session.get(server.url_with_token, allow_redirects=False, timeout=10)
    assert response.status_code == 302
    assert "token" not in response.headers["Location"]
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"mlx_cpt_token_{server.port}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert session.get(server.base_url + "api/runs", timeout=10).status_code == 200
    bad = requests.get(server.base_url + "?token=wrong", allow_redirects=False, timeout=10)
    assert bad.status_code == 401 and "Set-Cookie" not in bad.headers


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic abc"},
        {"Cookie": "mlx_cpt_token_1=live-test-token-0123456789"},
        {"Authorization": "Bearer "},
    ],
)
def test_requests_without_the_token_are_refused(server, headers):
    for method, path in [("GET", "/api/runs"), ("GET", "/api/system"), ("POST", "/api/runs")]:
        response = raw(server, method, path, headers=headers, json={} if method == "POST" else None)
        assert response.status_code == 401 and response.json()["field"] == "token"
    assert raw(server, "GET", "/", headers=headers).status_code == 401


def test_mutations_are_json_only_on_the_live_server(server):
    for kwargs in (
        {"data": "{}", "headers": {"Content-Type": "text/plain"}},
        {"data": {"confirm": "true"}},
    ):
        kwargs["headers"] = {**kwargs.get("headers", {}), **bearer(server)}
        assert raw(server, "POST", "/api/queue/pause", **kwargs).status_code == 415


def test_security_headers(server):
    for path, auth in [("/api/health", False), ("/api/runs", True), ("/", True)]:
        response = raw(server, "GET", path, headers=bearer(server) if auth else {})
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"


def test_no_debugger_and_no_tracebacks(server):
    assert raw(server, "GET", "/console", headers=bearer(server)).status_code == 404
    response = raw(server, "GET", "/api/runs/%00/logs", headers=bearer(server))
    assert response.status_code == 404 and "Traceback" not in response.text


# -- paths --


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/..%2F..%2Fetc%2Fpasswd/logs",
        "/api/runs/%2e%2e/logs",
        "/api/runs/..%252F..%252Fetc/logs",
        "/static/..%2F..%2Fapp.py",
        "/static/%2e%2e/app.py",
    ],
)
def test_encoded_traversal_in_urls(server, path):
    response = raw(server, "GET", path, headers=bearer(server))
    assert response.status_code in (400, 404)
    assert "create_app" not in response.text


@pytest.mark.parametrize(
    "value",
    [
        "../../etc",
        "/etc/passwd",
        "..%2F..%2Fetc",
        "%2e%2e/%2e%2e/etc",
        "corpus.txt\x00x",
        "/proc/self/environ",
    ],
)
def test_paths_stay_inside_the_allowed_roots(server, value):
    response = raw(server, "GET", "/api/files", params={"path": value}, headers=bearer(server))
    assert response.status_code in (400, 404)
    response = raw(server, "POST", "/api/data/report", json={"path": value}, headers=bearer(server))
    assert response.status_code in (400, 404)


def test_symlinks_out_of_the_workspace(server, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    link = server.workspace / "escape"
    link.symlink_to(outside)
    for path in ("escape", "escape/secret.txt"):
        response = raw(
            server, "POST", "/api/data/report", json={"path": path}, headers=bearer(server)
        )
        assert response.status_code == 400 and "top secret" not in response.text


# -- Socket.IO --


def test_socket_connect_needs_the_token(server):
    with pytest.raises(socketio.exceptions.ConnectionError):
        server.socket(auth=False)
    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(server.base_url, auth={"token": "wrong"}, transports=["websocket"])
    assert server.socket().connected


def test_socket_connect_with_the_cookie(server):
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
        cookie=f"mlx_cpt_token_{server.port}={server.token}",
        timeout=10,
    )
    try:
        assert ws.recv().startswith("0")  # engine.io open
        ws.send("40")  # socket.io connect, no auth payload: the cookie decides
        assert ws.recv().startswith("40")
    finally:
        ws.close()


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:{port}"])
def test_foreign_origin_handshakes_are_refused(server, origin):
    origin = origin.format(port=server.port)
    with pytest.raises(websocket.WebSocketException):
        websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
            origin=origin,
            header=[f"Authorization: Bearer {server.token}"],
            timeout=10,
        )
    polling = raw(server, "GET", "/socket.io/?EIO=4&transport=polling", headers={"Origin": origin})
    assert polling.status_code == 403


def test_socket_host_allowlist(server):
    with pytest.raises(websocket.WebSocketException):
        websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
            host="evil.example",
            timeout=10,
        )


# -- the token never leaves the console --


def test_token_stays_out_of_logs_and_trainer_argv(server):
    set_fake_mode(server.workspace, rate=500)
    run_id = server.post("/api/runs", {"config": fake_config(iters=5)}).json()["run_id"]
    server.wait_for_state(run_id, "finished")
    requests.get(server.url_with_token, timeout=10)  # the login URL itself
    cmdline = server.run(run_id)
    record = (server.workspace / "runs" / run_id / "run.json").read_text()
    assert server.token not in record and server.token not in str(cmdline)
    stdout_log = (server.workspace / "runs" / run_id / "stdout.log").read_text()
    assert server.token not in stdout_log
    output = server.output()
    printed = [line for line in output.splitlines() if server.token in line]
    assert printed == [f"MLX CPT console: {server.url_with_token}"]  # printed once, never logged


def test_binding_beyond_loopback_requires_a_token(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLX_CPT_TOKEN"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "start_web_interface.py"),
            "--host",
            "0.0.0.0",
            "--workspace",
            str(tmp_path / "ws"),
            "--no-browser",
            "--port",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "token" in result.stderr


def test_binding_beyond_loopback_warns(tmp_path):
    server = LiveServer(tmp_path / "ws", args=["--host", "0.0.0.0"])
    with server:
        assert re.search(r"WARNING .*binding to 0\.0\.0\.0", server.output())
        wait_until(lambda: raw(server, "GET", "/api/health").status_code == 200)
