"""The run queue: runs waiting to start one after another, persisted in queue.json.

Loading never writes. A queue that still holds runs when the console starts comes back
paused: only the person starts it again (the rule the old design broke).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from training.contract.errors import InputError
from training.contract.files import write_atomic
from training.contract.reading import read_json_object


class QueueError(InputError):
    """A queue operation that does not fit the queue (unknown run, not a permutation):
    bad input about `run_ids` (the API maps InputError once, 400 with the field)."""

    default_field = "run_ids"


class RunQueue:
    def __init__(self, path: Path):
        self.path = path
        self.order: list[str] = []
        self.stop_on_failure = False
        self.pause_reason = ""
        data = self._load()
        self.order = [r for r in data.get("order", []) if isinstance(r, str)]
        self.stop_on_failure = bool(data.get("stop_on_failure", False))
        self.paused = bool(self.order)
        if self.paused:
            self.pause_reason = "paused at console start: start the queue to continue"

    def _load(self) -> dict[str, Any]:
        try:
            # Never a link, a FIFO (it would block the console's start) or a runaway file.
            return read_json_object(self.path.parent, self.path.name)
        except OSError:
            return {}

    def save(self, order: list[str] | None = None, stop_on_failure: bool | None = None) -> None:
        """Write the queue as it is to be, then hold it: a write the disk refuses (an
        OSError) changes nothing, in memory or on disk."""
        order = list(self.order if order is None else order)
        stop = self.stop_on_failure if stop_on_failure is None else stop_on_failure
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"order": order, "stop_on_failure": stop}
        write_atomic(self.path, json.dumps(blob, indent=2) + "\n")
        self.order, self.stop_on_failure = order, stop

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.order

    def add(self, run_id: str) -> None:
        if run_id not in self.order:
            self.save([*self.order, run_id])

    def remove(self, run_id: str) -> bool:
        if run_id not in self.order:
            return False
        self.save([r for r in self.order if r != run_id])
        return True

    def discard(self, run_id: str) -> None:
        """Out of the queue in memory at once, and on disk when the disk takes it (a run
        deleted, or one whose queueing failed halfway): run.json, not queue.json, says
        whether a run is queued when a console starts."""
        self.order = [r for r in self.order if r != run_id]
        with contextlib.suppress(OSError):
            self.save()

    def put_back(self, run_id: str, index: int = 0) -> None:
        """Undo a removal whose other half failed: in memory at once, on disk if it can
        (a run whose run.json says queued joins the queue at the next start anyway)."""
        if run_id not in self.order:
            self.order.insert(index, run_id)
        with contextlib.suppress(OSError):
            self.save()

    def reorder(self, run_ids: list[str]) -> None:
        twice = sorted({r for r in run_ids if run_ids.count(r) > 1})
        unknown = [r for r in dict.fromkeys(run_ids) if r not in self.order]
        missing = [r for r in self.order if r not in run_ids]
        problems = [
            f"{what}: {', '.join(ids)}"
            for what, ids in (
                ("listed twice", twice),
                ("not queued", unknown),
                ("missing", missing),
            )
            if ids
        ]
        if problems:
            raise QueueError(
                "run_ids must list every queued run exactly once, in the new order "
                f"({'; '.join(problems)}; queued now: {', '.join(self.order) or 'none'})"
            )
        self.save(list(run_ids))

    def pop_next(self) -> str | None:
        if self.paused or not self.order:
            return None
        run_id = self.order[0]
        self.save(self.order[1:])
        return run_id

    def pause(self, reason: str = "paused by the person") -> None:
        self.paused, self.pause_reason = True, reason

    def resume(self) -> None:
        self.paused, self.pause_reason = False, ""

    def set_stop_on_failure(self, value: bool) -> None:
        self.save(stop_on_failure=value)

    def adopt_orphans(self, queued_run_ids: list[str]) -> None:
        """Runs recorded as queued but missing from queue.json (a crash between the two
        writes) join the end, in memory only: loading never writes."""
        for run_id in sorted(queued_run_ids):
            if run_id not in self.order:
                self.order.append(run_id)
        if self.order and not self.paused:
            self.pause("paused at console start: start the queue to continue")

    def to_json(self) -> dict[str, Any]:
        return {
            "run_ids": list(self.order),
            "paused": self.paused,
            "pause_reason": self.pause_reason,
            "stop_on_failure": self.stop_on_failure,
        }
