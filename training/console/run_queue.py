"""The run queue: runs waiting to start one after another, persisted in queue.json.

Loading never writes. A queue that still holds runs when the console starts comes back
paused: only the person starts it again (the rule the old design broke).
"""

from __future__ import annotations

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

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = {"order": self.order, "stop_on_failure": self.stop_on_failure}
        write_atomic(self.path, json.dumps(blob, indent=2) + "\n")

    def __contains__(self, run_id: object) -> bool:
        return run_id in self.order

    def add(self, run_id: str) -> None:
        if run_id not in self.order:
            self.order.append(run_id)
            self.save()

    def remove(self, run_id: str) -> bool:
        if run_id not in self.order:
            return False
        self.order.remove(run_id)
        self.save()
        return True

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
        self.order = list(run_ids)
        self.save()

    def pop_next(self) -> str | None:
        if self.paused or not self.order:
            return None
        run_id = self.order.pop(0)
        self.save()
        return run_id

    def pause(self, reason: str = "paused by the person") -> None:
        self.paused, self.pause_reason = True, reason

    def resume(self) -> None:
        self.paused, self.pause_reason = False, ""

    def set_stop_on_failure(self, value: bool) -> None:
        self.stop_on_failure = value
        self.save()

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
