"""The API's routes as data: each /api view declares its request and its responses next to
its handler, and from those declarations come both the request checks and the OpenAPI 3.1
document served at GET /api/openapi.json (so the two are never kept apart by hand).

    @bp.patch("/runs/<run_id>")
    @operation(
        "Rename a run",
        {200: obj({"run": ref("Run")}, required=["run"])},
        body=obj({"name": string(MAX_NAME_LENGTH)}, required=["name"]),
    )
    def patch_run(run_id): ...

- `body`: the JSON object a POST, PATCH or DELETE sends. It is checked before the handler
  runs (400 `{"error", "field"}`, the field being the top-level key at fault), with the
  subset of JSON Schema this module implements (CHECKED_KEYWORDS: types, enums, lengths,
  bounds, properties, items, anyOf). A `$ref` to a component is checked as a mapping
  only: such components (RunConfig) are checked in full by the domain layer, which
  reports every problem by field (build_config).
- `query`: the query parameters, each a schema of type integer, boolean or string; read
  them in the handler with `arg(name)` (converted, bounded, defaulted).
- `responses`: the success statuses and their bodies. The error statuses every route can
  answer are added (ERROR_STATUSES); `errors` adds a route's own (409, ...).
- `public`: no token needed (only /api/health).
- `media_type`: the success responses' content type (default JSON; a CSV download says
  text/csv). Errors are always JSON.

A view without a declaration is not part of the API document; tests/web/test_openapi.py
fails on any /api route without one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask, g, request
from werkzeug.routing import Rule

from web.errors import ApiError

Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])

BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Keywords the request checks implement; a body or query schema may use no other
# validation keyword (a declaration fails at import otherwise).
CHECKED_KEYWORDS = {
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "maxProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "anyOf",
    "$ref",
}
ANNOTATIONS = {"description", "default", "examples", "title"}

ERROR_DESCRIPTIONS = {
    400: "Bad input: the body, a query parameter or a value is wrong (`field` names it)",
    401: "Missing or invalid token",
    403: "Host not allowed (DNS rebinding), or a foreign Origin",
    404: "No such run, job or route",
    409: "Conflicts with the state of the run, queue or job",
    413: "The body is over the size limit",
    415: "The body is not JSON (Content-Type: application/json)",
}


@dataclass(frozen=True)
class Operation:
    summary: str
    responses: Mapping[int, Schema]
    body: Schema | None = None
    query: Mapping[str, Schema] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    public: bool = False
    description: str | None = None
    media_type: str = "application/json"


def operation(
    summary: str,
    responses: Mapping[int, Schema],
    *,
    body: Schema | None = None,
    query: Mapping[str, Schema] | None = None,
    errors: Iterable[int] = (),
    public: bool = False,
    description: str | None = None,
    media_type: str = "application/json",
) -> Callable[[F], F]:
    """Declare a view's request and responses; its requests are checked against them."""
    op = Operation(
        summary,
        dict(responses),
        body,
        dict(query or {}),
        tuple(errors),
        public,
        description,
        media_type,
    )
    if body is not None:
        _check_declaration(body, "body")
    for name, schema in op.query.items():
        _check_declaration(schema, name)
        if schema.get("type") not in ("integer", "boolean", "string"):
            raise TypeError(f"query parameter {name}: type integer, boolean or string")

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            g.query = {name: _query_value(name, schema) for name, schema in op.query.items()}
            if op.body is not None and request.method in BODY_METHODS:
                check_value(op.body, g.get("json_body") or {}, ())
            return view(*args, **kwargs)

        checked.api_operation = op  # type: ignore[attr-defined]
        return checked  # type: ignore[return-value]

    return decorate


def operation_of(view: Any) -> Operation | None:
    return getattr(view, "api_operation", None)


def arg(name: str) -> Any:
    """A query parameter of the current request, as its declaration converted it."""
    return g.query[name]


# -- schema builders --------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    properties: Mapping[str, Schema] | None = None,
    *,
    required: Iterable[str] = (),
    additional: bool | Schema = True,
    description: str | None = None,
) -> Schema:
    schema: Schema = {"type": "object", "properties": dict(properties or {})}
    if required:
        schema["required"] = list(required)
    if additional is not True:
        schema["additionalProperties"] = additional
    if description:
        schema["description"] = description
    return schema


