"""Carrying a model forward with the real trainer (issue 12): the New run page's LR plot is
the trainer's schedule at every step, a wsd run extended decays again at its new end, a
run initialized from another starts where it ended, and samples come back the same after
a resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.console_helpers import make_workspace
from tests.trainer_helpers import events, run_trainer, write_config
from web.app import create_app

pytestmark = pytest.mark.slow

WSD = {
    "fine_tune_type": "full",
    "lr_schedule": "wsd",
    "warmup_steps": 2,
    "decay_steps": 4,
    "decay_shape": "1-sqrt",
    "min_learning_rate": 1e-4,
    "iters": 10,
}
SAMPLED = {
    "fine_tune_type": "lora",
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "steps_per_eval": 3,
    "sample_prompts": ["def ", "import os\n"],
    "sample_max_tokens": 6,
}


def _ok(proc: Any) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def runs(tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The runs the tests read: a wsd run, then extended; a sampled lora run straight to
    step 6, and the same run to step 3, then extended to 6."""
    ws = tmp_path_factory.mktemp("carry")
    out: dict[str, Any] = {"ws": ws}
    wsd = write_config(ws / "wsd.yaml", tiny_assets, **WSD)
    _ok(run_trainer(ws, "-c", wsd, "--run-dir", ws / "runs" / "wsd"))
    out["wsd_first"] = {r["step"]: r["learning_rate"] for r in events(ws / "runs" / "wsd", "train")}
    _ok(run_trainer(ws, "--resume", "--run-dir", ws / "runs" / "wsd", "--iters", "16"))
    sampled = write_config(ws / "sampled.yaml", tiny_assets, **SAMPLED, iters=6)
    _ok(run_trainer(ws, "-c", sampled, "--run-dir", ws / "runs" / "straight"))
    _ok(run_trainer(ws, "-c", sampled, "--run-dir", ws / "runs" / "extended", "--iters", "3"))
    _ok(run_trainer(ws, "--resume", "--run-dir", ws / "runs" / "extended", "--iters", "6"))
    return out


def _plot(config: dict[str, Any], total_steps: int) -> dict[int, float]:
    """The New run page's LR plot: what POST /api/config/lr_schedule answers."""
    root = make_workspace(Path(config["_ws"]) / "console")
    app = create_app({"WORKSPACE": root, "TOKEN": "t", "TESTING": True})
    try:
        body = {
            "config": {k: v for k, v in config.items() if not k.startswith("_")},
            "total_steps": total_steps,
            "max_points": total_steps,
        }
        res = app.test_client().post(
            "/api/config/lr_schedule", json=body, headers={"Authorization": "Bearer t"}
        )
        assert res.status_code == 200, res.get_data(as_text=True)
        data = res.get_json()
    finally:
        app.extensions["console"].close()
    return dict(zip(data["steps"], data["learning_rates"], strict=True))


def test_the_lr_plot_is_the_trainers_schedule_and_wsd_extends(runs: dict[str, Any]) -> None:
    config = {**WSD, "learning_rate": 3e-3, "_ws": runs["ws"]}  # tests/trainer_helpers TINY
    first = runs["wsd_first"]
    plot10 = _plot(config, 10)
    assert sorted(first) == sorted(plot10) == list(range(1, 11))
    for step, rate in first.items():
        assert rate == pytest.approx(plot10[step], rel=1e-5, abs=1e-9), step
    assert first[10] == pytest.approx(1e-4)  # decayed to the floor on the last step
    # Extended to 16 steps: the stable phase went on, and the decay came again at the end.
    after = {r["step"]: r["learning_rate"] for r in events(runs["ws"] / "runs" / "wsd", "train")}
    plot16 = _plot(config, 16)
    for step in range(11, 17):
        assert after[step] == pytest.approx(plot16[step], rel=1e-5, abs=1e-9), step
    assert after[11] == after[12] == pytest.approx(3e-3)
    assert after[16] == pytest.approx(1e-4) and after[13] > after[14] > after[15]
    starts = events(runs["ws"] / "runs" / "wsd", "run_start")
    assert [s["total_steps"] for s in starts] == [10, 16] and starts[1]["resumed_from"] == 10


