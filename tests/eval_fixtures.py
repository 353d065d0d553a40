"""Session fixtures for the evaluation, export and playground tests: a workspace holding a
short LoRA run trained by the real trainer (python -m training.continued_pretraining).

Registered in conftest.py, so every module shares one build per test session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.contract.blas import preload_command
from training.contract.layout import Workspace

ROOT = Path(__file__).resolve().parent.parent
LORA_RUN_ID = "20260101-000000-lora01"
SEQ = 64
# Two checkpoints (steps 5 and 10), evaluations with the general-prose set at 0, 5 and 10.
LORA_CONFIG = {
    "model": "models/scratch-tiny",
    "data": "corpora/python-stdlib.jsonl",
    "eval_sets": {"general": "corpora/general-prose.jsonl"},
    "fine_tune_type": "lora",
    "num_layers": 2,
    "lora_parameters": {"rank": 4, "scale": 20.0},
    "max_seq_length": SEQ,
    "batch_size": 4,
    "iters": 10,
    "learning_rate": 0.02,
    "steps_per_report": 5,
    "steps_per_eval": 5,
    "val_batches": 2,
    "save_every": 5,
    "keep_checkpoints": 0,
}


def worker_env() -> dict[str, str]:
    """The environment EvalJobs gives its workers (OpenBLAS preloaded on Linux), so
    reference numbers computed in a subprocess use the same arithmetic."""
    plan = preload_command([sys.executable], dict(os.environ))
    return plan[1] if plan else dict(os.environ)


# One prompt for the generation-equality tests, so one reference process serves them all.
PROMPT = "def read(path):\n"
MAX_TOKENS = 16
_references: dict[tuple[str, int], dict[str, str]] = {}


def reference_texts(
    ws: Workspace, prompt: str = PROMPT, max_tokens: int = MAX_TOKENS
) -> dict[str, str]:
    """mlx_lm.generate (greedy) of the LoRA run's base and final models, computed in a fresh
    process with the workers' environment: on a tiny random model the logits are nearly
    tied, so the BLAS must match for an exact text. Every workspace in the tests is a copy
    of the session's one run, so the texts are cached by prompt."""
    key = (prompt, max_tokens)
    if key not in _references:
        from training.contract.model_source import resolve_source

        models = {}
        for checkpoint in ("base", "final"):
            source = resolve_source(ws, LORA_RUN_ID, checkpoint)
            adapter = str(source.adapter_path) if source.adapter_path else None
            models[checkpoint] = [str(source.model), adapter]
        code = (
            "import json, sys\n"
            "from mlx_lm import generate, load\n"
            "from mlx_lm.sample_utils import make_sampler\n"
            "a = json.loads(sys.argv[1])\n"
            "out = {}\n"
            "for name, (model, adapter) in a['models'].items():\n"
            "    m, t = load(model, adapter_path=adapter)\n"
            "    greedy = make_sampler(0.0)\n"
            "    out[name] = generate(m, t, a['prompt'], max_tokens=a['n'], sampler=greedy)\n"
            "sys.stdout.write(json.dumps(out))\n"
        )
        args = {"models": models, "prompt": prompt, "n": max_tokens}
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(args)],
            env=worker_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        _references[key] = json.loads(done.stdout)
    return _references[key]


@pytest.fixture(scope="session")
def lora_workspace(
    tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Workspace:
    """A workspace with one finished LoRA run of the real trainer: checkpoints at steps 5
    and 10, final/, eval events with the `general` held-out set. Paths in its config are
    workspace-relative, as the console writes them. Read-only: copy before writing."""
    ws = Workspace(tmp_path_factory.mktemp("lora-ws"))
    shutil.copytree(tiny_assets["model"], ws.root / LORA_CONFIG["model"])
    for key in ("corpus", "general"):
        target = ws.root / "corpora" / tiny_assets[key].name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tiny_assets[key], target)
    config = ws.root / "lora.yaml"
    config.write_text(yaml.safe_dump(LORA_CONFIG))
    run_dir = ws.run(LORA_RUN_ID).root
    done = subprocess.run(
        [sys.executable, "-m", "training.continued_pretraining", "-c", str(config),
         "--run-dir", str(run_dir)],
        cwd=ws.root,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return ws


# A model for the quantization tests: the tiny model's tokenizer (vocab 512) under wider
# layers (hidden 128, MLP 384, 2 blocks, 4 heads of 32), so every group size (32, 64, 128)
# divides every layer and the embedding is a seventh of the weights, not a quarter:
# size ratios mean what they say. Trained for a few steps, so its perplexity (about 210
# against 512 for a uniform guess) has something for quantization to lose.
QUANT_RUN_ID = "20260101-000000-full128"
QUANT_DIMS = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_hidden_layers": 2,
}
QUANT_CONFIG = {
    "model": "models/scratch-128",
    "data": "corpora/python-stdlib.jsonl",
    "fine_tune_type": "full",
    "max_seq_length": SEQ,
    "batch_size": 4,
    "iters": 40,
    "learning_rate": 0.006,
    "warmup_steps": 4,
    "steps_per_report": 10,
    "steps_per_eval": 40,
    "val_batches": 2,
    "save_every": 40,
}


def build_wide_model(tiny: Path, out: Path) -> Path:
    """The tiny scratch model's tokenizer and config with QUANT_DIMS, random-init weights
    as training/scratch.py makes them."""
    import mlx.core as mx

    from training.scratch import init_weights

    out.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(tiny / name, out / name)
    config = {**json.loads((tiny / "config.json").read_text()), **QUANT_DIMS}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    mx.save_safetensors(str(out / "model.safetensors"), init_weights(config, 0), {"format": "mlx"})
    return out


@pytest.fixture(scope="session")
def quant_workspace(
    tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Workspace:
    """A workspace with one finished full run of the real trainer on the wider model:
    final/ is a model folder. Read-only: copy before writing."""
    ws = Workspace(tmp_path_factory.mktemp("quant-ws"))
    build_wide_model(tiny_assets["model"], ws.root / QUANT_CONFIG["model"])
    target = ws.root / "corpora" / tiny_assets["corpus"].name
    target.parent.mkdir(parents=True)
    shutil.copy2(tiny_assets["corpus"], target)
    config = ws.root / "quant.yaml"
    config.write_text(yaml.safe_dump(QUANT_CONFIG))
    done = subprocess.run(
        [sys.executable, "-m", "training.continued_pretraining", "-c", str(config),
         "--run-dir", str(ws.run(QUANT_RUN_ID).root)],
        cwd=ws.root,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return ws