def string(max_length: int | None = None, *, min_length: int = 0, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if min_length:
        schema["minLength"] = min_length
    if max_length is not None:
        schema["maxLength"] = max_length
    return schema


def integer(minimum: int | None = None, maximum: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "integer", **extra}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def array(items: Schema, max_items: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "array", "items": items, **extra}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


def nullable(schema: Schema) -> Schema:
    """The schema, or null."""
    if set(schema) <= {"type", "description"} and isinstance(schema.get("type"), str):
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


BOOLEAN: Schema = {"type": "boolean"}
NUMBER: Schema = {"type": "number"}
ANY_OBJECT: Schema = {"type": "object"}


# -- request checks ---------------------------------------------------------------------------


def _check_declaration(schema: Any, where: str) -> None:
    """A request schema uses only the keywords the checks implement."""
    if not isinstance(schema, dict):
        raise TypeError(f"{where}: a schema is a mapping")
    unknown = set(schema) - CHECKED_KEYWORDS - ANNOTATIONS
    if unknown:
        raise TypeError(f"{where}: request checks do not implement {sorted(unknown)}")
    for name, sub in schema.get("properties", {}).items():
        _check_declaration(sub, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _check_declaration(schema[key], f"{where}.{key}")
    for option in schema.get("anyOf", ()):
        _check_declaration(option, f"{where}.anyOf")


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}
_TYPE_WORDS = {
    "string": "text",
    "boolean": "true or false",
    "null": "null",
    "object": "an object",
    "array": "a list",
    "number": "a number",
    "integer": "a whole number",
}


def _name(where: tuple[str | int, ...]) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "the body"


def _fail(where: tuple[str | int, ...], message: str) -> ApiError:
    field = where[0] if where and isinstance(where[0], str) else "body"
    return ApiError(400, f"{_name(where)} {message}", field)


def _same(a: Any, b: Any) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def describe(schema: Schema) -> str:
    """What a schema asks for, in words ("text", "a whole number or null", ...)."""
    if "anyOf" in schema:
        return " or ".join(describe(option) for option in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "$ref" in schema:
        return "an object"
    types = schema.get("type")
    names = [types] if isinstance(types, str) else list(types or [])
    return " or ".join(_TYPE_WORDS[t] for t in names) or "a JSON value"


def check_value(schema: Schema, value: Any, where: tuple[str | int, ...]) -> None:
    """ApiError 400 unless `value` fits `schema` (the subset in CHECKED_KEYWORDS)."""
    if "$ref" in schema:  # checked in full by the domain layer (module docstring)
        if not isinstance(value, dict):
            raise _fail(where, "must be an object")
        return
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                check_value(option, value, where)
                break
            except ApiError as exc:
                errors.append(exc)
        else:
            # The option of the value's own type says best what is wrong.
            typed = [
                e
                for option, e in zip(schema["anyOf"], errors, strict=False)
                if _type_matches(option.get("type"), value)
            ]
            raise typed[0] if typed else _fail(where, f"must be {describe(schema)}")
    types = schema.get("type")
    if types is not None and not _type_matches(types, value):
        raise _fail(where, f"must be {describe(schema)}")
    if "enum" in schema and not any(_same(value, v) for v in schema["enum"]):
        raise _fail(where, f"must be {describe(schema)}")
    if "const" in schema and not _same(value, schema["const"]):
        raise _fail(where, f"must be {schema['const']!r}")
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            raise _fail(where, f"is too long: at most {schema['maxLength']} characters")
        if len(value) < schema.get("minLength", 0):
            raise _fail(where, "must not be empty")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise _fail(where, f"must be at least {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            raise _fail(where, f"must be greater than {schema['exclusiveMinimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise _fail(where, f"must be at most {schema['maximum']}")
    elif isinstance(value, list):
        if len(value) > schema.get("maxItems", len(value)):
            raise _fail(where, f"has too many items: at most {schema['maxItems']}")
        if len(value) < schema.get("minItems", 0):
            raise _fail(where, f"needs at least {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                check_value(schema["items"], item, (*where, i))
    elif isinstance(value, dict):
        _check_object(schema, value, where)


def _type_matches(types: Any, value: Any) -> bool:
    if types is None:
        return True
    names = [types] if isinstance(types, str) else types
    return any(_JSON_TYPES[t](value) for t in names)


def _check_object(schema: Schema, value: dict[str, Any], where: tuple[str | int, ...]) -> None:
    for name in schema.get("required", ()):
        if name not in value:
            raise _fail((*where, name), "is required")
    if len(value) > schema.get("maxProperties", len(value)):
        raise _fail(where, f"has too many keys: at most {schema['maxProperties']}")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            check_value(properties[key], item, (*where, key))
        elif extra is False:
            known = ", ".join(properties) or "none"
            raise _fail((*where, key), f"is not a known key (known: {known})")
        elif isinstance(extra, dict):
            check_value(extra, item, (*where, key))


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _query_value(name: str, schema: Schema) -> Any:
    raw = request.args.get(name)
    kind = schema["type"]
    if raw is None or (raw == "" and kind != "string"):
        return schema.get("default")
    value: Any = raw
    if kind == "integer":
        try:
            value = int(raw.strip())
        except ValueError:
            short = raw if len(raw) <= 40 else raw[:37] + "..."
            raise ApiError(400, f"{name} must be a whole number, got {short!r}", name) from None
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ApiError(400, f"{name} must be {bound}, got {value}", name)
        return value
    if kind == "boolean":
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise ApiError(400, f"{name} must be true or false", name)
    check_value(schema, value, (name,))
    return value


# -- the OpenAPI document ---------------------------------------------------------------------

_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def is_api_rule(rule: Rule) -> bool:
    return rule.rule == "/api" or rule.rule.startswith("/api/")


def openapi_path(rule: Rule) -> str:
    """/api/runs/<run_id> → /api/runs/{run_id}"""
    return _RULE_ARGUMENT.sub(r"{\1}", rule.rule)


def rule_methods(rule: Rule) -> list[str]:
    return sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})


def api_routes(app: Flask) -> list[tuple[Rule, str, Operation | None]]:
    """Every /api route of the app with each of its methods and its declaration."""
    out = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if is_api_rule(rule):
            op = operation_of(app.view_functions[rule.endpoint])
            out += [(rule, method, op) for method in rule_methods(rule)]
    return out


def openapi_document(
    app: Flask,
    *,
    info: Mapping[str, Any],
    components: Mapping[str, Schema],
    path_parameters: Mapping[str, Schema],
    security_schemes: Mapping[str, Schema],
) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for rule, method, op in api_routes(app):
        if op is None:
            continue
        params = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": path_parameters.get(name, string(255)),
            }
            for name in _RULE_ARGUMENT.findall(rule.rule)
        ]
        paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation_document(
            op, method, params, rule.endpoint
        )
    return {
        "openapi": "3.1.0",
        "info": dict(info),
        "paths": paths,
        "components": {
            "schemas": dict(components),
            "securitySchemes": dict(security_schemes),
        },
        "security": [{name: []} for name in security_schemes],
    }


def error_statuses(op: Operation, method: str, has_path_parameters: bool) -> list[int]:
    """The error statuses a route can answer: the ones every route shares, its own."""
    statuses = {403, *op.errors}
    if not op.public:
        statuses.add(401)
    if method in BODY_METHODS:
        statuses |= {400, 413, 415}
    if op.query:
        statuses.add(400)
    if has_path_parameters:
        statuses.add(404)
    return sorted(statuses)


def _operation_document(
    op: Operation, method: str, params: list[Schema], endpoint: str
) -> dict[str, Any]:
    doc: dict[str, Any] = {"summary": op.summary, "operationId": endpoint.replace(".", "_")}
    if op.description:
        doc["description"] = op.description
    parameters = list(params)
    for name, schema in op.query.items():
        parameters.append({"name": name, "in": "query", "required": False, "schema": schema})
    if parameters:
        doc["parameters"] = parameters
    if method in BODY_METHODS:
        doc["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": op.body or {"type": "object"}}},
        }
    responses: dict[str, Any] = {}
    for status, schema in sorted(op.responses.items()):
        responses[str(status)] = {
            "description": "Success",
            "content": {op.media_type: {"schema": schema}},
        }
    for status in error_statuses(op, method, bool(params)):
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": ref("Error")}},
        }
    doc["responses"] = responses
    if op.public:
        doc["security"] = []
    return doc
