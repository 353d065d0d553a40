"""Runs, their metrics, logs and checkpoints, the queue, and remote trainers' callbacks.

Every handler parses its input, calls TrainingManager or RunStore and returns JSON;
errors are the domain exceptions, mapped to statuses in web/errors.py.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from training.contract.config import parse_yaml_text
from training.contract.protocol import RUN_STATES
from web.apispec import (
    ANY_OBJECT,
    BOOLEAN,
    Schema,
    arg,
    array,
    integer,
    nullable,
    obj,
    operation,
    ref,
)
from web.console import console
from web.errors import ApiError
from web.schemas import CONFIRM, ID, NAME, TEXT, config_input
from web.security import json_body

bp = Blueprint("runs", __name__, url_prefix="/api")

MAX_LOG_LINES = 5000
MAX_POINTS = 100_000
DEFAULT_ROW_LIMIT = 10_000
MAX_ROW_LIMIT = 1_000_000
# A remote trainer sends at most a few hundred events per request (HttpReporter's batch).
MAX_EVENTS = 10_000
MAX_QUEUE_IDS = 10_000

RUN: Schema = obj({"run": ref("Run")}, required=["run"])
QUEUE: Schema = obj({"queue": ref("Queue")}, required=["queue"])
CREATED: Schema = obj({"run_id": TEXT, "run": ref("Run")}, required=["run_id", "run"])
RUN_ID_BODY: Schema = obj({"run_id": ID}, required=["run_id"])


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
@operation(
    "Every run, newest first",
    {200: obj({"runs": array(ref("Run"))}, required=["runs"])},
    query={"state": {"type": "string", "enum": list(RUN_STATES)}},
)
def list_runs():
    """Every run, newest first, with its derived state and progress."""
    state = arg("state")
    runs = console().manager.list_runs()
    if state:
        runs = [r for r in runs if r["state"] == state]
    return jsonify(runs=runs)


@bp.get("/runs/summary")
@operation(
    "The runs page in one request: runs, counts per state, the queue",
    {
        200: obj(
            {"runs": array(ref("Run")), "counts": ANY_OBJECT, "queue": ref("Queue")},
            required=["runs", "counts", "queue"],
        )
    },
)
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
@operation(
    "Create a run; start it (default), queue it or only create it",
    {201: CREATED},
    body=obj(
        {
            "config": config_input("RunConfig"),
            "name": nullable(NAME),
            "start": {**BOOLEAN, "default": True},
            "queue": {**BOOLEAN, "default": False},
        },
        required=["config"],
    ),
    errors=[409],
)
def create_run():
    body = json_body()
    start, queue = _bool(body, "start", True), _bool(body, "queue", False)
    name = body.get("name")
    manager = console().manager
    run_id = manager.create_run(_config(body), name=name, start=start, queue=queue)
    return jsonify(run_id=run_id, run=manager.describe(run_id)), 201


@bp.get("/runs/<run_id>")
@operation("A run (opening a run follows its live trainer)", {200: RUN})
def get_run(run_id: str):
    manager = console().manager
    manager.adopt_if_alive(run_id)  # opening a run adopts its live trainer (--no-autodetect)
    return jsonify(run=manager.describe(run_id))


@bp.patch("/runs/<run_id>")
@operation(
    "Rename a run",
    {200: RUN},
    body=obj({"name": NAME}, required=["name"], additional=False),
)
def patch_run(run_id: str):
    body = json_body()
    manager = console().manager
    manager.rename(run_id, body["name"])
    return jsonify(run=manager.describe(run_id))


@bp.delete("/runs/<run_id>")
@operation(
    "Delete a run folder (confirm: true; 409 while it trains)",
    {200: obj({"deleted": TEXT}, required=["deleted"])},
    body=obj({"confirm": CONFIRM}),
    errors=[409],
)
def delete_run(run_id: str):
    console().manager.delete(run_id, confirm=json_body().get("confirm") is True)
    return jsonify(deleted=run_id)


@bp.post("/runs/<run_id>/start")
@operation("Start a created or queued run now", {202: RUN}, body=ANY_OBJECT, errors=[409])
def start_run(run_id: str):
    manager = console().manager
    manager.start(run_id)
    return jsonify(run=manager.describe(run_id)), 202


@bp.post("/runs/<run_id>/stop")
@operation(
    "Stop a run gracefully (SIGTERM, checkpoint; SIGKILL after the grace period)",
    {202: obj({"run_id": TEXT, "state": TEXT}, required=["run_id", "state"])},
    body=ANY_OBJECT,
    errors=[409],
)
def stop_run(run_id: str):
    state = console().manager.stop(run_id)
    return jsonify(run_id=run_id, state=state), 202


@bp.post("/runs/<run_id>/resume")
@operation(
    "Resume a stopped, interrupted, failed or diverged run from its checkpoint; with "
    "`iters`, extend a finished or stopped run to that many steps",
    {202: RUN},
    body=obj(
        {
            "confirm": CONFIRM,
            "iters": integer(
                1,
                description="A larger budget in steps (beyond the steps trained): the run "
                "is extended to it",
            ),
        }
    ),
    errors=[409],
)
def resume_run(run_id: str):
    manager = console().manager
    body = json_body()
    iters = body.get("iters")
    manager.resume(
        run_id, confirm=body.get("confirm") is True, iters=int(iters) if iters is not None else None
    )
    return jsonify(run=manager.describe(run_id)), 202


@bp.post("/runs/<run_id>/restart")
@operation(
    "Start a run that ended before its first checkpoint again from step 0, in its folder",
    {202: RUN},
    body=obj({"confirm": CONFIRM}),
    errors=[409],
)
def restart_run(run_id: str):
    """A run that ended before its first checkpoint, started again from step 0 in its own
    folder (its metrics are cleared): {"confirm": true} required."""
    manager = console().manager
    manager.restart(run_id, confirm=json_body().get("confirm") is True)
    return jsonify(run=manager.describe(run_id)), 202


@bp.get("/runs/<run_id>/config")
@operation(
    "A run's config.yaml, as a mapping and as text",
    {
        200: obj(
            {"run_id": TEXT, "name": TEXT, "config": ANY_OBJECT, "yaml": nullable(TEXT)},
            required=["run_id", "config"],
        )
    },
)
def run_config(run_id: str):
    """The run's config.yaml, as a mapping and as text (to clone, edit or download)."""
    store = console().store
    text, config = store.config(run_id)  # DamagedFile → 422 naming config.yaml
    return jsonify(run_id=run_id, name=store.read_record(run_id).name, config=config, yaml=text)


