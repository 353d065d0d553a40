"""The trainer's chunked cross-entropy against mlx-lm's default_loss, in one process.

    .venv/bin/python bench/chunked_loss.py [--vocab 65536] [--batch 4] [--seq 512] [--steps 6]

A scratch llama (hidden 256, 2 layers, vocabulary 65,536: 18.5M parameters, the input
embedding tied to the output) is fully fine-tuned with AdamW through the trainer's own
compiled step (trainer/loop.py make_step), once per loss, from the same weights on the same
random batches. Per loss: peak memory (mx.get_peak_memory, what the trainer reports as
peak_memory), tokens per second over the steps after the first (which compiles), and the
loss of every step. Printed: both, the ratios, and the largest per-step loss difference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.contract.blas import blas_in_use, reexec_with_openblas  # noqa: E402

reexec_with_openblas()  # as the trainer does: OpenBLAS preloaded on Linux

import mlx.core as mx  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402
from mlx_lm.models import llama  # noqa: E402

from training.trainer.loop import default_loss, make_step  # noqa: E402
from training.trainer.loss import make_loss  # noqa: E402


def build(vocab: int) -> Any:
    args = llama.ModelArgs.from_dict(
        {
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "intermediate_size": 768,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True,
            "max_position_embeddings": 4096,
        }
    )
    mx.random.seed(0)
    return llama.Model(args)


def run(
    model: Any, init: list[tuple[str, np.ndarray]], loss: Any, batches: list[Any]
) -> dict[str, Any]:
    model.update(tree_unflatten([(k, mx.array(v)) for k, v in init]))
    model.train()
    optimizer = optim.AdamW(learning_rate=1e-3, weight_decay=0.01)
    optimizer.init(model.trainable_parameters())
    mx.eval(model.parameters(), optimizer.state)
    mx.clear_cache()
    mx.reset_peak_memory()
    _, update, state = make_step(model, optimizer, loss, 1, 1.0)
    losses, tokens, seconds = [], 0, 0.0
    for i, (batch, lengths) in enumerate(batches):
        tic = time.perf_counter()
        value, ntoks, norm, _ = update(batch, lengths, None, mx.array(0.0), mx.array(1.0))
        mx.eval(state, value, norm)
        elapsed = time.perf_counter() - tic
        losses.append(float(value.item()))
        if i > 0:  # the first step traces and compiles
            tokens += int(ntoks.item())
            seconds += elapsed
    return {
        "peak_gb": mx.get_peak_memory() / 1e9,
        "tokens_per_second": tokens / seconds,
        "losses": losses,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocab", type=int, default=65536)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="old/new alternations")
    args = parser.parse_args()

    model = build(args.vocab)
    flat: Any = tree_flatten(model.parameters())
    init = [(k, np.array(v)) for k, v in flat]
    params = sum(v.size for _, v in init)
    rng = np.random.default_rng(0)
    batches = [
        (
            mx.array(rng.integers(0, args.vocab, (args.batch, args.seq + 1), dtype=np.int32)),
            mx.array(np.tile(np.array([[1, args.seq]], dtype=np.int32), (args.batch, 1))),
        )
        for _ in range(args.steps)
    ]
    new_loss, how = make_loss(model)
    print(
        f"model: {params / 1e6:.1f}M parameters, vocabulary {args.vocab}; batch "
        f"{args.batch} x {args.seq}; {args.steps} steps; {how}; "
        f"device {mx.default_device()}; BLAS: {blas_in_use()}"
    )
    results: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        results["old"].append(run(model, init, default_loss, batches))
        results["new"].append(run(model, init, new_loss, batches))
    old, new = results["old"], results["new"]
    peak_old = max(r["peak_gb"] for r in old)
    peak_new = max(r["peak_gb"] for r in new)
    tps_old = max(r["tokens_per_second"] for r in old)
    tps_new = max(r["tokens_per_second"] for r in new)
    diff = max(abs(a - b) for a, b in zip(old[0]["losses"], new[0]["losses"], strict=True))
    print(f"{'loss':28} {'peak memory':>12} {'tokens/s':>10}")
    print(f"{'mlx-lm default_loss (old)':28} {peak_old:>10.3f} GB {tps_old:>10.0f}")
    print(f"{'chunked cross-entropy (new)':28} {peak_new:>10.3f} GB {tps_new:>10.0f}")
    print(f"peak memory new/old: {peak_new / peak_old:.3f}")
    print(f"tokens per second new/old: {tps_new / tps_old:.3f} (best of {args.rounds} rounds)")
    print(f"largest per-step loss difference: {diff:.2e}")
    print("losses old:", " ".join(f"{x:.6f}" for x in old[0]["losses"]))
    print("losses new:", " ".join(f"{x:.6f}" for x in new[0]["losses"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
