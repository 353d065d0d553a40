"""Where exports go, what they may replace, and which options fit which model: one set
of checks for the command line, the evaluation worker and the console (DESIGN.md "Command
lines": export). No MLX: the checks read the model folder's config.json.

An export replaces its destination folder only when it is an earlier export and only with
`overwrite`; never the workspace, its runs, the home folder or a browse root.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.contract.errors import InputError
from training.contract.layout import Workspace
from training.contract.model_facts import describe, quantization, read_model_config
from training.contract.model_source import ModelSource

# model: a folder mlx_lm.load reads; adapter: the LoRA/DoRA adapters alone; gguf: one
# float16 GGUF file (llama.cpp and friends), written by mlx-lm's GGUF writer.
FORMATS = ("model", "adapter", "gguf")
# mlx-lm's affine quantization (mlx_lm.utils.quantize_model): bits per weight, and the
# number of weights that share one scale and bias (each layer's input size must divide).
QUANTIZE_BITS = (4, 8)
GROUP_SIZES = (32, 64, 128)
DEFAULT_GROUP_SIZE = 64
# The architectures mlx-lm's GGUF writer knows (mlx_lm/fuse.py --export-gguf): the llama
# family's tensor names and attention layout.
GGUF_MODEL_TYPES = ("llama", "mistral", "mixtral")
GGUF_FILE = "ggml-model-f16.gguf"  # mlx_lm.fuse's default name
# config.json sizes that are some layer's input size (the quantized dimension).
_INPUT_SIZES = ("hidden_size", "intermediate_size", "moe_intermediate_size")

# Next to a model card, one of these makes a folder an earlier export (looks_like_export).
EXPORT_MARKERS = ("config.json", "adapter_config.json", GGUF_FILE)


class ExportError(InputError):
    """Bad export request; `field` names the input to fix."""


@dataclass(frozen=True)
class Quantization:
    """How an export is quantized (mlx-lm's affine mode)."""

    bits: int
    group_size: int = DEFAULT_GROUP_SIZE
    mode: str = "affine"

    @property
    def label(self) -> str:
        return f"{self.bits}-bit, group size {self.group_size}"

    @property
    def suffix(self) -> str:
        """What a default destination's name adds: -4bit, -8bit-g32."""
        return f"-{self.bits}bit" + (
            "" if self.group_size == DEFAULT_GROUP_SIZE else f"-g{self.group_size}"
        )

    def to_json(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "mode": self.mode}


def _whole(value: Any, field: str, allowed: Sequence[int], what: str) -> int:
    """An int from JSON, a form (text) or argparse; ExportError naming `field` otherwise."""
    number: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not float(number).is_integer() or int(number) not in allowed:
        choices = " or ".join(str(a) for a in allowed)
        raise ExportError(f"{what} must be {choices}, got {str(value)[:40]!r}", field)
    return int(number)


def parse_quantization(bits: Any, group_size: Any = None) -> Quantization | None:
    """`quantize` (bits: 4 or 8; empty: none) and `group_size` (32, 64 or 128; empty: 64)
    as a request or the command line gives them; ExportError naming the field at fault."""
    if bits is None or bits == "" or bits is False:
        if group_size not in (None, ""):
            raise ExportError(
                "group_size applies to a quantized export: give quantize too", "group_size"
            )
        return None
    value = _whole(bits, "quantize", QUANTIZE_BITS, "quantize (bits per weight)")
    if group_size in (None, ""):
        return Quantization(value)
    return Quantization(value, _whole(group_size, "group_size", GROUP_SIZES, "group_size"))


def check_export_options(fmt: str, quant: Quantization | None, source: ModelSource) -> None:
    """What a format and quantization need of the model, from its config.json (before any
    weight is loaded or any file written); ExportError naming the field to change. The
    evaluation worker checks the loaded layers once more (check_group_size)."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}", "format")
    if fmt == "adapter" and not source.lora:
        raise ExportError(
            "only LoRA/DoRA runs have an adapter to export; choose the model format", "format"
        )
    if quant is not None and fmt != "model":
        raise ExportError(
            f"only the model format is quantized here ({fmt} is not): "
            + (
                "mlx-lm writes float16 GGUF files; quantize them with llama.cpp's llama-quantize"
                if fmt == "gguf"
                else "export the adapter as it is, or the model format with quantize"
            ),
            "quantize",
        )
    if quant is None and fmt != "gguf":
        return
    try:
        config = read_model_config(source.model)
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {source.model / 'config.json'}: {exc}", "model") from exc
    if fmt == "gguf":
        model_type = config.get("model_type")
        if model_type not in GGUF_MODEL_TYPES:
            raise ExportError(
                f"GGUF export is for the llama family ({', '.join(GGUF_MODEL_TYPES)}: the "
                f"architectures mlx-lm's GGUF writer knows); this model is "
                f"{model_type or 'of no stated type'}: choose the model format",
                "format",
            )
        return
    assert quant is not None
    already = quantization(config, source.model)
    if already is not None:
        raise ExportError(
            f"the model is already quantized ({describe(already)}): export it without "
            "quantize (a LoRA/DoRA export fuses into the quantized base as mlx_lm fuse does)",
            "quantize",
        )
    check_group_size(quant.group_size, input_sizes(config))


def input_sizes(config: Mapping[str, Any]) -> dict[str, int]:
    """The layer input sizes a model's config.json states: hidden, MLP, attention output."""
    text = config.get("text_config")
    if isinstance(text, Mapping):
        config = {**text, **config}
    sizes = {k: config[k] for k in _INPUT_SIZES if _positive(config.get(k))}
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int) and _positive(heads * head_dim):
        sizes["num_attention_heads * head_dim"] = heads * head_dim
    return sizes


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_group_size(group_size: int, sizes: Mapping[str, int]) -> None:
    """Every quantized layer's input size must divide by the group size (mlx-lm leaves a
    layer that does not unquantized without a word: here it is bad input)."""
    misfits = {name: size for name, size in sizes.items() if size % group_size}
    if not misfits:
        return
    fitting = [g for g in GROUP_SIZES if all(size % g == 0 for size in sizes.values())]
    shown = ", ".join(f"{name} {size}" for name, size in misfits.items())
    fix = (
        f"use {' or '.join(map(str, fitting))}"
        if fitting
        else "no group size fits: export unquantized"
    )
    raise ExportError(
        f"group_size {group_size} does not divide the model's {shown}: {fix}", "group_size"
    )


