"""`data` as weighted sources: the forms it is written in, defaults, and clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from training.contract.config import (
    ConfigError,
    add_field_arguments,
    build_config,
    cli_values,
    parse_yaml_text,
)
from training.contract.sources import Source

BASE = {"model": "org/model"}


def _data(value: object) -> object:
    return build_config({**BASE, "data": value})[0].data


def _error(layer: dict[str, object]) -> dict[str | None, str]:
    with pytest.raises(ConfigError) as info:
        build_config({**BASE, **layer})
    return {e.field: e.message for e in info.value.errors}


def test_one_path_stays_a_path_and_hashes_as_before() -> None:
    config, _ = build_config({**BASE, "data": "corpora/x.jsonl"})
    assert config.data == "corpora/x.jsonl"
    assert config.sources() == [Source("x", "corpora/x.jsonl", 1.0)]
    assert _data(["corpora/x.jsonl"]) == "corpora/x.jsonl"  # one --data flag
    # text_field at its default leaves the hash of a run from before it existed alone.
    assert config.config_hash() == config.replace(text_field="text").config_hash()
    assert config.config_hash() != config.replace(text_field="content").config_hash()


def test_sources_in_yaml_with_a_remainder_weight_and_default_names() -> None:
    raw = parse_yaml_text(
        "model: m\ndata:\n  - corpora/domain.jsonl\n"
        "  - {path: corpora/general-prose.jsonl, weight: 0.05, name: general}\n"
    )
    config, _ = build_config(raw)
    assert config.data == [
        {"path": "corpora/domain.jsonl", "weight": 0.95, "name": "domain"},
        {"path": "corpora/general-prose.jsonl", "weight": 0.05, "name": "general"},
    ]
    assert [s.weight for s in config.sources()] == [0.95, 0.05]
    # The normalized list round-trips through YAML unchanged.
    assert build_config(parse_yaml_text(config.to_yaml()))[0] == config


def test_the_forms_the_cli_and_the_form_send() -> None:
    parser = argparse.ArgumentParser()
    add_field_arguments(parser)
    args = parser.parse_args(
        ["--model", "m", "--data", "path=a.txt,weight=0.8", "--data", "path=b/,weight=0.2,name=bee"]
    )
    from_cli, _ = build_config(cli_values(args))
    as_json = _data(
        '[{"path": "a.txt", "weight": 0.8}, {"path": "b/", "weight": "0.2", "name": "bee"}]'
    )
    assert (
        from_cli.data
        == as_json
        == [
            {"path": "a.txt", "weight": 0.8, "name": "a"},
            {"path": "b/", "weight": 0.2, "name": "bee"},
        ]
    )
    # Equal shares when no weight is given; a repeated default name gets a suffix.
    assert _data(["x/a.jsonl", "y/a.parquet"]) == [
        {"path": "x/a.jsonl", "weight": 0.5, "name": "a"},
        {"path": "y/a.parquet", "weight": 0.5, "name": "a-2"},
    ]


def test_mlx_lm_text_feature_is_text_field() -> None:
    config, warnings = build_config({**BASE, "data": "d.jsonl", "text_feature": "content"})
    assert config.text_field == "content" and not warnings


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([{"path": "a", "weight": 0.5}, {"path": "b", "weight": 0.7}], "sum to 1.2"),
        ([{"path": "a", "weight": 0.9}, {"path": "b", "weight": 0.3}, "c"], "leaves nothing"),
        ([{"path": "a", "weight": 0}, {"path": "b"}], "source 1 has weight 0"),
        ([{"path": "a", "weight": -0.1}, {"path": "b"}], "weight must be"),
        ([{"path": "a", "weight": "lots"}, {"path": "b"}], "weight must be a number"),
        ([{"path": "a", "weight": True}, {"path": "b"}], "weight must be a number"),
        ([{"path": "a", "name": "val"}, "b"], "reserved"),
        ([{"path": "a", "name": "x"}, {"path": "b", "name": "x"}], "used twice"),
        ([{"path": "a", "name": "no spaces"}, "b"], "must be letters"),
        ([{"path": "a", "wieght": 1}], "unknown key wieght"),
        ([{"weight": 1}], "source 1: needs a path"),
        ([{"path": "a"}, {"path": "b\x00"}], "source 2: the path contains a NUL"),
        (7, "expected a path"),
        ("[{broken", "invalid JSON"),
    ],
)
def test_bad_sources_name_the_field_and_the_source(data: object, fragment: str) -> None:
    errors = _error({"data": data})
    assert fragment in errors["data"]


def test_a_source_name_may_not_be_an_eval_set_name() -> None:
    errors = _error({"data": ["d.jsonl", {"path": "g.jsonl", "weight": 0.1, "name": "general"}],
                     "eval_sets": {"general": "g.jsonl"}})  # fmt: skip
    assert "general names a data source" in errors["eval_sets"]


def test_paths_of_every_source_are_checked(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(ConfigError) as info:
        build_config(
            {"model": "m", "data": ["a.txt", {"path": "gone.txt", "name": "gone"}]},
            check_paths=True,
            base_dir=tmp_path,
        )
    [error] = info.value.errors
    assert error.field == "data" and "source 'gone': not found" in error.message
