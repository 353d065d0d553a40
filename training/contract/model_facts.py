"""What a model folder says about itself, read from its config.json without loading it (no
MLX): whether its weights are quantized (bits, group size, mode).

Full fine-tuning cannot train quantized weights (mlx has no gradient for them), so
`fine_tune_type: full` on a quantized model is bad input. The settings check
(config.py), the console's New run form (through /api/config/validate) and the trainer's
preflight (which also looks at the loaded layers) share this rule and its fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training.contract.reading import read_json_followed

# What to do instead: the same words wherever the problem is reported.
FULL_ON_QUANTIZED_FIX = (
    "use lora or dora, or a dequantized copy of the model (mlx_lm.convert --dequantize)"
)
# Hugging Face quantization methods mlx-lm loads as quantized layers (mlx_lm/utils.py
# load_model). A plain "fp8" checkpoint is dequantized by the model's sanitize on load,
# so it is left to the trainer's check of the loaded layers.
_DEQUANTIZED_ON_LOAD = frozenset({"fp8"})
# NVIDIA ModelOpt exports keep their quantization next to config.json (mlx-lm reads it).
HF_QUANT_CONFIG = "hf_quant_config.json"


def read_model_config(folder: Path) -> dict[str, Any]:
    """config.json of a model folder as a mapping; OSError or ValueError when it cannot be
    read or holds no mapping."""
    data = read_json_followed(folder / "config.json")
    if not isinstance(data, dict):
        raise ValueError("config.json does not hold a mapping")
    return data


def quantization(
    model_config: Mapping[str, Any], folder: Path | None = None
) -> dict[str, Any] | None:
    """How the weights are quantized, as mlx-lm will load them: {bits, group_size, mode}
    (each None when not stated), or None for plain weights.

    mlx-lm's own format is `quantization` ({group_size, bits, mode}; its save writes the
    same under `quantization_config`); Hugging Face's is `quantization_config` with a
    `quant_method` (also under `text_config`, or in hf_quant_config.json).
    """
    own = model_config.get("quantization")
    if isinstance(own, Mapping):
        return _facts(own, own.get("mode", "affine"))
    hf = model_config.get("quantization_config")
    text_config = model_config.get("text_config")
    if not isinstance(hf, Mapping) and isinstance(text_config, Mapping):
        hf = text_config.get("quantization_config")
    if not isinstance(hf, Mapping) and folder is not None:
        try:
            hf = read_json_followed(folder / HF_QUANT_CONFIG)
        except (OSError, ValueError):
            hf = None
    if not isinstance(hf, Mapping):
        return None
    method = hf.get("quant_method")
    if method is None and ("bits" in hf or "group_size" in hf):  # mlx-lm's, under that name
        return _facts(hf, hf.get("mode", "affine"))
    if method in _DEQUANTIZED_ON_LOAD and not _packed_fp8(hf):
        return None
    nested = hf.get("quantization")  # ModelOpt nests its settings
    settings = nested if isinstance(nested, Mapping) else hf
    return _facts(settings, str(method or "unknown"))


def _packed_fp8(hf: Mapping[str, Any]) -> bool:
    """fp8 that mlx-lm keeps packed (as mxfp8): power-of-two scales over 32x32 blocks."""
    block = hf.get("weight_block_size")
    return hf.get("scale_fmt") == "ue8m0" and isinstance(block, list) and block == [32, 32]


def _facts(settings: Mapping[str, Any], mode: Any) -> dict[str, Any]:
    def whole(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    bits = whole(settings.get("bits")) or whole(settings.get("w_bit"))
    group = whole(settings.get("group_size")) or whole(settings.get("q_group_size"))
    return {"bits": bits, "group_size": group, "mode": str(mode)}


def describe(quant: Mapping[str, Any]) -> str:
    """'4-bit, group size 32' (what is known of it)."""
    parts = []
    if quant.get("bits"):
        parts.append(f"{quant['bits']}-bit")
    if quant.get("mode") and quant["mode"] != "affine":
        parts.append(str(quant["mode"]))
    if quant.get("group_size"):
        parts.append(f"group size {quant['group_size']}")
    return ", ".join(parts) or "quantized"


def full_on_quantized(model: str, quant: Mapping[str, Any] | None) -> str:
    """The fine_tune_type error for full fine-tuning of a quantized model."""
    what = f" ({describe(quant)})" if quant else ""
    return (
        f"full cannot train {model}: its weights are quantized{what}, and quantized "
        f"weights have no gradient; {FULL_ON_QUANTIZED_FIX}"
    )


def model_facts(folder: Path) -> dict[str, Any] | None:
    """What the console's form shows about a model folder: {"quantization": ... or None};
    None when it is no readable model folder."""
    try:
        model_config = read_model_config(folder)
    except (OSError, ValueError):
        return None
    return {"quantization": quantization(model_config, folder)}