def default_destination(
    workspace: Workspace, source: ModelSource, fmt: str, quant: Quantization | None = None
) -> Path:
    """<workspace>/exports/<run_id>-<checkpoint>[-adapter|-gguf|-4bit]."""
    name = f"{source.run_id or source.model.name}-{source.checkpoint or 'model'}"
    if fmt != "model":
        name += f"-{fmt}"
    return workspace.exports_dir / (name + (quant.suffix if quant else ""))


def looks_like_export(folder: Path) -> bool:
    """An export of this project: a model card (README.md whose front matter carries our
    `continued-pretraining` tag) next to config.json (a model) or adapter_config.json."""
    try:
        with (folder / "README.md").open(encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    card = head.startswith("---") and "continued-pretraining" in head.split("\n---", 1)[0]
    return card and any((folder / name).is_file() for name in EXPORT_MARKERS)


def check_replaceable(dest: Path, workspace: Workspace, roots: Sequence[Path] = ()) -> None:
    """An export replaces its destination folder (renamed aside, then deleted): refuse a
    destination that is or holds the workspace, its runs, the home folder or one of
    `roots` (the console's browse roots), and an existing non-empty folder that is not an
    earlier export. The console and the command line share this guard."""
    real = Path(os.path.realpath(dest))
    protected = [
        ("the workspace", workspace.root),
        ("the workspace's runs folder", workspace.runs_dir),
        ("your home folder", Path.home()),
        *(("a folder the console may read", root) for root in roots),
    ]
    for what, folder in protected:
        folder = Path(os.path.realpath(folder))
        if real == folder or folder.is_relative_to(real):
            shown = "is" if real == folder else "contains"
            raise ExportError(
                f"{dest} {shown} {what} ({folder}): an export replaces its destination "
                f"folder; choose a new folder, e.g. {workspace.exports_dir / 'my-model'}",
                "dest",
            )
    try:
        occupied = real.is_dir() and any(real.iterdir())
    except OSError as exc:
        raise ExportError(f"{dest}: {exc.strerror or exc}", "dest") from exc
    if occupied and not looks_like_export(real):
        raise ExportError(
            f"{dest} is not empty and is not an earlier export (no model card README.md with "
            f"{' or '.join(EXPORT_MARKERS)}): it is never replaced; choose a new folder",
            "dest",
        )


def check_destination(
    dest: Path,
    source: ModelSource,
    workspace: Workspace,
    overwrite: bool,
    roots: Sequence[Path] = (),
) -> Path:
    """Refuse a destination that would clobber something: what check_replaceable
    refuses, anything inside the workspace's runs (checkpoints are never touched), the
    folders being exported, and an existing export without `overwrite`."""
    check_replaceable(dest.expanduser(), workspace, roots)
    dest = dest.expanduser().resolve()
    runs = workspace.runs_dir.resolve()
    if dest == runs or runs in dest.parents:
        raise ExportError(
            f"{dest} is inside the workspace's runs folder; export to "
            f"{workspace.exports_dir} or a folder of your own",
            "dest",
        )
    for folder in (source.model, source.adapter_path, source.run_dir):
        if folder is None:
            continue
        folder = folder.resolve()
        if dest == folder or folder in dest.parents or dest in folder.parents:
            raise ExportError(f"{dest} overlaps the run or model being exported ({folder})", "dest")
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise ExportError(f"{dest} exists and is not a folder", "dest")
        if any(dest.iterdir()) and not overwrite:
            raise ExportError(
                f"{dest} already exists; confirm overwriting it (--overwrite) or choose another "
                "folder",
                "overwrite",
            )
    return dest
