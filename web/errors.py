"""JSON errors for the API: {"error": "...", "field": "..."} with DESIGN.md's status codes.

Domain exceptions from training/ map to HTTP statuses here, in one registry, so handlers
just call the manager and let its exceptions travel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from training.contract.config import ConfigError
from training.contract.disk import disk_full_error
from training.contract.errors import ConfirmRequired, InputError, RunConflict
from training.contract.layout import RunNotFound
from training.contract.reading import DamagedFile

# The input a Werkzeug error concerns (the API's errors name a field where there is one).
HTTP_ERROR_FIELDS = {
    405: "method",
    413: "body",
    414: "url",
    415: "Content-Type",
    431: "headers",
}


def is_api_path(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


class ApiError(Exception):
    """An error a handler raises directly: status, message and the field concerned."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def error_response(status: int, message: str, field: str | None = None, **extra: Any):
    response = jsonify({"error": message, "field": field, **extra})
    response.status_code = status
    return response


def _config_error(exc: ConfigError):
    first = exc.errors[0] if exc.errors else None
    return error_response(
        400,
        "; ".join(str(e) for e in exc.errors) or "invalid config",
        first.field if first else None,
        errors=[e.to_json() for e in exc.errors],
    )


def _run_not_found(exc: RunNotFound):
    return error_response(404, f"no run {exc.args[0]!r} in this workspace", "run_id")


def _damaged_file(exc: DamagedFile):
    # A run file that is a link, not a regular file, oversized or garbled: the request was
    # fine, the run folder is not (422 names the file; never a 500, never its content).
    return error_response(422, str(exc), None, file=exc.file)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, lambda e: error_response(e.status, e.message, e.field))
    app.register_error_handler(ConfigError, _config_error)
    app.register_error_handler(RunNotFound, _run_not_found)
    app.register_error_handler(DamagedFile, _damaged_file)
    app.register_error_handler(RunConflict, lambda e: error_response(409, str(e)))
    app.register_error_handler(ConfirmRequired, lambda e: error_response(400, str(e), e.field))
    app.register_error_handler(
        InputError,
        lambda e: error_response(
            getattr(e, "status", 400), str(e), e.field, **getattr(e, "extra", {})
        ),
    )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        # Pages keep Werkzeug's HTML errors; the API always answers JSON.
        if not is_api_path(request.path):
            return exc
        code = exc.code or 500
        response = error_response(code, exc.description or exc.name, HTTP_ERROR_FIELDS.get(code))
        if code == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if isinstance(exc, OSError):
            full = _disk_full(exc)
            if full is not None:
                return full
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        if is_api_path(request.path):
            return error_response(500, f"internal error: {type(exc).__name__}")
        return "Internal error", 500


def _disk_full(exc: OSError):
    """A write the disk refused (ENOSPC, EDQUOT): 507 Insufficient Storage, naming the
    folder and the space left. Reads never write, so they keep working."""
    named = os.fsdecode(exc.filename) if exc.filename else None
    where = Path(named).parent if named else Path(current_app.config["WORKSPACE"])
    full = disk_full_error(exc, where)
    if full is None:
        return None
    current_app.logger.warning("%s %s: %s", request.method, request.path, full)
    message = f"{full}: free some space, then try again"
    if not request.path.startswith("/api/"):
        return message, 507
    return error_response(507, message)
