"""Export a run's final model or any checkpoint as a folder mlx-lm loads, quantized or
not, or as a GGUF file.

Formats: `model`, a standalone model folder (`mlx_lm.load(dest)`): LoRA/DoRA adapters
are fused into the base the way `mlx_lm fuse` does it, a full run's weights are saved
as they are, and with a Quantization the weights go through mlx-lm's own
`quantize_model` (4 or 8 bits, a group size; the scales and the unquantized layers in the
model's own dtype); `adapter`, the LoRA/DoRA adapter folder alone (`mlx_lm.load(base,
adapter_path=dest)`; a run that also trained its embeddings and head
fully (`train_embeddings`) exports the base with those weights in place and the adapters
beside them: `mlx_lm.load(dest, adapter_path=dest)`, since mlx-lm's adapter loader takes
adapter weights only); `gguf`, one float16 GGUF file written by mlx-lm's GGUF writer
(mlx_lm/gguf.py, the llama family only). Every export carries a model card (README.md).

A quantized export can be measured: the perplexity of the unquantized model and of the
export, on the same packed text, is recorded in the card and the result (and, for a
run's model, in the run's evaluations/perplexity.jsonl next to its other perplexities).

The export is built in a hidden sibling folder and renamed into place, so a failure or
a stop leaves nothing behind, and an existing folder is replaced only with `overwrite`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.contract.checkpoints import ADAPTER_CONFIG_FILE, ADAPTERS_FILE, FULL_MODULES_KEY
from training.contract.eval_text import EvalText
from training.contract.exports import (
    GGUF_FILE,
    ExportError,
    Quantization,
    check_destination,
    check_export_options,
    check_group_size,
)
from training.contract.layout import RunPaths, Workspace
from training.contract.model_source import ModelSource
from training.evaluate.adapters import full_modules, read_adapter_config, split_weights
from training.evaluate.model_card import render_model_card
from training.evaluate.models import LoadedModel, ShouldStop, load_model, load_source
from training.evaluate.perplexity import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATA_SEED,
    DEFAULT_NUM_SAMPLES,
    PerplexityResult,
    check_sequence_length,
    default_sequence_length,
    evaluate_perplexity,
    held_out_documents,
    pack_documents,
    read_eval_documents,
)
from training.metrics.evaluations import append_evaluation

# Told each stage of the export as it begins ("loading the model"); a measurement also
# passes done= and total= (batches).
StageProgress = Callable[..., None]


class ExportStopped(Exception):
    """The export was stopped on request: nothing was written."""


@dataclass(frozen=True)
class PerplexityCheck:
    """The text a quantized export is measured on, and how (perplexity.py's defaults)."""

    text: EvalText
    num_samples: int = DEFAULT_NUM_SAMPLES
    sequence_length: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = DEFAULT_DATA_SEED


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    source: ModelSource
    size: int
    seconds: float
    quantization: Quantization | None = None
    # {"data_label", "data", "num_samples", "seed", "unquantized": {...}, "quantized": {...}}
    perplexity: dict[str, Any] | None = field(default=None)

    @property
    def file(self) -> Path | None:
        """The GGUF file of a gguf export."""
        return self.path / GGUF_FILE if self.format == "gguf" else None

    def load_python(self) -> str | None:
        """How mlx-lm loads it (None for GGUF, which mlx-lm does not read)."""
        if self.format == "adapter":
            return f"mlx_lm.load({str(self.base)!r}, adapter_path={str(self.path)!r})"
        return None if self.format == "gguf" else f"mlx_lm.load({str(self.path)!r})"

    @property
    def base(self) -> Path:
        """The model an adapter export applies to: the export itself when it holds the base
        with the embeddings and head trained fully (train_embeddings), else the source's."""
        return self.path if (self.path / "config.json").is_file() else self.source.model

    def load_command(self) -> str:
        """A shell command that loads it and generates."""
        if self.format == "gguf":
            return f"llama-cli -m {shlex.quote(str(self.file))} -p 'Hello'"
        if self.format == "adapter":
            return (
                f"mlx_lm.generate --model {shlex.quote(str(self.base))} "
                f"--adapter-path {shlex.quote(str(self.path))} --prompt 'Hello'"
            )
        return f"mlx_lm.generate --model {shlex.quote(str(self.path))} --prompt 'Hello'"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": self.format,
            "source": self.source.to_json(),
            "size": self.size,
            "seconds": round(self.seconds, 3),
            "quantization": self.quantization.to_json() if self.quantization else None,
            "file": str(self.file) if self.file else None,
            "load": self.load_python(),
            "command": self.load_command(),
            "perplexity": self.perplexity,
        }


