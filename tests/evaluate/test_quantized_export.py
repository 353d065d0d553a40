"""Quantized and GGUF exports (training/evaluate/exporting.py, training/export.py): a 4-bit
export loads with mlx_lm.load and is a fraction of the float16 model, its perplexity is
measured next to the unquantized model's and stored with the run; an 8-bit one costs
under 2% of perplexity; a GGUF file reads back with the gguf reader, every tensor in its
shape; bad options exit 2 and write nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval_fixtures import LORA_RUN_ID, QUANT_RUN_ID
from training.contract.eval_text import run_eval_text
from training.contract.exports import (
    GGUF_FILE,
    ExportError,
    Quantization,
    check_group_size,
    default_destination,
)
from training.contract.layout import Workspace
from training.contract.model_source import folder_source, resolve_source
from training.evaluate.exporting import (
    PerplexityCheck,
    export_source,
    quantizable_sizes,
    store_perplexities,
)
from training.metrics.checkpoint_table import checkpoint_table

ROOT = Path(__file__).resolve().parents[2]


def copy_workspace(workspace: Workspace, tmp_path: Path) -> Workspace:
    shutil.copytree(workspace.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def folder_bytes(folder: Path, pattern: str = "*") -> int:
    """Bytes of the files that make the model (the model card aside: it is prose)."""
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.name != "README.md")


def test_4bit_export_loads_is_under_35_percent_of_float16_and_is_measured(
    quant_workspace: Workspace, tmp_path: Path
) -> None:
    import contextlib
    import io

    from mlx_lm import generate, load
    from mlx_lm.convert import convert

    ws = copy_workspace(quant_workspace, tmp_path)
    source = resolve_source(ws, QUANT_RUN_ID, "final")
    quant = Quantization(4, 64)
    check = PerplexityCheck(run_eval_text(ws.run(QUANT_RUN_ID), ws.root), num_samples=-1)
    result = export_source(
        source,
        default_destination(ws, source, "model", quant),
        "model",
        ws,
        quantization=quant,
        perplexity=check,
    )
    assert result.path == ws.exports_dir / f"{QUANT_RUN_ID}-final-4bit"
    model, tokenizer = load(str(result.path))
    assert generate(model, tokenizer, "def ", max_tokens=4)
    config = json.loads((result.path / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}

    # The float16 export to compare with: mlx-lm's own conversion of the same model.
    float16 = tmp_path / "float16"
    with contextlib.redirect_stdout(io.StringIO()):
        convert(str(source.model), str(float16), dtype="float16")
    whole = folder_bytes(result.path) / folder_bytes(float16)
    weights = folder_bytes(result.path, "*.safetensors") / folder_bytes(float16, "*.safetensors")
    assert whole < 0.35 and weights < 0.35, (whole, weights)

    measured = result.perplexity
    assert measured is not None and measured["data_label"] == "val"
    before, after = measured["unquantized"], measured["quantized"]
    assert before["tokens"] == after["tokens"] > 1000  # the same packed text
    assert after["perplexity"] == pytest.approx(before["perplexity"], rel=0.1)
    card = (result.path / "README.md").read_text()
    assert "- 4-bit" in card and "## Quantization" in card
    assert f"{after['perplexity']:.4f} quantized, {before['perplexity']:.4f} unquantized" in card

    # Stored with the run: the checkpoint table shows both, the export's marked.
    assert store_perplexities(result, "job-1") is not None
    (final,) = [
        r for r in checkpoint_table(ws.run(QUANT_RUN_ID))["rows"] if r["checkpoint"] == "final"
    ]
    plain, quantized = final["perplexity"]
    assert plain["perplexity"] == before["perplexity"] and "quantization" not in plain
    assert quantized["quantization"] == quant.to_json()
    assert quantized["perplexity"] == after["perplexity"]
    assert quantized["export"] == str(result.path)


def test_8bit_export_from_the_command_line_is_within_2_percent(
    quant_workspace: Workspace, tmp_path: Path
) -> None:
    ws = copy_workspace(quant_workspace, tmp_path)
    out = tmp_path / "q8"
    done = subprocess.run(
        [sys.executable, "-m", "training.export", "--run", str(ws.run(QUANT_RUN_ID).root),
         "--quantize", "8", "--group-size", "32", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "(8-bit, group size 32)" in done.stdout and "perplexity on val: " in done.stdout
    assert f"mlx_lm.generate --model {out}" in done.stdout
    records = [
        json.loads(line)
        for line in (ws.run(QUANT_RUN_ID).evaluations / "perplexity.jsonl").read_text().splitlines()
    ]
    plain, quantized = records[-2:]
    assert quantized["quantization"] == {"bits": 8, "group_size": 32, "mode": "affine"}
    assert quantized["perplexity"] == pytest.approx(plain["perplexity"], rel=0.02)
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--quantize", "5"], "quantize"),
        (["--quantize", "4", "--group-size", "48"], "group_size"),
        (["--group-size", "32"], "group_size"),
        (["--format", "gguf", "--quantize", "4"], "quantize"),
        (["--format", "adapter", "--quantize", "4"], "quantize"),
        (["--perplexity"], "perplexity"),
        # The tiny model's hidden size is 64: a group of 128 does not divide it.
        (["--quantize", "4", "--group-size", "128"], "group_size"),
    ],
)
def test_bad_export_options_exit_2_and_write_nothing(
    lora_workspace: Workspace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    field: str,
) -> None:
    from training.export import main

    ws = copy_workspace(lora_workspace, tmp_path)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    run = ["--run", LORA_RUN_ID, "--workspace", str(ws.root)]
    assert main([*run, *args]) == 2
    assert capsys.readouterr().err.startswith(f"error ({field}): ")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_gguf_export_reads_back_with_every_tensor_in_its_shape(
    lora_workspace: Workspace, tmp_path: Path
) -> None:
    """A LoRA run's final model, fused, as GGUF: the gguf package's reader finds one tensor
    per weight of the model with its shape, in float16 (norms float32), and the fused
    weights themselves."""
    import mlx.core as mx
    import numpy as np
    from gguf import GGUFReader
    from mlx_lm.gguf import translate_weight_names

    ws = copy_workspace(lora_workspace, tmp_path)
    source = resolve_source(ws, LORA_RUN_ID, "final")
    result = export_source(source, default_destination(ws, source, "gguf"), "gguf", ws)
    assert result.file == result.path / GGUF_FILE
    assert sorted(p.name for p in result.path.iterdir()) == ["README.md", GGUF_FILE]
    fused = export_source(source, tmp_path / "fused", "model", ws)
    weights = mx.load(str(fused.path / "model.safetensors"))

    reader = GGUFReader(str(result.file))
    tensors = {t.name: t for t in reader.tensors}
    expected = {translate_weight_names(name): value for name, value in weights.items()}
    assert len(reader.tensors) == len(tensors) == len(expected) > 0
    assert {name: tuple(t.data.shape) for name, t in tensors.items()} == {
        name: tuple(v.shape) for name, v in expected.items()
    }
    for name, tensor in tensors.items():
        assert tensor.tensor_type.name == ("F32" if "norm" in name else "F16"), name
    # Unpermuted tensors hold the fused weights (LoRA B·A added into the base).
    down = np.array(weights["model.layers.1.mlp.down_proj.weight"].astype(mx.float16))
    assert np.array_equal(tensors["blk.1.ffn_down.weight"].data, down)
    architecture = reader.fields["general.architecture"]
    assert bytes(architecture.parts[architecture.data[0]]).decode() == "llama"
    assert "llama-cli -m" in result.load_command() and result.load_python() is None


def test_gguf_of_another_architecture_is_refused_and_writes_nothing(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    model = tmp_path / "models" / "other"
    shutil.copytree(tiny_assets["model"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    ws = Workspace(tmp_path / "ws")
    dest = tmp_path / "exports" / "other-gguf"
    with pytest.raises(ExportError, match="llama family") as err:
        export_source(folder_source(model), dest, "gguf", ws)
    assert err.value.field == "format"
    assert not (tmp_path / "exports").exists()


def test_group_size_is_checked_against_the_loaded_layers(tiny_assets: dict[str, Path]) -> None:
    """mlx-lm leaves a layer whose input size the group does not divide unquantized, without
    a word: the export refuses instead (the tiny model: hidden 64, MLP 192)."""
    from mlx_lm import load

    model, _ = load(str(tiny_assets["model"]))
    sizes = quantizable_sizes(model)
    assert sorted(set(sizes.values())) == [64, 192]
    check_group_size(32, sizes)
    check_group_size(64, sizes)
    with pytest.raises(ExportError, match="use 32 or 64") as err:
        check_group_size(128, sizes)
    assert err.value.field == "group_size"