@bp.post("/runs/<run_id>/clone")
@operation(
    "A new run from this run's config, with overrides",
    {201: CREATED},
    body=obj(
        {
            "config": nullable(config_input("ConfigOverrides")),
            "name": nullable(NAME),
            "start": {**BOOLEAN, "default": False},
            "queue": {**BOOLEAN, "default": False},
        }
    ),
    errors=[409],
)
def clone_run(run_id: str):
    """A new run from this run's config, with optional overrides in "config"."""
    body = json_body()
    name = body.get("name")
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
@operation(
    "A run's metrics rows after after_seq, or the whole history downsampled (max_points)",
    {
        200: obj(
            {
                "run_id": TEXT,
                "rows": array(ANY_OBJECT),
                "last_seq": {"type": "integer"},
                "total": {"type": "integer"},
                "downsampled": BOOLEAN,
                "more": BOOLEAN,
                "malformed": {"type": "integer"},
            },
            required=["run_id", "rows", "last_seq"],
        )
    },
    query={
        "after_seq": integer(0, default=0),
        "max_points": integer(0, MAX_POINTS, default=0),
        "limit": integer(1, MAX_ROW_LIMIT, default=DEFAULT_ROW_LIMIT),
    },
)
def run_metrics(run_id: str):
    """Rows after ?after_seq (at most ?limit), or with ?max_points the whole history
    downsampled per event kind (min/max envelope of the losses: spikes stay visible)."""
    after_seq, max_points, limit = arg("after_seq"), arg("max_points"), arg("limit")
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


@bp.get("/runs/<run_id>/metrics.csv")
@operation(
    "A run's metrics as CSV: one row per event of metrics.jsonl, the columns the union of "
    "their keys (seq, event, step, time first), the numbers as the file writes them",
    {200: {"type": "string"}},
    media_type="text/csv",
)
def run_metrics_csv(run_id: str):
    """Streamed: the rows are written in blocks as the client reads (a million-row run
    takes a few megabytes of memory); the file's lines when the request came."""
    table = console().store.metrics_csv(run_id)
    return Response(
        table,
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{run_id}-metrics.csv"'},
    )


