"""training.evaluation: generation and perplexity against mlx-lm's own functions, real MLX."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval_fixtures import LORA_RUN_ID
from training.contract.layout import Workspace
from training.contract.model_source import resolve_source
from training.evaluate.generation import GenerationSettings, Token, generate_tokens
from training.evaluate.models import EvaluationError, LoadedModel, load_model, load_source
from training.evaluate.perplexity import (
    DEFAULT_DATA_SEED,
    evaluate_perplexity,
    held_out_documents,
    pack_documents,
    read_eval_documents,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lora_model(lora_workspace: Workspace) -> LoadedModel:
    """The LoRA run's final model: a trained model, so its numbers are not those of a
    uniform random model that any implementation would match."""
    return load_source(resolve_source(lora_workspace, LORA_RUN_ID, "final"))


def test_greedy_generation_equals_mlx_lm_generate(lora_model: LoadedModel) -> None:
    from mlx_lm import generate
    from mlx_lm.sample_utils import make_sampler

    prompt = "def read_config(path):\n"
    settings = GenerationSettings(max_tokens=24, temp=0.0, seed=3)
    pieces = list(generate_tokens(lora_model, prompt, settings))
    expected = generate(
        lora_model.model, lora_model.tokenizer, prompt, max_tokens=24, sampler=make_sampler(0.0)
    )
    assert "".join(p.text for p in pieces) == expected
    assert len(expected) > 0
    assert pieces[-1].finish_reason in ("length", "stop")


def test_sampling_is_reproducible_from_the_seed(lora_model: LoadedModel) -> None:
    settings = GenerationSettings(max_tokens=16, temp=1.0, top_p=0.9, seed=7)

    def text(s: GenerationSettings) -> str:
        return "".join(t.text for t in generate_tokens(lora_model, "import ", s))

    first = text(settings)
    assert text(settings) == first
    others = {text(GenerationSettings(16, 1.0, 0.9, seed)) for seed in (8, 9, 10)}
    assert others != {first}  # the seed really drives sampling


def test_generation_stops_when_asked(lora_model: LoadedModel) -> None:
    seen: list[Token] = []
    for token in generate_tokens(
        lora_model, "class ", GenerationSettings(max_tokens=50), lambda: len(seen) >= 3
    ):
        seen.append(token)
    assert len(seen) == 4 and seen[-1].finish_reason == "stopped"


def test_perplexity_equals_mlx_lm_perplexity(
    lora_model: LoadedModel, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlx_lm.perplexity's own load_data + eval_ppl on the same model and documents.

    Only load_data's file reading is replaced (it reads through Hugging Face `datasets`,
    not a dependency here) by mlx-lm's own TextDataset over the same documents. Token
    tensors must be identical; the perplexities then come from the same float32 forward
    passes in the same batches, so they agree to float32 rounding of the mean: 1e-6
    relative is ~10x the spread seen, and far below anything a person would read."""
    import mlx.core as mx
    import mlx_lm.perplexity as mlx_ppl
    import numpy as np
    from mlx_lm.tuner.datasets import TextDataset

    docs = read_eval_documents(tiny_assets["general"])
    monkeypatch.setattr(
        mlx_ppl,
        "load_dataset",
        lambda args, tokenizer: (TextDataset([{"text": d} for d in docs], tokenizer), [], []),
    )
    np.random.seed(DEFAULT_DATA_SEED)
    reference = mlx_ppl.load_data(
        lora_model.tokenizer, "general", num_samples=24, sequence_length=64
    )
    ours = pack_documents(lora_model.tokenizer, docs, 64, num_samples=24)
    assert ours.shape == reference.shape == (24, 64)
    assert mx.array_equal(ours, reference)

    ppl, se = mlx_ppl.eval_ppl(lora_model.model, reference, batch_size=8)
    progress: list[tuple[int, int]] = []
    result = evaluate_perplexity(lora_model.model, ours, 8, lambda d, t: progress.append((d, t)))
    assert result is not None
    assert result.perplexity == pytest.approx(ppl, rel=1e-6)
    assert result.standard_error == pytest.approx(se, rel=1e-4)
    assert math.log(result.perplexity) == pytest.approx(result.loss, rel=1e-9)
    assert result.tokens == 24 * 63
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_lora_training_lowered_domain_perplexity(
    lora_model: LoadedModel, lora_workspace: Workspace, tiny_assets: dict[str, Path]
) -> None:
    """Base vs final on the domain text: the number moves the way training says it should."""
    base = load_source(resolve_source(lora_workspace, LORA_RUN_ID, "base"))
    docs = read_eval_documents(tiny_assets["corpus"])
    data = pack_documents(base.tokenizer, docs, 64, num_samples=16)
    before = evaluate_perplexity(base.model, data)
    after = evaluate_perplexity(lora_model.model, data)
    assert before is not None and after is not None
    assert after.perplexity < before.perplexity


