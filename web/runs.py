"""Runs, their metrics, logs and checkpoints, the queue, and remote trainers' callbacks.

Every handler parses its input, calls TrainingManager or RunStore and returns JSON;
errors are the domain exceptions, mapped to statuses in web/errors.py.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from training.contract.config import parse_yaml_text
from training.contract.protocol import RUN_STATES
from web.console import console
from web.errors import ApiError
from web.security import json_body

bp = Blueprint("runs", __name__, url_prefix="/api")

MAX_LOG_LINES = 5000
MAX_POINTS = 100_000
DEFAULT_ROW_LIMIT = 10_000


def _int_arg(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, got {raw!r}", name) from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError(400, f"{name} must be {bound}, got {value}", name)
    return value


def _bool(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false", name)
    return value


def _config(body: dict[str, Any], required: bool = True) -> dict[str, Any]:
    config = body.get("config")
    if isinstance(config, str):
        config = parse_yaml_text(config)  # a pasted or loaded YAML file
    if config is None and not required:
        return {}
    if not isinstance(config, dict):
        raise ApiError(
            400, 'send {"config": {...}}: a mapping of settings (or YAML text)', "config"
        )
    return config


# -- runs --


@bp.get("/runs")
def list_runs():
    """Every run, newest first, with its derived state and progress."""
    state = request.args.get("state")
    if state is not None and state not in RUN_STATES:
        raise ApiError(400, f"state must be one of {', '.join(RUN_STATES)}", "state")
    runs = console().manager.list_runs()
    if state:
        runs = [r for r in runs if r["state"] == state]
    return jsonify(runs=runs)


@bp.get("/runs/summary")
def runs_summary():
    """The runs page in one request: runs with their last metrics, counts per state, and
    the queue."""
    manager = console().manager
    runs = manager.list_runs(detail=False)
    counts: dict[str, int] = {}
    for run in runs:
        counts[run["state"]] = counts.get(run["state"], 0) + 1
    return jsonify(runs=runs, counts=counts, queue=manager.queue_state())


@bp.post("/runs")
def create_run():
    body = json_body()
    start, queue = _bool(body, "start", True), _bool(body, "queue", False)
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "name must be text", "name")
    manager = console().manager
    run_id = manager.create_run(_config(body), name=name, start=start, queue=queue)
    return jsonify(run_id=run_id, run=manager.describe(run_id)), 201


@bp.get("/runs/<run_id>")
def get_run(run_id: str):
    manager = console().manager
    manager.adopt_if_alive(run_id)  # opening a run adopts its live trainer (--no-autodetect)
    return jsonify(run=manager.describe(run_id))


@bp.patch("/runs/<run_id>")
def patch_run(run_id: str):
    body = json_body()
    if set(body) - {"name"} or "name" not in body:
        raise ApiError(400, 'only the name can change: send {"name": "..."}', "name")
    manager = console().manager
    manager.rename(run_id, body["name"])
    return jsonify(run=manager.describe(run_id))


@bp.delete("/runs/<run_id>")
def delete_run(run_id: str):
    console().manager.delete(run_id, confirm=json_body().get("confirm") is True)
    return jsonify(deleted=run_id)


@bp.post("/runs/<run_id>/start")
def start_run(run_id: str):
    manager = console().manager
    manager.start(run_id)
    return jsonify(run=manager.describe(run_id)), 202


@bp.post("/runs/<run_id>/stop")
def stop_run(run_id: str):
    state = console().manager.stop(run_id)
    return jsonify(run_id=run_id, state=state), 202


@bp.post("/runs/<run_id>/resume")
def resume_run(run_id: str):
    manager = console().manager
    manager.resume(run_id, confirm=json_body().get("confirm") is True)
    return jsonify(run=manager.describe(run_id)), 202


@bp.post("/runs/<run_id>/restart")
def restart_run(run_id: str):
    """A run that ended before its first checkpoint, started again from step 0 in its own
    folder (its metrics are cleared): {"confirm": true} required."""
    manager = console().manager
    manager.restart(run_id, confirm=json_body().get("confirm") is True)
    return jsonify(run=manager.describe(run_id)), 202


@bp.get("/runs/<run_id>/config")
def run_config(run_id: str):
    """The run's config.yaml, as a mapping and as text (to clone, edit or download)."""
    store = console().store
    text, config = store.config(run_id)  # DamagedFile → 422 naming config.yaml
    return jsonify(run_id=run_id, name=store.read_record(run_id).name, config=config, yaml=text)


