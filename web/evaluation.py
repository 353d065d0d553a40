"""Testing models from the console: Playground generation, perplexity jobs, exports.

The console never imports MLX: each job runs in a worker process (training/eval_worker.py)
owned by EvalJobs, whose events are forwarded here to Socket.IO rooms `eval:<job_id>`.
Requests are checked by training/console/eval_requests.py before anything starts; the app-wide
guards of web/security.py (token, Host, Origin, JSON-only mutations) cover every route
and the Socket.IO handshake, and paths are confined to the console's browse roots.

HTTP (all under /api):
  GET  /eval/models                        model choices for the pickers
  POST /eval/generate                      {model, compare?, prompt, max_tokens, temp,
                                            top_p, seed} → 202 {job_id}
  POST /eval/perplexity                    {model, data: {set} | {path}, sequence_length?,
                                            num_samples?, batch_size?} → 202 {job_id}
  POST /eval/export                        {model, format, quantize?, group_size?,
                                            perplexity?, dest?, overwrite} → 202 {job_id};
                                            409 field "overwrite" when dest exists
  GET  /eval/jobs[?run_id=]                {jobs: [...]}
  GET  /eval/jobs/<job_id>                 {job}
  POST /eval/jobs/<job_id>/stop            {ok}
  GET  /runs/<run_id>/evaluations          the checkpoint table + this run's jobs
Socket.IO, client → server:
  eval_generate {as POST /eval/generate}   ack {job_id} | {error, field}; joins its room
  join_eval {job_id, after_seq}            ack {ok, job}; replays the events after after_seq
  leave_eval {job_id}, eval_stop {job_id}  ack {ok}
Server → client: eval_started, eval_progress, eval_lane, eval_token, eval_lane_end,
  eval_result, eval_error: the worker's events (training/eval_worker.py) with job_id, seq.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask_socketio import join_room, leave_room

from training.console.eval_jobs import EvalJob, EvalJobs, JobLimitError
from training.console.eval_requests import (
    MAX_GENERATION_TOKENS,
    MAX_PROMPT_CHARS,
    EvalContext,
    RequestError,
    export_job,
    generate_job,
    model_choices,
    perplexity_job,
)
from training.contract.exports import FORMATS, GROUP_SIZES, QUANTIZE_BITS
from training.contract.protocol import MAX_TEMPERATURE
from training.contract.reading import DamagedFile
from training.metrics.checkpoint_table import checkpoint_table
from web.apispec import (
    ANY_OBJECT,
    BOOLEAN,
    Schema,
    arg,
    array,
    nullable,
    obj,
    operation,
    ref,
    string,
)
from web.console import console
from web.errors import ApiError
from web.extensions import socketio
from web.schemas import ID, MODEL_REF, PATH, PATH_PARAMETERS, TEXT
from web.security import json_body

bp = Blueprint("evaluation", __name__, url_prefix="/api")

JOB_KINDS = {"generate": generate_job, "perplexity": perplexity_job, "export": export_job}

# A number a request may also send as text (the domain converts and bounds it).
NUMBER_OR_TEXT: Schema = {"type": ["number", "string", "null"]}


def _bounded(lo: float, hi: float) -> Schema:
    return {
        "anyOf": [
            {"type": "number", "minimum": lo, "maximum": hi},
            string(32, description="the number as text"),
            {"type": "null"},
        ]
    }


STARTED: Schema = obj({"job_id": TEXT, "job": ref("Job")}, required=["job_id", "job"])
JOB: Schema = obj({"job": ref("Job")}, required=["job"])


def room_of(job_id: str) -> str:
    return f"eval:{job_id}"


def forward(job: EvalJob, event: dict[str, Any]) -> None:
    """Worker event → Socket.IO, to the clients following this job (EvalJobs' on_event)."""
    name = event.get("event")
    if isinstance(name, str) and name.isidentifier():
        socketio.emit(f"eval_{name}", event, to=room_of(job.job_id))


def eval_jobs(app: Flask | None = None) -> EvalJobs:
    """This app's EvalJobs (its Console's: closing the console stops the workers)."""
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    return app.extensions["console"].eval_jobs


def busy_reason(app: Flask, run_id: str) -> str | None:
    """Why a run cannot be deleted now: an evaluation job is using it (TrainingManager's
    busy check)."""
    job = eval_jobs(app).busy(run_id)
    if job is None:
        return None
    return f"is in use by a {job.kind} evaluation job ({job.job_id}): stop it or let it finish"


def _context() -> EvalContext:
    c = console()
    return EvalContext(c.workspace, c.browse_roots)


def _start(kind: str, body: dict[str, Any]) -> EvalJob:
    """Check the request, then start its worker; RequestError / ApiError on bad input."""
    spec = JOB_KINDS[kind](_context(), body)
    try:
        return eval_jobs().start(kind, spec)
    except JobLimitError as exc:
        raise ApiError(409, str(exc), None) from exc


# -- HTTP -----------------------------------------------------------------------------------


@bp.get("/eval/models")
@operation(
    "Model choices for the pickers: every run's base, checkpoints and final, and the "
    "folders in <workspace>/models",
    {200: obj({"runs": array(ANY_OBJECT), "folders": array(ANY_OBJECT)})},
)
def models():
    c = console()
    return jsonify(model_choices(_context(), c.store.run_ids()))


@bp.post("/eval/generate")
@operation(
    "Generate text from a prompt (tokens stream over Socket.IO to the job's room)",
    {202: STARTED},
    body=obj(
        {
            "model": MODEL_REF,
            "compare": nullable(MODEL_REF),
            "prompt": string(MAX_PROMPT_CHARS),
            "max_tokens": _bounded(1, MAX_GENERATION_TOKENS),
            "temp": _bounded(0, MAX_TEMPERATURE),
            "top_p": _bounded(0.01, 1),
            "seed": _bounded(0, 2**31 - 1),
        },
        required=["model", "prompt"],
    ),
    errors=[404, 409],
)
def generate():
    return _started("generate")


@bp.post("/eval/perplexity")
@operation(
    "Measure a model's perplexity on a run's set or a file (stored in the run folder)",
    {202: STARTED},
    body=obj(
        {
            "model": MODEL_REF,
            "data": obj({"set": nullable(string(64)), "path": nullable(PATH)}),
            "run_id": nullable(ID),
            "sequence_length": NUMBER_OR_TEXT,
            "num_samples": NUMBER_OR_TEXT,
            "batch_size": NUMBER_OR_TEXT,
        },
        required=["model", "data"],
    ),
    errors=[404, 409],
)
def perplexity():
    return _started("perplexity")


@bp.post("/eval/export")
@operation(
    "Export a model (quantized or not), its adapters or a GGUF file (409, field overwrite, "
    "when the folder exists)",
    {202: STARTED},
    body=obj(
        {
            "model": MODEL_REF,
            "format": nullable({"enum": list(FORMATS)}),
            "quantize": nullable(
                {"enum": list(QUANTIZE_BITS), "description": "bits per weight (model format)"}
            ),
            "group_size": nullable(
                {"enum": list(GROUP_SIZES), "description": "weights per group (default 64)"}
            ),
            "perplexity": nullable(
                {
                    "type": "boolean",
                    "description": "measure the quantized export and the unquantized model "
                    "on the run's validation text (default: when the run has one)",
                }
            ),
            "dest": nullable(PATH),
            "overwrite": BOOLEAN,
        },
        required=["model"],
    ),
    errors=[404, 409],
)
def export():
    return _started("export")


def _started(kind: str) -> Any:
    job = _start(kind, json_body())
    return jsonify(job_id=job.job_id, job=job.to_json()), 202


def _job(job_id: str) -> EvalJob:
    job = eval_jobs().get(job_id)
    if job is None:
        raise ApiError(
            404, f"no evaluation job {job_id!r} (jobs last until the console stops)", "job_id"
        )
    return job


@bp.get("/eval/jobs")
@operation(
    "This console session's evaluation jobs (of one run with ?run_id)",
    {200: obj({"jobs": array(ref("Job"))}, required=["jobs"])},
    query={"run_id": PATH_PARAMETERS["run_id"]},
)
def list_jobs():
    run_id = arg("run_id")
    jobs = [j.to_json() for j in eval_jobs().list_jobs()]
    if run_id:
        jobs = [j for j in jobs if j["run_id"] == run_id]
    return jsonify(jobs=jobs)


@bp.get("/eval/jobs/<job_id>")
@operation("An evaluation job: state, progress, result or error", {200: JOB})
def get_job(job_id: str):
    return jsonify(job=_job(job_id).to_json())


@bp.post("/eval/jobs/<job_id>/stop")
@operation(
    "Stop a job (the worker finishes its token or batch)",
    {200: obj({"ok": BOOLEAN, "job": ref("Job")}, required=["ok", "job"])},
    body=ANY_OBJECT,
)
def stop_job(job_id: str):
    job = _job(job_id)
    return jsonify(ok=eval_jobs().stop(job.job_id), job=job.to_json())


@bp.get("/runs/<run_id>/evaluations")
@operation(
    "A run's checkpoint table (losses, perplexities, best) and its evaluation jobs",
    {
        200: obj(
            {"rows": array(ANY_OBJECT), "sets": array(TEXT), "jobs": array(ref("Job"))},
            required=["rows", "sets", "jobs"],
        )
    },
)
def run_evaluations(run_id: str):
    """The checkpoint table (step, val loss, each extra set's loss, size, best) and the
    perplexities stored for the run, plus its evaluation jobs of this console session."""
    store = console().store
    paths = store.paths(run_id)  # RunNotFound → 404
    jobs = [j.to_json() for j in eval_jobs().list_jobs() if j.spec.get("run_id") == run_id]
    # The run's index (the run page holds it for its charts): no parse of the whole file.
    try:
        metrics = store.metrics(run_id)
    except DamagedFile:
        metrics = None  # the table reads the file itself, fails, and names it in unreadable
    return jsonify(**checkpoint_table(paths, metrics), jobs=jobs)


# -- Socket.IO ------------------------------------------------------------------------------


def _job_id(data: Any) -> str | None:
    job_id = data.get("job_id") if isinstance(data, dict) else None
    return job_id if isinstance(job_id, str) and job_id.isalnum() else None


@socketio.on("eval_generate")
def on_generate(data: Any = None) -> dict[str, Any]:
    if not isinstance(data, dict):
        return {"error": "send the generation request as an object", "field": None}
    try:
        spec = generate_job(_context(), data)
        jobs = eval_jobs()
        # Join before the worker can say anything, so the first token is never missed.
        job = jobs.start("generate", spec)
        jobs.attach(job, 0, lambda missed: _deliver(job, missed))
    except RequestError as exc:
        return {"error": str(exc), "field": exc.field, "status": exc.status}
    except JobLimitError as exc:
        return {"error": str(exc), "field": None, "status": 409}
    return {"job_id": job.job_id}


def _deliver(job: EvalJob, missed: list[dict[str, Any]]) -> None:
    sid = request.sid  # type: ignore[attr-defined]
    join_room(room_of(job.job_id))
    for event in missed:
        socketio.emit(f"eval_{event['event']}", event, to=sid)


@socketio.on("join_eval")
def on_join(data: Any = None) -> dict[str, Any]:
    job_id = _job_id(data)
    job = eval_jobs().get(job_id) if job_id else None
    if job is None:
        return {"ok": False, "error": f"no evaluation job {job_id!r}", "field": "job_id"}
    after = data.get("after_seq", 0)
    if not isinstance(after, int) or isinstance(after, bool) or after < 0:
        return {"ok": False, "error": "after_seq must be a whole number >= 0", "field": "after_seq"}
    eval_jobs().attach(job, after, lambda missed: _deliver(job, missed))
    return {"ok": True, "job": job.to_json()}


@socketio.on("leave_eval")
def on_leave(data: Any = None) -> dict[str, Any]:
    job_id = _job_id(data)
    if job_id is None:
        return {"ok": False, "error": "send {job_id}", "field": "job_id"}
    leave_room(room_of(job_id))
    return {"ok": True}


@socketio.on("eval_stop")
def on_stop(data: Any = None) -> dict[str, Any]:
    job_id = _job_id(data)
    if job_id is None or eval_jobs().get(job_id) is None:
        return {"ok": False, "error": f"no evaluation job {job_id!r}", "field": "job_id"}
    return {"ok": eval_jobs().stop(job_id)}
