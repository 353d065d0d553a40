"""The field registry: one FieldSpec per run setting.

Everything that knows about settings derives from FIELDS: the trainer's argparse
parser, YAML loading and validation (config.py), the console's /api/fields and
new-run form, and the settings reference in the README ("Settings reference").
YAML keys follow mlx-lm's `-c config.yaml` keys where the setting is the same;
a dotted name ("lora_parameters.rank") is a key nested in a YAML mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from training.contract.layout import PROJECT_ROOT

FieldType = Literal[
    "str", "path", "int", "float", "bool", "choice", "dict", "list", "schedule", "sources"
]
Importance = Literal["essential", "important", "advanced"]

GROUPS: tuple[str, ...] = (
    "model",
    "data",
    "training",
    "evaluation",
    "checkpoints",
    "distributed",
)
# The trackers `report_to` may name (training/trainer/trackers.py has one writer each).
REPORTERS: tuple[str, ...] = ("tensorboard", "wandb")


@dataclass(frozen=True)
class DependsOn:
    """A field only applies when another field's value is one of `values`."""

    field: str
    values: tuple[Any, ...]

    def holds(self, values: Mapping[str, Any]) -> bool:
        return values.get(self.field) in self.values

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "values": list(self.values)}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: FieldType
    default: Any
    help: str
    group: str
    importance: Importance = "advanced"
    required: bool = False
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    # The bound is exclusive (learning_rate > 0, not >= 0).
    exclusive_minimum: bool = False
    depends_on: DependsOn | None = None
    cli: str | None = None
    # Placeholder/example shown in the form and the docs.
    example: str | None = None
    # Values outside the bounds that are still allowed (e.g. -1 for "all").
    special: Mapping[Any, str] = field(default_factory=dict)
    # May differ between a run and its resume (budget, intervals, retention, memory-only
    # switches); every other field is part of the config hash that --resume checks.
    resumable: bool = False

    @property
    def flag(self) -> str:
        return self.cli or "--" + self.name.replace(".", "-").replace("_", "-")

    @property
    def attr(self) -> str:
        """The RunConfig attribute: the name with its dots as underscores."""
        return self.name.replace(".", "_")

    @property
    def yaml_path(self) -> tuple[str, ...]:
        return tuple(self.name.split("."))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "default": self.default,
            "help": self.help,
            "group": self.group,
            "importance": self.importance,
            "required": self.required,
            "flag": self.flag,
            "depends_on": self.depends_on.to_json() if self.depends_on else None,
            "resumable": self.resumable,
        }
        if self.choices is not None:
            out["choices"] = list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
            out["exclusive_minimum"] = self.exclusive_minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.example is not None:
            out["example"] = self.example
        if self.special:
            out["special"] = {str(k): v for k, v in self.special.items()}
        return out


_LORA = DependsOn("fine_tune_type", ("lora", "dora"))
_WSD = DependsOn("lr_schedule", ("wsd",))

