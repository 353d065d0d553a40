"""Load the base model, choose what trains (full / LoRA / DoRA), and save the result.

Everything here reuses mlx-lm: `load` for any mlx-lm-loadable folder, its tuner utilities
for adapters and gradient checkpointing, and `utils.save` for the final model folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from training.contract.checkpoints import FULL_MODULES_KEY
from training.contract.config import RunConfig, resolve_path
from training.contract.disk import DiskFull, check_space, disk_errors
from training.contract.files import fsync_path
from training.trainer.weights import save_trainable

DTYPES: dict[str, mx.Dtype] = {
    "float32": mx.float32,
    "bfloat16": mx.bfloat16,
    "float16": mx.float16,
}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    model_config: dict[str, Any]
    path: Path  # local folder (a hub id resolved to its download)


def model_location(config: RunConfig, base_dir: Path) -> str:
    """A local folder when the value names one, else the value itself (a hub id)."""
    local = resolve_path(config.model, base_dir)
    return str(local) if local.exists() else str(config.model)


def load_base(config: RunConfig, base_dir: Path) -> LoadedModel:
    """The model and tokenizer; a hub id is resolved to its local download once (mlx-lm's
    own resolver: a local folder is used as is), then loaded from that folder."""
    from mlx_lm.utils import _download, load

    location = model_location(config, base_dir)
    path = Path(location) if Path(location).exists() else Path(_download(location))
    trust = bool(config.trust_remote_code)
    # mlx-lm < 0.32 (the last for Python 3.10) has no model-code option: only its tokenizer
    # could run a model's own code.
    model_code: dict[str, Any] = (
        {"trust_remote_code": trust} if _load_takes_trust_flag(load) else {}
    )
    model, tokenizer, model_config = load(  # type: ignore[misc]
        str(path),
        tokenizer_config={"trust_remote_code": trust},
        return_config=True,
        **model_code,
    )
    if config.dtype in DTYPES:
        model.set_dtype(DTYPES[config.dtype])
    return LoadedModel(model, tokenizer, model_config, path)


def _load_takes_trust_flag(load: Any) -> bool:
    import inspect

    return "trust_remote_code" in inspect.signature(load).parameters


def layers_to_train(config: RunConfig, blocks: int) -> int:
    """Blocks to train, counted from the last (-1: all). mlx-lm's LoRA default of 16 is
    capped at the model's depth; an explicit num_layers over it is an error."""
    n = config.effective_num_layers
    if config.num_layers is None and n > blocks:
        return -1
    if n > blocks:
        raise ValueError(f"num_layers {n} is more than the model's {blocks} blocks")
    return n


def quantized_to_train(model: nn.Module, config: RunConfig) -> list[tuple[str, nn.Module]]:
    """Quantized layers (QuantizedLinear, QuantizedEmbedding, any layer with packed integer
    weights) among those full fine-tuning would train: they have no gradient. Empty for
    lora/dora, which train adapters over a frozen (possibly quantized) base."""
    if config.fine_tune_type != "full":
        return []
    layers: list[nn.Module] = model.layers
    n = layers_to_train(config, len(layers))
    named: list[tuple[str, nn.Module]] = model.named_modules()
    if n != -1 and n != len(layers):
        chosen = {id(m) for layer in layers[-n:] for _, m in layer.named_modules()}
        named = [(name, m) for name, m in named if id(m) in chosen]
    return [(name, m) for name, m in named if _is_quantized(m)]


def _is_quantized(module: nn.Module) -> bool:
    if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)) or "scales" in module:
        return True
    weight = module.get("weight")
    return isinstance(weight, mx.array) and not mx.issubdtype(weight.dtype, mx.floating)


def describe_quantized(name: str, module: nn.Module) -> str:
    """'model.layers.0.mlp.up_proj: QuantizedLinear, 4-bit, group size 32'."""
    facts = [type(module).__name__]
    bits, group = getattr(module, "bits", None), getattr(module, "group_size", None)
    if isinstance(bits, int):
        facts.append(f"{bits}-bit")
    if isinstance(group, int):
        facts.append(f"group size {group}")
    return f"{name}: {', '.join(facts)}"


