"""A run's results for people: losses per evaluation, final losses, the checkpoint table.

The console's checkpoint table and the exporter's model card read a run through here.
Only complete JSON lines of metrics.jsonl count (a half-written last line is "not yet").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.contract.checkpoints import list_checkpoints
from training.contract.layout import RunPaths
from training.contract.protocol import EVAL, FINISHED, RUN_START, STATUS, TRAIN
from training.contract.reading import DamagedFile, is_real_dir, read_json_object, tree_size
from training.metrics.evaluations import read_evaluations
from training.metrics.tailer import read_events

if TYPE_CHECKING:
    from training.metrics.store import RunMetrics

# eval-event keys that are not a held-out set's loss.
_NOT_SETS = {"val_loss", "train_loss", "v", "seq", "event", "time", "step"}


def eval_losses(event: dict[str, Any]) -> dict[str, float]:
    """{set name: loss} of one eval event: `val` plus each extra held-out set.

    The trainer writes an extra set as `val_<name>_loss` (protocol.eval_set_keys);
    `<name>_loss` keys and sets nested under `eval_sets` ({name: loss} or {name: {loss}})
    read the same."""
    out: dict[str, float] = {}
    if _is_number(event.get("val_loss")):
        out["val"] = float(event["val_loss"])
    for key, value in event.items():
        if key.endswith("_loss") and key not in _NOT_SETS and _is_number(value):
            name = key[: -len("_loss")]
            out[name[len("val_") :] if name.startswith("val_") else name] = float(value)
    nested = event.get("eval_sets")
    if isinstance(nested, dict):
        for name, value in nested.items():
            if isinstance(value, dict):
                value = value.get("loss", value.get("val_loss"))
            if _is_number(value):
                out[str(name)] = float(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def evals_by_step(
    run: RunPaths, events: Iterable[dict[str, Any]] | None = None
) -> dict[int, dict[str, float]]:
    """The last eval event's losses at each step (a resume may repeat a step); `events`
    (the run's eval rows from its index) spares reading the whole metrics file."""
    out: dict[int, dict[str, float]] = {}
    for event in read_events(run.metrics, run.root) if events is None else events:
        if event.get("event") == EVAL and isinstance(event.get("step"), int):
            losses = eval_losses(event)
            if losses:
                out[event["step"]] = losses
    return out


def final_losses(run: RunPaths) -> dict[str, Any]:
    """The last train loss and the last evaluation, with their steps (for the model card);
    nothing from a metrics file that cannot be read safely."""
    train: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    start: dict[str, Any] | None = None
    try:
        events = list(read_events(run.metrics, run.root))
    except DamagedFile:
        events = []
    for event in events:
        kind = event.get("event")
        if kind == TRAIN and _is_number(event.get("train_loss")):
            train = {"step": event.get("step"), "train_loss": float(event["train_loss"])}
        elif kind == EVAL and eval_losses(event):
            evaluation = {"step": event.get("step"), "losses": eval_losses(event)}
        elif kind == RUN_START and start is None:
            start = event
    return {"train": train, "eval": evaluation, "run_start": start}


def folder_size(path: Path) -> int:
    """Bytes of the regular files in a folder; links are neither followed nor counted."""
    return tree_size(path.parent, path.name)


def checkpoint_table(run: RunPaths, metrics: RunMetrics | None = None) -> dict[str, Any]:
    """Rows for the run page: each complete checkpoint (as the console lists them) and
    final/, with the losses of the evaluation at its step (val and every extra set), its
    size, the perplexities stored for it, and `best` on the lowest validation loss. With
    the run's metrics index (the console), only its eval and status rows are read. A file
    that cannot be read safely is left out and named in `unreadable` ({file, error})."""
    unreadable: list[dict[str, str]] = []
    try:
        evals = evals_by_step(run, metrics.rows_of(EVAL) if metrics is not None else None)
    except DamagedFile as exc:
        evals, metrics = {}, None
        unreadable.append({"file": exc.file, "error": str(exc)})
    perplexities: dict[str, list[dict[str, Any]]] = {}
    try:
        stored = read_evaluations(run)
    except DamagedFile as exc:
        stored = []
        unreadable.append({"file": exc.file, "error": str(exc)})
    for record in stored:
        perplexities.setdefault(str(record.get("checkpoint")), []).append(record)
    rows: list[dict[str, Any]] = []
    for bundle in list_checkpoints(run.root):
        losses = dict(evals.get(bundle["step"], {}))
        if "val" not in losses and _is_number(bundle.get("val_loss")):
            losses["val"] = float(bundle["val_loss"])
        rows.append(
            {
                "checkpoint": bundle["name"],
                "step": bundle["step"],
                "time": bundle["time"],
                "size": bundle["size"],
                "latest": bundle["is_latest"],
                "losses": losses,
                "perplexity": perplexities.get(bundle["name"], []),
                # The trainer's own judgement (contract.checkpoints), kept by retention.
                "best": bool(bundle.get("is_best")),
            }
        )
    # final/ counts only as a real folder of this run: never a link to one elsewhere.
    if is_real_dir(run.root, run.final.name):
        statuses = metrics.rows_of(STATUS) if metrics is not None else None
        step = _final_step(run, max(evals) if evals else None, statuses)
        rows.append(
            {
                "checkpoint": "final",
                "step": step,
                "time": _mtime(run.final),
                "size": folder_size(run.final),
                "latest": False,
                "losses": dict(evals.get(step, {})) if step is not None else {},
                "perplexity": perplexities.get("final", []),
                "best": False,
            }
        )
    sets = sorted({k for r in rows for k in r["losses"]} - {"val"})
    scored = [r for r in rows if "val" in r["losses"] and r["checkpoint"] != "final"]
    if scored and not any(r["best"] for r in rows):
        # Same rule as the trainer: lowest validation loss, the later step on a tie.
        min(scored, key=lambda r: (r["losses"]["val"], -(r["step"] or 0)))["best"] = True
    return {"rows": rows, "sets": ["val", *sets], "evals": len(evals), "unreadable": unreadable}


def _mtime(path: Path) -> float | None:
    try:
        return path.lstat().st_mtime
    except OSError:
        return None


def _final_step(
    run: RunPaths, fallback: int | None, statuses: Iterable[dict[str, Any]] | None = None
) -> int | None:
    for name in ("state.json", "trainer_state.json"):
        try:
            state = read_json_object(run.root, f"{run.final.name}/{name}")
        except OSError:
            continue
        if isinstance(state.get("step"), int) and not isinstance(state["step"], bool):
            return state["step"]
    last: int | None = None
    try:
        events = read_events(run.metrics, run.root) if statuses is None else statuses
        for event in events:
            if event.get("event") == STATUS and event.get("state") == FINISHED:
                last = event.get("step") if isinstance(event.get("step"), int) else last
    except DamagedFile:
        pass  # the caller already reported the metrics file
    return last if last is not None else fallback
