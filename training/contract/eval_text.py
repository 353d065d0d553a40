"""The text behind a run's named held-out set, as the trainer chose it: `val` (its
validation data) or an extra eval set. No MLX: the console checks a perplexity request
with it, the exporter finds the text to compare a quantized export on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.layout import RunPaths
from training.contract.model_source import SourceError, resolve_run_path, run_config

VAL = "val"


@dataclass(frozen=True)
class EvalText:
    """A corpus path and, for a validation split held out of the training corpus, the
    fraction (the trainer's split, contract/corpus.py, picks the documents)."""

    path: Path
    label: str = VAL
    holdout_fraction: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The keys a perplexity job spec carries (training/evaluate/worker.py)."""
        out: dict[str, Any] = {"data": str(self.path), "data_label": self.label}
        if self.holdout_fraction is not None:
            out["holdout_fraction"] = self.holdout_fraction
        return out


def run_eval_text(run: RunPaths, workspace_root: Path, name: str = VAL) -> EvalText:
    """`val` (the run's validation data: valid_data, else an mlx-lm folder's valid.jsonl,
    else `val_fraction` of the corpus held out) or the extra eval set `name`; relative
    paths resolve against `workspace_root`. SourceError (field `data`) when there is none."""
    config = run_config(run)
    if name == VAL:
        if config.get("valid_data"):
            return EvalText(resolve_run_path(str(config["valid_data"]), workspace_root))
        data = resolve_run_path(str(config.get("data") or ""), workspace_root)
        if (data / "valid.jsonl").is_file():
            return EvalText(data)
        fraction = config.get("val_fraction", 0.05)
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or fraction <= 0:
            raise SourceError(f"run {run.run_id} has no validation set (val_fraction 0)", "data")
        return EvalText(data, VAL, float(fraction))
    sets = config.get("eval_sets") or {}
    if not isinstance(sets, dict) or name not in sets:
        known = ", ".join([VAL, *sorted(sets if isinstance(sets, dict) else {})])
        raise SourceError(f"run {run.run_id} has no eval set {name!r}; one of: {known}", "data")
    return EvalText(resolve_run_path(str(sets[name]), workspace_root), name)
