"""Bounds on what a request may make the console do: body size, JSON nesting, text.

Every request is treated as hostile: each limit here answers a client's excess with a
JSON 4xx `{"error", "field"}` before it can take memory, recurse or reach a handler.

- MAX_BODY_BYTES: Flask's MAX_CONTENT_LENGTH (413). A YAML config is at most
  MAX_YAML_BYTES of it (training/contract/limits.py).
- BoundedJSONProvider: the app's JSON (request bodies, and Socket.IO packets through
  `socket_json`): nesting over MAX_JSON_DEPTH is refused before the parser sees it (no
  RecursionError, whatever the thread's stack), NaN and Infinity are not JSON, and no
  string may hold a lone surrogate (no file name or file can be written with one).
- JsonErrorRequestHandler: Werkzeug's development server answers a request line over
  64 KB (414) or a header line over 64 KB / more than 100 headers (431) itself, before
  Flask runs; its error pages become the same JSON as every other error.
"""

from __future__ import annotations

import json
import math
import re
import selectors
from typing import Any

from flask.json.provider import DefaultJSONProvider
from werkzeug.serving import WSGIRequestHandler

from training.contract.limits import has_lone_surrogate

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64

# A JSON string (its escapes included), and the brackets left once strings are removed.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_BRACKETS = re.compile(r"[\[\]{}]")


class JSONLimitError(ValueError):
    """A JSON text beyond the limits; `field` names the part at fault."""

    def __init__(self, message: str, field: str = "body"):
        super().__init__(message)
        self.field = field


def json_depth(text: str, limit: int) -> int:
    """The nesting depth of a JSON text, counted without parsing it; counting stops just
    past `limit`. Brackets inside strings do not count."""
    opening = text.count("[") + text.count("{")
    if opening <= limit:
        return opening  # the depth is at most this
    depth = deepest = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub("", text)):
        if match.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        else:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> Any:
    raise JSONLimitError(f"{name} is not a JSON value")


def loads_bounded(
    data: str | bytes | bytearray, max_depth: int = MAX_JSON_DEPTH, *, strict: bool = True
) -> Any:
    """json.loads within the limits: JSONLimitError (a ValueError) for nesting over
    `max_depth` and, when `strict`, for NaN/Infinity and lone surrogates; ValueError for
    text that is not JSON."""
    if isinstance(data, (bytes, bytearray)):
        text = bytes(data).decode("utf-8")  # JSON is UTF-8 (RFC 8259); UnicodeDecodeError
    else:
        text = data
    if json_depth(text, max_depth) > max_depth:
        raise JSONLimitError(f"the JSON is nested deeper than {max_depth} levels")
    if not strict:
        return json.loads(text)
    value = json.loads(text, parse_constant=_refuse_constant)
    _check_text(value)
    return value


def _check_text(value: Any) -> None:
    """No string (key or value) holds a lone surrogate; the field is the top-level key."""
    stack: list[tuple[Any, str]] = [(value, "body")]
    while stack:
        node, field = stack.pop()
        if isinstance(node, str):
            if has_lone_surrogate(node):
                raise JSONLimitError(
                    f"{field} contains a lone surrogate (\\ud800-\\udfff): not valid text", field
                )
        elif isinstance(node, dict):
            for key, item in node.items():
                where = key if field == "body" else field
                stack.append((key, where))
                stack.append((item, where))
        elif isinstance(node, list):
            stack.extend((item, field) for item in node)


def finite(node: Any) -> Any:
    """The same data with every NaN and infinity as None (JSON has neither)."""
    if isinstance(node, float):
        return node if math.isfinite(node) else None
    if isinstance(node, dict):
        return {key: finite(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [finite(value) for value in node]
    return node


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON with loads_bounded: request.get_json() and the body guard of
    web/security.py parse through it. Answers are strict JSON: a NaN or infinity (a YAML
    `.inf` echoed back, say) is written as null, never as a token browsers refuse."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads_bounded(s)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        try:  # the C encoder at full speed; non-finite numbers are rare
            return super().dumps(obj, allow_nan=False, **kwargs)
        except ValueError:
            return super().dumps(finite(obj), allow_nan=False, **kwargs)


class socket_json:  # noqa: N801 - a module-like namespace, as python-socketio expects
    """The `json` python-socketio and engine.io encode and decode packets with (a class
    attribute of their Packet classes, so it serves this process's clients as well: only
    the nesting bound, which no packet of the console's comes near)."""

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return json.dumps(obj, **kwargs)

    @staticmethod
    def loads(s: str | bytes, **kwargs: Any) -> Any:
        return loads_bounded(s, strict=False)


class JsonErrorRequestHandler(WSGIRequestHandler):
    """Werkzeug's request handler with JSON error pages: the errors http.server sends
    itself (414 request line too long, 431 header line too long or too many headers, 400
    malformed request line or an HTTP version other than 1.x, which http.server answers
    505) happen before any WSGI app runs."""

    FIELDS = {414: "url", 431: "headers"}

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        if code in (501, 505):  # a method or an HTTP version it does not know: the client's
            message = f"{message or self.responses[code][0]}"
            code = 400
        try:
            short, long = self.responses[code]
        except KeyError:
            short, long = "Error", ""
        body = json.dumps(
            {"error": f"{message or short}: {explain or long}", "field": self.FIELDS.get(code)}
        ).encode()
        self.log_error("code %d, message %s", code, message or short)
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            # A line that is no request (TLS bytes, garbage) reads as HTTP/0.9, whose
            # answers have no status line: answer as HTTP/1.0, so the client sees a 400.
            self.request_version = "HTTP/1.0"
        self.send_response(code, short)  # the detail (client text in it) goes in the body
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD" and code not in (204, 205, 304):
            self.wfile.write(body)
        self.wfile.flush()
        self._drain()

    def _drain(self, limit: int = 1024 * 1024) -> None:
        """Read what the client still sends (the rest of an over-long line or header) before
        the connection closes: closing on unread data resets it, and the client may lose
        the answer. At most `limit` bytes, and only what arrives without a pause."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.connection, selectors.EVENT_READ)
            read = 0
            while read < limit and selector.select(timeout=0.05):
                try:
                    data = self.connection.recv(64 * 1024)
                except OSError:
                    return
                if not data:
                    return
                read += len(data)