@bp.get("/runs/<run_id>/logs")
@operation(
    "The last lines of a run's stdout.log",
    {200: obj({"run_id": TEXT, "lines": array(TEXT)}, required=["run_id", "lines"])},
    query={"tail": integer(1, MAX_LOG_LINES, default=200)},
)
def run_logs(run_id: str):
    return jsonify(run_id=run_id, lines=console().store.log_tail(run_id, arg("tail")))


@bp.get("/runs/<run_id>/checkpoints")
@operation(
    "A run's checkpoints with step, time, size and validation loss",
    {
        200: obj(
            {"run_id": TEXT, "checkpoints": array(ANY_OBJECT)},
            required=["run_id", "checkpoints"],
        )
    },
)
def run_checkpoints(run_id: str):
    return jsonify(run_id=run_id, checkpoints=console().store.checkpoints(run_id))


# -- remote trainers --


@bp.post("/callbacks/<run_id>")
@operation(
    "A remote trainer's events, appended to the run's metrics.jsonl",
    {
        200: obj(
            {
                "accepted": {"type": "integer"},
                "duplicates": {"type": "integer"},
                "last_seq": {"type": "integer"},
            },
            required=["accepted", "duplicates", "last_seq"],
        )
    },
    body=obj({"events": array(ANY_OBJECT, MAX_EVENTS)}, required=["events"]),
    errors=[409],
)
def callbacks(run_id: str):
    """A trainer elsewhere (--report-url) posts {"events": [...]}: appended to the run's
    metrics.jsonl, they reach charts and rooms by the same path as local events."""
    events = json_body()["events"]
    accepted, duplicates, last_seq = console().manager.report_events(run_id, events)
    return jsonify(accepted=accepted, duplicates=duplicates, last_seq=last_seq)


# -- the queue --


@bp.get("/queue")
@operation("The run queue", {200: QUEUE})
def get_queue():
    return jsonify(queue=console().manager.queue_state())


@bp.patch("/queue")
@operation(
    "Queue settings: stop_on_failure",
    {200: QUEUE},
    body=obj({"stop_on_failure": BOOLEAN}, required=["stop_on_failure"], additional=False),
)
def patch_queue():
    body = json_body()
    manager = console().manager
    manager.queue_settings(stop_on_failure=_bool(body, "stop_on_failure", False))
    return jsonify(queue=manager.queue_state())


def _run_id(body: dict[str, Any]) -> str:
    run_id = body.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ApiError(400, 'send {"run_id": "..."}', "run_id")
    return run_id


@bp.post("/queue/add")
@operation("Queue a created run", {200: QUEUE}, body=RUN_ID_BODY, errors=[404, 409])
def queue_add():
    manager = console().manager
    manager.queue_add(_run_id(json_body()))
    return jsonify(queue=manager.queue_state())


@bp.post("/queue/remove")
@operation("Take a run out of the queue", {200: QUEUE}, body=RUN_ID_BODY, errors=[404, 409])
def queue_remove():
    manager = console().manager
    manager.queue_remove(_run_id(json_body()))
    return jsonify(queue=manager.queue_state())


@bp.post("/queue/reorder")
@operation(
    "Reorder the queue: every queued run, in the new order",
    {200: QUEUE},
    body=obj({"run_ids": array(ID, MAX_QUEUE_IDS)}, required=["run_ids"]),
)
def queue_reorder():
    run_ids = json_body()["run_ids"]
    manager = console().manager
    manager.queue_reorder(run_ids)
    return jsonify(queue=manager.queue_state())


@bp.post("/queue/pause")
@operation("Pause the queue", {200: QUEUE}, body=ANY_OBJECT)
def queue_pause():
    manager = console().manager
    manager.queue_pause()
    return jsonify(queue=manager.queue_state())


@bp.post("/queue/start")
@operation("Start the queue", {200: QUEUE}, body=ANY_OBJECT, errors=[409])
def queue_start():
    manager = console().manager
    manager.queue_start()
    return jsonify(queue=manager.queue_state())
