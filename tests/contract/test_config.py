"""RunConfig: precedence, coercion, validation messages, YAML round-trip, argparse bridge."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.contract.config import (
    ConfigError,
    RunConfig,
    add_field_arguments,
    build_config,
    cli_values,
    parse_yaml_text,
    read_yaml,
)
from training.contract.fields import FIELDS

ROOT = Path(__file__).resolve().parents[2]

BASE = {"model": "org/model", "data": "corpus.txt"}


def errors_of(*layers, **kwargs) -> dict[str | None, str]:
    with pytest.raises(ConfigError) as info:
        build_config(*layers, **kwargs)
    return {e.field: e.message for e in info.value.errors}


def test_precedence_defaults_then_yaml_then_cli():
    yaml_layer = {**BASE, "learning_rate": 1e-4, "batch_size": 8}
    cli_layer = {"batch_size": 2, "seed": None}  # None = not given: never overrides
    config, _ = build_config(yaml_layer, cli_layer)
    assert config.learning_rate == 1e-4
    assert config.batch_size == 2
    assert config.seed == 0
    assert config.max_seq_length == 2048


def test_yaml_exponent_without_dot_is_a_float(tmp_path: Path):
    # PyYAML's YAML 1.1 reads 1e-5 as a string; mlx-lm configs are full of them.
    path = tmp_path / "c.yaml"
    path.write_text("model: org/m\ndata: d.txt\nlearning_rate: 1e-5\n")
    config, _ = build_config(read_yaml(path))
    assert config.learning_rate == pytest.approx(1e-5)


def test_mlx_lm_config_loads_with_warnings_for_ignored_keys():
    text = """
model: mlx-community/Llama-3.2-1B-Instruct-4bit
train: true
fine_tune_type: lora
optimizer: adamw
data: data
seed: 0
num_layers: 8
batch_size: 4
iters: 600
val_batches: 25
learning_rate: 1e-5
steps_per_report: 10
steps_per_eval: 200
adapter_path: adapters
save_every: 100
test: false
test_batches: 100
max_seq_length: 2048
grad_checkpoint: false
lr_schedule:
  name: cosine_decay
  warmup: 100
  warmup_init: 1e-7
  arguments: [1e-5, 1000, 1e-7]
lora_parameters:
  keys: ["self_attn.q_proj", "self_attn.v_proj"]
  rank: 8
  scale: 20.0
  dropout: 0.0
