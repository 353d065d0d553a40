"""Quantized exports: sizes and perplexity against the unquantized model and against
mlx-lm's own float16 conversion (the peer), for 4 and 8 bits and each group size.

Builds, offline, the tiny scratch model (hidden 64, 2 blocks, vocab 512) and a wider one
with its tokenizer (hidden 128, MLP 384, 2 blocks, vocab 512: the tests' quantization
model), trains each for a few steps with the real trainer (full fine-tuning), then exports
each run's final model with `training.evaluate.exporting.export_source` (quantized, and
measured on the run's validation text as the console does) and converts it with
`mlx_lm.convert --dtype float16`. Prints one table row per export: whole folder and
weights-only size as a share of the float16 conversion and of the trained (float32)
model, and the perplexity change against the unquantized model on the same tokens.

    .venv/bin/python bench/export_sizes.py [--steps 40]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WIDE = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "num_hidden_layers": 2,
}


def wide_model(tiny: Path, out: Path) -> Path:
    import mlx.core as mx

    from training.scratch import init_weights

    out.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy2(tiny / name, out / name)
    config = {**json.loads((tiny / "config.json").read_text()), **WIDE}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    mx.save_safetensors(str(out / "model.safetensors"), init_weights(config, 0), {"format": "mlx"})
    return out


def train(ws: Path, model: Path, corpus: Path, run_id: str, steps: int) -> Path:
    import yaml

    config = {
        "model": str(model),
        "data": str(corpus),
        "fine_tune_type": "full",
        "max_seq_length": 64,
        "batch_size": 4,
        "iters": steps,
        "learning_rate": 0.006,
        "warmup_steps": 4,
        "steps_per_report": 10,
        "steps_per_eval": steps,
        "val_batches": 2,
        "save_every": steps,
    }
    path = ws / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = ws / "runs" / run_id
    subprocess.run(
        [sys.executable, "-m", "training.continued_pretraining", "-c", str(path),
         "--run-dir", str(run_dir)],
        cwd=ws, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True,
    )  # fmt: skip
    return run_dir


def size(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.name != "README.md")


def measure(ws_root: Path, run_id: str, groups: list[int]) -> list[dict[str, Any]]:
    from mlx_lm.convert import convert

    from training.contract.eval_text import run_eval_text
    from training.contract.exports import Quantization
    from training.contract.layout import Workspace
    from training.contract.model_source import resolve_source
    from training.evaluate.exporting import PerplexityCheck, export_source

    ws = Workspace(ws_root)
    source = resolve_source(ws, run_id, "final")
    float16 = ws_root / "f16" / run_id
    with contextlib.redirect_stdout(io.StringIO()):
        convert(str(source.model), str(float16), dtype="float16")
    check = PerplexityCheck(run_eval_text(ws.run(run_id), ws.root), num_samples=-1)
    rows = []
    for bits in (4, 8):
        for group in groups:
            quant = Quantization(bits, group)
            dest = ws.exports_dir / f"{run_id}-{bits}-{group}"
            result = export_source(source, dest, "model", ws, quantization=quant, perplexity=check)
            assert result.perplexity is not None
            before = result.perplexity["unquantized"]["perplexity"]
            after = result.perplexity["quantized"]["perplexity"]
            rows.append(
                {
                    "run": run_id,
                    "bits": bits,
                    "group": group,
                    "bytes": size(dest),
                    "of_f16": size(dest) / size(float16),
                    "weights_of_f16": size(dest, "*.safetensors") / size(float16, "*.safetensors"),
                    "of_f32": size(dest, "*.safetensors") / size(source.model, "*.safetensors"),
                    "ppl": after,
                    "ppl_unquantized": before,
                    "change": after / before - 1,
                    "tokens": result.perplexity["quantized"]["tokens"],
                }
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    from training.demo import build_demo

    with tempfile.TemporaryDirectory(prefix="export-sizes-") as tmp:
        ws = Path(tmp)
        assets = build_demo(ws, size="tiny", domain_bytes=400_000, general_bytes=60_000)
        wide = wide_model(assets["model"], ws / "models" / "scratch-128")
        rows = []
        for run_id, model, groups in (
            ("tiny-64", assets["model"], [32, 64]),  # 128 does not divide hidden 64
            ("wide-128", wide, [32, 64, 128]),
        ):
            train(ws, model, assets["corpus"], run_id, args.steps)
            rows += measure(ws, run_id, groups)
    print(
        "| model | bits | group | bytes | of float16 (folder) | of float16 (weights) "
        "| of float32 (weights) | perplexity | unquantized | change |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['run']} | {r['bits']} | {r['group']} | {r['bytes']:,} | {r['of_f16']:.1%} "
            f"| {r['weights_of_f16']:.1%} | {r['of_f32']:.1%} | {r['ppl']:.3f} "
            f"| {r['ppl_unquantized']:.3f} | {r['change']:+.2%} |"
        )
    print(f"(perplexity on the run's validation text, {rows[-1]['tokens']:,} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
