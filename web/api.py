"""The console-wide API: health, the field registry, config validation, presets, system
telemetry, the file pickers, corpus reports and the tokenization caches.

Handlers only parse the request and call training/ (a data-provider style): no file
access here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify

from training.console import browse, telemetry
from training.contract.config import ConfigError, build_config, parse_yaml_text
from training.contract.fields import FIELDS, GROUPS
from training.contract.layout import Workspace
from training.contract.schedule import MAX_POINTS, learning_rates, schedule_spec
from web.apispec import (
    ANY_OBJECT,
    BOOLEAN,
    NUMBER,
    arg,
    array,
    integer,
    nullable,
    obj,
    openapi_document,
    operation,
    ref,
    string,
)
from web.console import console
from web.errors import ApiError
from web.limits import MAX_BODY_BYTES, MAX_JSON_DEPTH
from web.schemas import CONFIRM, PATH, PATH_PARAMETERS, TEXT, components, config_input
from web.security import cookie_name, json_body

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_CACHE_NAMES = 1000
# A budget in steps the schedule plot accepts (a run of more plots the same shape).
MAX_SCHEDULE_STEPS = 100_000_000
DEFAULT_SCHEDULE_POINTS = 1000


@bp.get("/health")
@operation(
    "Whether the console is up (no token needed; reveals nothing else)",
    {200: obj({"ok": BOOLEAN, "version": TEXT, "async_mode": TEXT}, required=["ok"])},
    public=True,
)
def health():
    """Public: tells a script the server is up, and nothing else."""
    return jsonify(
        ok=True,
        version=current_app.config["VERSION"],
        async_mode=current_app.config["ASYNC_MODE"],
    )


@bp.get("/openapi.json")
@operation("This API as an OpenAPI 3.1 document (generated from the routes)", {200: ANY_OBJECT})
def openapi():
    return jsonify(api_document(current_app))


def api_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of this app: every /api route's declaration (web/apispec.py)."""
    return openapi_document(
        app,
        info={
            "title": "MLX CPT console",
            "version": app.config["VERSION"],
            "description": (
                "Every /api request but /api/health carries the token (Authorization: "
                "Bearer, or the console's cookie). Requests that change something send JSON "
                f"(415 otherwise), at most {MAX_BODY_BYTES // 1024} KB (413), nested at "
                f"most {MAX_JSON_DEPTH} levels (400). Every error is JSON {{error, field}}: "
                "400 bad input, 401 token, 403 Host or Origin, 404 unknown run, job or "
                "route, 405 method, 409 conflict, 413 body too large, 414 request line "
                "over 64 KB, 415 not JSON, 431 header line over 64 KB or over 100 headers."
            ),
        },
        components=components(),
        path_parameters=PATH_PARAMETERS,
        security_schemes={
            "bearer": {"type": "http", "scheme": "bearer"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": cookie_name(app.config["PORT"])},
        },
    )


@bp.get("/fields")
@operation(
    "The field registry: every setting with its type, default, help, bounds or choices",
    {200: obj({"fields": array(ANY_OBJECT), "groups": array(TEXT)}, required=["fields"])},
)
def fields():
    return jsonify(fields=[f.to_json() for f in FIELDS], groups=list(GROUPS))


@bp.post("/config/validate")
@operation(
    "Check a config: every problem with its field (200 with ok: false for a bad config)",
    {
        200: obj(
            {
                "ok": BOOLEAN,
                "errors": array(obj({"field": nullable(TEXT), "message": TEXT})),
                "warnings": array(TEXT),
                "config": nullable(ANY_OBJECT),
                "yaml": TEXT,
                "effective": ANY_OBJECT,
                "model": nullable(
                    obj({"quantization": nullable(ANY_OBJECT)}),
                ),
                "memory_estimate": nullable(
                    obj(
                        {
                            "total": {"type": "integer"},
                            "weights": {"type": "integer"},
                            "gradients": {"type": "integer"},
                            "optimizer_state": {"type": "integer"},
                            "activations": {"type": "integer"},
                            "logits": {"type": "integer"},
                            "overhead": {"type": "integer"},
                            "parameters": {"type": "integer"},
                            "trainable_parameters": {"type": "integer"},
                            "machine": {"type": "integer"},
                            "fits": BOOLEAN,
                        }
                    )
                ),
            },
            required=["ok", "errors", "config"],
        )
    },
    body=obj(
        {"config": {**ANY_OBJECT, "description": "Settings by YAML key (see RunConfig)"}},
        required=["config"],
    ),
)
def validate_config():
    """Every problem of a config, each with its field: the form shows them inline."""
    config = json_body()["config"]
    manager = console().manager
    # What the form shows about the chosen model whatever the other settings (a quantized
    # model disables full fine-tuning): {"quantization": {bits, group_size, mode} | null}.
    model = manager.model_facts(config.get("model"))
    try:
        cfg, warnings = manager.validate(config)
    except ConfigError as exc:
        # Normalize what can be normalized so the form can still show coerced values.
        try:
            partial, _ = build_config(config)
            normalized: dict[str, Any] | None = partial.to_nested()
        except ConfigError:
            normalized = None
        return jsonify(
            ok=False,
            errors=[e.to_json() for e in exc.errors],
            warnings=[],
            config=normalized,
            model=model,
        )
    return jsonify(
        ok=True,
        errors=[],
        warnings=warnings,
        model=model,
        # Bytes a training step will peak at, by part, from config.json (no weights
        # loaded), beside the machine's memory; null for a hub id or an unknown shape.
        memory_estimate=manager.memory_estimate(cfg),
        config=cfg.to_nested(),
        yaml=cfg.to_yaml(),
        effective={
            "iters": cfg.effective_iters,
            "num_layers": cfg.effective_num_layers,
        },
    )


@bp.post("/hosts/check")
@operation(
    "Check a config's hosts as a launch would: SSH without a password, the same project, "
    "Python and mlx, the shared workspace, the model and data, free ports",
    {200: obj({"ok": BOOLEAN, "hosts": array(ref("HostReport"))}, required=["ok", "hosts"])},
    body=obj({"config": config_input("RunConfig")}, required=["config"]),
)
def check_hosts():
    """Each host of a config, checked over SSH (seconds: as long as the slowest host);
    400 for a config that does not name hosts or is not valid."""
    config = json_body()["config"]
    if isinstance(config, str):
        config = parse_yaml_text(config)
    manager = console().manager
    cfg, _ = manager.validate(config)
    if manager.host_plan(cfg) is None:
        raise ApiError(
            400,
            "the config names no hosts: set distributed.hosts or distributed.hostfile",
            "distributed.hosts",
        )
    reports = manager.check_hosts(cfg)
    return jsonify(ok=all(r.ok for r in reports), hosts=[r.to_json() for r in reports])


@bp.post("/config/lr_schedule")
@operation(
    "The learning rate of each step of a config's schedule, computed by the trainer's own "
    "schedule function (contract/schedule.py)",
    {
        200: obj(
            {
                "steps": array({"type": "integer"}),
                "learning_rates": array(NUMBER),
                "total_steps": {"type": "integer"},
                "peak": NUMBER,
                "final": NUMBER,
                "embedding_learning_rates": array(
                    NUMBER,
                    description="The embeddings' and head's rate at each step "
                    "(train_embeddings in a lora/dora run: embedding_lr_scale times the "
                    "learning rate); absent otherwise",
                ),
            },
            required=["steps", "learning_rates", "total_steps"],
        )
    },
    body=obj(
        {
            "config": {**ANY_OBJECT, "description": "Settings by YAML key (see RunConfig)"},
            "total_steps": integer(1, MAX_SCHEDULE_STEPS),
            "max_points": integer(2, MAX_POINTS),
        },
        required=["config", "total_steps"],
    ),
)
def lr_schedule():
    """The schedule the trainer would follow for `total_steps` (the budget the form
    plans): every step up to `max_points` (default 1000), else that many spread evenly.
    Only the schedule's settings are checked (a form without a model or corpus yet still
    gets its plot); a bad one is a 400 naming it."""
    body = json_body()
    config = body["config"]
    placeholders = {"model": "model", "data": "data"}  # required, unused by the schedule
    cfg, _ = build_config(placeholders, {k: v for k, v in config.items() if v is not None})
    spec = schedule_spec(cfg, int(body["total_steps"]))
    try:
        steps, rates = learning_rates(spec, int(body.get("max_points") or DEFAULT_SCHEDULE_POINTS))
    except (ArithmeticError, ValueError) as exc:  # an mlx-lm mapping dividing by zero, ...
        raise ApiError(400, f"cannot compute this schedule: {exc}", "lr_schedule") from None
    extra: dict[str, list[float]] = {}
    if cfg.train_embeddings and cfg.fine_tune_type in ("lora", "dora"):
        extra["embedding_learning_rates"] = [r * cfg.embedding_lr_scale for r in rates]
    return jsonify(
        steps=steps,
        learning_rates=rates,
        total_steps=spec.total_steps,
        peak=max(rates),
        final=rates[-1],
        **extra,
    )


@bp.get("/presets")
@operation(
    "Ready-made configs: the workspace's demo.yaml and examples/*.yaml",
    {200: obj({"presets": array(obj({"name": TEXT, "title": TEXT}))}, required=["presets"])},
)
def presets():
    return jsonify(presets=console().presets())


@bp.get("/system")
@operation(
    "CPU, memory, swap, disk, platform, MLX device and the trainers' processes",
    {200: obj({"trainers": array(ANY_OBJECT), "workspace": TEXT}, required=["trainers"])},
)
def system():
    c = console()
    snapshot = telemetry.system_snapshot(c.workspace.root)
    processes = []
    for run_id in c.manager.active_run_ids():
        record = c.store.read_record(run_id)
        stats = telemetry.process_stats(record.pid) if record.pid else None
        if stats:
            processes.append({"run_id": run_id, **stats})
    return jsonify(
        **snapshot,
        trainers=processes,
        workspace=str(c.workspace.root),
        console={
            "async_mode": current_app.config["ASYNC_MODE"],
            "autodetect": current_app.config["AUTODETECT"],
            "version": current_app.config["VERSION"],
        },
    )


@bp.get("/files")
@operation(
    "The browse roots, or (with ?path) a folder's entries, confined to the roots",
    {
        200: obj(
            {
                "roots": array(obj({"path": TEXT, "absolute": TEXT})),
                "path": TEXT,
                "entries": array(ANY_OBJECT),
                "truncated": BOOLEAN,
            }
        )
    },
    query={"path": PATH, "hidden": {"type": "boolean", "default": False}},
)
def files():
    """Without ?path: the allowed roots. With it: that folder's entries (model and corpus
    pickers), confined to the roots after resolving symlinks."""
    c = console()
    path = arg("path")
    if path is None:
        return jsonify(
            roots=[
                {
                    "path": browse.display_path(Path(r).resolve(), c.workspace.root),
                    "absolute": str(r),
                }
                for r in c.browse_roots
            ]
        )
    return jsonify(browse.list_folder(path, c.browse_roots, c.workspace.root, arg("hidden")))


@bp.post("/data/report")
@operation(
    "A corpus's documents, bytes, estimated tokens and a preview (read-only)",
    {200: obj({"report": ANY_OBJECT}, required=["report"])},
    body=obj({"path": PATH}),  # no path: the domain says so, naming the field `data`
)
def data_report():
    """A corpus's documents, bytes, estimated tokens and a preview (read-only, no MLX)."""
    c = console()
    path = json_body().get("path")
    return jsonify(report=browse.data_report(path, c.browse_roots, c.workspace.root))


@bp.get("/caches")
@operation(
    "The tokenization caches",
    {200: obj({"caches": array(ANY_OBJECT), "total_size": {"type": "integer"}})},
)
def caches():
    entries = browse.list_caches(_workspace())
    return jsonify(caches=entries, total_size=sum(e["size"] for e in entries))


@bp.delete("/caches")
@operation(
    "Remove tokenization caches (all without names; never run folders)",
    {200: obj({"removed": array(TEXT)}, required=["removed"])},
    body=obj({"confirm": CONFIRM, "names": nullable(array(string(255), MAX_CACHE_NAMES))}),
)
def delete_caches():
    """Remove tokenization caches (never run folders): {"confirm": true, "names": [...]}
    (all caches when names is omitted)."""
    body = json_body()
    if body.get("confirm") is not True:
        raise ApiError(400, 'deleting caches needs {"confirm": true}', "confirm")
    names = body.get("names")
    removed = browse.delete_caches(_workspace(), names)
    return jsonify(removed=removed)


def _workspace() -> Workspace:
    return console().workspace
