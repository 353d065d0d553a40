"""The scratch model: built offline, loadable and usable by mlx-lm's own tools."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.scratch import EOS_TOKEN, build_scratch_model, main


def test_tiny_model_loads_and_generates_with_mlx_lm(tiny_assets):
    from mlx_lm import generate, load

    model_dir = tiny_assets["model"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["hidden_size"] <= 128 and config["num_hidden_layers"] == 2
    assert config["vocab_size"] <= 512
    model, tokenizer = load(str(model_dir))
    assert tokenizer.eos_token == EOS_TOKEN
    assert tokenizer.eos_token_id == config["eos_token_id"]
    ids = tokenizer.encode("def main():\n    return 0\n")
    assert tokenizer.decode(ids) == "def main():\n    return 0\n"  # byte-level: lossless
    text = generate(model, tokenizer, "import os", max_tokens=5)
    assert isinstance(text, str) and len(tokenizer.encode(text)) >= 1


def test_same_seed_same_weights(tmp_path: Path, tiny_assets):
    import mlx.core as mx

    a = build_scratch_model(tiny_assets["corpus"], tmp_path / "a", seed=3)
    b = build_scratch_model(tiny_assets["corpus"], tmp_path / "b", seed=3)
    wa = mx.load(str(a / "model.safetensors"))
    wb = mx.load(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(mx.array_equal(wa[k], wb[k]).item() for k in wa)


def test_refuses_to_overwrite_and_bad_corpus_creates_nothing(tmp_path: Path, tiny_assets, capsys):
    assert main(["--corpus", str(tiny_assets["corpus"]), "--out", str(tiny_assets["model"])]) == 2
    assert "already exists" in capsys.readouterr().err
    out = tmp_path / "never"
    assert main(["--corpus", str(tmp_path / "none.txt"), "--out", str(out)]) == 2
    assert "corpus not found" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_size(tmp_path: Path, tiny_assets):
    with pytest.raises(ValueError, match="unknown size"):
        build_scratch_model(tiny_assets["corpus"], tmp_path / "m", size="huge")