def test_short_text_is_one_short_row(lora_model: LoadedModel) -> None:
    data = pack_documents(lora_model.tokenizer, ["def f(): pass"], 512, num_samples=-1)
    assert data.shape[0] == 1 and 2 <= data.shape[1] < 512


@pytest.mark.parametrize(
    ("make", "field", "words"),
    [
        (lambda p: p / "missing.txt", "data", "not found"),
        (lambda p: (p / "empty.txt").write_text("  \n") and p / "empty.txt", "data", "empty"),
        (lambda p: (p / "x.bin").write_bytes(b"\0\1") and p / "x.bin", "data", "unsupported"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path: Path, make, field: str, words: str) -> None:
    with pytest.raises(EvaluationError) as err:
        read_eval_documents(make(tmp_path))
    assert err.value.field == field and words in str(err.value)


def test_mlx_lm_data_folder_reads_valid_jsonl(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "training text"}) + "\n")
    (tmp_path / "valid.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    assert read_eval_documents(tmp_path) == ["held out"]


def test_model_that_does_not_load(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="no model folder"):
        load_model(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(EvaluationError, match="could not load") as err:
        load_model(broken)
    assert err.value.field == "model"


def test_prompt_over_the_context_length(lora_model: LoadedModel) -> None:
    limit = lora_model.context_length
    assert limit == 4096
    with pytest.raises(EvaluationError, match="context length") as err:
        list(generate_tokens(lora_model, "x " * 9000, GenerationSettings(max_tokens=2)))
    assert err.value.field == "prompt"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.evaluation", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_perplexity_and_generate(
    tiny_assets: dict[str, Path], lora_workspace: Workspace
) -> None:
    final = lora_workspace.run(LORA_RUN_ID).final
    model = str(tiny_assets["model"])
    out = _cli(
        "perplexity",
        "--model",
        model,
        "--adapter-path",
        str(final),
        "--data",
        str(tiny_assets["general"]),
        "--sequence-length",
        "64",
        "--num-samples",
        "8",
    )
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("perplexity: ") and float(last.split(": ")[1]) > 1
    gen = _cli(
        "generate",
        "--model",
        model,
        "--adapter-path",
        str(final),
        "--prompt",
        "def ",
        "--max-tokens",
        "5",
    )
    assert gen.returncode == 0, gen.stderr
    # A tiny model's greedy continuation may well be blanks: text, all the same.
    assert gen.stdout.rstrip("\n") and "tokens" in gen.stderr


def test_cli_bad_input_exits_2(tmp_path: Path, tiny_assets: dict[str, Path]) -> None:
    (tmp_path / "empty.txt").write_text("")
    out = _cli(
        "perplexity", "--model", str(tiny_assets["model"]), "--data", str(tmp_path / "empty.txt")
    )
    assert out.returncode == 2
    assert "error (data)" in out.stderr and "empty" in out.stderr


def test_run_validation_set_is_the_trainers_held_out_documents(
    lora_workspace: Workspace, lora_model: LoadedModel
) -> None:
    """`val` of a run without a validation file: the documents the trainer held out, so
    their token count (EOS after each) equals the run's data report."""
    from training.console.eval_requests import EvalContext, run_eval_data

    report = json.loads(lora_workspace.run(LORA_RUN_ID).data_report.read_text())
    text = run_eval_data(EvalContext(lora_workspace, [lora_workspace.root]), LORA_RUN_ID, "val")
    assert text.holdout_fraction == 0.05
    docs = held_out_documents(read_eval_documents(text.path), text.holdout_fraction)
    assert len(docs) == report["validation"]["documents"]
    tokens = sum(len(lora_model.tokenizer.encode(d)) + 1 for d in docs)
    assert tokens == report["validation"]["tokens"]