@bp.post("/runs/<run_id>/clone")
def clone_run(run_id: str):
    """A new run from this run's config, with optional overrides in "config"."""
    body = json_body()
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(400, "name must be text", "name")
    manager = console().manager
    new_id = manager.clone(
        run_id,
        name=name,
        overrides=_config(body, required=False),
        start=_bool(body, "start", False),
        queue=_bool(body, "queue", False),
    )
    return jsonify(run_id=new_id, run=manager.describe(new_id)), 201


@bp.get("/runs/<run_id>/metrics")
def run_metrics(run_id: str):
    """Rows after ?after_seq (at most ?limit), or with ?max_points the whole history
    downsampled per event kind (min/max envelope of the losses: spikes stay visible)."""
    after_seq = _int_arg("after_seq", 0, 0)
    max_points = _int_arg("max_points", 0, 0, MAX_POINTS)
    limit = _int_arg("limit", DEFAULT_ROW_LIMIT, 1, 1_000_000)
    metrics = console().store.metrics(run_id)
    # Rows and last_seq from one moment of the index: the client follows the live stream
    # after last_seq, so rows appended in between must be in neither or both.
    if max_points:
        rows, last_seq, total = metrics.snapshot(max_points)
        rows = [r for r in rows if r["seq"] > after_seq] if after_seq else rows
        more = False
    else:
        rows, last_seq, more, total = metrics.page(after_seq, limit)
    return jsonify(
        run_id=run_id,
        rows=rows,
        last_seq=last_seq,
        total=total,
        downsampled=bool(max_points) and len(rows) < total,
        more=more,
        malformed=metrics.malformed,
    )


@bp.get("/runs/<run_id>/logs")
def run_logs(run_id: str):
    tail = _int_arg("tail", 200, 1, MAX_LOG_LINES)
    return jsonify(run_id=run_id, lines=console().store.log_tail(run_id, tail))


@bp.get("/runs/<run_id>/checkpoints")
def run_checkpoints(run_id: str):
    return jsonify(run_id=run_id, checkpoints=console().store.checkpoints(run_id))


# -- remote trainers --


@bp.post("/callbacks/<run_id>")
def callbacks(run_id: str):
    """A trainer elsewhere (--report-url) posts {"events": [...]}: appended to the run's
    metrics.jsonl, they reach charts and rooms by the same path as local events."""
    events = json_body().get("events")
    if not isinstance(events, list):
        raise ApiError(400, 'send {"events": [...]}: a list of metrics events', "events")
    accepted, duplicates, last_seq = console().manager.report_events(run_id, events)
    return jsonify(accepted=accepted, duplicates=duplicates, last_seq=last_seq)


# -- the queue --


@bp.get("/queue")
def get_queue():
    return jsonify(queue=console().manager.queue_state())


@bp.patch("/queue")
def patch_queue():
    body = json_body()
    if set(body) != {"stop_on_failure"}:
        raise ApiError(400, 'send {"stop_on_failure": true|false}', "stop_on_failure")
    manager = console().manager
    manager.queue_settings(stop_on_failure=_bool(body, "stop_on_failure", False))
    return jsonify(queue=manager.queue_state())


def _run_id(body: dict[str, Any]) -> str:
    run_id = body.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ApiError(400, 'send {"run_id": "..."}', "run_id")
    return run_id


@bp.post("/queue/add")
def queue_add():
    manager = console().manager
    manager.queue_add(_run_id(json_body()))
    return jsonify(queue=manager.queue_state())


@bp.post("/queue/remove")
def queue_remove():
    manager = console().manager
    manager.queue_remove(_run_id(json_body()))
    return jsonify(queue=manager.queue_state())


@bp.post("/queue/reorder")
def queue_reorder():
    run_ids = json_body().get("run_ids")
    if not isinstance(run_ids, list) or not all(isinstance(r, str) for r in run_ids):
        raise ApiError(400, 'send {"run_ids": [...]}: every queued run, in order', "run_ids")
    manager = console().manager
    manager.queue_reorder(run_ids)
    return jsonify(queue=manager.queue_state())


@bp.post("/queue/pause")
def queue_pause():
    manager = console().manager
    manager.queue_pause()
    return jsonify(queue=manager.queue_state())


@bp.post("/queue/start")
def queue_start():
    manager = console().manager
    manager.queue_start()
    return jsonify(queue=manager.queue_state())