def export_source(
    source: ModelSource,
    dest: Path,
    fmt: str,
    workspace: Workspace,
    *,
    overwrite: bool = False,
    quantization: Quantization | None = None,
    perplexity: PerplexityCheck | None = None,
    progress: StageProgress = lambda message, **extra: None,
    should_stop: ShouldStop = lambda: False,
) -> ExportResult:
    """Write `source` to `dest` in format `fmt` (see the module docstring). `perplexity`
    applies to a quantized export only. ExportStopped when `should_stop` turns true."""
    started = time.perf_counter()
    check_export_options(fmt, quantization, source)
    dest = check_destination(dest, source, workspace, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
    measured: dict[str, Any] | None = None
    try:
        if fmt == "adapter":
            progress("copying the adapter")
            _copy_adapter(source, staging, progress)
        elif fmt == "gguf":
            _save_gguf(source, staging, progress)
        elif quantization is not None:
            measured = _save_quantized(
                source, staging, quantization, perplexity, progress, should_stop
            )
        elif source.adapter_path is None:
            progress("copying the model folder")
            _copy_model_folder(source.model, staging)
        else:
            progress("loading the model")
            _save_fused(source, staging, progress)
        if should_stop():
            raise ExportStopped
        progress("writing the model card")
        card = render_model_card(source, fmt, workspace, quantization, measured)
        (staging / "README.md").write_text(card)
        staging.chmod(0o755)
        _replace(staging, dest, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return ExportResult(
        dest, fmt, source, size, time.perf_counter() - started, quantization, measured
    )


def _copy_adapter(source: ModelSource, staging: Path, progress: StageProgress) -> None:
    """The adapter folder as it is; one that also holds fully trained embeddings and head
    (`full_modules`) becomes the base model with those weights in place plus the adapters
    alone beside them, since mlx-lm's adapter loader takes adapter weights only:
    `mlx_lm.load(dest, adapter_path=dest)`."""
    assert source.adapter_path is not None
    config = read_adapter_config(source.adapter_path)
    modules = full_modules(config)
    if not modules:
        for name in (ADAPTERS_FILE, ADAPTER_CONFIG_FILE):
            shutil.copy2(source.adapter_path / name, staging / name)
        return
    import mlx.core as mx
    from mlx_lm.utils import save

    progress("loading the base model")
    base = load_model(source.model)
    weights: dict[str, Any] = mx.load(str(source.adapter_path / ADAPTERS_FILE))  # type: ignore[assignment]
    adapters, trained = split_weights(weights, modules)
    base.model.load_weights(list(trained.items()), strict=False)
    progress(f"saving the base with its trained {', '.join(modules)}")
    save(staging, source.model, base.model, base.tokenizer, base.config, donate_model=False)
    mx.save_safetensors(str(staging / ADAPTERS_FILE), adapters, {"format": "mlx"})
    plain = {k: v for k, v in config.items() if k != FULL_MODULES_KEY}
    plain["model"] = "."  # the base with the trained embeddings and head: this folder
    plain["base_model"] = str(config.get("model") or source.model)
    (staging / ADAPTER_CONFIG_FILE).write_text(json.dumps(plain, indent=2) + "\n")


def _copy_model_folder(model: Path, staging: Path) -> None:
    """A full run's final/ is already a model folder: copy it (minus training-only files)."""
    skip = {"optimizer.safetensors", "state.json", "README.md"}
    for item in model.iterdir():
        if item.name in skip or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, staging / item.name)
        else:
            shutil.copy2(item, staging / item.name)


def _fuse(loaded: LoadedModel, progress: StageProgress, *, dequantize: bool = False) -> None:
    """mlx_lm fuse's recipe: fuse every adapted module into its base layer."""
    from mlx.utils import tree_unflatten

    model = loaded.model
    fused = [
        (n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules() if hasattr(m, "fuse")
    ]
    if fused:
        progress(f"fusing {len(fused)} adapted layers")
        model.update_modules(tree_unflatten(fused))


def _save_fused(source: ModelSource, staging: Path, progress: StageProgress) -> None:
    """mlx_lm fuse's recipe: fuse every module that can, then mlx_lm.utils.save."""
    from mlx_lm.utils import save

    loaded = load_source(source)
    _fuse(loaded, progress)
    progress("saving the model")
    save(staging, source.model, loaded.model, loaded.tokenizer, loaded.config, donate_model=False)


def quantizable_sizes(model: Any) -> dict[str, int]:
    """The input size of each layer quantize_model would quantize, one layer named per size."""
    sizes: dict[str, int] = {}
    for name, module in model.named_modules():
        if hasattr(module, "to_quantized") and hasattr(module, "weight"):
            size = int(module.weight.shape[-1])
            if size not in sizes.values():
                sizes[name or "model"] = size
    return sizes


def _save_quantized(
    source: ModelSource,
    staging: Path,
    quant: Quantization,
    check: PerplexityCheck | None,
    progress: StageProgress,
    should_stop: ShouldStop,
) -> dict[str, Any] | None:
    """Load (adapters fused), measure, quantize with mlx-lm, save, measure the saved copy.
    Returns the two perplexities when `check` is given."""
    import mlx.core as mx
    from mlx_lm.utils import quantize_model, save

    progress("loading the model")
    loaded = load_source(source)
    _fuse(loaded, progress)
    # The loaded layers decide (config.json was checked already): mlx-lm would leave a
    # layer whose input size the group size does not divide unquantized, silently.
    check_group_size(quant.group_size, quantizable_sizes(loaded.model))
    packed = None
    before: PerplexityResult | None = None
    if check is not None:
        packed = _pack(loaded, check, progress)
        progress("measuring the unquantized model")
        before = _measure(loaded.model, packed, check, progress, should_stop)
    # The scales and biases of each group, and the layers left unquantized (norms), keep
    # the model's dtype, as mlx_lm.convert keeps config.json's: bfloat16 and float16 models
    # give the usual exports. A float32 model stays float32 there (4-bit is then 5 bits a
    # weight, not 4.5): MLX's CPU kernels run float16 quantized layers some twenty times
    # slower than float32 ones, and a CPU-trained model is mostly measured on the CPU.
    config = dict(loaded.config)
    progress(f"quantizing to {quant.label}")
    with contextlib.redirect_stdout(sys.stderr):  # its "[INFO] Quantized model with ..."
        model, config = quantize_model(
            loaded.model, config, quant.group_size, quant.bits, mode=quant.mode
        )
    progress("saving the model")
    save(staging, source.model, model, loaded.tokenizer, config, donate_model=False)
    del model, loaded
    gc.collect()
    mx.clear_cache()
    if check is None or before is None or packed is None:
        return None
    progress("measuring the quantized export")
    exported = load_model(staging)  # also proves that mlx_lm.load reads the export
    after = _measure(exported.model, packed, check, progress, should_stop)
    return {
        "data": str(check.text.path),
        "data_label": check.text.label,
        "num_samples": check.num_samples,
        "seed": check.seed,
        "unquantized": before.to_json(),
        "quantized": after.to_json(),
    }


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    from mlx.utils import tree_flatten

    leaves: Any = tree_flatten(tree)
    return list(leaves)


def _pack(loaded: LoadedModel, check: PerplexityCheck, progress: StageProgress) -> Any:
    progress(f"reading {check.text.label}")
    documents = read_eval_documents(check.text.path)
    if check.text.holdout_fraction is not None:
        documents = held_out_documents(documents, check.text.holdout_fraction)
    length = check.sequence_length or default_sequence_length(loaded)
    check_sequence_length(loaded, length)
    return pack_documents(loaded.tokenizer, documents, length, check.num_samples, check.seed)


def _measure(
    model: Any,
    packed: Any,
    check: PerplexityCheck,
    progress: StageProgress,
    should_stop: ShouldStop,
) -> PerplexityResult:
    def batches(done: int, total: int) -> None:
        progress(f"perplexity batch {done}/{total}", done=done, total=total)

    result = evaluate_perplexity(model, packed, check.batch_size, batches, should_stop)
    if result is None:
        raise ExportStopped
    return result


def _save_gguf(source: ModelSource, staging: Path, progress: StageProgress) -> None:
    """mlx_lm fuse --export-gguf's recipe: adapters fused (a quantized base dequantized:
    GGUF is written in float16), then mlx_lm.gguf.convert_to_gguf."""
    import mlx.core as mx
    from mlx_lm.gguf import convert_to_gguf
    from mlx_lm.utils import dequantize_model

    progress("loading the model")
    loaded = load_source(source)
    _fuse(loaded, progress, dequantize=True)
    model = dequantize_model(loaded.model)
    config = {
        k: v for k, v in loaded.config.items() if k not in ("quantization", "quantization_config")
    }
    config.setdefault("num_key_value_heads", config.get("num_attention_heads"))
    weights = {
        name: value.astype(mx.float16) if mx.issubdtype(value.dtype, mx.floating) else value
        for name, value in _leaves(model.parameters())
    }
    progress("writing the GGUF file")
    # mlx-lm prints its progress on stdout: keep it on stderr, off the command's output.
    with contextlib.redirect_stdout(sys.stderr):
        convert_to_gguf(source.model, weights, config, str(staging / GGUF_FILE))


def _replace(staging: Path, dest: Path, overwrite: bool) -> None:
    """Move the finished export into place; an old folder is removed only after that."""
    if not dest.exists():
        os.replace(staging, dest)
        return
    if any(dest.iterdir()) and not overwrite:  # appeared while we were writing
        raise ExportError(f"{dest} appeared during the export; nothing was replaced", "overwrite")
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    os.replace(dest, old)
    os.replace(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


def store_perplexities(result: ExportResult, job_id: str = "") -> Path | None:
    """A measured quantized export of a run's model: both perplexities appended to the
    run's evaluations/perplexity.jsonl (the checkpoint table shows them side by side; the
    quantized one carries `quantization` and `export`). The file, or None when nothing
    was stored (no measurement, a model outside any run, a run deleted meanwhile)."""
    measured, source = result.perplexity, result.source
    if not measured or source.run_dir is None or result.quantization is None:
        return None
    run = RunPaths(source.run_dir)
    common = {
        "job_id": job_id,
        "time": time.time(),
        "run_id": source.run_id,
        "checkpoint": source.checkpoint,
        "step": source.step,
        "data": measured["data"],
        "data_label": measured["data_label"],
        "num_samples": measured["num_samples"],
        "seed": measured["seed"],
    }
    try:
        append_evaluation(run, {**common, "model": source.label, **measured["unquantized"]})
        append_evaluation(
            run,
            {
                **common,
                "model": f"{source.label} ({result.quantization.label})",
                "quantization": result.quantization.to_json(),
                "export": str(result.path),
                **measured["quantized"],
            },
        )
    except OSError:
        return None
    return run.evaluations / "perplexity.jsonl"
