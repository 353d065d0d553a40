"""How much memory a run will need, known before launch: from the model's config.json (its
dimensions, dtype and quantization) and the run's settings, without loading a weight.

The parts, in bytes, as MLX holds them at a training step's peak (the trainer reports the
measured peak as `peak_memory`):

- weights: every parameter in its dtype (quantized layers: their packed bits plus a scale
  and a bias per group);
- gradients: one per trainable parameter, in its dtype;
- optimizer_state: AdamW's and Adam's two moments per trainable parameter (SGD without
  momentum none; Adafactor its factored second moments);
- activations: what the backward pass keeps of each block it goes through (the blocks from
  the first trained one up; with grad_checkpoint, each block's input and one block's
  internals), attention scores included;
- logits: the loss's share: the output head's logits for one chunk of positions at a time
  (trainer/loss.py: CHUNK_BYTES (32 MB) of float32 per chunk, a few such arrays alive at once), and
  the head's gradient when it trains;
- overhead: the allocator's own rounding and small arrays (a fixed allowance).

The coefficients were fitted to measured peaks of the real trainer (bench/memory_estimate.py
prints estimate and measurement side by side; tests/trainer/test_carry.py holds the tiny
test models to 25%). The model is a llama-shaped decoder (attention + gated MLP), which
most mlx-lm models are; a config.json without those dimensions gives no estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# trainer/loss.py's chunking (kept here without MLX; a test holds the two together).
CHUNK_BYTES = 32 * 1024 * 1024
MIN_CHUNK_POSITIONS = 64
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DEFAULT_LORA_KEYS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

# Fitted (bench/memory_estimate.py): arrays a block keeps for the backward pass, in units
# of (positions × hidden) and (positions × intermediate) values, plus attention scores
# (batch × heads × length²) kept in float32; float32 logits-sized arrays alive per chunk.
ACT_HIDDEN = 8.0
ACT_INTERMEDIATE = 4.0
ACT_SCORES = 2.4
LOGIT_COPIES = 4.8
LOGIT_HIDDEN = 1.6
OVERHEAD = 256 * 1024


def chunk_positions(vocab_size: int) -> int:
    return max(MIN_CHUNK_POSITIONS, CHUNK_BYTES // (4 * max(1, vocab_size)))


def _int(cfg: Mapping[str, Any], *keys: str, default: int | None = None) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def model_dimensions(model_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The dimensions the estimate needs, from config.json (a nested `text_config` too);
    None when they are not there."""
    cfg = model_config
    if isinstance(cfg.get("text_config"), Mapping) and "hidden_size" not in cfg:
        cfg = cfg["text_config"]
    hidden = _int(cfg, "hidden_size", "n_embd", "d_model")
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _int(cfg, "vocab_size")
    heads = _int(cfg, "num_attention_heads", "n_head")
    if not (hidden and layers and vocab and heads):
        return None
    kv_heads = _int(cfg, "num_key_value_heads", default=heads) or heads
    head_dim = _int(cfg, "head_dim", default=hidden // heads) or hidden // heads
    inter = _int(cfg, "intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden
    quant = cfg.get("quantization") or cfg.get("quantization_config")
    bits = group = None
    if isinstance(quant, Mapping):
        bits = _int(quant, "bits", default=4)
        group = _int(quant, "group_size", default=64)
    return {
        "hidden": hidden,
        "layers": layers,
        "vocab": vocab,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "intermediate": inter,
        "tied": bool(cfg.get("tie_word_embeddings", False)),
        "dtype": str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"),
        "bits": bits,
        "group_size": group,
    }


def _linears(d: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """A block's linear layers: name -> (inputs, outputs)."""
    h, i = d["hidden"], d["intermediate"]
    q, kv = d["heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"]
    return {
        "self_attn.q_proj": (h, q),
        "self_attn.k_proj": (h, kv),
        "self_attn.v_proj": (h, kv),
        "self_attn.o_proj": (q, h),
        "mlp.gate_proj": (h, i),
        "mlp.up_proj": (h, i),
        "mlp.down_proj": (i, h),
    }


def estimate_memory(model_config: Mapping[str, Any], config: Any) -> dict[str, Any] | None:
    """The peak memory of a training step of `config` (a RunConfig) on the model that
    `model_config` (its config.json) describes: {total, weights, gradients,
    optimizer_state, activations, logits, overhead, parameters, trainable_parameters},
    bytes and counts; None when config.json lacks the dimensions."""
    d = model_dimensions(model_config)
    if d is None:
        return None
    h, n_layers, vocab = d["hidden"], d["layers"], d["vocab"]
    dtype = config.dtype if config.dtype in DTYPE_BYTES else d["dtype"]
    width = DTYPE_BYTES.get(dtype, 2)
    linears = _linears(d)
    block_linear = sum(a * b for a, b in linears.values())
    block_params = block_linear + 2 * h
    embed = vocab * h
    head = 0 if d["tied"] else vocab * h
    params = embed + head + n_layers * block_params + h
    if d["bits"]:  # packed weights, a scale and a bias per group (norms stay float)
        per = d["bits"] / 8 + 2 * width / d["group_size"]
        weights = (
            int((embed + head + n_layers * block_linear) * per) + (n_layers * 2 + 1) * h * width
        )
    else:
        weights = params * width

    trained_layers = _trained_layers(config, n_layers)
    full = config.fine_tune_type == "full"
    train_head = full and trained_layers == n_layers
    if full:
        trainable = trained_layers * block_params + (embed + head + h if train_head else 0)
    else:
        keys = config.lora_parameters_keys or list(DEFAULT_LORA_KEYS)
        rank = config.lora_parameters_rank
        per_block = sum(rank * (a + b) for k, (a, b) in linears.items() if k in keys)
        if config.fine_tune_type == "dora":
            per_block += sum(b for k, (_, b) in linears.items() if k in keys)
        trainable = trained_layers * per_block
    embeddings = bool(getattr(config, "train_embeddings", False)) and not full
    if embeddings:
        trainable += embed + head
        train_head = True
    gradients = trainable * width
    optimizer_state = _optimizer_bytes(config, trainable, width, linears, trained_layers)

    batch = config.batch_size
    length = config.max_seq_length
    positions = batch * length
    per_block = width * positions * (ACT_HIDDEN * h + ACT_INTERMEDIATE * d["intermediate"])
    scores = 4 * ACT_SCORES * batch * d["heads"] * length * length
    backward_blocks = n_layers if (full and train_head) or embeddings else trained_layers
    if config.grad_checkpoint:
        activations = backward_blocks * positions * h * width + per_block + scores
    else:
        activations = backward_blocks * (per_block + scores)
    chunk = min(positions, chunk_positions(vocab))
    logits = int(LOGIT_COPIES * chunk * vocab * 4 + LOGIT_HIDDEN * positions * h * 4)
    if train_head:
        logits += 2 * vocab * h * width  # the head's gradient, summed over the chunks
    parts = {
        "weights": int(weights),
        "gradients": int(gradients),
        "optimizer_state": int(optimizer_state),
        "activations": int(activations),
        "logits": int(logits),
        "overhead": OVERHEAD,
    }
    return {
        "total": sum(parts.values()),
        **parts,
        "parameters": int(params),
        "trainable_parameters": int(trainable),
    }


def _trained_layers(config: Any, n_layers: int) -> int:
    n = config.effective_num_layers
    return n_layers if n < 0 or n > n_layers else n


def _optimizer_bytes(
    config: Any, trainable: int, width: int, linears: Mapping[str, Any], layers: int
) -> float:
    name = config.optimizer
    if name in ("adamw", "adam"):
        return 2 * trainable * width
    if name == "sgd":
        extra = config.optimizer_config or {}
        momentum = (
            (extra.get("sgd") or extra).get("momentum", 0) if isinstance(extra, Mapping) else 0
        )
        return trainable * width if momentum else 0
    # adafactor: a row and a column second moment per matrix
    if config.fine_tune_type == "full":
        return layers * sum(a + b for a, b in linears.values()) * width * 2
    return math.sqrt(max(trainable, 1)) * width * 4
