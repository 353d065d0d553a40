"""The schemas the API's declarations share (web/apispec.py): the error body, a run, the
queue, an evaluation job, ... and RunConfig, built from the field registry (FIELDS: each
setting's type, bounds, choices, default and help), so the document says what
/api/fields and build_config say.

Response schemas name the keys a client may rely on and leave room for more
(additionalProperties is open): a response gains keys without breaking a client.
"""

from __future__ import annotations

from typing import Any

from training.console.run_store import MAX_NAME_LENGTH
from training.contract.field_values import MLX_LM_SCHEDULES
from training.contract.fields import FIELDS, IGNORED_MLX_LM_KEYS, FieldSpec
from training.contract.layout import RUN_ID_RE
from training.contract.limits import MAX_PATH_CHARS, MAX_YAML_BYTES
from training.contract.protocol import RUN_STATES
from training.contract.sources import MAX_SOURCES
from web.apispec import (
    ANY_OBJECT,
    BOOLEAN,
    NUMBER,
    Schema,
    array,
    integer,
    nullable,
    obj,
    ref,
    string,
)

NULL: Schema = {"type": "null"}
TEXT: Schema = {"type": "string"}
NULLABLE_TEXT = nullable(TEXT)
NULLABLE_NUMBER = nullable(NUMBER)
NULLABLE_INTEGER = nullable({"type": "integer"})
# A run_id, job_id or cache name as a request names it (the domain checks the rest).
ID = string(255, min_length=1)
NAME = string(MAX_NAME_LENGTH, description="A run's name (white space runs become one space)")
PATH = string(MAX_PATH_CHARS, description="A path (no NUL, no lone surrogate)")
CONFIRM = {"type": "boolean", "description": "true: the person confirmed"}

PATH_PARAMETERS: dict[str, Schema] = {
    "run_id": string(128, min_length=1, description=f"A run_id ({RUN_ID_RE.pattern})"),
    "job_id": string(64, min_length=1, description="An evaluation job's id"),
}


def _field_schema(spec: FieldSpec) -> Schema:
    """One setting as JSON Schema: the values build_config accepts for it. Numbers and
    switches may also come as text (a form sends text; "1e-5" is a float)."""
    described: Schema = {"description": spec.help}
    if spec.default is not None:
        described["default"] = spec.default
    kind = spec.type
    if kind in ("str", "path"):
        return {"type": ["string", "null"], "maxLength": MAX_PATH_CHARS, **described}
    if kind == "bool":
        return {"type": ["boolean", "string", "null"], **described}
    if kind in ("int", "float"):
        number: Schema = {"type": "integer" if kind == "int" else "number"}
        if spec.minimum is not None:
            number["exclusiveMinimum" if spec.exclusive_minimum else "minimum"] = spec.minimum
        if spec.maximum is not None:
            number["maximum"] = spec.maximum
        options = [number, {"type": "string", "description": "the number as text"}, NULL]
        if spec.special:
            special = "; ".join(f"{k}: {v}" for k, v in spec.special.items())
            options.insert(1, {"enum": list(spec.special), "description": special})
        return {"anyOf": options, **described}
    if kind == "choice":
        return {"enum": [*(spec.choices or ()), None], **described}
    if kind == "list":
        item = {"type": "string"} if spec.choices is None else {"enum": list(spec.choices)}
        return {
            "anyOf": [array(item), {"type": "string", "description": "comma-separated"}, NULL],
            **described,
        }
    if kind == "dict":
        values = TEXT if spec.name == "eval_sets" else {}
        return {
            "anyOf": [
                {"type": "object", "additionalProperties": values},
                {"type": "string", "description": "NAME=VALUE lines, or a JSON object"},
                NULL,
            ],
            **described,
        }
    if kind == "sources":
        source = obj(
            {
                "path": string(MAX_PATH_CHARS, min_length=1),
                "weight": {"anyOf": [{"type": "number", "minimum": 0}, TEXT, NULL]},
                "name": nullable(string(64)),
                "text_field": nullable(string(256)),
            },
            required=["path"],
            additional=False,
            description="A source: batches draw from it in proportion to its weight",
        )
        return {
            "anyOf": [
                {"type": "string", "maxLength": MAX_PATH_CHARS, "description": "one path"},
                array(source, MAX_SOURCES),
                source,
                NULL,
            ],
            **described,
        }
    if kind == "schedule":
        mapping = obj(
            {
                "name": {"enum": list(MLX_LM_SCHEDULES)},
                "arguments": {**array(NUMBER), "minItems": 1},
                "warmup": integer(0),
                "warmup_init": NUMBER,
            },
            required=["name", "arguments"],
            additional=False,
        )
        return {"anyOf": [{"enum": list(spec.choices or ())}, mapping, NULL], **described}
    raise AssertionError(f"unknown field type {kind}")


