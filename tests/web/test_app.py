"""The create_app factory: defaults, one Console per app, guards in front of everything."""

from __future__ import annotations

from pathlib import Path

from web.app import create_app


def test_defaults_and_independent_apps(tmp_path):
    a = create_app({"WORKSPACE": tmp_path / "a"})
    b = create_app({"WORKSPACE": tmp_path / "b", "TOKEN": "given"})
    assert a.config["TOKEN"] != b.config["TOKEN"] and len(a.config["TOKEN"]) >= 32
    assert b.config["TOKEN"] == "given"
    assert a.config["ASYNC_MODE"] == "threading"
    assert a.extensions["console"] is not b.extensions["console"]
    assert a.config["BROWSE_ROOTS"] == [str((tmp_path / "a").resolve()), str(Path.home())]
    assert {"localhost", "127.0.0.1", "::1"} <= set(a.config["ALLOWED_HOSTS"])
    for app in (a, b):
        app.extensions["console"].close()


def test_creating_an_app_touches_no_run(tmp_path):
    ws = tmp_path / "ws"
    app = create_app({"WORKSPACE": ws})
    assert [p.name for p in ws.iterdir()] == []  # not even runs/ until a run is created
    app.extensions["console"].close()


def test_every_route_is_behind_the_guards(tmp_path):
    app = create_app({"WORKSPACE": tmp_path, "TOKEN": "t"})
    client = app.test_client()
    public = {"/api/health", "/static/<path:filename>"}
    for rule in app.url_map.iter_rules():
        if rule.rule in public or "<" in rule.rule:
            continue
        method = "GET" if "GET" in rule.methods else sorted(rule.methods - {"HEAD", "OPTIONS"})[0]
        response = client.open(rule.rule, method=method, json={})
        assert response.status_code == 401, rule.rule
        evil = client.open(rule.rule, method=method, json={}, headers={"Host": "evil.example"})
        assert evil.status_code == 403, rule.rule
    app.extensions["console"].close()
