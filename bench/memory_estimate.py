"""The memory estimate (training/contract/memory.py) against the real trainer's peak_memory.

    .venv/bin/python bench/memory_estimate.py --model DIR --data PATH [--steps 3]
        [--case NAME:KEY=VALUE,KEY=VALUE ...]

For each case the trainer runs a few steps in a temporary workspace; the estimate (what
POST /api/config/validate returns as memory_estimate) is printed beside the largest
`peak_memory` of its train events, with the ratio. Without --case, a grid of full and LoRA
runs at a few batch sizes and lengths.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.contract.config import build_config  # noqa: E402
from training.contract.memory import estimate_memory  # noqa: E402

GRID = {
    "full b2 L64": {"fine_tune_type": "full", "batch_size": 2, "max_seq_length": 64},
    "full b8 L256": {"fine_tune_type": "full", "batch_size": 8, "max_seq_length": 256},
    "full b4 L512 ckpt": {
        "fine_tune_type": "full",
        "batch_size": 4,
        "max_seq_length": 512,
        "grad_checkpoint": True,
    },
    "lora b2 L64": {"fine_tune_type": "lora", "batch_size": 2, "max_seq_length": 64},
    "lora b8 L256": {"fine_tune_type": "lora", "batch_size": 8, "max_seq_length": 256},
    "dora b4 L512 r16": {
        "fine_tune_type": "dora",
        "batch_size": 4,
        "max_seq_length": 512,
        "lora_parameters": {"rank": 16},
    },
}


def parse_case(text: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = text.partition(":")
    values: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, _, value = pair.partition("=")
        values[key] = (
            json.loads(value) if value[:1].isdigit() or value in ("true", "false") else value
        )
    return name, values


def measure(model: str, data: str, values: dict[str, Any], steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        config = {
            "model": model,
            "data": data,
            "iters": steps,
            "learning_rate": 1e-4,
            "steps_per_report": 1,
            "steps_per_eval": 1000,
            "val_batches": 2,
            "save_every": 1000,
            **values,
        }
        (ws / "config.yaml").write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MLX_CPT_HOME": str(ws)}
        proc = subprocess.run(
            [sys.executable, "-m", "training.continued_pretraining", "-c", "config.yaml",
             "--run-dir", str(ws / "runs" / "r")],
            cwd=ws, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(proc.stdout + proc.stderr)
        rows = [json.loads(line) for line in (ws / "runs" / "r" / "metrics.jsonl").open()]
        return max(r["peak_memory"] for r in rows if r["event"] == "train") * 1e9


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--case", action="append", default=[])
    args = parser.parse_args()
    cases = dict(parse_case(c) for c in args.case) if args.case else GRID
    model_config = json.loads((Path(args.model) / "config.json").read_text())
    print(f"model {args.model}")
    print(f"{'case':22} {'estimate':>10} {'measured':>10} {'ratio':>6}  parts (MB)")
    for name, values in cases.items():
        config, _ = build_config({"model": args.model, "data": args.data, **values})
        est = estimate_memory(model_config, config)
        assert est is not None
        peak = measure(args.model, args.data, values, args.steps)
        parts = " ".join(
            f"{k[:5]} {est[k] / 1e6:.1f}"
            for k in ("weights", "gradients", "optimizer_state", "activations", "logits")
        )
        print(
            f"{name:22} {est['total'] / 1e6:>8.1f}MB {peak / 1e6:>8.1f}MB "
            f"{est['total'] / peak:>6.2f}  {parts}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
