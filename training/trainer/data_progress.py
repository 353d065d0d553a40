"""Tokenization progress while a run trains: a `tokenization` event every few seconds (and
a progress line), then, once every corpus is tokenized, the completed data report (in
data_report.json and a final `tokenization` event with `done: true`).

Called from the main thread only (between batches, and while a batch waits for a shard), so
the metrics writer is never shared with the tokenizer's thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from training.contract.files import write_json_atomic
from training.contract.protocol import TOKENIZATION
from training.metrics.writer import TrainingMetricsLogger
from training.trainer.data import RunData, plan_epochs
from training.trainer.packing import Batch
from training.trainer.tokenization import Tokenization

EVENT_EVERY_S = 2.0


class DataProgress:
    def __init__(
        self,
        tokenization: Tokenization,
        data: RunData,
        labels: dict[str, str],
        rebuild_report: Callable[[], dict[str, Any]],
        total_steps: int,
        seqs_per_step: int,
    ) -> None:
        self.tokenization, self.data, self.labels = tokenization, data, labels
        self.rebuild_report = rebuild_report
        self.total_steps, self.seqs_per_step = total_steps, seqs_per_step
        self.logger: TrainingMetricsLogger | None = None
        self.report_path: Path | None = None
        self.line: Callable[[str], None] | None = None
        self.step = lambda: 0
        self.on_complete: Callable[[dict[str, Any]], None] | None = None
        self._last = 0.0
        self._final_sent = True  # until attach()

    def complete_report(self) -> dict[str, Any]:
        """The data report with every figure (every corpus is tokenized)."""
        report = self.rebuild_report()
        plan_epochs(report, self.total_steps, self.seqs_per_step)
        self.data.report = report
        if self.on_complete is not None:
            self.on_complete(report)
        return report

    def attach(
        self,
        logger: TrainingMetricsLogger | None,
        report_path: Path | None,
        line: Callable[[str], None] | None,
        step: Callable[[], int],
    ) -> None:
        """Start reporting (the run folder exists): events while tokenizing goes on."""
        self.logger, self.report_path, self.line, self.step = logger, report_path, line, step
        self._final_sent = not self.tokenization.pending

    def fields(self) -> dict[str, Any]:
        """The event's fields: overall figures and each corpus by its role's name."""
        snap = self.tokenization.snapshot()
        corpora = {self.labels.get(label, label): c for label, c in snap.pop("corpora").items()}
        return {**snap, "corpora": corpora}

    def tick(self) -> None:
        if self._final_sent:
            return
        if self.tokenization.failed() is not None:
            raise self.tokenization.failed()  # type: ignore[misc]
        now = time.monotonic()
        done = not self.tokenization.pending
        if not done and now - self._last < EVENT_EVERY_S:
            return
        self._last = now
        if self.line is not None:
            self.tokenization.say_progress(final=done)
        if self.logger is None:
            return
        if done:
            self._final_sent = True
            report = self.complete_report()
            if self.report_path is not None:
                write_json_atomic(self.report_path, report)
            self.logger.emit(TOKENIZATION, self.step(), **self.fields(), data=report)
        else:
            self.logger.emit(TOKENIZATION, self.step(), **self.fields())

    def watch(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        for batch in batches:
            self.tick()
            yield batch
