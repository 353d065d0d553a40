"""The README.md of an export: what the model is, what it was trained on, how well, how.

Hugging Face's model-card layout (YAML front matter, then prose) so hubs and tools read
it; everything comes from the run folder: config.yaml, data_report.json (or the
run_start event's `data`), the last losses in metrics.jsonl and the versions recorded
at run start, next to the versions that made the export.
"""

from __future__ import annotations

import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from training.contract.exports import GGUF_FILE, Quantization
from training.contract.layout import RunPaths, Workspace
from training.contract.model_source import ModelSource
from training.evaluate.adapters import has_full_modules
from training.metrics.checkpoint_table import final_losses

DATA_KEYS = (
    ("documents", "documents"),
    ("tokens", "tokens"),
    ("sequences", "sequences"),
    ("tokens_per_step", "tokens per step"),
    ("steps_per_epoch", "steps per epoch"),
)


def export_versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("mlx", "mlx-lm"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _data_report(run_root: Path, run_start: dict[str, Any] | None) -> dict[str, Any]:
    try:
        report = json.loads((run_root / "data_report.json").read_text())
        if isinstance(report, dict):
            return report
    except (OSError, ValueError):
        pass
    data = (run_start or {}).get("data")
    return data if isinstance(data, dict) else {}


def _usage(source: ModelSource, fmt: str) -> str:
    if fmt == "gguf":
        return f"llama-cli -m path/to/this/folder/{GGUF_FILE} -p 'Hello'"
    if fmt == "adapter" and has_full_modules(source):
        return (
            "# The base model with its embeddings and output head as trained (fully, beside\n"
            "# the adapters: train_embeddings) is this folder; the adapters lie beside it.\n"
            "from mlx_lm import load, generate\n\n"
            'model, tokenizer = load("path/to/this/folder", '
            'adapter_path="path/to/this/folder")\n'
            'print(generate(model, tokenizer, prompt="Hello", max_tokens=50))'
        )
    if fmt == "adapter":
        return (
            "from mlx_lm import load, generate\n\n"
            f'model, tokenizer = load("{source.model}", adapter_path="path/to/this/folder")\n'
            'print(generate(model, tokenizer, prompt="Hello", max_tokens=50))'
        )
    return (
        "from mlx_lm import load, generate\n\n"
        'model, tokenizer = load("path/to/this/folder")\n'
        'print(generate(model, tokenizer, prompt="Hello", max_tokens=50))'
    )


def render_model_card(
    source: ModelSource,
    fmt: str,
    workspace: Workspace,
    quantization: Quantization | None = None,
    perplexity: dict[str, Any] | None = None,
) -> str:
    """The card; `quantization` and `perplexity` (exporting.py's measurement of the
    quantized export against the unquantized model) add their sections."""
    run = (
        RunPaths(source.run_dir)
        if source.run_dir is not None
        else workspace.run(source.run_id)
        if source.run_id
        else None
    )
    summary = final_losses(run) if run else {"train": None, "eval": None, "run_start": None}
    start = summary["run_start"] or {}
    tags = ["mlx", "continued-pretraining", source.fine_tune_type or "full"]
    if quantization is not None:
        tags += ["quantized", f"{quantization.bits}-bit"]
    if fmt == "gguf":
        tags.append("gguf")
    front = {
        "library_name": "mlx",
        "pipeline_tag": "text-generation",
        "base_model": str(source.model.name),
        "tags": tags,
    }
    what = {
        "model": "a standalone model folder"
        + (" (adapters fused into the base model)" if source.lora else ""),
        "adapter": "a LoRA/DoRA adapter folder, applied over the base model",
        "gguf": f"a float16 GGUF file ({GGUF_FILE}, written by mlx-lm's GGUF writer)"
        + (" with the adapters fused into the base model" if source.lora else ""),
    }[fmt]
    if quantization is not None:
        what += f" (quantized: {quantization.label})"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {source.label or source.model.name}",
        "",
        f"Continued pre-training with MLX, exported as {what} on "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime())}.",
        "",
        "## Use",
        "",
        "```python" if fmt != "gguf" else "```sh",
        _usage(source, fmt),
        "```",
        "",
        "## Source",
        "",
        f"- base model: `{source.model}`",
        f"- run: `{source.run_id or '-'}`, checkpoint `{source.checkpoint or '-'}`",
        f"- fine-tune type: {source.fine_tune_type or 'full'}",
    ]
    if quantization is not None:
        lines += _quantization_lines(quantization, perplexity)
    if run is not None:
        report = _data_report(run.root, summary["run_start"])
        lines += ["", "## Training data", ""]
        if report:
            lines += [
                f"- {label}: {report[key]:,}"
                for key, label in DATA_KEYS
                if _is_int(report.get(key))
            ]
            extra = {k: v for k, v in report.items() if k not in dict(DATA_KEYS)}
            if extra:
                lines += ["", "```json", json.dumps(extra, indent=2, default=str), "```"]
        else:
            lines.append("No data report in the run folder.")
        lines += ["", "## Final losses", ""]
        train, evaluation = summary["train"], summary["eval"]
        if train:
            lines.append(f"- train loss {train['train_loss']:.4f} at step {train['step']}")
        if evaluation:
            for name, loss in evaluation["losses"].items():
                label = "validation" if name == "val" else f"held-out set `{name}`"
                lines.append(f"- {label} loss {loss:.4f} at step {evaluation['step']}")
        if not (train or evaluation):
            lines.append("No losses recorded.")
        try:
            config_text = run.config.read_text()
        except OSError:
            config_text = "# config.yaml not found\n"
        lines += ["", "## Configuration", "", "```yaml", config_text.rstrip(), "```"]
    versions = {"training": start.get("versions"), "export": export_versions()}
    lines += ["", "## Versions", "", "```json", json.dumps(versions, indent=2), "```", ""]
    return "\n".join(lines)


def _quantization_lines(quantization: Quantization, perplexity: dict[str, Any] | None) -> list[str]:
    lines = [
        "",
        "## Quantization",
        "",
        f"- {quantization.bits} bits per weight, group size {quantization.group_size} "
        f"({quantization.mode}), by mlx-lm's `quantize_model`; the scales and the layers "
        "left unquantized keep the model's dtype",
    ]
    if perplexity:
        before, after = perplexity["unquantized"], perplexity["quantized"]
        change = after["perplexity"] / before["perplexity"] - 1
        lines += [
            f"- perplexity on `{perplexity['data_label']}` ({after['tokens']:,} tokens in "
            f"{after['sequences']} sequences of {after['sequence_length']}): "
            f"{after['perplexity']:.4f} quantized, {before['perplexity']:.4f} unquantized "
            f"({change:+.2%})",
        ]
    return lines


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
