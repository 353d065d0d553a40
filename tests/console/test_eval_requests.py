"""The console's checks of evaluation requests (training/console/eval_requests.py), without a
worker: what an export may replace, which run a perplexity job names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.console_helpers import make_workspace
from training.console.eval_requests import EvalContext, RequestError, export_job, perplexity_job
from training.contract.layout import Workspace

RUN_ID = "20260101-000000-aaaaaa"
BASE = {"run_id": RUN_ID, "checkpoint": "base"}
CARD = "---\nlibrary_name: mlx\ntags:\n- mlx\n- continued-pretraining\n---\n\n# a model\n"


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EvalContext:
    home = tmp_path / "home"
    (home / "documents").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    ws = Workspace(make_workspace(home / "ws").resolve())
    run = ws.run(RUN_ID)
    run.root.mkdir(parents=True)
    # The base model lives outside every protected folder, so no "overlaps the model being
    # exported" refusal hides a missing guard.
    hub = tmp_path / "hub"
    shutil.copytree(ws.root / "models", hub)
    run.config.write_text(f"model: {hub / 'tiny'}\ndata: corpus.txt\n")
    extra = tmp_path / "shared"
    extra.mkdir()
    return EvalContext(ws, [ws.root, home, extra])


def _export(ctx: EvalContext, dest: str, overwrite: bool = True) -> dict:
    return export_job(ctx, {"model": BASE, "format": "model", "dest": dest, "overwrite": overwrite})


@pytest.mark.parametrize("dest", [".", "runs", "~", "..", "../..", "{shared}", "/"])
def test_export_never_replaces_the_workspace_runs_home_or_a_browse_root(
    ctx: EvalContext, dest: str
) -> None:
    dest = dest.format(shared=ctx.roots[2])
    with pytest.raises(RequestError) as err:
        _export(ctx, dest)
    assert err.value.field == "dest" and err.value.status == 400, err.value


def test_export_replaces_only_a_folder_that_looks_like_an_export(ctx: EvalContext) -> None:
    root = ctx.workspace.root
    notes = root / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("my notes\n")
    (notes / "config.json").write_text("{}")
    for overwrite in (False, True):
        with pytest.raises(RequestError) as err:
            _export(ctx, "notes", overwrite)
        assert err.value.field == "dest" and err.value.status == 400
    # A model folder that is not one of our exports (no model card) is not replaced either.
    downloaded = Path.home() / "documents" / "mlx-community-model"
    downloaded.mkdir()
    (downloaded / "README.md").write_text("---\nlibrary_name: mlx\n---\n# a model\n")
    (downloaded / "config.json").write_text("{}")
    with pytest.raises(RequestError) as err:
        _export(ctx, str(downloaded))
    assert err.value.field == "dest"

    old = root / "exports" / "old"
    old.mkdir(parents=True)
    (old / "README.md").write_text(CARD)
    (old / "adapter_config.json").write_text("{}")
    with pytest.raises(RequestError) as err:
        _export(ctx, "exports/old", overwrite=False)
    assert err.value.field == "overwrite" and err.value.status == 409
    assert err.value.extra["dest"] == str(old)  # the dialog names the folder it replaces
    assert _export(ctx, "exports/old")["dest"] == str(old)
    assert _export(ctx, "exports/new")["dest"] == str(root / "exports" / "new")
    empty = root / "exports" / "empty"
    empty.mkdir()
    assert _export(ctx, "exports/empty", overwrite=False)["dest"] == str(empty)


@pytest.mark.parametrize(
    ("run_id", "status"), [(["x"], 400), ("../etc", 400), ("no-such-run", 404), (7, 400)]
)
def test_perplexity_run_id_is_checked(ctx: EvalContext, run_id: object, status: int) -> None:
    body = {"model": {"path": "models/tiny"}, "data": {"set": "val"}, "run_id": run_id}
    with pytest.raises(RequestError) as err:
        perplexity_job(ctx, body)
    assert err.value.status == status and err.value.field == "run_id"


def test_a_run_linked_out_of_the_workspace_is_not_found(ctx: EvalContext, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.copytree(ctx.workspace.run(RUN_ID).root, outside)
    (ctx.workspace.runs_dir / "linked-out").symlink_to(outside)
    for body in (
        {"model": {"run_id": "linked-out", "checkpoint": "base"}, "data": {"set": "val"}},
        {"model": {"path": "models/tiny"}, "data": {"set": "val"}, "run_id": "linked-out"},
    ):
        with pytest.raises(RequestError) as err:
            perplexity_job(ctx, body)
        assert err.value.status == 404 and "no run 'linked-out'" in str(err.value)
