"""The few endpoints only the web pages need, kept apart from the public API (web/api.py).

POST /api/ui/parse_yaml {"yaml": text} -> {"config": nested mapping, "warnings": [...]}
    "Load YAML" on the New run page: the file is parsed on the server (the browser has no
    YAML parser, and this way the same loader as the trainer's -c reads it, with its
    limits: size, nesting, aliases, plain tags only). Unknown keys and bad values are left
    to POST /api/config/validate, which reports them per field.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from training.contract.config import ConfigError, flatten, parse_yaml_text
from training.contract.limits import MAX_YAML_BYTES
from web.apispec import ANY_OBJECT, array, obj, operation, string
from web.errors import ApiError
from web.schemas import TEXT
from web.security import json_body

bp = Blueprint("ui_api", __name__, url_prefix="/api/ui")


@bp.post("/parse_yaml")
@operation(
    "Parse a config file's text (Load YAML on the New run page)",
    {200: obj({"config": ANY_OBJECT, "warnings": array(TEXT)}, required=["config", "warnings"])},
    body=obj(
        {"yaml": string(MAX_YAML_BYTES, description="The text of a config.yaml")},
        required=["yaml"],
    ),
)
def parse_yaml():
    text = json_body()["yaml"]
    try:
        raw = parse_yaml_text(text)
    except ConfigError as exc:
        raise ApiError(400, str(exc.errors[0].message), "yaml") from None
    _, _, warnings = flatten(raw)
    return jsonify(config=raw, warnings=warnings)