def run_config_schema(*, partial: bool = False) -> Schema:
    """A run's settings as YAML keys (a dotted name nests: lora_parameters.rank);
    `partial`: overrides of another config (no setting required)."""
    properties: dict[str, Any] = {}
    required = []
    for spec in FIELDS:
        if "." in spec.name:
            parent, leaf = spec.name.split(".", 1)
            nested = properties.setdefault(
                parent,
                {"type": ["object", "null"], "properties": {}, "additionalProperties": False},
            )
            nested["properties"][leaf] = _field_schema(spec)
        else:
            properties[spec.name] = _field_schema(spec)
            if spec.required and not partial:
                required.append(spec.name)
    for key, why in IGNORED_MLX_LM_KEYS.items():
        properties.setdefault(key, {"description": f"mlx-lm's; accepted and ignored: {why}"})
    return {
        "type": "object",
        "description": "A run's settings (README 'Settings reference'). Any other key is an "
        "error; build_config reports every problem with its field.",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


HOST_FACTS = nullable(
    obj(
        {
            "hostname": NULLABLE_TEXT,
            "python": NULLABLE_TEXT,
            "mlx": NULLABLE_TEXT,
            "mlx_lm": NULLABLE_TEXT,
            "platform": NULLABLE_TEXT,
        },
        description="What the host's check found there",
    )
)

LAUNCH = obj(
    {
        "launcher": NULLABLE_TEXT,
        "backend": NULLABLE_TEXT,
        "hosts": array(
            obj(
                {
                    "rank": {"type": "integer"},
                    "ssh": NULLABLE_TEXT,
                    "ips": array(TEXT),
                    "facts": HOST_FACTS,
                },
                required=["rank", "ssh", "ips"],
            )
        ),
        "python": NULLABLE_TEXT,
        "port": NULLABLE_NUMBER,
        "env": array(TEXT, description="Names of the variables set for every rank"),
        "source": NULLABLE_TEXT,
    },
    description="A run on several machines: mlx.launch's backend and hosts by rank",
)

HOST_REPORT = obj(
    {
        "rank": {"type": "integer"},
        "host": TEXT,
        "ssh": TEXT,
        "ok": BOOLEAN,
        "problems": array(TEXT, description="Each problem with what to do about it"),
        "facts": HOST_FACTS,
    },
    required=["rank", "host", "ssh", "ok", "problems"],
)

RUN = obj(
    {
        "run_id": TEXT,
        "name": TEXT,
        "state": {
            "type": "string",
            "description": f"One of {', '.join(RUN_STATES)} (or `unreadable`)",
        },
        "reason": NULLABLE_TEXT,
        "created": NULLABLE_NUMBER,
        "started": NULLABLE_NUMBER,
        "ended": NULLABLE_NUMBER,
        "step": NULLABLE_NUMBER,
        "total_steps": NULLABLE_NUMBER,
        "train_loss": NULLABLE_NUMBER,
        "val_loss": NULLABLE_NUMBER,
        "last_seq": NULLABLE_INTEGER,
        "queue_position": NULLABLE_INTEGER,
        "remote": nullable(BOOLEAN),
        "cloned_from": NULLABLE_TEXT,
        "initialized_from": nullable(
            obj(
                {
                    "run_id": NULLABLE_TEXT,
                    "checkpoint": NULLABLE_TEXT,
                    "bundle": NULLABLE_TEXT,
                    "step": NULLABLE_INTEGER,
                    "path": TEXT,
                    "fine_tune_type": NULLABLE_TEXT,
                    "val_loss": NULLABLE_NUMBER,
                },
                description="The run whose weights this one started from (init_from)",
            )
        ),
        "disk_full": nullable(
            obj({"path": TEXT, "needed_bytes": NULLABLE_NUMBER, "free_bytes": NULLABLE_NUMBER})
        ),
        "launch": nullable(ref("Launch")),
    },
    required=["run_id", "name", "state"],
    description="A run; the single-run view adds pid, alive, adopted, exit, resumes, "
    "stop_requested, last, checkpoints, latest_checkpoint_step, resumable, restartable, "
    "extendable, malformed_lines",
)

QUEUE = obj(
    {
        "run_ids": array(TEXT),
        "paused": BOOLEAN,
        "pause_reason": NULLABLE_TEXT,
        "stop_on_failure": BOOLEAN,
        "active": array(TEXT),
    },
    required=["run_ids", "paused", "stop_on_failure", "active"],
)

JOB = obj(
    {
        "job_id": TEXT,
        "kind": {"enum": ["generate", "perplexity", "export"]},
        "state": TEXT,
        "started": NULLABLE_NUMBER,
        "progress": nullable(ANY_OBJECT),
        "result": nullable(ANY_OBJECT),
        "error": nullable(ANY_OBJECT),
        "exit_code": NULLABLE_INTEGER,
        "run_id": NULLABLE_TEXT,
        "last_seq": {"type": "integer"},
    },
    required=["job_id", "kind", "state"],
)

ERROR = obj(
    {
        "error": string(description="What is wrong and how to fix it"),
        "field": nullable(string(description="The input at fault")),
        "errors": array(
            obj({"field": NULLABLE_TEXT, "message": TEXT}, required=["field", "message"]),
            description="A config's problems, one per field (400 from a config)",
        ),
    },
    required=["error", "field"],
)

MODEL_REF = obj(
    {
        "run_id": string(128),
        "checkpoint": {
            "anyOf": [string(64), {"type": "integer", "minimum": 0}, NULL],
            "description": "base, final, latest, a step or step-XXXXXXXX",
        },
        "path": PATH,
    },
    description='A model: {"run_id", "checkpoint"} or {"path"} (a folder in the browse roots)',
)


def components() -> dict[str, Schema]:
    """The document's named schemas."""
    return dict(COMPONENTS)


COMPONENTS: dict[str, Schema] = {
    "Error": ERROR,
    "Run": RUN,
    "Launch": LAUNCH,
    "HostReport": HOST_REPORT,
    "Queue": QUEUE,
    "Job": JOB,
    "ModelRef": MODEL_REF,
    "RunConfig": run_config_schema(),
    "ConfigOverrides": run_config_schema(partial=True),
}


def config_input(component: str) -> Schema:
    """The config a request sends: the settings, or the text of a YAML file."""
    return {
        "anyOf": [
            ref(component),
            string(MAX_YAML_BYTES, description="The text of a config.yaml"),
        ]
    }