def prepare_trainable(model: nn.Module, config: RunConfig) -> None:
    """Freeze the base and unfreeze (full) or add adapters to (lora/dora) the chosen blocks.

    `full` with all blocks trains every weight, embeddings and norms included: continued
    pre-training adapts the vocabulary's embeddings too (mlx-lm's full trains blocks only).
    """
    from mlx_lm.tuner.trainer import grad_checkpoint
    from mlx_lm.tuner.utils import linear_to_lora_layers

    layers: list[nn.Module] = model.layers
    n = layers_to_train(config, len(layers))
    model.freeze()
    if config.fine_tune_type == "full":
        if n == -1 or n == len(layers):
            model.unfreeze()
        else:
            for layer in layers[-n:]:
                layer.unfreeze()
    else:
        mx.random.seed(config.seed)  # adapter init is a function of the seed
        linear_to_lora_layers(
            model, n, config.lora_parameters(), use_dora=config.fine_tune_type == "dora"
        )
        if config.train_embeddings:
            for _, module in embedding_modules(model):
                module.unfreeze()
    if config.grad_checkpoint:
        grad_checkpoint(layers[0])


# Names of the output head in mlx-lm's models (absent when tied to the embeddings).
HEAD_NAMES = ("lm_head", "output", "head")
_EMBEDDINGS = (nn.Embedding, nn.QuantizedEmbedding)
_LINEARS = (nn.Linear, nn.QuantizedLinear)


