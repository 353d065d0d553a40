"""The console-wide API: health, the field registry, config validation, presets, system
telemetry, the file pickers, corpus reports and the tokenization caches.

Handlers only parse the request and call training/ (a data-provider style): no file
access here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, jsonify, request

from training.console import browse, telemetry
from training.contract.config import ConfigError, build_config
from training.contract.fields import FIELDS, GROUPS
from training.contract.layout import Workspace
from web.console import console
from web.errors import ApiError
from web.security import json_body

bp = Blueprint("api", __name__, url_prefix="/api")


@bp.get("/health")
def health():
    """Public: tells a script the server is up, and nothing else."""
    return jsonify(
        ok=True,
        version=current_app.config["VERSION"],
        async_mode=current_app.config["ASYNC_MODE"],
    )


@bp.get("/fields")
def fields():
    return jsonify(fields=[f.to_json() for f in FIELDS], groups=list(GROUPS))


@bp.post("/config/validate")
def validate_config():
    """Every problem of a config, each with its field: the form shows them inline."""
    config = json_body().get("config")
    if not isinstance(config, dict):
        raise ApiError(400, 'send {"config": {...}}: a mapping of settings', "config")
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
        config=cfg.to_nested(),
        yaml=cfg.to_yaml(),
        effective={
            "iters": cfg.effective_iters,
            "num_layers": cfg.effective_num_layers,
        },
    )


@bp.get("/presets")
def presets():
    return jsonify(presets=console().presets())


@bp.get("/system")
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
def files():
    """Without ?path: the allowed roots. With it: that folder's entries (model and corpus
    pickers), confined to the roots after resolving symlinks."""
    c = console()
    path = request.args.get("path")
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
    hidden = request.args.get("hidden", "false").lower() in ("1", "true", "yes")
    return jsonify(browse.list_folder(path, c.browse_roots, c.workspace.root, hidden))


@bp.post("/data/report")
def data_report():
    """A corpus's documents, bytes, estimated tokens and a preview (read-only, no MLX)."""
    c = console()
    path = json_body().get("path")
    return jsonify(report=browse.data_report(path, c.browse_roots, c.workspace.root))


@bp.get("/caches")
def caches():
    entries = browse.list_caches(_workspace())
    return jsonify(caches=entries, total_size=sum(e["size"] for e in entries))


@bp.delete("/caches")
def delete_caches():
    """Remove tokenization caches (never run folders): {"confirm": true, "names": [...]}
    (all caches when names is omitted)."""
    body = json_body()
    if body.get("confirm") is not True:
        raise ApiError(400, 'deleting caches needs {"confirm": true}', "confirm")
    names = body.get("names")
    if names is not None and (
        not isinstance(names, list) or not all(isinstance(n, str) for n in names)
    ):
        raise ApiError(400, "names must be a list of cache names", "names")
    removed = browse.delete_caches(_workspace(), names)
    return jsonify(removed=removed)


def _workspace() -> Workspace:
    return console().workspace
