"""A run's stored evaluation results: evaluations/perplexity.jsonl, appended by the
evaluation worker and read by the console's checkpoint table (DESIGN.md "Run folder
contract")."""

from __future__ import annotations

import json
from typing import Any

from training.contract.files import append_bytes
from training.contract.layout import RunPaths
from training.metrics.tailer import read_events

PERPLEXITY_FILE = "perplexity.jsonl"


def read_evaluations(run: RunPaths) -> list[dict[str, Any]]:
    """Stored perplexity results of this run (written by the evaluation worker), oldest
    first; DamagedFile when the file (or evaluations/) cannot be read safely."""
    return list(read_events(run.evaluations / PERPLEXITY_FILE, root=run.root))


def append_evaluation(run: RunPaths, record: dict[str, Any]) -> None:
    """One result per line, one write each: concurrent jobs never interleave a line. The
    run folder must exist (FileNotFoundError otherwise): a result never recreates a run
    deleted while it was measured."""
    run.evaluations.mkdir(parents=False, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    # Never through a link, never blocking on a FIFO: a result lands in this run or nowhere.
    append_bytes(run.evaluations / PERPLEXITY_FILE, line, root=run.root)
