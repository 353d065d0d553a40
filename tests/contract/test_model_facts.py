"""What a model folder's config.json says about quantization, read as mlx-lm loads it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from training.contract.model_facts import (
    FULL_ON_QUANTIZED_FIX,
    describe,
    full_on_quantized,
    model_facts,
    quantization,
)

MLX = {"group_size": 64, "bits": 4, "mode": "affine"}


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"model_type": "llama"}, None),
        ({"quantization": MLX, "quantization_config": MLX}, {**MLX}),  # mlx_lm.convert -q
        (
            {"quantization_config": {"bits": 8, "group_size": 32}},
            {"bits": 8, "group_size": 32, "mode": "affine"},
        ),
        (
            {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}},
            {"bits": 4, "group_size": 128, "mode": "awq"},
        ),
        (
            {"text_config": {"quantization_config": {"quant_method": "gptq", "bits": 4}}},
            {"bits": 4, "group_size": None, "mode": "gptq"},
        ),
        (
            {"quantization_config": {"quant_method": "mxfp4"}},
            {"bits": None, "group_size": None, "mode": "mxfp4"},
        ),
        # A plain fp8 checkpoint is dequantized while it loads; mxfp8-shaped fp8 stays packed.
        ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}, None),
        (
            {
                "quantization_config": {
                    "quant_method": "fp8",
                    "scale_fmt": "ue8m0",
                    "weight_block_size": [32, 32],
                }
            },
            {"bits": None, "group_size": None, "mode": "fp8"},
        ),
        ({"quantization": None}, None),
    ],
)
def test_quantization_as_mlx_lm_loads_it(
    config: dict[str, Any], expected: dict[str, Any] | None
) -> None:
    assert quantization(config) == expected


def test_a_modelopt_export_states_it_next_to_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert model_facts(tmp_path) == {"quantization": None}
    (tmp_path / "hf_quant_config.json").write_text(
        json.dumps(
            {"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4", "group_size": 16}}
        )
    )
    assert model_facts(tmp_path) == {
        "quantization": {"bits": None, "group_size": 16, "mode": "modelopt"}
    }


def test_no_facts_without_a_readable_config(tmp_path: Path) -> None:
    assert model_facts(tmp_path) is None
    (tmp_path / "config.json").write_text("[1, 2]")
    assert model_facts(tmp_path) is None
    (tmp_path / "config.json").write_text("{torn")
    assert model_facts(tmp_path) is None


def test_the_message_names_the_model_and_the_fix() -> None:
    assert describe(MLX) == "4-bit, group size 64"
    assert describe({"bits": 4, "group_size": 32, "mode": "mxfp4"}) == "4-bit, mxfp4, group size 32"
    message = full_on_quantized("models/q", MLX)
    assert message.startswith("full cannot train models/q: its weights are quantized (4-bit")
    assert message.endswith(FULL_ON_QUANTIZED_FIX)


def test_a_config_that_is_no_regular_file_is_not_read(tmp_path: Path) -> None:
    """A FIFO would block the console's form check forever; a link (the Hugging Face cache
    is made of them) is followed."""
    os.mkfifo(tmp_path / "config.json")
    assert model_facts(tmp_path) is None
    real = tmp_path / "blob.json"
    real.write_text(json.dumps({"quantization": {"bits": 4, "group_size": 64}}))
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "config.json").symlink_to(real)
    assert model_facts(linked) == {"quantization": {"bits": 4, "group_size": 64, "mode": "affine"}}
