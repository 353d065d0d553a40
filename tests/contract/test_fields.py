"""The field registry is internally consistent and agrees with the docs and mlx-lm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.contract.config import RunConfig
from training.contract.field_values import check_bounds, coerce
from training.contract.fields import (
    FIELDS,
    FIELDS_BY_NAME,
    GROUPS,
    IGNORED_MLX_LM_KEYS,
    MLX_LM_ALIASES,
    README_END,
    README_START,
    settings_markdown,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spec", FIELDS, ids=lambda s: s.name)
def test_field_is_documented_and_consistent(spec):
    assert spec.help.strip().endswith((".", ")")), "help must be a full sentence"
    assert spec.group in GROUPS
    assert spec.importance in ("essential", "important", "advanced")
    if spec.type == "choice":
        assert spec.choices and spec.default in spec.choices
    if spec.default is not None:
        # The default passes the field's own coercion and bounds.
        assert coerce(spec, spec.default) == spec.default
        assert check_bounds(spec, spec.default) is None
    if spec.depends_on:
        other = FIELDS_BY_NAME[spec.depends_on.field]
        if other.type == "bool":  # a switch: shown while it is on (or off)
            assert set(spec.depends_on.values) <= {True, False}
        else:
            assert other.choices and set(spec.depends_on.values) <= set(other.choices)
    assert spec.flag.startswith("--") and " " not in spec.flag


def test_names_and_flags_are_unique():
    assert len({f.name for f in FIELDS}) == len(FIELDS)
    assert len({f.flag for f in FIELDS}) == len(FIELDS)


def test_registry_serializes_for_the_api():
    payload = json.loads(json.dumps([f.to_json() for f in FIELDS]))
    assert {p["name"] for p in payload} == set(FIELDS_BY_NAME)
    rank = next(p for p in payload if p["name"] == "lora_parameters.rank")
    assert rank["depends_on"] == {"field": "fine_tune_type", "values": ["lora", "dora"]}


def test_every_mlx_lm_setting_is_a_field_or_ignored_with_a_reason():
    from mlx_lm.lora import CONFIG_DEFAULTS

    parents = {name.split(".")[0] for name in FIELDS_BY_NAME}
    unknown = set(CONFIG_DEFAULTS) - parents - set(IGNORED_MLX_LM_KEYS) - set(MLX_LM_ALIASES)
    assert not unknown, f"mlx-lm keys neither supported nor ignored: {unknown}"
    # The nested mlx-lm lora mapping maps onto our dotted fields.
    for key in CONFIG_DEFAULTS["lora_parameters"]:
        assert f"lora_parameters.{key}" in FIELDS_BY_NAME


def test_readme_settings_reference_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0]
    assert block.strip() == settings_markdown().strip(), (
        "README settings reference is stale: run `python -m training.contract.fields`"
    )
    for spec in FIELDS:
        assert f"`{spec.name}`" in block


def test_defaults_make_a_config_with_every_field():
    config = RunConfig.from_values({})
    assert set(config.to_dict()) == set(FIELDS_BY_NAME)
