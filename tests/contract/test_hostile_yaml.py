"""The config loader against hostile YAML: every file that could take memory, recurse or
build a value no config has is a ConfigError naming `config`, at once; mlx-lm's files
still load as mlx-lm loads them (tests/contract/test_config.py)."""

from __future__ import annotations

import time

import pytest

from training.contract.config import ConfigError, build_config, parse_yaml_text
from training.contract.limits import MAX_PATH_CHARS, MAX_YAML_BYTES

LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]"
            for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)

HOSTILE = {
    # 228 bytes that expand to 9^9 strings: the console once spent 4 GB on this.
    "billion laughs": (LAUGHS, "more than 64 aliases"),
    # 54 aliases, within the budget, that still stand for 9^7 strings.
    "fewer laughs": ("\n".join(LAUGHS.splitlines()[:7]), "expands to more than"),
    "many aliases": ("a: &a 1\nb: [" + ", ".join(["*a"] * 100) + "]", "aliases"),
    "self reference": ("x: &m [*m]", "inside the node it names"),
    "self reference in a mapping": ("x: &m {a: *m}", "inside the node it names"),
    "self merge": ("x: &m {<<: *m}", "inside the node it names"),
    "deep flow": ("x: " + "[" * 5000 + "]" * 5000, "nested deeper"),
    "deep block": ("".join("  " * i + f"k{i}:\n" for i in range(200)), "nested deeper"),
    "binary": ("x: !!binary aGVsbG8=", "tag:yaml.org,2002:binary is not allowed"),
    "set": ("x: !!set {a, b}", "tag:yaml.org,2002:set is not allowed"),
    "omap": ("x: !!omap [a: 1]", "tag:yaml.org,2002:omap is not allowed"),
    "pairs": ("x: !!pairs [a: 1]", "tag:yaml.org,2002:pairs is not allowed"),
    "python object": ("x: !!python/object/apply:os.system [ls]", "not allowed"),
    "python name": ("x: !!python/name:os.system", "not allowed"),
    "custom tag": ("x: !secret value", "the tag !secret is not allowed"),
    "custom tag on a mapping": ("x: !thing {a: 1}", "the tag !thing is not allowed"),
    "int over Python's digit limit": ("x: " + "9" * 5000, "invalid YAML"),
    "bad explicit int": ("x: !!int abc", "invalid YAML"),
    "unhashable key": ("? [1, 2]\n: 3", "unhashable"),
    "too large": ("x: " + "a" * MAX_YAML_BYTES, "over 256 KB"),
    "too large in UTF-8": ("x: " + "é" * (MAX_YAML_BYTES // 2 + 1), "over 256 KB"),
}


@pytest.mark.parametrize("text, words", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_yaml_is_a_config_error_at_once(text: str, words: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_yaml_text(text)
    assert time.monotonic() - started < 2.0
    [error] = info.value.errors
    assert error.field == "config" and words in error.message, error.message


def test_what_a_config_may_hold_still_loads() -> None:
    text = """
model: org/model
data: corpus
learning_rate: 1e-5
lr_schedule: &schedule {name: cosine_decay, arguments: [1e-5, 1000, 1e-7], warmup: 10}
optimizer_config: {adamw: {betas: [0.9, 0.95]}}
project_name: 2024-01-01
base: &base {rank: 8}
lora_parameters:
  <<: *base
  scale: 20.0
copy: *schedule
plain: !!str 12
"""
    raw = parse_yaml_text(text)
    assert raw["learning_rate"] == 1e-5
    assert raw["lora_parameters"] == {"rank": 8, "scale": 20.0}
    assert raw["copy"] == raw["lr_schedule"]
    assert raw["project_name"] == "2024-01-01"  # timestamps stay text (JSON has no dates)
    assert raw["plain"] == "12"


def test_a_few_aliases_within_the_budget_load() -> None:
    raw = parse_yaml_text("a: &a [1, 2]\nb: [*a, *a, *a]\n")
    assert raw["b"] == [[1, 2]] * 3


@pytest.mark.parametrize(
    "value, words",
    [
        ("a\x00b", "NUL"),
        ("a\ud800b", "lone surrogate"),
        ("x" * (MAX_PATH_CHARS + 1), f"longer than {MAX_PATH_CHARS}"),
        ("dir/" + "x" * 300, "longer than 255 bytes"),
    ],
)
def test_paths_that_name_no_file_are_field_errors(value: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"model": "org/model", "data": value})
    errors = {e.field: e.message for e in info.value.errors}
    assert words in errors["data"]


def test_unusual_home_folders_and_long_names_are_field_errors(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        build_config(
            {"model": "~nosuchuser-xyz/model", "data": "~nosuchuser-xyz/data"},
            check_paths=True,
            base_dir=tmp_path,
        )
    assert {e.field for e in info.value.errors} == {"model", "data"}


def test_error_messages_quote_values_briefly() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"model": "m", "data": "d", "iters": "x" * 100_000})
    assert len(str(info.value)) < 500
