"""Values of one field: coercion by the field's type, and its bounds.

A value may come from YAML, JSON, a form (always text) or the command line; each becomes
the field's type here, or a ValueError that says what was expected.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from training.contract.fields import FieldSpec
from training.contract.limits import MAX_PATH_CHARS, has_lone_surrogate, path_problem
from training.contract.sources import coerce_sources

# List fields whose items are free text (prompts): one per line in a form, kept exactly.
LINE_LISTS = ("sample_prompts",)
MAX_LINE_ITEMS = 32
MAX_LINE_CHARS = 4096

# mlx.optimizers.schedulers a YAML `lr_schedule` mapping may name (what build_schedule calls).
MLX_LM_SCHEDULES = ("cosine_decay", "linear_schedule", "exponential_decay", "step_decay")


def coerce(spec: FieldSpec, value: Any) -> Any:
    """Turn a YAML, JSON, form or CLI value into the field's type; ValueError says why."""
    if value is None or (isinstance(value, str) and value.strip() == "" and spec.type != "str"):
        return None
    kind = spec.type
    if kind in ("str", "path"):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("expected text")
        text = str(value)
        problem = path_problem(text) if kind == "path" else None
        if problem is None and len(text) > MAX_PATH_CHARS:
            problem = f"longer than {MAX_PATH_CHARS} characters"
        if problem is None and has_lone_surrogate(text):
            problem = "contains a lone surrogate (\\ud800-\\udfff): not valid text"
        if problem:
            raise ValueError(problem)
        return text.strip() if kind == "path" else text
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("false", "no", "off", "0"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError("expected true or false")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError("expected a whole number")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
            except ValueError:
                raise ValueError(f"expected a whole number, got {_shown(value)}") from None
            if f.is_integer():
                return int(f)
        raise ValueError(f"expected a whole number, got {_shown(value)}")
    if kind == "float":
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {_shown(value)}") from None
        if not math.isfinite(f):
            raise ValueError("expected a finite number")
        return f
    if kind == "choice":
        text = str(value).strip().lower()
        if text not in spec.choices:  # type: ignore[operator]
            raise ValueError(f"must be one of {', '.join(spec.choices or ())}, got {_shown(value)}")
        return text
    if kind == "list" and spec.name in LINE_LISTS:
        return _coerce_lines(value)
    if kind == "list":
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
        elif isinstance(value, (list, tuple)):
            items = [str(v).strip() for v in value]
        else:
            raise ValueError("expected a list or comma-separated text")
        if spec.choices is not None:
            return _choices_list(spec, [v.lower() for v in items if v])
        return [v for v in items if v] or None
    if kind == "dict":
        return _coerce_dict(spec, value)
    if kind == "schedule":
        return _coerce_schedule(spec, value)
    if kind == "sources":
        return coerce_sources(value)
    raise AssertionError(f"unknown field type {kind}")


def _choices_list(spec: FieldSpec, items: list[str]) -> list[str] | None:
    """A list whose items are choices (report_to): each known, each once, in order."""
    choices = [str(c) for c in spec.choices or ()]
    unknown = [item for item in items if item not in choices]
    if unknown:
        raise ValueError(
            f"unknown value {_shown(unknown[0])}: each must be one of {', '.join(choices)} "
            "(comma-separated)"
        )
    return list(dict.fromkeys(items)) or None


def _coerce_lines(value: Any) -> list[str] | None:
    """Free text items (prompts): a list, or text with one item per line; kept as written
    (a prompt's trailing space matters to its tokens), empty items dropped."""
    if isinstance(value, str):
        items = value.split("\n")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("expected a list, or text with one item per line")
    out = []
    for item in items:
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise ValueError(f"expected text, got {_shown(item)}")
        text = str(item).rstrip("\r") if isinstance(item, str) else str(item)
        if not text.strip():
            continue
        if len(text) > MAX_LINE_CHARS:
            raise ValueError(f"an item is longer than {MAX_LINE_CHARS} characters")
        if has_lone_surrogate(text) or "\x00" in text:
            raise ValueError("an item holds a NUL or a lone surrogate: not valid text")
        out.append(text)
    if len(out) > MAX_LINE_ITEMS:
        raise ValueError(f"at most {MAX_LINE_ITEMS} items, got {len(out)}")
    return out or None


def _coerce_dict(spec: FieldSpec, value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON: {exc.msg}") from None
        else:  # NAME=VALUE lines or comma-separated pairs, as the form and CLI send them
            value = [p for p in re.split(r"[\n,]", text) if p.strip()]
    if isinstance(value, (list, tuple)):
        pairs: dict[str, Any] = {}
        for item in value:
            name, sep, rest = str(item).partition("=")
            if not sep or not name.strip() or not rest.strip():
                raise ValueError(f"expected NAME=VALUE, got {_shown(item)}")
            pairs[name.strip()] = rest.strip()
        value = pairs
    if not isinstance(value, Mapping):
        raise ValueError("expected a mapping of names to values")
    if spec.name == "eval_sets":
        for name, path in value.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", str(name)):
                raise ValueError(
                    f"set name {_shown(name)} must be letters, digits, '_', '.', '-' (at most 64)"
                )
            if name in ("val", "train"):
                raise ValueError(f"set name {_shown(name)} is reserved; choose another")
            if not isinstance(path, str) or not path.strip():
                raise ValueError(f"set {_shown(name)} needs a path")
            problem = path_problem(path)
            if problem:
                raise ValueError(f"set {_shown(name)}: {problem}")
        return {str(k): str(v).strip() for k, v in value.items()} or None
    return {str(k): v for k, v in value.items()} or None


def _coerce_schedule(spec: FieldSpec, value: Any) -> str | dict[str, Any]:
    if isinstance(value, str):
        text = value.strip().lower()
        if text not in (spec.choices or ()):
            raise ValueError(
                f"must be one of {', '.join(spec.choices or ())} or an mlx-lm schedule mapping"
            )
        return text
    if not isinstance(value, Mapping):
        raise ValueError("expected a schedule name or an mlx-lm mapping {name, arguments}")
    name = value.get("name")
    if name not in MLX_LM_SCHEDULES:
        raise ValueError(f"mlx-lm schedule name must be one of {', '.join(MLX_LM_SCHEDULES)}")
    args = value.get("arguments")
    if not isinstance(args, list) or not args or not all(_is_number(a) for a in args):
        raise ValueError("mlx-lm schedule needs `arguments`: a list of numbers")
    out: dict[str, Any] = {"name": name, "arguments": [float(a) for a in args]}
    if "warmup" in value:
        if not isinstance(value["warmup"], int) or value["warmup"] < 0:
            raise ValueError("`warmup` must be a whole number >= 0")
        out["warmup"] = value["warmup"]
    if "warmup_init" in value:
        if not _is_number(value["warmup_init"]):
            raise ValueError("`warmup_init` must be a number")
        out["warmup_init"] = float(value["warmup_init"])
    extra = set(value) - {"name", "arguments", "warmup", "warmup_init"}
    if extra:
        raise ValueError(f"unknown schedule keys: {', '.join(sorted(extra))}")
    return out


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return True
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


def check_bounds(spec: FieldSpec, value: Any) -> str | None:
    if spec.type not in ("int", "float") or value is None or value in spec.special:
        return None
    lo, hi = spec.minimum, spec.maximum
    if lo is not None and (value <= lo if spec.exclusive_minimum else value < lo):
        rel = "greater than" if spec.exclusive_minimum else "at least"
        special = "".join(f" (or {k}: {v})" for k, v in spec.special.items())
        return f"must be {rel} {_fmt(lo)}{special}, got {_fmt(value)}"
    if hi is not None and value > hi:
        return f"must be at most {_fmt(hi)}, got {_fmt(value)}"
    return None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _shown(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut short (a message never echoes
    a megabyte back)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