# fmt: off
FIELDS: tuple[FieldSpec, ...] = (
    # -- model ------------------------------------------------------------------------------
    FieldSpec(
        "model", "path", None,
        "Model to continue pre-training: a local MLX or Hugging Face model folder "
        "(or a Hugging Face id on a machine with internet).",
        "model", "essential", required=True, example="models/demo-tiny",
    ),
    FieldSpec(
        "fine_tune_type", "choice", "full",
        "What to train: every weight of the chosen layers (full), or low-rank adapters "
        "(lora, dora) on a frozen base.",
        "model", "essential", choices=("full", "lora", "dora"),
    ),
    FieldSpec(
        "num_layers", "int", None,
        "How many transformer blocks to train, counted from the last. Empty means all "
        "blocks for full and 16 for lora/dora (mlx-lm's default); -1 means all.",
        "model", "important", minimum=1, special={-1: "all layers"},
    ),
    FieldSpec(
        "lora_parameters.rank", "int", 8,
        "Rank of the LoRA/DoRA adapters: higher learns more and costs more memory.",
        "model", "important", minimum=1, maximum=1024, depends_on=_LORA, cli="--lora-rank",
    ),
    FieldSpec(
        "lora_parameters.scale", "float", 20.0,
        "Scale applied to the adapter's output (mlx-lm's `scale`, not `alpha`).",
        "model", "advanced", minimum=0, exclusive_minimum=True, depends_on=_LORA,
        cli="--lora-scale",
    ),
    FieldSpec(
        "lora_parameters.dropout", "float", 0.0,
        "Dropout on the adapter's input during training.",
        "model", "advanced", minimum=0, maximum=0.9, depends_on=_LORA, cli="--lora-dropout",
    ),
    FieldSpec(
        "lora_parameters.keys", "list", None,
        "Module paths to adapt inside each block (e.g. self_attn.q_proj). Empty means "
        "every linear layer.",
        "model", "advanced", depends_on=_LORA, cli="--lora-keys",
        example="self_attn.q_proj,self_attn.v_proj",
    ),
    FieldSpec(
        "train_embeddings", "bool", False,
        "Also train the token embeddings and the output head fully (not as adapters) in a "
        "lora/dora run, at `embedding_lr_scale` times the learning rate: continued "
        "pre-training on a new domain or language often needs them. Checkpoints, final/ and "
        "exports carry them with the adapters.",
        "model", "important", depends_on=_LORA,
    ),
    FieldSpec(
        "embedding_lr_scale", "float", 0.2,
        "Multiplier of the learning rate (at every step of the schedule) for the embeddings "
        "and the head when `train_embeddings` is on; CPT recipes use 2-10x smaller than the "
        "adapters' (0.1-0.5). They get their own optimizer state, so Adam's update is exact.",
        "training", "advanced", minimum=0, maximum=10.0,
        depends_on=DependsOn("train_embeddings", (True,)),
    ),
    FieldSpec(
        "dtype", "choice", "auto",
        "Precision of the trained weights: auto keeps the model's own; float32 is the "
        "safest for full fine-tuning on the CPU.",
        "model", "advanced", choices=("auto", "float32", "bfloat16", "float16"),
    ),
    FieldSpec(
        "trust_remote_code", "bool", False,
        "Allow a model's own tokenizer code to run (some Hugging Face models need it).",
        "model", "advanced",
    ),
    FieldSpec(
        "init_from", "path", None,
        "Start from another run's trained weights (full) or adapter (lora/dora: training "
        "goes on in the same adapter), with a fresh optimizer and this run's own schedule: "
        "a run_id, a run folder, or an mlx-lm adapter folder or adapters.safetensors file "
        "(mlx-lm's resume_adapter_file). The run must share this run's base model and "
        "fine_tune_type.",
        "model", "important", example="20260101-120000-ab12cd",
    ),
    FieldSpec(
        "init_checkpoint", "str", None,
        "Which weights of the `init_from` run: final, latest, best (lowest validation loss) "
        "or a step (step-N). Empty: final when that run finished, else latest.",
        "model", "advanced", example="final",
    ),
    # -- data -------------------------------------------------------------------------------
    FieldSpec(
        "data", "sources", None,
        "Training corpus: a .txt/.md, .jsonl (also .jsonl.gz, .jsonl.zst), .json array or "
        ".parquet file, a folder of them (read recursively), an mlx-lm data folder "
        "(train.jsonl, valid.jsonl) or a Hugging Face dataset folder (save_to_disk, or "
        "the datasets cache's .arrow files). Or a list of sources {path, weight, name} "
        "that batches draw from in proportion to their weights (e.g. 5% general text "
        "replayed against forgetting).",
        "data", "essential", required=True, example="corpora/demo",
    ),
    FieldSpec(
        "max_seq_length", "int", 2048,
        "Tokens per training sequence. Documents are packed (joined with EOS and cut "
        "into sequences of this length), so nothing is truncated away.",
        "data", "essential", minimum=8, maximum=1_048_576,
    ),
    FieldSpec(
        "valid_data", "path", None,
        "Validation text (file or folder). Empty: valid.jsonl of an mlx-lm data folder, "
        "else `val_fraction` of the documents held out.",
        "data", "important",
    ),
    FieldSpec(
        "val_fraction", "float", 0.05,
        "Share of documents held out for validation when there is no separate "
        "validation data. 0 turns validation off.",
        "data", "important", minimum=0, maximum=0.5,
    ),
    FieldSpec(
        "eval_sets", "dict", None,
        "Extra held-out sets evaluated with the validation set, by name (e.g. a "
        "general-text sample, to watch for forgetting). One NAME=PATH per entry.",
        "data", "important", cli="--eval-set", example="general=corpora/general.txt",
    ),
    FieldSpec(
        "text_field", "str", "text",
        "The field of JSON records, or the column of Parquet and Arrow files, that holds "
        "the text (mlx-lm's `text_feature` is read as this too).",
        "data", "advanced", example="content",
    ),
    # -- training ---------------------------------------------------------------------------
    FieldSpec(
        "iters", "int", None,
        "Optimizer steps to train for. Empty: 1000, unless `epochs` or `train_tokens` "
        "sets the budget (give at most one of the three).",
        "training", "essential", minimum=1, resumable=True,
    ),
    FieldSpec(
        "epochs", "float", None,
        "Budget in passes over the training corpus (e.g. 1.5). Replaces `iters`.",
        "training", "important", minimum=0, exclusive_minimum=True, resumable=True,
    ),
    FieldSpec(
        "train_tokens", "int", None,
        "Budget in trained tokens (e.g. 5000000). Replaces `iters`.",
        "training", "important", minimum=1, resumable=True,
    ),
    FieldSpec(
        "batch_size", "int", 4,
        "Sequences per step (per accumulation micro-step). Must be divisible by the "
        "number of distributed workers.",
        "training", "essential", minimum=1, maximum=4096,
    ),
    FieldSpec(
        "learning_rate", "float", 1e-5,
        "Peak learning rate (reached after warmup).",
        "training", "essential", minimum=0, exclusive_minimum=True, maximum=1.0,
    ),
    FieldSpec(
        "lr_schedule", "schedule", "cosine",
        "Learning-rate shape after warmup: constant, cosine or linear decay to "
        "`min_learning_rate`, or wsd (warmup-stable-decay: the peak until a final decay; "
        "a run extended later decays again at its new end); an mlx-lm mapping {name, "
        "arguments, warmup, warmup_init} is also accepted in YAML.",
        "training", "important", choices=("constant", "cosine", "linear", "wsd"),
    ),
    FieldSpec(
        "warmup_steps", "int", 0,
        "Steps of linear warmup from `warmup_init` to `learning_rate` (a run that continues "
        "from another, `init_from`, re-warms its fresh optimizer this way).",
        "training", "important", minimum=0,
    ),
    FieldSpec(
        "warmup_init", "float", 0.0,
        "Learning rate the warmup starts from (mlx-lm's warmup_init): e.g. the source run's "
        "final learning rate, to re-warm from where it ended.",
        "training", "advanced", minimum=0,
    ),
    FieldSpec(
        "min_learning_rate", "float", 0.0,
        "Learning rate at the end of a cosine, linear or wsd decay.",
        "training", "advanced", minimum=0,
        depends_on=DependsOn("lr_schedule", ("cosine", "linear", "wsd")),
    ),
    FieldSpec(
        "decay_fraction", "float", 0.2,
        "Share of the run's steps spent in the wsd decay (the last 20% by default).",
        "training", "advanced", minimum=0, exclusive_minimum=True, maximum=1.0,
        depends_on=_WSD,
    ),
    FieldSpec(
        "decay_steps", "int", None,
        "Steps of the wsd decay; replaces `decay_fraction` (a fixed decay length stays the "
        "same when the run is extended).",
        "training", "advanced", minimum=1, depends_on=_WSD,
    ),
    FieldSpec(
        "decay_shape", "choice", "1-sqrt",
        "Shape of the wsd decay from the peak to `min_learning_rate`: 1-sqrt (Hägele et "
        "al. 2024), linear or cosine.",
        "training", "advanced", choices=("1-sqrt", "linear", "cosine"), depends_on=_WSD,
    ),
    FieldSpec(
        "optimizer", "choice", "adamw",
        "Optimizer: adamw (decoupled weight decay, the CPT standard), adam, sgd, adafactor.",
        "training", "important", choices=("adamw", "adam", "sgd", "adafactor"),
    ),
    FieldSpec(
        "weight_decay", "float", 0.01,
        "Weight decay for adamw (and sgd).",
        "training", "advanced", minimum=0, maximum=1.0,
        depends_on=DependsOn("optimizer", ("adamw", "sgd")),
    ),
    FieldSpec(
        "optimizer_config", "dict", None,
        "Extra keyword arguments per optimizer, as in mlx-lm (e.g. {adamw: {betas: "
        "[0.9, 0.95]}}); they override the fields above.",
        "training", "advanced",
    ),
    FieldSpec(
        "grad_accumulation_steps", "int", 1,
        "Micro-batches whose gradients are summed before each optimizer update.",
        "training", "important", minimum=1, maximum=1024,
    ),
    FieldSpec(
        "grad_clip", "float", 1.0,
        "Clip the global gradient norm to this value; 0 turns clipping off.",
        "training", "advanced", minimum=0,
    ),
    FieldSpec(
        "grad_checkpoint", "bool", False,
        "Recompute activations in the backward pass: less memory, about 30% slower "
        "(the math is the same, so it may be turned on to resume a run that ran out of memory).",
        "training", "advanced", resumable=True,
    ),
    FieldSpec(
        "seed", "int", 0,
        "Seed for initialization, data order and dropout; a run is reproducible from it.",
        "training", "important", minimum=0,
    ),
    FieldSpec(
        "clear_cache_threshold", "int", 0,
        "Clear MLX's allocator cache between steps once it holds more than this many "
        "bytes (0: never).",
        "training", "advanced", minimum=0, resumable=True,
    ),
    FieldSpec(
        "loss_spike_factor", "float", 3.0,
        "Emit a loss_spike warning when a reported loss exceeds this multiple of the "
        "recent average; 0 turns the warning off.",
        "training", "advanced", minimum=0, resumable=True,
    ),
    # -- evaluation -------------------------------------------------------------------------
    FieldSpec(
        "steps_per_report", "int", 10,
        "Steps between training-loss reports (train events).",
        "evaluation", "important", minimum=1, resumable=True,
    ),
    FieldSpec(
        "steps_per_eval", "int", 200,
        "Steps between validation passes (eval events).",
        "evaluation", "important", minimum=1, resumable=True,
    ),
    FieldSpec(
        "val_batches", "int", 25,
        "Validation batches per evaluation: a fixed, bounded set, so evaluation stays "
        "cheap. -1 evaluates the whole validation set.",
        "evaluation", "advanced", minimum=1, special={-1: "whole validation set"}, resumable=True,
    ),
    FieldSpec(
        "report_to", "list", None,
        "Also log the metrics to these trackers, as mlx-lm's `report_to` (comma-separated): "
        "tensorboard writes event files into the run's tensorboard/ folder; wandb logs to "
        "Weights & Biases (files in the run's wandb/ folder; WANDB_MODE=offline logs "
        "without a network). A tracker that fails only warns: training goes on.",
        "evaluation", "important", choices=REPORTERS, example="tensorboard,wandb",
        resumable=True,
    ),
    FieldSpec(
        "project_name", "str", None,
        "The Weights & Biases project the run is logged to (mlx-lm's `project_name`); "
        "the wandb run is named after the run and keeps its run_id across resumes. Empty: "
        "mlx-cpt.",
        "evaluation", "advanced", example="my-project", resumable=True,
    ),
    FieldSpec(
        "sample_prompts", "list", None,
        "Prompts the model continues greedily at each evaluation (one per line), written as "
        "`sample` events: read what the model writes as it learns.",
        "evaluation", "important", cli="--sample-prompt", example="def parse(", resumable=True,
    ),
    FieldSpec(
        "sample_max_tokens", "int", 48,
        "Tokens generated per sample prompt (generation stops earlier at EOS).",
        "evaluation", "advanced", minimum=1, maximum=4096, resumable=True,
    ),
    # -- checkpoints ------------------------------------------------------------------------
    FieldSpec(
        "save_every", "int", 100,
        "Steps between checkpoints (a checkpoint is also written on stop and at the end).",
        "checkpoints", "important", minimum=1, resumable=True,
    ),
    FieldSpec(
        "keep_checkpoints", "int", 3,
        "How many recent checkpoints to keep; 0 keeps all.",
        "checkpoints", "advanced", minimum=0, resumable=True,
    ),
    FieldSpec(
        "keep_best", "bool", True,
        "Also keep the checkpoint with the lowest validation loss.",
        "checkpoints", "advanced", resumable=True,
    ),
    # -- distributed (issue 14: one rank per host, started by mlx.launch) --------------------
    # Where the ranks run, not what they train: the global batch is the same on any number
    # of hosts, so these may change on resume.
    FieldSpec(
        "distributed.hosts", "list", None,
        "Machines to train on, one rank each in rank order: SSH hosts reachable without a "
        "password, each as HOST=IP (the address the other hosts reach it on; an address "
        "alone is its own). Empty: one process on this machine.",
        "distributed", "important", resumable=True, cli="--hosts",
        example="mac1.local=192.168.1.11,mac2.local=192.168.1.12",
    ),
    FieldSpec(
        "distributed.hostfile", "path", None,
        "An mlx.launch hostfile (JSON, e.g. written by mlx.distributed_config for a "
        "Thunderbolt ring) instead of `hosts`.",
        "distributed", "advanced", resumable=True, cli="--hostfile",
    ),
    FieldSpec(
        "distributed.backend", "choice", "ring",
        "How the ranks talk: ring (TCP, any machines), jaccl or jaccl-ring (RDMA over "
        "Thunderbolt 5, macOS), mpi, nccl (CUDA). A hostfile that names its backend "
        "keeps it.",
        "distributed", "advanced", choices=("ring", "jaccl", "jaccl-ring", "mpi", "nccl"),
        resumable=True, cli="--backend",
    ),
    FieldSpec(
        "distributed.python", "path", None,
        "The Python to run on every host (with mlx and this project's requirements). "
        "Empty: the console's own Python, at the same path on each host.",
        "distributed", "advanced", resumable=True, cli="--host-python",
    ),
    FieldSpec(
        "distributed.env", "dict", None,
        "Environment variables for every rank, NAME=VALUE (e.g. "
        "MLX_METAL_FAST_SYNCH=1).",
        "distributed", "advanced", resumable=True, cli="--host-env",
        example="MLX_METAL_FAST_SYNCH=1",
    ),
    FieldSpec(
        "distributed.port", "int", 32323,
        "First port the ranks listen on (ring: one more per host address; jaccl and "
        "nccl: rank 0's). The console checks they are free on each host before launch.",
        "distributed", "advanced", minimum=1024, maximum=65535, resumable=True,
        cli="--host-port",
    ),
)
# fmt: on