def embedding_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules `train_embeddings` trains fully in a lora/dora run: every embedding
    outside the transformer blocks (token, and position where a model has one), then the
    output head: a linear layer outside the blocks named lm_head, output or head, at any
    depth (none when the head is tied to the token embedding). Sorted by name within each
    kind. ValueError when the model has no embedding to find."""
    in_blocks = {id(m) for layer in model.layers for _, m in layer.named_modules()}
    outside = [(name, m) for name, m in model.named_modules() if id(m) not in in_blocks]
    embeddings = sorted(
        ((n, m) for n, m in outside if isinstance(m, _EMBEDDINGS)), key=lambda nm: nm[0]
    )
    heads = sorted(
        ((n, m) for n, m in outside if isinstance(m, _LINEARS) and n.rsplit(".")[-1] in HEAD_NAMES),
        key=lambda nm: nm[0],
    )
    if not embeddings:
        raise ValueError(f"{type(model).__name__} has no token embedding to train")
    return [*embeddings, *heads]


def embedding_weight_names(model: nn.Module) -> list[str]:
    """Prefixes of the weights `embedding_modules` holds ("model.embed_tokens", "lm_head")."""
    return [name for name, _ in embedding_modules(model)]


def quantized_embeddings(model: nn.Module, config: RunConfig) -> list[tuple[str, nn.Module]]:
    """The embeddings and head `train_embeddings` would train that are quantized (no
    gradient): empty when the switch is off."""
    if not config.train_embeddings or config.fine_tune_type == "full":
        return []
    return [(name, m) for name, m in embedding_modules(model) if _is_quantized(m)]


def adapter_config(config: RunConfig, base_model: str, model: nn.Module) -> dict[str, Any]:
    """adapter_config.json as mlx-lm's load_adapters reads it; with `train_embeddings`,
    `full_modules` names the modules trained fully beside the adapters, whose weights
    adapters.safetensors also holds (training/evaluate/adapters.py loads them; mlx-lm's own
    load_adapters takes adapter weights only, so an export splits them out)."""
    out: dict[str, Any] = {
        "fine_tune_type": config.fine_tune_type,
        "num_layers": layers_to_train(config, len(model.layers)),
        "model": base_model,
    }
    if config.fine_tune_type != "full":
        out["lora_parameters"] = config.lora_parameters()
    if config.train_embeddings and config.fine_tune_type != "full":
        out[FULL_MODULES_KEY] = embedding_weight_names(model)
    return out


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    trainable: Any = tree_flatten(model.trainable_parameters())
    every: Any = tree_flatten(model.parameters())
    return sum(v.size for _, v in trainable), sum(v.size for _, v in every)


# Room final/ needs besides the weights: configs, the README, each file's last block.
FINAL_MARGIN = 256 * 1024


def final_estimate(loaded: LoadedModel, config: RunConfig) -> int:
    """Bytes final/ needs: every weight and the tokenizer's files (full), or the trained
    adapters (lora/dora), plus a margin."""
    if config.fine_tune_type != "full":
        adapters: Any = tree_flatten(loaded.model.trainable_parameters())
        return sum(int(v.nbytes) for _, v in adapters) + FINAL_MARGIN
    weights: Any = tree_flatten(loaded.model.parameters())
    try:
        tokenizer = sum(
            p.stat().st_size
            for p in loaded.path.iterdir()
            if p.is_file() and p.suffix in (".json", ".model", ".txt", ".tiktoken")
        )
    except OSError:
        tokenizer = 0
    return sum(int(v.nbytes) for _, v in weights) + tokenizer + FINAL_MARGIN


def save_final(final_dir: Path, loaded: LoadedModel, config: RunConfig, base_model: str) -> Path:
    """final/: a model folder mlx_lm.load reads (full), or an adapter folder for
    `--adapter-path` (lora/dora). Written aside and renamed, replacing an older final/.
    DiskFull, before writing or after removing the partial folder, when it does not fit."""
    needed = final_estimate(loaded, config)
    hint = "The last checkpoint is intact: free some space, then resume the run to write it"
    check_space(final_dir.parent, needed, "the final model", hint)
    tmp = final_dir.with_name(f".tmp-{final_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with disk_errors(final_dir.parent, needed, "the final model"):
            _write_final(tmp, final_dir, loaded, config, base_model)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, DiskFull):
            exc.hint = hint
            exc.remeasure()  # the partial folder is gone: what is left now
        raise
    if final_dir.exists():
        old = final_dir.with_name(f".tmp-old-{final_dir.name}-{os.getpid()}")
        os.replace(final_dir, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final_dir)
    fsync_path(final_dir.parent)
    return final_dir


def _write_final(
    tmp: Path, final_dir: Path, loaded: LoadedModel, config: RunConfig, base_model: str
) -> None:
    from mlx_lm.utils import save

    if config.fine_tune_type == "full":
        config_json = dict(loaded.model_config)
        save(tmp, loaded.path, loaded.model, loaded.tokenizer, config_json, donate_model=False)
    else:
        save_trainable(tmp, loaded.model, adapter_config(config, base_model, loaded.model))
        (tmp / "README.md").write_text(_adapter_readme(config, base_model, final_dir))
    for p in tmp.iterdir():
        if p.is_file():
            fsync_path(p)
    fsync_path(tmp)


def _adapter_readme(config: RunConfig, base_model: str, final_dir: Path) -> str:
    head = f"# {config.fine_tune_type} adapters\n\nBase model: `{base_model}`\n\n"
    if not config.train_embeddings:
        return head + (
            f'    mlx_lm.generate --model {base_model} --adapter-path {final_dir} --prompt "..."\n'
        )
    run_dir = final_dir.parent
    return head + (
        "adapters.safetensors also holds the embeddings and the output head, trained fully "
        "(`train_embeddings`); mlx-lm's adapter loader takes adapter weights only, so export "
        "the run first:\n\n"
        f"    python -m training.export --run {run_dir} --format model     # fused, standalone\n"
        f"    python -m training.export --run {run_dir} --format adapter   # the base with the "
        "trained embeddings and head, the adapters beside them\n"
    )
