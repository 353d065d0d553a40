"""Build a small random-init llama model and a BPE tokenizer, offline.

The result is an ordinary Hugging Face-format model folder (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) that `mlx_lm.load`
reads, so the demo and the tests need no download.

    python -m training.scratch --corpus PATH --out DIR [--size tiny|small]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from training.contract.corpus import CorpusError, find_corpus, read_documents

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"

# tiny trains in seconds on a CPU (the tests' size); small is the demo's.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "vocab_size": 512,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 192,
    },
    "small": {
        "vocab_size": 4096,
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "intermediate_size": 768,
    },
}
MAX_POSITIONS = 4096
# Enough text to learn merges; more only slows the tokenizer training down.
TOKENIZER_SAMPLE_CHARS = 4_000_000


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE tokenizer (every string encodes; no unknown token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_sample(texts), trainer=trainer)
    return tokenizer


def _sample(texts: Iterable[str]) -> Iterator[str]:
    budget = TOKENIZER_SAMPLE_CHARS
    for text in texts:
        if budget <= 0:
            return
        yield text[:budget]
        budget -= len(text)


def model_config(size: str, tokenizer: Any) -> dict[str, Any]:
    dims = dict(SIZES[size])
    dims["vocab_size"] = tokenizer.get_vocab_size()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **dims,
        "head_dim": dims["hidden_size"] // dims["num_attention_heads"],
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": tokenizer.token_to_id(EOS_TOKEN),
        "pad_token_id": tokenizer.token_to_id(PAD_TOKEN),
        "torch_dtype": "float32",
    }


def init_weights(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Random weights in the layout mlx-lm's llama expects (GPT-2 style N(0, 0.02))."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights: dict[str, Any] = {}
    params: Any = tree_flatten(model.parameters())
    for name, value in params:
        if name.endswith("norm.weight"):
            weights[name] = mx.ones(value.shape, dtype=mx.float32)
        else:
            weights[name] = 0.02 * mx.random.normal(value.shape, dtype=mx.float32)
    mx.eval(weights)
    return weights


def build_scratch_model(
    corpus: str | Path, out: str | Path, size: str = "tiny", seed: int = 0
) -> Path:
    """Write a loadable model folder at `out` (atomically: a crash leaves nothing)."""
    import mlx.core as mx

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another --out or remove it")
    files = find_corpus(corpus)
    tokenizer = train_tokenizer(read_documents(files.train), SIZES[size]["vocab_size"])
    config = model_config(size, tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp)
        tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "eos_token": EOS_TOKEN,
                    "pad_token": PAD_TOKEN,
                    "model_max_length": MAX_POSITIONS,
                    "clean_up_tokenization_spaces": False,
                },
                indent=2,
            )
        )
        (staging / "special_tokens_map.json").write_text(
            json.dumps({"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}, indent=2)
        )
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        mx.save_safetensors(
            str(staging / "model.safetensors"), init_weights(config, seed), {"format": "mlx"}
        )
        (staging / "README.md").write_text(
            f"# Scratch model ({size})\n\nRandom-init llama built offline by "
            f"`python -m training.scratch` from `{Path(corpus).name}` (seed {seed}).\n"
        )
        staging.chmod(0o755)
        staging.rename(out)
        # TemporaryDirectory's cleanup must not fail on the renamed folder.
        staging.mkdir()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.scratch",
        description="Build a small random-init llama + BPE tokenizer from a corpus, offline.",
    )
    parser.add_argument("--corpus", required=True, help="text file, folder or mlx-lm data folder")
    parser.add_argument("--out", required=True, help="model folder to create (must not exist)")
    parser.add_argument("--size", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = build_scratch_model(args.corpus, args.out, args.size, args.seed)
    except (CorpusError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
