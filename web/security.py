"""The console's guards (DESIGN.md "Security model"); Jupyter Server's posture.

- HostGuard (WSGI, wraps everything, Socket.IO included): Host allowlist against DNS
  rebinding; an Origin header, when present, must be exactly this server's origin.
- before_request: the token (Bearer header, or the HttpOnly per-port cookie set when the
  printed URL with ?token= is opened); state-changing requests are JSON only.
- after_request: CSP without inline code, nosniff, no-referrer, no framing.
Tokens are compared with hmac.compare_digest and never logged.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from flask import Flask, current_app, g, redirect, request
from werkzeug.wrappers import Response

from web.apispec import operation_of
from web.errors import error_response, is_api_path
from web.limits import JSONLimitError, loads_bounded

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
MUTATING_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Endpoints anyone on an allowed Host may call: they reveal nothing. API routes say so in
# their declaration (web/apispec.py operation(public=True): /api/health only).
PUBLIC_ENDPOINTS = {"static"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' {ws}; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def cookie_name(port: int | None) -> str:
    """Named with the port: two consoles on one host never overwrite each other's."""
    return f"mlx_cpt_token_{port}" if port else "mlx_cpt_token"


def host_of(host_header: str) -> str:
    """The host name of a Host header, without the port; IPv6 without brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def tokens_equal(given: Any, token: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())


def _json_error(status: int, message: str, field: str) -> Callable[..., Iterable[bytes]]:
    body = json.dumps({"error": message, "field": field}).encode()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response(
            f"{status} {'Forbidden' if status == 403 else 'Misdirected Request'}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


class HostGuard:
    """WSGI middleware in front of Flask and Socket.IO: Host allowlist and exact Origin."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], allowed_hosts: Iterable[str]):
        self.wsgi_app = wsgi_app
        self.allowed_hosts = {h.lower().strip("[]") for h in allowed_hosts}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        host_header = environ.get("HTTP_HOST") or ""
        if host_of(host_header) not in self.allowed_hosts:
            return _json_error(
                403,
                f"Host {host_header!r} is not allowed (DNS rebinding protection): open the "
                "console at the URL it printed",
                "Host",
            )(environ, start_response)
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and not same_origin(origin, host_header):
            return _json_error(403, f"cross-origin request from {origin!r} refused", "Origin")(
                environ, start_response
            )
        if environ.get("HTTP_SEC_FETCH_SITE") == "cross-site":
            return _json_error(403, "cross-site request refused", "Origin")(environ, start_response)
        return self.wsgi_app(environ, start_response)


def same_origin(origin: str, host_header: str) -> bool:
    """`null`, other schemes, lookalike hosts and other ports all fail the exact match."""
    return hmac.compare_digest(origin.strip().lower(), f"http://{host_header.strip().lower()}")


# -- per-request checks (Flask hooks) --------------------------------------------------------


def request_token() -> str | None:
    """The token a request carries: Bearer header first, then the console's cookie."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.cookies.get(cookie_name(current_app.config.get("PORT")))


def is_authorized() -> bool:
    return tokens_equal(request_token(), current_app.config["TOKEN"])


def socket_authorized(auth: Any) -> bool:
    """A Socket.IO handshake: the token in the `auth` payload, or the page's cookie."""
    token = current_app.config["TOKEN"]
    if isinstance(auth, dict) and tokens_equal(auth.get("token"), token):
        return True
    return tokens_equal(request.cookies.get(cookie_name(current_app.config.get("PORT"))), token)


def _login_redirect() -> Response:
    """The printed URL carries ?token= once: trade it for the HttpOnly cookie and drop it
    from the address bar."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
    target = request.path + ("?" + urlencode(args) if args else "")
    response = redirect(target, code=302)
    response.set_cookie(
        cookie_name(current_app.config.get("PORT")),
        current_app.config["TOKEN"],
        httponly=True,
        samesite="Strict",
        path="/",
    )
    return response


def check_request() -> Response | None:
    if request.method == "GET" and "token" in request.args:
        if tokens_equal(request.args.get("token"), current_app.config["TOKEN"]):
            return _login_redirect()
        return _unauthorized()
    if not is_public(request.endpoint) and not is_authorized():
        return _unauthorized()
    if request.method in MUTATING_METHODS:
        if request.mimetype != "application/json":
            return error_response(
                415,
                "send JSON: Content-Type: application/json (forms and text/plain are refused)",
                "Content-Type",
            )
        raw = request.get_data(cache=True)  # over MAX_CONTENT_LENGTH: 413
        if raw:  # no body is {}; white space alone is no JSON document
            try:
                body = loads_bounded(raw)
            except JSONLimitError as exc:
                return error_response(400, str(exc), exc.field)
            except ValueError as exc:  # not JSON, or not UTF-8
                return error_response(400, f"the body is not valid JSON: {exc}", "body")
            if not isinstance(body, dict):
                return error_response(400, "the body must be a JSON object", "body")
        else:
            body = {}
        g.json_body = body
    return None


def is_public(endpoint: str | None) -> bool:
    if endpoint in PUBLIC_ENDPOINTS:
        return True
    view = current_app.view_functions.get(endpoint) if endpoint else None
    op = operation_of(view)
    return op is not None and op.public


def _unauthorized() -> Response:
    if is_api_path(request.path):
        return error_response(
            401,
            "missing or invalid token: send Authorization: Bearer <token> (see console.json "
            "in the workspace) or open the URL the console printed",
            "token",
        )
    return Response(
        "Not signed in: open the URL the console printed (it carries the token once), or "
        "read it from console.json in the workspace.\n",
        status=401,
        mimetype="text/plain",
    )


def set_security_headers(response: Response) -> Response:
    ws = f"ws://{request.host}" if request.host else ""
    response.headers.setdefault("Content-Security-Policy", CSP.format(ws=ws))
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    if is_api_path(request.path):
        response.headers["Cache-Control"] = "no-store"
    return response


def json_body() -> dict[str, Any]:
    """The request's JSON object (parsed and checked in before_request)."""
    return g.get("json_body") or {}


def init_app(app: Flask) -> None:
    app.before_request(check_request)
    app.after_request(set_security_headers)


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> list[str]:
    """Loopback names, the bound address when it is a specific one, and extra names."""
    hosts = list(LOOPBACK_HOSTS)
    if bind_host not in ("", "0.0.0.0", "::") and bind_host not in hosts:
        hosts.append(bind_host)
    hosts += [h for h in extra if h]
    return hosts
