"""RunConfig: the settings of one run, resolved as defaults < YAML < command line / form.

All knowledge of individual settings lives in fields.py; this module only applies
the registry: coercion by type, validation with a fix hint per problem, YAML that
round-trips, the argparse bridge and the config hash that guards --resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training.contract.field_values import LINE_LISTS, check_bounds, coerce
from training.contract.fields import (
    FIELDS,
    FIELDS_BY_NAME,
    IGNORED_MLX_LM_KEYS,
    MLX_LM_ALIASES,
    FieldSpec,
)
from training.contract.hosts import HostPlan, HostsError, check_env, check_python, host_plan
from training.contract.limits import (
    MAX_YAML_ALIASES,
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
)
from training.contract.model_facts import full_on_quantized, quantization, read_model_config
from training.contract.sources import Source, data_sources

DEFAULT_ITERS = 1000
# Fields added after checkpoints were written: hashed only when set to something else than
# their default, so a run from before them still resumes (config_hash).
HASHED_WHEN_SET = ("text_field",)
DEFAULT_LORA_LAYERS = 16  # mlx-lm's default for lora/dora
BUDGET_FIELDS = ("iters", "epochs", "train_tokens")


class ConfigError(ValueError):
    """Bad input: every problem found, each with the field it concerns."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass(frozen=True)
class FieldError:
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "message": self.message}


