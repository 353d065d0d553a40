"""Export options checked before anything loads (training/contract/exports.py): bits, group
size, the formats each model allows, read from its config.json; every refusal names the
field to change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.contract.exports import (
    ExportError,
    Quantization,
    check_export_options,
    check_group_size,
    default_destination,
    input_sizes,
    parse_quantization,
)
from training.contract.layout import Workspace
from training.contract.model_source import ModelSource

LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 192,
    "num_attention_heads": 4,
    "head_dim": 16,
}


def _model(tmp_path: Path, **config: Any) -> ModelSource:
    folder = tmp_path / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({**LLAMA, **config}))
    return ModelSource(model=folder, label="model")


@pytest.mark.parametrize(
    "bits, group_size, expected",
    [
        (None, None, None),
        ("", "", None),
        (4, None, Quantization(4, 64)),
        ("8", "32", Quantization(8, 32)),
        (8.0, 128, Quantization(8, 128)),
    ],
)
def test_quantization_as_a_form_the_api_or_the_command_line_gives_it(
    bits: Any, group_size: Any, expected: Quantization | None
) -> None:
    assert parse_quantization(bits, group_size) == expected


@pytest.mark.parametrize(
    "bits, group_size, field",
    [
        (5, None, "quantize"),
        ("four", None, "quantize"),
        (True, None, "quantize"),
        (4.5, None, "quantize"),
        (4, 48, "group_size"),
        (4, "x", "group_size"),
        (None, 64, "group_size"),  # a group size without bits
    ],
)
def test_bad_quantization_names_its_field(bits: Any, group_size: Any, field: str) -> None:
    with pytest.raises(ExportError) as err:
        parse_quantization(bits, group_size)
    assert err.value.field == field


def test_formats_and_quantization_each_model_allows(tmp_path: Path) -> None:
    llama = _model(tmp_path)
    check_export_options("model", Quantization(4, 32), llama)
    check_export_options("model", Quantization(8, 64), llama)
    check_export_options("gguf", None, llama)

    cases: list[tuple[str, Quantization | None, ModelSource, str, str]] = [
        ("zip", None, llama, "format", "format must be one of"),
        ("adapter", None, llama, "format", "only LoRA/DoRA"),
        ("gguf", Quantization(4), llama, "quantize", "llama-quantize"),
        # 128 divides neither the hidden size 64 nor the MLP's 192: the sizes that do are named.
        ("model", Quantization(4, 128), llama, "group_size", "use 32 or 64"),
    ]
    for fmt, quant, source, field, says in cases:
        with pytest.raises(ExportError) as err:
            check_export_options(fmt, quant, source)
        assert err.value.field == field and says in str(err.value), str(err.value)

    qwen = _model(tmp_path / "q", model_type="qwen2")
    with pytest.raises(ExportError, match="llama family.*qwen2") as err:
        check_export_options("gguf", None, qwen)
    assert err.value.field == "format"

    quantized = _model(tmp_path / "b", quantization={"bits": 4, "group_size": 64})
    with pytest.raises(ExportError, match="already quantized") as err:
        check_export_options("model", Quantization(8), quantized)
    assert err.value.field == "quantize"


def test_group_size_against_the_layers_input_sizes() -> None:
    assert input_sizes({**LLAMA, "vocab_size": 512}) == {
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_attention_heads * head_dim": 64,
    }
    check_group_size(64, {"embed": 128, "mlp": 384})
    with pytest.raises(ExportError, match="no group size fits") as err:
        check_group_size(32, {"mlp": 100})
    assert err.value.field == "group_size"


def test_default_destinations_say_the_format_and_the_bits(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    source = ModelSource(model=tmp_path / "m", run_id="r1", checkpoint="final")
    assert default_destination(ws, source, "model").name == "r1-final"
    assert default_destination(ws, source, "adapter").name == "r1-final-adapter"
    assert default_destination(ws, source, "gguf").name == "r1-final-gguf"
    assert default_destination(ws, source, "model", Quantization(4)).name == "r1-final-4bit"
    assert default_destination(ws, source, "model", Quantization(8, 32)).name == "r1-final-8bit-g32"