FIELDS_BY_NAME: dict[str, FieldSpec] = {f.name: f for f in FIELDS}

# mlx-lm CONFIG_DEFAULTS keys that mean nothing here: accepted, one warning each.
# (Output always goes to the run folder; data is plain text, never chat.)
IGNORED_MLX_LM_KEYS: dict[str, str] = {
    "train": "training is what this program does",
    "test": "use `python -m training.evaluation perplexity` on the final model",
    "test_batches": "use `python -m training.evaluation perplexity` on the final model",
    "adapter_path": "adapters and weights are written to the run folder",
    "mask_prompt": "continued pre-training trains on every token",
    "config": "the config file is given with -c",
}


# mlx-lm keys read as one of ours (where the setting is the same idea).
MLX_LM_ALIASES: dict[str, str] = {
    # mlx-lm starts training from these adapter weights: a run that starts from them.
    "resume_adapter_file": "init_from",
    "text_feature": "text_field",  # the JSON field that holds the text
}


def fields_in_group(group: str) -> list[FieldSpec]:
    return [f for f in FIELDS if f.group == group]


def _default_text(spec: FieldSpec) -> str:
    if spec.default is None:
        return "—" if not spec.required else "required"
    if isinstance(spec.default, bool):
        return "true" if spec.default else "false"
    return f"`{spec.default}`"