class _Loader(yaml.SafeLoader):
    """The YAML loader of every config: mlx-lm's files read as mlx-lm reads them, and a
    hostile file refused (a ComposerError or ConstructorError, so a ConfigError) before it
    can take memory or crash a reader:

    - nesting deeper than MAX_YAML_DEPTH (PyYAML's composer recurses once per level);
    - more than MAX_YAML_ALIASES aliases, or a document that expands to more than
      MAX_YAML_NODES values through them ("billion laughs": each alias is a reference, but
      whatever walks the result, a JSON encoder or a YAML dump, walks every copy);
    - an alias inside the node it names (`&m [*m]`: a structure that contains itself);
    - any tag but the plain ones (null, bool, int, float, str, seq, map): `!!binary`,
      `!!set`, `!!omap`, `!!pairs`, `!!python/...` and custom `!tags` build values no
      config has and no JSON encoder takes. Timestamps stay text.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0
        self._open_anchors: set[str] = set()  # anchors whose node is being composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            mark: Any = event.start_mark
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.composer.ComposerError(
                    None, None, f"more than {MAX_YAML_ALIASES} aliases (*name)", mark
                )
            if event.anchor in self._open_anchors:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"the alias *{event.anchor} is inside the node it names (a value that "
                    "contains itself)",
                    mark,
                )
            return super().compose_node(parent, index)
        if self._depth >= MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark
            )
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor:
            self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor:
                self._open_anchors.discard(anchor)

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Values and depth of the document with every alias expanded (an alias is the same
    node object as its anchor; each node is measured once)."""
    measured: dict[int, tuple[int, int]] = {}

    def measure(node: yaml.Node) -> tuple[int, int]:
        known = measured.get(id(node))
        if known is not None:
            return known
        size, depth = 1, 1
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            child_size, child_depth = measure(child)
            size += child_size
            depth = max(depth, child_depth + 1)
            if size > MAX_YAML_NODES or depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"the document expands to more than {MAX_YAML_NODES} values or "
                    f"{MAX_YAML_DEPTH} levels through its aliases",
                    node.start_mark,
                )
        measured[id(node)] = (size, depth)
        return size, depth

    measure(root)


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None,
        None,
        f"the tag {node.tag} is not allowed in a config (plain values, lists and mappings only)",
        node.start_mark,
    )


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_PLAIN_TAGS = {
    f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "seq", "map")
}
_Loader.yaml_constructors = {
    tag: construct
    for tag, construct in yaml.SafeLoader.yaml_constructors.items()
    if tag in _PLAIN_TAGS
}
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)
_Loader.add_constructor(None, _refuse_tag)
# PyYAML reads `1e-5` as a string (YAML 1.1 wants a dot); read it as a float, as mlx-lm does.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# -- the config ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """Every field of the registry as a typed attribute (a dotted name's dots become
    underscores: `lora_parameters.rank` is `lora_parameters_rank`), so mypy catches a
    misspelt setting. tests/contract/test_config.py holds the attributes against the
    registry: the same names in the same order, each typed for its field's type.

    Build one with `RunConfig.from_values` (registry names, defaults filled in) or
    `build_config` (merged, coerced and validated); `get(name)` reads by registry name.
    """

    model: str
    fine_tune_type: str
    num_layers: int | None
    lora_parameters_rank: int
    lora_parameters_scale: float
    lora_parameters_dropout: float
    lora_parameters_keys: list[str] | None
    train_embeddings: bool
    embedding_lr_scale: float
    dtype: str
    trust_remote_code: bool
    init_from: str | None
    init_checkpoint: str | None
    data: str | list[dict[str, Any]]
    max_seq_length: int
    valid_data: str | None
    val_fraction: float
    eval_sets: dict[str, str] | None
    text_field: str
    iters: int | None
    epochs: float | None
    train_tokens: int | None
    batch_size: int
    learning_rate: float
    lr_schedule: str | dict[str, Any]
    warmup_steps: int
    warmup_init: float
    min_learning_rate: float
    decay_fraction: float
    decay_steps: int | None
    decay_shape: str
    optimizer: str
    weight_decay: float
    optimizer_config: dict[str, Any] | None
    grad_accumulation_steps: int
    grad_clip: float
    grad_checkpoint: bool
    seed: int
    clear_cache_threshold: int
    loss_spike_factor: float
    steps_per_report: int
    steps_per_eval: int
    val_batches: int
    report_to: list[str] | None
    project_name: str | None
    sample_prompts: list[str] | None
    sample_max_tokens: int
    save_every: int
    keep_checkpoints: int
    keep_best: bool
    distributed_hosts: list[str] | None
    distributed_hostfile: str | None
    distributed_backend: str
    distributed_python: str | None
    distributed_env: dict[str, str] | None
    distributed_port: int

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> RunConfig:
        """From {registry name: value}; a missing field takes its registry default."""
        return cls(**{f.attr: values.get(f.name, f.default) for f in FIELDS})

    def get(self, name: str) -> Any:
        """A value by registry name (`lora_parameters.rank`)."""
        return getattr(self, FIELDS_BY_NAME[name].attr)

    def to_dict(self) -> dict[str, Any]:
        """Flat {registry name: value}, every field present."""
        return {f.name: getattr(self, f.attr) for f in FIELDS}

    def to_nested(self) -> dict[str, Any]:
        """YAML/JSON shape: dotted names become nested mappings (mlx-lm's layout)."""
        out: dict[str, Any] = {}
        for spec in FIELDS:
            node = out
            *parents, leaf = spec.yaml_path
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = getattr(self, spec.attr)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_nested(), sort_keys=False, default_flow_style=False)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some attributes changed (by attribute name)."""
        return dataclasses.replace(self, **changes)

    # -- derived values (the stored config keeps None = "not given") --

    @property
    def effective_num_layers(self) -> int:
        if self.num_layers is None:
            return -1 if self.fine_tune_type == "full" else DEFAULT_LORA_LAYERS
        return int(self.num_layers)

    @property
    def effective_iters(self) -> int | None:
        """Steps when the budget is in steps; None when epochs or tokens decide it."""
        if self.epochs is not None or self.train_tokens is not None:
            return None
        return self.iters or DEFAULT_ITERS

    def lora_parameters(self) -> dict[str, Any]:
        """mlx-lm's `lora_parameters` mapping for linear_to_lora_layers."""
        out: dict[str, Any] = {
            "rank": self.lora_parameters_rank,
            "scale": self.lora_parameters_scale,
            "dropout": self.lora_parameters_dropout,
        }
        if self.lora_parameters_keys:
            out["keys"] = list(self.lora_parameters_keys)
        return out

    def sources(self) -> list[Source]:
        """The training data as weighted sources (one, for a plain path)."""
        return data_sources(self.data)

    def config_hash(self) -> str:
        """Hash of everything a resume must keep unchanged (fields not marked resumable)."""
        fixed = {
            f.name: getattr(self, f.attr)
            for f in FIELDS
            if not f.resumable
            and not (f.name in HASHED_WHEN_SET and getattr(self, f.attr) == f.default)
        }
        blob = json.dumps(fixed, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def resume_differences(self, other: RunConfig) -> list[str]:
        """Names of non-resumable fields whose values differ."""
        return [
            f.name
            for f in FIELDS
            if not f.resumable and getattr(self, f.attr) != getattr(other, f.attr)
        ]


# -- loading --------------------------------------------------------------------------------


def flatten(raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[FieldError], list[str]]:
    """Nested YAML/JSON keys → field names. Returns (values, errors, warnings)."""
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    warnings: list[str] = []
    for key, value in raw.items():
        key = str(key)
        if key in FIELDS_BY_NAME:
            values[key] = value
        elif key in MLX_LM_ALIASES:  # the field itself, given too, wins
            values.setdefault(MLX_LM_ALIASES[key], value)
        elif key in IGNORED_MLX_LM_KEYS:
            warnings.append(f"ignoring mlx-lm setting '{key}': {IGNORED_MLX_LM_KEYS[key]}")
        elif any(f.startswith(key + ".") for f in FIELDS_BY_NAME):
            if value is None:
                continue
            if not isinstance(value, Mapping):
                errors.append(FieldError(key, "expected a mapping"))
                continue
            for sub, sub_value in value.items():
                name = f"{key}.{sub}"
                if name in FIELDS_BY_NAME:
                    values[name] = sub_value
                else:
                    known = ", ".join(f.split(".", 1)[1] for f in FIELDS_BY_NAME if "." in f)
                    errors.append(FieldError(name, f"unknown setting; known keys: {known}"))
        else:
            errors.append(FieldError(key, f"unknown setting{_suggest(key)}"))
    return values, errors, warnings


def _suggest(key: str) -> str:
    import difflib

    if len(key) > 64:  # no setting's name is that long (and difflib is quadratic)
        return ""
    close = difflib.get_close_matches(key, list(FIELDS_BY_NAME), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a config file into its raw mapping; ConfigError on unreadable or non-mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([FieldError("config", f"file not found: {path}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([FieldError("config", f"cannot read {path}: {exc}")]) from None
    return parse_yaml_text(text, source=str(path))


def parse_yaml_text(text: str, source: str | None = None) -> dict[str, Any]:
    """Parse YAML text (a file's, or uploaded in the console) into a raw mapping."""
    where = f" in {source}" if source else ""
    if len(text) > MAX_YAML_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
        raise ConfigError(
            [FieldError("config", f"the YAML{where} is over {MAX_YAML_BYTES // 1024} KB")]
        )
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([FieldError("config", f"invalid YAML{where}: {exc}")]) from None
    except ValueError as exc:  # a value its tag cannot hold: an int of 5000 digits, ...
        raise ConfigError([FieldError("config", f"invalid YAML{where}: {exc}")]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        what = source or "YAML"
        raise ConfigError([FieldError("config", f"{what} must hold a mapping of settings")])
    return raw


def build_config(
    *layers: Mapping[str, Any], check_paths: bool = False, base_dir: Path | None = None
) -> tuple[RunConfig, list[str]]:
    """Merge layers (lowest precedence first; each nested or flat), coerce and validate.

    A value of None in a layer means "not given" and never overrides a lower layer.
    Raises ConfigError listing every problem; returns the config and warnings.
    """
    merged: dict[str, Any] = {}
    errors: list[FieldError] = []
    warnings: list[str] = []
    for layer in layers:
        values, errs, warns = flatten(layer)
        errors += errs
        warnings += warns
        for k, v in values.items():
            if v is not None and not (isinstance(v, str) and v.strip() == ""):
                merged[k] = v
    coerced: dict[str, Any] = {}
    for name, value in merged.items():
        spec = FIELDS_BY_NAME[name]
        try:
            coerced[name] = coerce(spec, value)
        except ValueError as exc:
            errors.append(FieldError(name, f"{exc}. {_hint(spec)}"))
    config = RunConfig.from_values(coerced)
    errors += validate(
        config, check_paths=check_paths, base_dir=base_dir, skip=set(e.field for e in errors)
    )
    if errors:
        raise ConfigError(errors)
    return config, warnings


def _hint(spec: FieldSpec) -> str:
    """The first sentence of the field's help: what it is, so the fix is obvious."""
    return re.split(r"(?<=[.:])\s", spec.help, maxsplit=1)[0].rstrip(":")


def validate(
    config: RunConfig,
    *,
    check_paths: bool = False,
    base_dir: Path | None = None,
    skip: Iterable[str | None] = (),
) -> list[FieldError]:
    """Every problem with a config, each naming its field and how to fix it."""
    errors: list[FieldError] = []
    skipped = set(skip)
    values = config.to_dict()
    for spec in FIELDS:
        if spec.name in skipped:
            continue
        value = values[spec.name]
        if spec.required and value is None:
            errors.append(FieldError(spec.name, f"is required. {_hint(spec)}"))
            continue
        problem = check_bounds(spec, value)
        if problem:
            errors.append(FieldError(spec.name, problem))
    budget = [b for b in BUDGET_FIELDS if values[b] is not None]
    if len(budget) > 1:
        errors.append(
            FieldError(
                budget[1],
                f"give only one of {', '.join(BUDGET_FIELDS)} (got {' and '.join(budget)})",
            )
        )
    n_layers = values["num_layers"]
    if n_layers is not None and n_layers == 0:
        errors.append(FieldError("num_layers", "must be at least 1, or -1 for all layers"))
    errors += [
        e
        for e in _check_distributed(config, check_paths, base_dir or Path.cwd())
        if e.field not in skipped
    ]
    if "data" not in skipped and "eval_sets" not in skipped:
        taken = {s.name for s in config.sources()[1:]}
        clash = sorted(taken & set(config.eval_sets or {}))
        if clash:
            errors.append(
                FieldError(
                    "eval_sets",
                    f"{', '.join(clash)} names a data source too (a source is validated on "
                    "its own held-out documents); rename the set or the source",
                )
            )
    if values["train_embeddings"] and values["fine_tune_type"] not in ("lora", "dora"):
        errors.append(
            FieldError(
                "train_embeddings",
                "only applies to lora/dora runs: a full run already trains the embeddings "
                "and the head with every weight (num_layers empty or -1); turn it off, or "
                "choose lora or dora",
            )
        )
    if check_paths:
        errors += [
            e for e in _check_paths(config, base_dir or Path.cwd()) if e.field not in skipped
        ]
    return errors


def distributed_plan(config: RunConfig, base_dir: Path) -> HostPlan | None:
    """How mlx.launch runs this config (hosts by rank, backend, environment, Python,
    port); None for one process on this machine. A hostfile is read (relative to
    `base_dir`). HostsError when the settings cannot be launched."""
    hostfile = config.distributed_hostfile
    return host_plan(
        config.distributed_hosts,
        resolve_path(hostfile, base_dir) if hostfile else None,
        config.distributed_backend,
        config.distributed_env,
        config.distributed_python,
        config.distributed_port,
    )


def _check_distributed(config: RunConfig, check_paths: bool, base_dir: Path) -> list[FieldError]:
    """The `distributed` settings: a host list (or, with the path checks, a hostfile) that
    mlx.launch can start, an environment it can pass on, and a batch the hosts share."""
    errors: list[FieldError] = []
    for name, value in (config.distributed_env or {}).items():
        try:
            check_env(name, value)
        except HostsError as exc:
            errors.append(FieldError("distributed.env", str(exc)))
    if config.distributed_python:
        try:
            check_python(config.distributed_python)
        except HostsError as exc:
            errors.append(FieldError("distributed.python", str(exc)))
    if config.distributed_hosts and config.distributed_hostfile:
        errors.append(FieldError("distributed.hostfile", "give the hosts or a hostfile, not both"))
    if errors or (config.distributed_hostfile and not check_paths):
        return errors
    try:
        plan = distributed_plan(config, base_dir)
    except HostsError as exc:
        field = "distributed.hostfile" if config.distributed_hostfile else "distributed.hosts"
        return [FieldError(field, str(exc))]
    if plan is not None and config.batch_size % plan.world:
        errors.append(
            FieldError(
                "batch_size",
                f"{config.batch_size} sequences cannot be shared by {plan.world} hosts: "
                f"give a multiple of {plan.world}",
            )
        )
    return errors


def resolve_path(value: str, base_dir: Path) -> Path:
    # os.path's expanduser leaves `~nosuchuser` as it is; pathlib's raises RuntimeError.
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base_dir / p


def looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", value))


def _check_paths(config: RunConfig, base_dir: Path) -> list[FieldError]:
    """Cheap filesystem checks (no MLX): the model and data paths exist and look right."""
    errors: list[FieldError] = []
    model = config.model
    if model:
        path = resolve_path(model, base_dir)
        kind = _probe(path)
        if isinstance(kind, FieldError):
            errors.append(FieldError("model", kind.message))
        elif kind == "dir":
            if not (path / "config.json").is_file():
                errors.append(FieldError("model", f"{path} has no config.json: not a model folder"))
            else:
                errors += _check_model_config(config, path)
        elif kind == "file":
            errors.append(FieldError("model", f"{path} is a file; give the model's folder"))
        elif not looks_like_hub_id(model):
            errors.append(
                FieldError(
                    "model",
                    f"no model folder at {path}; give a local folder with config.json "
                    "and weights (or a Hugging Face id like org/name with internet)",
                )
            )
    many = len(config.sources()) > 1
    paths = [("data", s.path, f"source '{s.name}': " if many else "") for s in config.sources()]
    if config.valid_data:
        paths.append(("valid_data", config.valid_data, ""))
    for name, value, label in paths:
        kind = _probe(resolve_path(value, base_dir))
        if isinstance(kind, FieldError):
            errors.append(FieldError(name, label + kind.message))
        elif kind is None:
            errors.append(
                FieldError(
                    name,
                    f"{label}not found: {resolve_path(value, base_dir)}; give a text "
                    "file, a folder of text files or an mlx-lm data folder",
                )
            )
    for set_name, value in (config.eval_sets or {}).items():
        kind = _probe(resolve_path(value, base_dir))
        if isinstance(kind, FieldError):
            errors.append(FieldError("eval_sets", f"set '{set_name}': {kind.message}"))
        elif kind is None:
            errors.append(
                FieldError(
                    "eval_sets", f"set '{set_name}': not found: {resolve_path(value, base_dir)}"
                )
            )
    return errors


def _probe(path: Path) -> str | None | FieldError:
    """ "dir", "file", None (nothing there) or why the path cannot be looked at (a name the
    file system refuses, a symlink loop, no permission)."""
    try:
        if path.is_dir():
            return "dir"
        return "file" if path.exists() else None
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return FieldError(None, f"cannot look at {path}: {why}")


def _check_model_config(config: RunConfig, model_dir: Path) -> list[FieldError]:
    """What the model folder's config.json rules out: a sequence over its positions, and
    full fine-tuning of quantized weights."""
    try:
        model_cfg = read_model_config(model_dir)
    except (OSError, ValueError) as exc:
        return [FieldError("model", f"cannot read {model_dir / 'config.json'}: {exc}")]
    errors = []
    limit = model_cfg.get("max_position_embeddings")
    if isinstance(limit, int) and config.max_seq_length > limit:
        errors.append(
            FieldError(
                "max_seq_length",
                f"{config.max_seq_length} is over the model's limit of {limit} tokens "
                f"(max_position_embeddings); use at most {limit}",
            )
        )
    quant = quantization(model_cfg, model_dir)
    if config.fine_tune_type == "full" and quant is not None:
        errors.append(FieldError("fine_tune_type", full_on_quantized(config.model, quant)))
    return errors


# -- command line ---------------------------------------------------------------------------


def add_field_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field; every default is None so 'not given' never overrides YAML."""
    groups = {}
    for spec in FIELDS:
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(f"{spec.group} settings")
        group = groups[spec.group]
        kwargs: dict[str, Any] = {"dest": spec.name, "default": None, "help": spec.help}
        if spec.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif spec.name == "eval_sets":
            kwargs.update(action="append", metavar="NAME=PATH")
        elif spec.name == "data":  # one --data per source
            kwargs.update(action="append", metavar="PATH|path=P,weight=W,name=N")
        elif spec.name in LINE_LISTS:  # one value per flag: a prompt may hold commas
            kwargs.update(action="append", metavar="TEXT")
        else:
            kwargs["metavar"] = spec.type.upper() if spec.choices is None else None
            if spec.choices is not None and spec.type == "choice":
                kwargs["choices"] = list(spec.choices)
        group.add_argument(spec.flag, **kwargs)


def cli_values(namespace: argparse.Namespace) -> dict[str, Any]:
    """The field values given on the command line (flat names, None dropped)."""
    return {
        spec.name: getattr(namespace, spec.name)
        for spec in FIELDS
        if getattr(namespace, spec.name, None) is not None
    }


def load_config_file(path: str | Path) -> RunConfig:
    """Read a config.yaml written by to_yaml() (a run folder's), strictly."""
    config, _ = build_config(read_yaml(path))
    return config
