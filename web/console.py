"""The console's long-lived objects for one app: workspace, store, manager, broadcaster.

Handlers reach them through `console()`; tests build several apps side by side, each
with its own Console in app.extensions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app

from training.console.broadcaster import Broadcaster
from training.console.browse import load_presets
from training.console.eval_jobs import EvalJobs
from training.console.manager import TrainingManager
from training.console.run_store import RunStore
from training.contract.layout import PROJECT_ROOT, Workspace


@dataclass
class Console:
    workspace: Workspace
    store: RunStore
    manager: TrainingManager
    broadcaster: Broadcaster
    browse_roots: list[Path]
    # The console's own evaluation workers (Playground, perplexity, export).
    eval_jobs: EvalJobs = field(default_factory=EvalJobs)
    # --demo: "building", "ready" or "failed: <why>"; None without --demo.
    demo_state: str | None = None
    examples_dir: Path | None = PROJECT_ROOT / "examples"
    extra: dict[str, Any] = field(default_factory=dict)

    def presets(self) -> list[dict[str, Any]]:
        presets = load_presets(self.workspace.root, self.examples_dir)
        if self.demo_state is not None:
            for preset in presets:
                if preset["name"] == "demo":
                    preset["state"] = self.demo_state
            if not any(p["name"] == "demo" for p in presets):
                presets.insert(
                    0,
                    {
                        "name": "demo",
                        "title": "Demo (being built)",
                        "config": None,
                        "state": self.demo_state,
                    },
                )
        return presets

    def close(self) -> list[str]:
        """Stop the evaluation workers (the console's helpers, gone with it) and stop
        following trainers (they keep running: a new console adopts them); returns the
        live run_ids."""
        self.eval_jobs.shutdown()
        self.broadcaster.close()
        return self.manager.close()


def console() -> Console:
    return current_app.extensions["console"]
