"""The few endpoints only the web pages need, kept apart from the public API (web/api.py).

POST /api/ui/parse_yaml {"yaml": text} -> {"config": nested mapping, "warnings": [...]}
    "Load YAML" on the New run page: the file is parsed on the server (the browser has no
    YAML parser, and this way the same loader as the trainer's -c reads it). Unknown keys
    and bad values are left to POST /api/config/validate, which reports them per field.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from training.contract.config import ConfigError, flatten, parse_yaml_text
from web.errors import ApiError
from web.security import json_body

bp = Blueprint("ui_api", __name__, url_prefix="/api/ui")

MAX_YAML_BYTES = 256 * 1024


@bp.post("/parse_yaml")
def parse_yaml():
    text = json_body().get("yaml")
    if not isinstance(text, str):
        raise ApiError(400, 'send {"yaml": "..."}: the text of a config file', "yaml")
    if len(text.encode()) > MAX_YAML_BYTES:
        raise ApiError(400, "that file is too large for a config (over 256 KB)", "yaml")
    try:
        raw = parse_yaml_text(text)
    except ConfigError as exc:
        raise ApiError(400, str(exc.errors[0].message), "yaml") from None
    _, _, warnings = flatten(raw)
    return jsonify(config=raw, warnings=warnings)
