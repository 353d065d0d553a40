"""Playground and API requests → evaluation-worker jobs: which model, which text, where to.

No MLX and no Flask: web/evaluation.py hands request bodies here and gets back a job spec
for training/eval_worker.py, or a RequestError naming the field to fix and the HTTP status.
Everything a person can name is checked here, before any process starts: runs and
checkpoints exist, paths lie inside the console's allowed roots, an export would not
overwrite anything unconfirmed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.console.browse import PathError, confine, display_path
from training.contract.corpus import CorpusError, find_corpus
from training.contract.errors import InputError
from training.contract.eval_text import EvalText, run_eval_text
from training.contract.exports import (
    FORMATS,
    ExportError,
    Quantization,
    check_destination,
    check_export_options,
    default_destination,
    parse_quantization,
)
from training.contract.layout import RunNotFound, Workspace, is_valid_run_id
from training.contract.limits import has_lone_surrogate
from training.contract.model_source import (
    ModelSource,
    SourceError,
    folder_source,
    resolve_source,
    run_choices,
    run_config,
)
from training.contract.protocol import MAX_TEMPERATURE

MAX_PROMPT_CHARS = 100_000
MAX_GENERATION_TOKENS = 4096


class RequestError(InputError):
    """A request that cannot run: `field` is the input to fix, `status` the HTTP status,
    `extra` more keys for the JSON error (e.g. the folder an export would replace)."""

    def __init__(
        self,
        message: str,
        field: str | None = None,
        status: int = 400,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message, field)
        self.status = status
        self.extra = dict(extra or {})


@dataclass(frozen=True)
class EvalContext:
    workspace: Workspace
    roots: Sequence[Path]  # folders the console may read (the server's allowed roots)


# -- models ---------------------------------------------------------------------------------


def model_source(ctx: EvalContext, ref: Any, field: str = "model") -> ModelSource:
    """{"run_id", "checkpoint"} (base, final, latest, a step) or {"path"} → a ModelSource."""
    if not isinstance(ref, dict):
        raise RequestError("choose a model: a run's checkpoint or a model folder", field)
    if ref.get("run_id"):
        run_id = ref["run_id"]
        if not isinstance(run_id, str) or not is_valid_run_id(run_id):
            raise RequestError(f"invalid run_id {run_id!r}", field)
        _existing_run(ctx, run_id, field)
        try:
            return resolve_source(ctx.workspace, run_id, ref.get("checkpoint"))
        except SourceError as exc:
            status = 404 if exc.field == "checkpoint" and "has no checkpoint" in str(exc) else 400
            raise RequestError(str(exc), field, status) from exc
    if ref.get("path"):
        try:
            folder = confine(ref["path"], ctx.roots, ctx.workspace.root, field)
            return folder_source(folder)
        except (PathError, SourceError) as exc:
            raise RequestError(str(exc), field) from exc
    raise RequestError("choose a model: give run_id (and checkpoint) or path", field)


def model_choices(ctx: EvalContext, run_ids: Sequence[str]) -> dict[str, Any]:
    """What the pickers offer: every run's base, checkpoints and final model, and the model
    folders directly inside <workspace>/models."""
    runs = []
    for run_id in run_ids:
        try:
            config = run_config(ctx.workspace.run(run_id))
        except SourceError:
            continue
        choices = run_choices(ctx.workspace, run_id)
        if choices:
            runs.append(
                {
                    "run_id": run_id,
                    "fine_tune_type": config.get("fine_tune_type") or "full",
                    "eval_sets": sorted((config.get("eval_sets") or {}).keys()),
                    "choices": [
                        {k: c[k] for k in ("checkpoint", "step", "label")} for c in choices
                    ],
                }
            )
    folders = []
    models_dir = ctx.workspace.root / "models"
    if models_dir.is_dir():
        for child in sorted(models_dir.iterdir()):
            if (child / "config.json").is_file():
                folders.append(
                    {"path": display_path(child.resolve(), ctx.workspace.root), "label": child.name}
                )
    return {"runs": runs, "folders": folders}


# -- generation -----------------------------------------------------------------------------


def _number(body: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{key} must be a number", key)
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"{key} must be a number, got {value!r}", key) from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise RequestError(f"{key} must be between {lo:g} and {hi:g}", key)
    return number


def _integer(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    number = _number(body, key, default, lo, hi)
    if not number.is_integer():
        raise RequestError(f"{key} must be a whole number", key)
    return int(number)


def generate_job(ctx: EvalContext, body: dict[str, Any]) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("type a prompt for the model to continue", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise RequestError(f"the prompt is over {MAX_PROMPT_CHARS} characters", "prompt")
    if has_lone_surrogate(prompt):  # Socket.IO's JSON may carry one; no tokenizer takes it
        raise RequestError("the prompt contains a lone surrogate (\\ud800-\\udfff)", "prompt")
    models = [model_source(ctx, body.get("model"), "model")]
    if body.get("compare"):
        models.append(model_source(ctx, body["compare"], "compare"))
    return {
        "prompt": prompt,
        "models": [m.to_json() for m in models],
        "max_tokens": _integer(body, "max_tokens", 100, 1, MAX_GENERATION_TOKENS),
        "temp": _number(body, "temp", 0.0, 0.0, MAX_TEMPERATURE),
        "top_p": _number(body, "top_p", 1.0, 0.01, 1.0),
        "seed": _integer(body, "seed", 0, 0, 2**31 - 1),
        "run_id": models[0].run_id,
    }


# -- perplexity -----------------------------------------------------------------------------


def run_eval_data(ctx: EvalContext, run_id: str, name: str) -> EvalText:
    """`val` (the run's validation data, as the trainer chose it) or an extra eval set."""
    try:
        return run_eval_text(ctx.workspace.run(run_id), ctx.workspace.root, name)
    except SourceError as exc:
        raise RequestError(str(exc), exc.field or "data") from exc


def _check_text(path: Path) -> None:
    """Cheap checks before a job starts: it exists and is not empty (the worker reads it)."""
    try:
        corpus = find_corpus(path)
    except CorpusError as exc:
        raise RequestError(str(exc), "data") from exc
    files = corpus.valid or corpus.train
    if all(f.stat().st_size == 0 for f in files):
        raise RequestError(f"{path} is empty: there is no text to evaluate", "data")


def _run_id(ctx: EvalContext, run_id: Any) -> str:
    """A run_id a request names: valid (400) and in the workspace (404)."""
    if not isinstance(run_id, str) or not is_valid_run_id(run_id):
        raise RequestError(f"invalid run_id {run_id!r}", "run_id")
    _existing_run(ctx, run_id, "run_id")
    return run_id


def _existing_run(ctx: EvalContext, run_id: str, field: str) -> None:
    """404 unless the run folder is there, inside the runs folder (not a symlink out)."""
    try:
        ctx.workspace.existing_run(run_id)
    except RunNotFound:
        raise RequestError(f"no run {run_id!r} in the workspace", field, 404) from None


def perplexity_job(ctx: EvalContext, body: dict[str, Any]) -> dict[str, Any]:
    source = model_source(ctx, body.get("model"))
    data = body.get("data")
    if not isinstance(data, dict) or not (data.get("set") or data.get("path")):
        raise RequestError("choose the text: a run's set (val, ...) or a file path", "data")
    if data.get("set"):
        run_id = _run_id(ctx, body["run_id"]) if body.get("run_id") else source.run_id
        if not run_id:
            raise RequestError("a run's set needs a run: pick a run's model or give a file", "data")
        text = run_eval_data(ctx, run_id, str(data["set"]))
        path, label = text.path, str(data["set"])
        holdout = text.holdout_fraction
    else:
        try:
            path = confine(data["path"], ctx.roots, ctx.workspace.root, "data")
        except PathError as exc:
            raise RequestError(str(exc), "data") from exc
        label, holdout = path.name, None
    _check_text(path)
    spec: dict[str, Any] = {
        "model": source.to_json(),
        "data": str(path),
        "data_label": label,
        "num_samples": _integer(body, "num_samples", 256, -1, 1_000_000),
        "batch_size": _integer(body, "batch_size", 8, 1, 1024),
    }
    if holdout is not None:
        spec["holdout_fraction"] = holdout
    if body.get("sequence_length") not in (None, ""):
        spec["sequence_length"] = _integer(body, "sequence_length", 512, 2, 1_048_576)
    if spec["num_samples"] == 0:
        raise RequestError("num_samples must be -1 (all) or at least 1", "num_samples")
    if source.run_id:
        # Results live with the run they measure, so the checkpoint table can show them.
        spec["run_dir"] = str(ctx.workspace.run(source.run_id).root)
        spec["run_id"] = source.run_id
    return spec


# -- export ---------------------------------------------------------------------------------


def export_job(ctx: EvalContext, body: dict[str, Any]) -> dict[str, Any]:
    source = model_source(ctx, body.get("model"))
    fmt = body.get("format") or "model"
    if fmt not in FORMATS:
        raise RequestError(f"format must be one of {', '.join(FORMATS)}", "format")
    try:
        quant = parse_quantization(body.get("quantize"), body.get("group_size"))
        # What config.json rules out (GGUF of another architecture, a group size that does
        # not divide, a quantized base): 400 before a worker starts.
        check_export_options(fmt, quant, source)
    except ExportError as exc:
        raise RequestError(str(exc), exc.field) from exc
    overwrite = body.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise RequestError("overwrite must be true or false", "overwrite")
    measure = _export_perplexity(ctx, source, quant, body.get("perplexity"))
    if body.get("dest"):
        try:
            # A folder the person names: it may not exist yet, so confine its real parent.
            dest = confine(body["dest"], ctx.roots, ctx.workspace.root, "dest")
        except PathError as exc:
            raise RequestError(str(exc), "dest") from exc
    else:
        dest = default_destination(ctx.workspace, source, fmt, quant)
    dest = Path(os.path.realpath(dest.expanduser()))
    try:
        dest = check_destination(dest, source, ctx.workspace, overwrite, ctx.roots)
    except ExportError as exc:
        # An existing export is a conflict the person resolves by confirming (409); the
        # response names the folder, so the dialog can say what it replaces.
        if exc.field == "overwrite":
            raise RequestError(str(exc), "overwrite", 409, {"dest": str(dest)}) from exc
        raise RequestError(str(exc), exc.field) from exc
    spec: dict[str, Any] = {
        "model": source.to_json(),
        "workspace": str(ctx.workspace.root),
        "dest": str(dest),
        "format": fmt,
        "overwrite": overwrite,
        "run_id": source.run_id,
    }
    if quant is not None:
        spec.update(quantize=quant.bits, group_size=quant.group_size)
    if measure is not None:
        spec["perplexity"] = measure
    return spec


def _export_perplexity(
    ctx: EvalContext, source: ModelSource, quant: Quantization | None, wanted: Any
) -> dict[str, Any] | None:
    """The text a quantized export is measured on: the run's validation set. `perplexity`
    true asks for it (400 when there is none), false skips it, absent: when there is one."""
    if wanted is not None and not isinstance(wanted, bool):
        raise RequestError("perplexity must be true or false", "perplexity")
    if quant is None or wanted is False:
        if wanted:
            raise RequestError(
                "perplexity measures a quantized export: give quantize", "perplexity"
            )
        return None
    try:
        if not source.run_id:
            raise SourceError("only a run's model has a validation text to measure", "perplexity")
        text = run_eval_text(ctx.workspace.run(source.run_id), ctx.workspace.root)
        _check_text(text.path)
    except (SourceError, RequestError) as exc:
        if wanted:
            raise RequestError(str(exc), "perplexity") from exc
        return None
    return text.to_json()