def settings_markdown() -> str:
    """The settings reference for the README, generated from FIELDS."""
    lines: list[str] = []
    for group in GROUPS:
        lines += [f"**{group.capitalize()}**", ""]
        lines += [
            "| YAML key | CLI flag | type | default | what it does |",
            "|---|---|---|---|---|",
        ]
        for spec in fields_in_group(group):
            kind = spec.type if spec.choices is None else " \\| ".join(map(str, spec.choices))
            if spec.type == "list" and spec.choices is not None:
                kind = f"list of {kind}"
            note = spec.help.replace("|", "\\|")
            if spec.depends_on:
                dep = spec.depends_on
                note += f" *(only when `{dep.field}` is {' or '.join(map(str, dep.values))})*"
            if spec.resumable:
                note += " *(may change on resume)*"
            lines.append(
                f"| `{spec.name}` | `{spec.flag}` | {kind} | {_default_text(spec)} | {note} |"
            )
        lines.append("")
    ignored = ", ".join(f"`{k}`" for k in IGNORED_MLX_LM_KEYS)
    aliases = ", ".join(f"`{k}` is read as `{v}`" for k, v in MLX_LM_ALIASES.items())
    lines.append(
        f"mlx-lm keys accepted and ignored with a warning: {ignored}. Any other unknown key "
        f"is an error. mlx-lm's {aliases}."
    )
    return "\n".join(lines) + "\n"


README_START = "<!-- settings:start (generated by `python -m training.contract.fields`) -->"
README_END = "<!-- settings:end -->"


def update_readme(readme: str) -> str:
    """Replace the generated block of the README with the current reference."""
    head, start, rest = readme.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not start or not end:
        raise ValueError("README lacks the settings markers")
    return f"{head}{README_START}\n\n{settings_markdown()}\n{README_END}{tail}"


if __name__ == "__main__":
    readme_path = PROJECT_ROOT / "README.md"
    readme_path.write_text(update_readme(readme_path.read_text()))
    print(f"settings reference written to {readme_path}")
