"""`report_to`: the run's metrics also in the trackers people already read.

Each tracker takes the events the trainer writes to metrics.jsonl (an EventSink of
metrics/writer.py), so it logs the same numbers:

- tensorboard: event files in <run>/tensorboard/ (tensorboardX's writer), a scalar
  `train/<key>` or `eval/<key>` for every number of a train or eval event at its step,
  the config as text at the start, and each `sample` event (generated text, when the
  trainer writes them) as text;
- wandb: a Weights & Biases run (the `wandb` library; its files in <run>/wandb/), in the
  project `project_name`, named and identified by the run_id so a resume continues it,
  the keys as mlx-lm's WandBCallback logs them; WANDB_MODE=offline logs with no network
  (`wandb sync <run>/wandb/offline-run-*` uploads later).

A tracker never fails training: one that cannot start or fails while logging is dropped
with a `warning` event (kind `tracker`) and the run goes on. The libraries are imported
here, when a tracker starts, and nowhere else: never by the console.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from training.contract.config import RunConfig
from training.contract.fields import REPORTERS
from training.contract.protocol import EVAL, SAMPLE, TRAIN

TENSORBOARD_DIR = "tensorboard"
DEFAULT_PROJECT = "mlx-cpt"
# Event keys that are bookkeeping, not metrics.
_NOT_METRICS = frozenset({"v", "seq", "event", "time", "step"})
# What a tracker's failure message is cut to (a library may raise a page of text).
_MESSAGE_CHARS = 300

# (step, tracker name, message): reports a tracker's failure (a `warning` event).
Warn = Callable[[int, str, str], None]


@dataclass(frozen=True)
class TrackerContext:
    run_dir: Path
    run_id: str
    config: RunConfig
    resumed_from: int | None = None  # the checkpoint step a resume starts from
    restart: bool = False  # --restart: the earlier attempt's steps are history


class Tracker(Protocol):
    def log(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def metrics_of(event: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """The numbers of an event (finite ints and floats, no bookkeeping keys)."""
    for key, value in event.items():
        if key in _NOT_METRICS or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            yield key, value


def sample_rows(event: dict[str, Any]) -> list[dict[str, str]]:
    """A `sample` event's texts as rows: its `samples` list of mappings, or the event's own
    text fields (prompt, text, ...)."""
    listed = event.get("samples")
    rows = listed if isinstance(listed, list) else [event]
    out = []
    for row in rows:
        if isinstance(row, dict):
            texts = {
                str(k): v for k, v in row.items() if isinstance(v, str) and k not in _NOT_METRICS
            }
            if texts:
                out.append(texts)
    return out


def _markdown(rows: list[dict[str, str]]) -> str:
    parts = []
    for row in rows:
        parts.append("\n\n".join(f"**{key}**\n\n```\n{text}\n```" for key, text in row.items()))
    return "\n\n---\n\n".join(parts)


class TensorBoardTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        from tensorboardX import SummaryWriter

        # A resume re-does the steps after its checkpoint, a restart every step: TensorBoard
        # hides what an earlier session logged from the purge step on.
        purge = 0 if ctx.restart else ctx.resumed_from
        self.writer = SummaryWriter(
            logdir=str(ctx.run_dir / TENSORBOARD_DIR), purge_step=purge, flush_secs=5
        )
        if ctx.resumed_from is None:
            self.writer.add_text("config", f"```yaml\n{ctx.config.to_yaml()}```", 0)

    def log(self, event: dict[str, Any]) -> None:
        kind, step = event.get("event"), int(event.get("step") or 0)
        wall = event.get("time")
        if kind in (TRAIN, EVAL):
            for key, value in metrics_of(event):
                self.writer.add_scalar(f"{kind}/{key}", value, step, walltime=wall)
        elif kind == SAMPLE:
            rows = sample_rows(event)
            if rows:
                self.writer.add_text("samples", _markdown(rows), step, walltime=wall)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, ctx: TrackerContext) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=ctx.config.project_name or DEFAULT_PROJECT,
            name=ctx.run_id,
            # The run_id (in wandb's alphabet) identifies the run: a resume continues it.
            id=re.sub(r"[^A-Za-z0-9_-]", "-", ctx.run_id)[:64],
            resume="allow",
            dir=str(ctx.run_dir),
            config=ctx.config.to_dict(),
            # "off": wandb must not wrap the trainer's stdout (the console reads it).
            settings=wandb.Settings(console="off"),
        )

    def log(self, event: dict[str, Any]) -> None:
        kind, step = event.get("event"), int(event.get("step") or 0)
        if kind in (TRAIN, EVAL):
            self.run.log(dict(metrics_of(event)), step=step)
        elif kind == SAMPLE:
            rows = sample_rows(event)
            if rows:
                columns: list[Any] = list(dict.fromkeys(k for row in rows for k in row))
                table = self.wandb.Table(
                    columns=columns, data=[[row.get(c, "") for c in columns] for row in rows]
                )
                self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS: dict[str, Callable[[TrackerContext], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
}
assert tuple(TRACKERS) == REPORTERS, "fields.REPORTERS names the trackers of this module"


def _why(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 3] + "..."


class Trackers:
    """The run's trackers as one EventSink: each event goes to each tracker; a failing
    tracker is dropped with one warning, and training goes on."""

    def __init__(self, trackers: dict[str, Tracker], warn: Warn) -> None:
        self.trackers = dict(trackers)
        self.warn = warn

    def put(self, event: dict[str, Any]) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.log(event)
            except Exception as exc:  # noqa: BLE001 - a tracker never fails training
                self._drop(name, int(event.get("step") or 0), f"stopped logging: {_why(exc)}")

    def _drop(self, name: str, step: int, message: str) -> None:
        tracker = self.trackers.pop(name, None)  # first: the warning event comes here too
        if tracker is not None:
            try:
                tracker.close()
            except Exception:  # noqa: BLE001, S110 - it failed already; the warning says so
                pass
        self.warn(step, name, f"{name} {message}; training goes on without it")

    def close(self) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                tracker.close()
            except Exception as exc:  # noqa: BLE001
                self.trackers.pop(name, None)
                self.warn(0, name, f"{name} could not finish its files: {_why(exc)}")
        self.trackers.clear()


def open_trackers(names: list[str], ctx: TrackerContext, warn: Warn) -> Trackers:
    """Start the named trackers; one that cannot start is left out with a warning."""
    started: dict[str, Tracker] = {}
    for name in names:
        try:
            started[name] = TRACKERS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - e.g. wandb with no key and no network
            warn(0, name, f"{name} could not start: {_why(exc)}; training goes on without it")
    return Trackers(started, warn)