"""
    config, warnings = build_config(parse_yaml_text(text))
    assert config.fine_tune_type == "lora"
    assert config.lr_schedule == {
        "name": "cosine_decay",
        "arguments": [1e-5, 1000.0, 1e-7],
        "warmup": 100,
        "warmup_init": 1e-7,
    }
    assert config.lora_parameters() == {
        "rank": 8,
        "scale": 20.0,
        "dropout": 0.0,
        "keys": ["self_attn.q_proj", "self_attn.v_proj"],
    }
    assert sorted(w.split("'")[1] for w in warnings) == [
        "adapter_path",
        "test",
        "test_batches",
        "train",
    ]


@pytest.mark.parametrize(
    "changes, field, fragment",
    [
        ({"learning_rate": -1}, "learning_rate", "greater than 0"),
        ({"learning_rate": "fast"}, "learning_rate", "expected a number"),
        ({"batch_size": 0}, "batch_size", "at least 1"),
        ({"batch_size": 2.5}, "batch_size", "whole number"),
        ({"max_seq_length": 4}, "max_seq_length", "at least 8"),
        ({"fine_tune_type": "qlora"}, "fine_tune_type", "one of full, lora, dora"),
        ({"lr_schedule": "cosin"}, "lr_schedule", "one of constant, cosine, linear"),
        ({"lr_schedule": {"name": "nope", "arguments": [1]}}, "lr_schedule", "cosine_decay"),
        ({"num_layers": 0}, "num_layers", "-1"),
        ({"val_fraction": 0.9}, "val_fraction", "at most 0.5"),
        ({"grad_checkpoint": "maybe"}, "grad_checkpoint", "true or false"),
        ({"eval_sets": ["general"]}, "eval_sets", "NAME=VALUE"),
        ({"eval_sets": {"val": "x.txt"}}, "eval_sets", "reserved"),
        ({"iters": 10, "epochs": 2}, "epochs", "only one of"),
        ({"lerning_rate": 1e-3}, "lerning_rate", "did you mean 'learning_rate'"),
        ({"lora_parameters": {"alpha": 16}}, "lora_parameters.alpha", "unknown setting"),
        ({"report_to": "tensorboard,mlflow"}, "report_to", "one of tensorboard, wandb"),
        ({"report_to": ["swanlab"]}, "report_to", "'swanlab'"),
        ({"report_to": 3}, "report_to", "comma-separated"),
    ],
)
def test_bad_values_name_the_field_and_say_why(changes, field, fragment):
    errors = errors_of({**BASE, **changes})
    assert field in errors, errors
    assert fragment in errors[field]


def test_every_problem_is_reported_at_once():
    errors = errors_of({"batch_size": 0, "learning_rate": 0, "bogus": 1})
    assert {"model", "data", "batch_size", "learning_rate", "bogus"} <= set(errors)
    assert "required" in errors["model"]


def test_form_strings_are_coerced():
    config, _ = build_config(
        {
            **BASE,
            "batch_size": "8",
            "learning_rate": "3e-4",
            "grad_checkpoint": "true",
            "iters": "",
            "eval_sets": "general=g.txt\ncode=c.txt",
            "lora_parameters.keys": "self_attn.q_proj, self_attn.v_proj",
        }
    )
    assert (config.batch_size, config.learning_rate, config.grad_checkpoint) == (8, 3e-4, True)
    assert config.iters is None and config.effective_iters == 1000
    assert config.eval_sets == {"general": "g.txt", "code": "c.txt"}
    assert config.get("lora_parameters.keys") == ["self_attn.q_proj", "self_attn.v_proj"]


def test_report_to_takes_mlx_lm_s_format():
    """mlx-lm's report_to is comma-separated text ("wandb,swanlab"); a YAML list works too.
    Names are case-insensitive, each kept once, in order; project_name names the project."""
    for value in ("WandB, tensorboard,wandb", ["wandb", "TensorBoard"]):
        config, warnings = build_config({**BASE, "report_to": value, "project_name": "cpt"})
        assert config.report_to == ["wandb", "tensorboard"] and not warnings
        assert config.project_name == "cpt"
    config, _ = build_config({**BASE, "report_to": ""})
    assert config.report_to is None
    # Trackers may change on resume: they are not part of the config hash.
    assert config.config_hash() == build_config({**BASE, "report_to": "wandb"})[0].config_hash()


@pytest.mark.parametrize(
    "layer",
    [
        BASE,
        {**BASE, "report_to": ["tensorboard", "wandb"], "project_name": "p"},
        {**BASE, "fine_tune_type": "lora", "lora_parameters": {"rank": 4, "keys": ["a.b"]}},
        {**BASE, "epochs": 1.5, "eval_sets": {"general": "g.jsonl"}, "optimizer": "sgd"},
        {**BASE, "lr_schedule": {"name": "cosine_decay", "arguments": [1e-4, 100]}},
        {**BASE, "optimizer_config": {"adamw": {"betas": [0.9, 0.95]}}, "dtype": "bfloat16"},
    ],
)
def test_yaml_round_trips_losslessly(layer):
    config, _ = build_config(layer)
    again, warnings = build_config(parse_yaml_text(config.to_yaml()))
    assert again == config and not warnings
    assert json.loads(json.dumps(config.to_nested())) == config.to_nested()


def test_effective_values():
    full, _ = build_config(BASE)
    lora, _ = build_config({**BASE, "fine_tune_type": "lora"})
    assert full.effective_num_layers == -1
    assert lora.effective_num_layers == 16
    tokens, _ = build_config({**BASE, "train_tokens": 10_000})
    assert tokens.effective_iters is None


def test_config_hash_ignores_only_resumable_fields():
    a, _ = build_config(BASE)
    longer, _ = build_config({**BASE, "iters": 5000, "steps_per_eval": 7, "save_every": 3})
    other_lr, _ = build_config({**BASE, "learning_rate": 1e-3})
    assert a.config_hash() == longer.config_hash()
    assert a.config_hash() != other_lr.config_hash()
    assert a.resume_differences(other_lr) == ["learning_rate"]


def test_argparse_has_a_flag_per_field_and_agrees_with_yaml():
    parser = argparse.ArgumentParser()
    add_field_arguments(parser)
    flags = {a.dest: a.option_strings for a in parser._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in FIELDS}
    args = parser.parse_args(
        [
            "--model", "org/m", "--data", "d.txt", "--learning-rate", "1e-5",
            "--fine-tune-type", "lora", "--lora-rank", "4", "--no-keep-best",
            "--grad-checkpoint", "--eval-set", "general=g.txt", "--eval-set", "code=c.txt",
        ]
    )  # fmt: skip
    from_cli, _ = build_config(cli_values(args))
    from_yaml, _ = build_config(
        parse_yaml_text(
            "model: org/m\ndata: d.txt\nlearning_rate: 1e-5\nfine_tune_type: lora\n"
            "lora_parameters: {rank: 4}\nkeep_best: false\ngrad_checkpoint: true\n"
            "eval_sets: {general: g.txt, code: c.txt}\n"
        )
    )
    assert from_cli == from_yaml


def test_check_paths(tmp_path: Path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    (tmp_path / "c.txt").write_text("hello")
    ok, _ = build_config(
        {"model": "m", "data": "c.txt", "max_seq_length": 512},
        check_paths=True,
        base_dir=tmp_path,
    )
    assert ok.model == "m"
    errors = errors_of(
        {"model": "m", "data": "missing.txt", "max_seq_length": 1024, "eval_sets": {"g": "x"}},
        check_paths=True,
        base_dir=tmp_path,
    )
    assert "over the model's limit of 512" in errors["max_seq_length"]
    assert "not found" in errors["data"]
    assert "set 'g'" in errors["eval_sets"]
    errors = errors_of({"model": "nowhere", "data": "c.txt"}, check_paths=True, base_dir=tmp_path)
    assert "no model folder" in errors["model"]
    errors = errors_of({"model": "c.txt", "data": "c.txt"}, check_paths=True, base_dir=tmp_path)
    assert "is a file" in errors["model"]


def test_full_fine_tuning_of_a_quantized_model_is_a_config_error(tmp_path: Path):
    model = tmp_path / "m-4bit"
    model.mkdir()
    quant = {"group_size": 32, "bits": 4, "mode": "affine"}  # as mlx_lm.convert -q writes it
    (model / "config.json").write_text(
        json.dumps({"quantization": quant, "quantization_config": quant})
    )
    (tmp_path / "c.txt").write_text("hello")
    layer = {"model": "m-4bit", "data": "c.txt"}
    errors = errors_of(layer, check_paths=True, base_dir=tmp_path)  # full is the default
    assert list(errors) == ["fine_tune_type"]
    assert (
        "full cannot train m-4bit: its weights are quantized (4-bit, group size 32)"
        in (errors["fine_tune_type"])
    )
    assert errors["fine_tune_type"].endswith(
        "use lora or dora, or a dequantized copy of the model (mlx_lm.convert --dequantize)"
    )
    for kind in ("lora", "dora"):
        config, _ = build_config(
            {**layer, "fine_tune_type": kind}, check_paths=True, base_dir=tmp_path
        )
        assert config.fine_tune_type == kind
    build_config(layer)  # without the path checks nothing reads the folder
    # A value that is no choice at all is reported once, as that.
    errors = errors_of({**layer, "fine_tune_type": "qlora"}, check_paths=True, base_dir=tmp_path)
    assert list(errors) == ["fine_tune_type"] and "qlora" in errors["fine_tune_type"]


@pytest.mark.parametrize(
    "text, fragment",
    [("[1, 2]", "mapping"), ("a: [", "invalid YAML")],
)
def test_bad_yaml_is_a_config_error(text, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[")):
        parse_yaml_text(text)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="file not found"):
        read_yaml(tmp_path / "none.yaml")


def test_replace_keeps_other_values():
    config = RunConfig.from_values({"model": "m", "data": "d"})
    assert config.replace(iters=5).iters == 5
    assert config.replace(iters=5).model == "m"
    with pytest.raises(TypeError):
        config.replace(nonsense=1)


# What each field type may hold, as RunConfig annotates it (a None default adds "| None").
ANNOTATIONS = {
    "str": {"str"},
    "path": {"str"},
    "int": {"int"},
    "float": {"float"},
    "bool": {"bool"},
    "choice": {"str"},
    "list": {"list[str]"},
    "dict": {"dict[str, str]", "dict[str, Any]"},
    "schedule": {"str | dict[str, Any]"},
    "sources": {"str | list[dict[str, Any]]"},
}


def test_run_config_attributes_are_the_registry_typed() -> None:
    """RunConfig's typed attributes and the registry are one list: same names, same order,
    each annotated for its field's type, optional exactly when the field may be unset."""
    attributes = dataclasses.fields(RunConfig)
    assert [a.name for a in attributes] == [f.attr for f in FIELDS]
    for spec, attribute in zip(FIELDS, attributes, strict=True):
        annotation = str(attribute.type)
        optional = spec.default is None and not spec.required
        base = annotation.removesuffix(" | None")
        assert base in ANNOTATIONS[spec.type], (spec.name, annotation)
        assert annotation.endswith(" | None") == optional, (spec.name, annotation)


def test_a_misspelt_setting_is_a_type_error_for_mypy(tmp_path) -> None:
    """The reason RunConfig is a dataclass: mypy catches config.learing_rate."""
    code = tmp_path / "typo.py"
    code.write_text(
        "from training.contract.config import RunConfig\n"
        "def rate(config: RunConfig) -> float:\n"
        "    return config.learing_rate\n"
    )
    mypy = [sys.executable, "-m", "mypy", "--no-incremental", "--config-file", "pyproject.toml"]
    result = subprocess.run(
        [*mypy, str(code)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1 and '"RunConfig" has no attribute "learing_rate"' in result.stdout
