"""metrics/checkpoint_table.py: the checkpoint table and the forgetting sets of a run folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.eval_fixtures import LORA_RUN_ID
from training.contract.checkpoints import write_bundle
from training.contract.layout import Workspace
from training.metrics.checkpoint_table import checkpoint_table, eval_losses, final_losses
from training.metrics.evaluations import PERPLEXITY_FILE, append_evaluation


def test_eval_losses_name_every_held_out_set() -> None:
    # The trainer's keys: protocol.eval_set_keys("general") = val_general_loss/_ppl.
    trainer = {
        "event": "eval",
        "step": 5,
        "val_loss": 2.0,
        "val_ppl": 7.4,
        "val_general_loss": 3.5,
        "val_general_ppl": 33.1,
    }
    flat = {"event": "eval", "step": 5, "val_loss": 2.0, "general_loss": 3.5}
    nested = {"event": "eval", "step": 5, "val_loss": 2.0, "eval_sets": {"general": {"loss": 3.5}}}
    expected = {"val": 2.0, "general": 3.5}
    assert eval_losses(trainer) == eval_losses(flat) == eval_losses(nested) == expected


def test_checkpoint_table(lora_workspace: Workspace, tmp_path: Path) -> None:
    shutil.copytree(lora_workspace.root, tmp_path / "ws")
    run = Workspace(tmp_path / "ws").run(LORA_RUN_ID)
    # A half-written tail line is "not yet", never an error.
    with run.metrics.open("a") as f:
        f.write('{"event": "eval", "step": 15, "val_lo')
    append_evaluation(run, {"checkpoint": "step-00000005", "perplexity": 42.0, "data_label": "val"})

    table = checkpoint_table(run)
    assert table["sets"] == ["val", "general"]  # the forgetting monitor's set, by name
    rows = {r["checkpoint"]: r for r in table["rows"]}
    assert list(rows) == ["step-00000005", "step-00000010", "final"]
    assert rows["step-00000005"]["step"] == 5 and rows["final"]["step"] == 10
    assert set(rows["step-00000010"]["losses"]) == {"val", "general"}
    assert rows["step-00000005"]["perplexity"][0]["perplexity"] == 42.0
    assert all(r["size"] > 0 for r in rows.values())
    best = [name for name, r in rows.items() if r["best"]]
    val = {n: r["losses"]["val"] for n, r in rows.items() if n != "final"}
    assert best == [min(val, key=val.__getitem__)]

    # A folder without state.json is not a complete bundle.
    (run.checkpoints / "step-00000020").mkdir()
    assert len(checkpoint_table(run)["rows"]) == 3


def test_final_losses_for_the_model_card(lora_workspace: Workspace) -> None:
    summary = final_losses(lora_workspace.run(LORA_RUN_ID))
    assert summary["train"]["step"] == 10
    assert summary["eval"]["step"] == 10 and "general" in summary["eval"]["losses"]
    assert summary["run_start"]["data"]["documents"] > 0
    json.dumps(summary)  # the card and the API serialise it


def test_a_result_for_a_deleted_run_recreates_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    run = ws.run("20260101-000000-gone01")
    with pytest.raises(FileNotFoundError):
        append_evaluation(run, {"checkpoint": "final", "perplexity": 3.0})
    assert not ws.runs_dir.exists()


def test_checkpoint_table_from_the_runs_index_reads_no_metrics_line(
    lora_workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/runs/<id>/evaluations comes on every checkpoint, eval and status row of an
    open run page: it takes the eval and status rows from the run's index."""
    import training.metrics.checkpoint_table as table_module
    from training.console.run_store import RunStore

    shutil.copytree(lora_workspace.root, tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    run = ws.run(LORA_RUN_ID)
    expected = checkpoint_table(run)
    metrics = RunStore(ws).metrics(LORA_RUN_ID)
    real = table_module.read_events

    def no_metrics_file(path: Path):
        assert path != run.metrics, "the whole metrics.jsonl was parsed"
        return real(path)

    monkeypatch.setattr(table_module, "read_events", no_metrics_file)
    assert checkpoint_table(run, metrics) == expected


def test_a_damaged_run_folder_gives_what_can_be_read(tmp_path: Path) -> None:
    run = Workspace(tmp_path / "ws").run("20260101-000000-dmg001")
    write_bundle(run.checkpoints, 5, {}, lambda d: (d / "adapters.safetensors").write_bytes(b"w"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"x" * 50_000)
    (outside / "state.json").write_text('{"step": 999}')
    # final/ leading out of the run is no final model.
    run.final.symlink_to(outside, target_is_directory=True)
    run.metrics.mkdir()  # a folder where metrics.jsonl belongs
    run.evaluations.mkdir()
    os.mkfifo(run.evaluations / PERPLEXITY_FILE)
    table = checkpoint_table(run)
    assert [r["checkpoint"] for r in table["rows"]] == ["step-00000005"]
    assert {u["file"] for u in table["unreadable"]} == {
        "metrics.jsonl",
        f"evaluations/{PERPLEXITY_FILE}",
    }
    # A real final/ holding a link: the link's target is neither read nor counted.
    run.final.unlink()
    run.final.mkdir()
    (run.final / "model.safetensors").symlink_to(outside / "model.safetensors")
    (run.final / "state.json").symlink_to(outside / "state.json")
    (run.final / "config.json").write_text("{}")
    rows = {r["checkpoint"]: r for r in checkpoint_table(run)["rows"]}
    assert rows["final"]["size"] == 2 and rows["final"]["step"] != 999
    # A result never goes through a link out of the run.
    (run.evaluations / PERPLEXITY_FILE).unlink()
    (run.evaluations / PERPLEXITY_FILE).symlink_to(outside / "state.json")
    with pytest.raises(OSError):
        append_evaluation(run, {"checkpoint": "final", "perplexity": 3.0})
    assert (outside / "state.json").read_text() == '{"step": 999}'
