"""A run's training data as weighted sources: `data` is one path, or a list of sources
`{path, weight, name}` that batches draw from in proportion to their weights (replay: a
share of general text mixed back in against forgetting).

The first source is the run's main corpus: its validation is `val_loss`, and an `epochs`
budget counts its passes. Each other source NAME is validated on its own held-out
documents (`val_NAME_loss`). A source of weight 0 is validated and never trained on (the
"0% replay" run of a comparison keeps the same held-out general set as the others).

Weights are shares of the trained tokens and sum to 1; a source without a weight shares
what the others leave (so `[domain, {path: general, weight: 0.05}]` trains 95% domain).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from training.contract.limits import has_lone_surrogate, path_problem

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_NAMES = ("val", "train")
SOURCE_KEYS = ("path", "weight", "name", "text_field")
# How far the weights may sum from 1 (typed shares: 0.33 + 0.33 + 0.33 is close enough).
SUM_TOLERANCE = 0.011
MAX_SOURCES = 64


@dataclass(frozen=True)
class Source:
    name: str
    path: str
    weight: float  # this source's share of the trained tokens (the shares sum to 1)
    text_field: str | None = None  # overrides the run's text_field for this source

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "weight": self.weight, "name": self.name}
        if self.text_field is not None:
            out["text_field"] = self.text_field
        return out


def default_name(path: str) -> str:
    """A source's name from its path: the file's name without its suffixes (c.jsonl.gz: c),
    or the folder's name, cut to what a name may hold."""
    base = PurePath(path.rstrip("/") or "data").name
    stem = base.split(".")[0] or base
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-._")[:64]
    return name if name and NAME_RE.fullmatch(name) else "data"


def _parse_text(text: str) -> Any:
    """A source list as text: JSON (the form, the CLI), `path=P,weight=W,name=N` (the
    CLI's short form) or a plain path."""
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON: {exc.msg}") from None
    if stripped.startswith("path="):
        item: dict[str, str] = {}
        for pair in stripped.split(","):
            key, sep, value = pair.partition("=")
            if not sep or key.strip() not in SOURCE_KEYS:
                raise ValueError(
                    f"expected path=P,weight=W,name=N, got {pair!r} (a path with a comma: "
                    "use YAML or JSON)"
                )
            item[key.strip()] = value.strip()
        return item
    return stripped


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where}: weight must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: weight must be a number, got {value!r:.40}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: weight must be a number from 0 to 1, got {value!r:.40}")
    return number


def coerce_sources(value: Any) -> str | list[dict[str, Any]] | None:
    """`data` as given (a path, a list of paths or of {path, weight, name} mappings, JSON
    text) → one path (a lone source without a weight or name: mlx-lm's form, unchanged), or
    the list of sources with every weight and name filled in. ValueError says what is
    wrong and which source."""
    if isinstance(value, str):
        value = _parse_text(value)
        if isinstance(value, str):
            return _path(value, "") if value else None
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a path, or a list of sources {path, weight, name}")
    if not value:
        return None
    if len(value) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} sources")
    items: list[dict[str, Any]] = []
    for i, raw in enumerate(value, start=1):
        item = _parse_text(raw) if isinstance(raw, str) else raw
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, Mapping):
            raise ValueError(f"source {i}: expected a path or a mapping {{path, weight, name}}")
        unknown = sorted(set(map(str, item)) - set(SOURCE_KEYS))
        if unknown:
            raise ValueError(
                f"source {i}: unknown key {', '.join(unknown)} (known: {', '.join(SOURCE_KEYS)})"
            )
        items.append(dict(item))
    if len(items) == 1 and set(items[0]) == {"path"}:
        return _path(items[0]["path"], "")
    return [s.to_json() for s in _sources(items)]


def _path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}needs a path")
    problem = path_problem(value) or (
        "contains a lone surrogate (\\ud800-\\udfff): not valid text"
        if has_lone_surrogate(value)
        else None
    )
    if problem:
        raise ValueError(f"{where}{problem}")
    return value.strip()


def _sources(items: list[dict[str, Any]]) -> list[Source]:
    paths = [_path(item.get("path"), f"source {i}: ") for i, item in enumerate(items, start=1)]
    given = {
        i: _number(item["weight"], f"source {i + 1}")
        for i, item in enumerate(items)
        if item.get("weight") is not None and str(item["weight"]).strip() != ""
    }
    missing = [i for i in range(len(items)) if i not in given]
    total = sum(given.values())
    weights = dict(given)
    if missing:
        left = 1.0 - total
        if left <= 0:
            raise ValueError(
                f"the weights given sum to {total:g}, which leaves nothing for the "
                f"source{'s' if len(missing) > 1 else ''} without one; weights are shares "
                "of the trained tokens and sum to 1"
            )
        for i in missing:
            weights[i] = round(left / len(missing), 12)
    elif abs(total - 1.0) > SUM_TOLERANCE:
        shares = ", ".join(f"{w / total:.3g}" for w in given.values()) if total > 0 else ""
        raise ValueError(
            f"the weights sum to {total:g}; they are shares of the trained tokens and must "
            "sum to 1" + (f" (e.g. {shares})" if shares else "")
        )
    if weights[0] <= 0:
        raise ValueError(
            "source 1 has weight 0: the first source is the run's main corpus (its "
            "validation is val_loss); give it a share above 0, or list it later"
        )
    names: list[str] = []
    fields: list[str | None] = []
    for i, item in enumerate(items, start=1):
        raw_name = item.get("name")
        if raw_name is None or str(raw_name).strip() == "":
            name = default_name(paths[i - 1])
            n = 2
            while name in names or name in RESERVED_NAMES:
                name = f"{default_name(paths[i - 1])[:60]}-{n}"
                n += 1
        else:
            name = str(raw_name).strip()
            if not NAME_RE.fullmatch(name):
                raise ValueError(
                    f"source {i}: name {name!r:.70} must be letters, digits, '_', '.', '-' "
                    "(at most 64, starting with a letter or digit)"
                )
            if name in RESERVED_NAMES:
                raise ValueError(f"source {i}: the name {name!r} is reserved; choose another")
            if name in names:
                raise ValueError(f"source {i}: the name {name!r} is used twice")
        names.append(name)
        field = item.get("text_field")
        if field is not None and (not isinstance(field, str) or not field.strip()):
            raise ValueError(f"source {i}: text_field must be a field name")
        fields.append(field.strip() if isinstance(field, str) else None)
    return [
        Source(names[i], paths[i], weights[i], fields[i])
        for i in range(len(items))  # fmt: skip
    ]


def data_sources(data: str | list[dict[str, Any]] | None) -> list[Source]:
    """The sources of a normalized `data` value (coerce_sources' output)."""
    if data is None:
        return []
    if isinstance(data, str):
        return [Source(default_name(data), data, 1.0)]
    return [
        Source(str(s["name"]), str(s["path"]), float(s["weight"]), s.get("text_field"))
        for s in data
    ]


def source_eval_key(index: int, source: Source) -> str:
    """The held-out set a source's validation reports as: "val" for the first (val_loss),
    the source's name for the others (val_NAME_loss)."""
    return "val" if index == 0 else source.name