def _samples(run_dir: Path) -> dict[tuple[int, str], str]:
    return {(r["step"], r["prompt"]): r["text"] for r in events(run_dir, "sample")}


def test_samples_at_each_evaluation_come_back_the_same_after_a_resume(
    runs: dict[str, Any],
) -> None:
    straight = _samples(runs["ws"] / "runs" / "straight")
    extended = _samples(runs["ws"] / "runs" / "extended")
    prompts = SAMPLED["sample_prompts"]
    assert sorted(straight) == sorted((s, p) for s in (0, 3, 6) for p in prompts)
    assert extended == straight  # step 6 was written by the resumed trainer
    assert all(isinstance(t, str) for t in straight.values())
    assert any(straight[(6, p)] != straight[(0, p)] for p in prompts)  # it learned something


@pytest.mark.parametrize(
    ("source", "kind"), [("straight", "lora"), ("wsd", "full")], ids=["lora", "full"]
)
def test_a_run_initialized_from_another_starts_where_it_ended(
    source: str, kind: str, runs: dict[str, Any], tiny_assets: dict[str, Path]
) -> None:
    ws = runs["ws"]
    values = SAMPLED if kind == "lora" else {**WSD, "sample_prompts": ["def "]}
    config = write_config(
        ws / f"child-{kind}.yaml", tiny_assets, **{**values, "iters": 1, "init_from": source}
    )
    child = ws / "runs" / f"child-{kind}"
    _ok(run_trainer(ws, "-c", config, "--run-dir", child))
    last = events(ws / "runs" / source, "eval")[-1]
    first = events(child, "eval")[0]
    assert first["step"] == 0
    assert first["val_loss"] == pytest.approx(last["val_loss"], abs=1e-5)
    start = events(child, "run_start")[0]
    lineage = start["initialized_from"]
    assert lineage["run_id"] == source and lineage["checkpoint"] == "final"
    assert lineage["step"] == last["step"] and lineage["fine_tune_type"] == kind
    # Greedy samples of the same weights: the child's step 0 is the source's last.
    theirs = _samples(ws / "runs" / source)
    for (step, prompt), text in _samples(child).items():
        if step == 0 and (last["step"], prompt) in theirs:
            assert text == theirs[(last["step"], prompt)]


def _validate(ws: Path, config: dict[str, Any]) -> dict[str, Any]:
    """What POST /api/config/validate answers for `config`."""
    root = make_workspace(ws / "console")
    app = create_app({"WORKSPACE": root, "TOKEN": "t", "TESTING": True})
    try:
        res = app.test_client().post(
            "/api/config/validate", json={"config": config}, headers={"Authorization": "Bearer t"}
        )
        assert res.status_code == 200, res.get_data(as_text=True)
        data: dict[str, Any] = res.get_json()
    finally:
        app.extensions["console"].close()
    assert data["ok"], data["errors"]
    return data


@pytest.mark.parametrize(
    ("run", "case"),
    [("wsd", "full, batch 2 x 64, tiny llama"), ("straight", "lora, batch 2 x 64, tiny llama")],
    ids=["full", "lora"],
)
def test_the_memory_estimate_is_within_25_percent_of_the_measured_peak(
    run: str, case: str, runs: dict[str, Any], tiny_assets: dict[str, Path]
) -> None:
    values = WSD if run == "wsd" else SAMPLED
    config = yaml.safe_load(
        write_config(runs["ws"] / f"estimate-{run}.yaml", tiny_assets, **values).read_text()
    )
    est = _validate(runs["ws"], config)["memory_estimate"]
    parts = ("weights", "gradients", "optimizer_state", "activations", "logits", "overhead")
    assert est["total"] == sum(est[p] for p in parts) and all(est[p] >= 0 for p in parts)
    assert est["machine"] > 0 and est["fits"] is True
    peak = max(r["peak_memory"] for r in events(runs["ws"] / "runs" / run, "train")) * 1e9
    assert 0.75 <= est["total"] / peak <= 1.25, (case, est["total"], peak)
    if run == "straight":  # lora trains a sliver of the parameters
        assert est["trainable_parameters"] < est["parameters"] / 5
        assert est["gradients"] < est["weights"] / 5
