"""Which folder a run writes to; the decision creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.contract.checkpoints import write_bundle
from training.contract.layout import Workspace
from training.trainer.run_folder import (
    RunFolderError,
    choose_run_folder,
    clear_for_restart,
    workspace_for,
)


def _snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_without_run_dir_a_new_run_in_the_workspace(tmp_path: Path) -> None:
    folder = choose_run_folder(None, False, Workspace(tmp_path))
    assert folder.mode == "new" and folder.root.parent == tmp_path / "runs"
    assert not folder.root.exists()
    with pytest.raises(RunFolderError, match="--resume needs --run-dir"):
        choose_run_folder(None, True, Workspace(tmp_path))


def test_missing_or_empty_is_new_and_console_prepared_is_started(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    assert choose_run_folder(str(tmp_path / "nope"), False, ws).mode == "new"
    run = tmp_path / "run"
    run.mkdir()
    assert choose_run_folder(str(run), False, ws).mode == "new"
    (run / "config.yaml").write_text("model: m\n")
    (run / "run.json").write_text("{}")
    (run / "stdout.log").write_text("")
    assert choose_run_folder(str(run), False, ws).mode == "prepared"


def test_refusals_touch_nothing(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: m\n")
    (run / "metrics.jsonl").write_text('{"seq": 1}\n')
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "cat.jpg").write_bytes(b"\xff")
    before = _snapshot(tmp_path)
    # No checkpoint: both refusals name --restart as the fix.
    with pytest.raises(RunFolderError, match="no complete checkpoint; add --restart"):
        choose_run_folder(str(run), False, ws)
    with pytest.raises(
        RunFolderError, match="no complete checkpoint .* instead of --resume, add --restart"
    ):
        choose_run_folder(str(run), True, ws)
    with pytest.raises(RunFolderError, match="--restart: .* not a run folder"):
        choose_run_folder(str(stranger), False, ws, restart=True)
    with pytest.raises(RunFolderError, match="--restart needs --run-dir"):
        choose_run_folder(None, False, ws, restart=True)
    with pytest.raises(RunFolderError, match="not a run folder"):
        choose_run_folder(str(stranger), False, ws)
    with pytest.raises(RunFolderError, match="not a run folder"):
        choose_run_folder(str(stranger), True, ws)
    assert _snapshot(tmp_path) == before
    write_bundle(
        run / "checkpoints", 3, {}, lambda d: (d / "adapters.safetensors").write_bytes(b"")
    )
    assert choose_run_folder(str(run), True, ws).mode == "resume"
    # With a checkpoint: --resume, never --restart (which would throw it away).
    with pytest.raises(RunFolderError, match="add --resume to continue"):
        choose_run_folder(str(run), False, ws)
    with pytest.raises(RunFolderError, match="has a complete checkpoint .*; use --resume"):
        choose_run_folder(str(run), False, ws, restart=True)


def test_restart_clears_only_what_the_trainer_wrote(tmp_path: Path) -> None:
    """A trainer killed before its first checkpoint: --restart may start it again."""
    ws = Workspace(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints" / ".tmp-step-00000005").mkdir(parents=True)  # an unfinished bundle
    (run / "checkpoints" / ".tmp-step-00000005" / "state.json").write_text("{}")
    (run / "evaluations").mkdir()
    files = {
        "config.yaml": "model: m\n",  # kept (rewritten only when the settings changed)
        "run.json": "{}",  # the console's
        "stdout.log": "Traceback\n",  # the console's
        "evaluations/perplexity.jsonl": "{}\n",  # the evaluation worker's
        ".run.json.abc123.tmp": "{",  # the console may be writing it right now
        "notes.txt": "mine",  # not the trainer's
        "metrics.jsonl": '{"seq": 9}\n',
        "data_report.json": "{}",
        ".data_report.json.x1y2.tmp": "{",
    }
    for name, text in files.items():
        (run / name).write_text(text)
    (run / ".tmp-final-4242").mkdir()
    assert choose_run_folder(str(run), False, ws, restart=True).mode == "restart"
    removed = clear_for_restart(run)
    assert removed == [
        ".data_report.json.x1y2.tmp",
        ".tmp-final-4242",
        "checkpoints",
        "data_report.json",
        "metrics.jsonl",  # last: a restart cut short still finds no checkpoint
    ]
    kept = [
        ".run.json.abc123.tmp",
        "config.yaml",
        "evaluations",
        "evaluations/perplexity.jsonl",
        "notes.txt",
        "run.json",
        "stdout.log",
    ]
    assert _snapshot(run) == kept
    assert clear_for_restart(run) == []  # a restart cut short is simply repeated


def test_workspace_from_env_or_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLX_CPT_HOME", raising=False)
    assert workspace_for(str(tmp_path / "ws" / "runs" / "r1")).root == (tmp_path / "ws").resolve()
    monkeypatch.setenv("MLX_CPT_HOME", str(tmp_path / "home"))
    assert workspace_for(str(tmp_path / "ws" / "runs" / "r1")).root == tmp_path / "home"


def test_one_trainer_per_folder_and_no_file_added(tmp_path: Path) -> None:
    import os

    from training.trainer.run_folder import create_run_folder, lock_run_folder

    run = tmp_path / "run"
    held = create_run_folder(run)
    try:
        with pytest.raises(RunFolderError, match="in use by another trainer"):
            lock_run_folder(run)
        with pytest.raises(FileExistsError):
            create_run_folder(run)
        assert list(run.iterdir()) == []  # the console's listing sees the folder as it was
    finally:
        os.close(held)
    os.close(lock_run_folder(run))  # released with its descriptor (or the process)
