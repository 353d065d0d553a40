"""training.export: exported runs load with mlx_lm.load and generate; nothing is clobbered."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval_fixtures import LORA_RUN_ID
from training.contract.exports import ExportError, default_destination
from training.contract.layout import Workspace
from training.contract.model_source import SourceError, resolve_source
from training.evaluate.exporting import ExportResult, export_source

ROOT = Path(__file__).resolve().parents[2]


def export_run(
    workspace: Workspace,
    run_id: str,
    checkpoint: str | int | None = None,
    *,
    fmt: str = "model",
    dest: Path | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """What the export job does: resolve the run's checkpoint, then export it."""
    source = resolve_source(workspace, run_id, checkpoint)
    target = dest if dest is not None else default_destination(workspace, source, fmt)
    return export_source(source, target, fmt, workspace, overwrite=overwrite)


@pytest.fixture
def workspace(lora_workspace: Workspace, tmp_path: Path) -> Workspace:
    """A private copy: exports write into the workspace."""
    shutil.copytree(lora_workspace.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def _logits(model, tokenizer, text: str):
    import mlx.core as mx

    return model(mx.array([tokenizer.encode(text)]))


def test_fused_lora_export_loads_and_generates_like_the_adapter(workspace: Workspace) -> None:
    import mlx.core as mx
    from mlx_lm import generate, load

    result = export_run(workspace, LORA_RUN_ID, "final")
    assert result.path == workspace.exports_dir / f"{LORA_RUN_ID}-final"
    assert not (result.path / "adapter_config.json").exists()  # a plain model folder

    fused, tokenizer = load(str(result.path))
    run = workspace.run(LORA_RUN_ID)
    base = json.loads((result.path / "config.json").read_text())
    adapted, _ = load(str(Path(_base_model(workspace))), adapter_path=str(run.final))
    prompt = "def parse(text):\n    "
    # Fusing W + scale * B A is exact up to float32 rounding.
    diff = mx.abs(_logits(fused, tokenizer, prompt) - _logits(adapted, tokenizer, prompt)).max()
    assert diff.item() < 1e-3
    text = generate(fused, tokenizer, prompt, max_tokens=12)
    assert text and text == generate(adapted, tokenizer, prompt, max_tokens=12)
    assert base["model_type"] == "llama"

    card = (result.path / "README.md").read_text()
    for expected in (
        "library_name: mlx",
        "## Training data",
        "- documents: ",
        "## Final losses",
        "held-out set `general` loss",
        "fine_tune_type: lora",
        '"mlx-lm"',
    ):
        assert expected in card


def _base_model(workspace: Workspace) -> str:
    return str(resolve_source(workspace, LORA_RUN_ID, "base").model)


def test_adapter_export_of_a_checkpoint(workspace: Workspace) -> None:
    from mlx_lm import generate, load

    result = export_run(workspace, LORA_RUN_ID, 5, fmt="adapter")
    assert sorted(p.name for p in result.path.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapters.safetensors",
    ]
    model, tokenizer = load(_base_model(workspace), adapter_path=str(result.path))
    assert generate(model, tokenizer, "import ", max_tokens=4)
    assert "adapter_path=" in (result.path / "README.md").read_text()


def test_never_overwrites_without_confirmation(workspace: Workspace) -> None:
    dest = workspace.root / "mine"
    export_run(workspace, LORA_RUN_ID, "final", fmt="adapter", dest=dest)
    (dest / "keep.txt").write_text("an earlier export")
    with pytest.raises(ExportError) as err:
        export_run(workspace, LORA_RUN_ID, "final", fmt="adapter", dest=dest)
    assert err.value.field == "overwrite"
    assert (dest / "keep.txt").read_text() == "an earlier export"
    assert [p.name for p in workspace.root.iterdir() if p.name.startswith(".mine")] == []

    export_run(workspace, LORA_RUN_ID, "final", fmt="adapter", dest=dest, overwrite=True)
    assert not (dest / "keep.txt").exists() and (dest / "adapters.safetensors").is_file()
    assert [p.name for p in workspace.root.iterdir() if p.name.startswith(".mine")] == []


def test_never_replaces_a_folder_that_is_not_an_export(workspace: Workspace) -> None:
    dest = workspace.root / "notes"
    dest.mkdir()
    (dest / "keep.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="not an earlier export") as err:
            export_run(
                workspace, LORA_RUN_ID, "final", fmt="adapter", dest=dest, overwrite=overwrite
            )
        assert err.value.field == "dest"
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("checkpoint", "dest", "fmt", "field"),
    [
        ("step-00000099", None, "model", "checkpoint"),
        ("nonsense", None, "model", "checkpoint"),
        ("final", "runs/x", "model", "dest"),
        ("final", None, "zip", "format"),
    ],
)
def test_bad_requests_touch_nothing(
    workspace: Workspace, checkpoint: str, dest: str | None, fmt: str, field: str
) -> None:
    before = sorted(str(p) for p in workspace.root.rglob("*"))
    with pytest.raises((ExportError, SourceError)) as err:
        export_run(
            workspace,
            LORA_RUN_ID,
            checkpoint,
            fmt=fmt,
            dest=workspace.root / dest if dest else None,
        )
    assert err.value.field == field  # type: ignore[union-attr]
    assert sorted(str(p) for p in workspace.root.rglob("*")) == before


def test_full_run_exports_its_model_folder(
    workspace: Workspace, tiny_assets: dict[str, Path]
) -> None:
    """A full run's final/ is a model folder: the export is that folder plus a model card."""
    from mlx_lm import load

    run = workspace.run("20260101-000000-full01")
    run.root.mkdir(parents=True)
    shutil.copytree(tiny_assets["model"], run.final)
    run.config.write_text(f"model: {tiny_assets['model']}\ndata: x\nfine_tune_type: full\n")
    result = export_run(workspace, run.run_id)
    assert load(str(result.path))
    assert "model.safetensors" in {p.name for p in result.path.iterdir()}
    with pytest.raises(ExportError) as err:
        export_run(workspace, run.run_id, fmt="adapter")
    assert err.value.field == "format"

    # A full run's checkpoint is an mlx-lm adapter folder holding the trained weights
    # (fine_tune_type full, contract/checkpoints.py): exported as a standalone model.
    import mlx.core as mx

    bundle = run.checkpoints / "step-00000002"
    bundle.mkdir(parents=True)
    weights = mx.load(str(tiny_assets["model"] / "model.safetensors"))
    changed = {k: v * 0.5 if "layers.1." in k else v for k, v in weights.items()}
    mx.save_safetensors(str(bundle / "adapters.safetensors"), changed)
    (bundle / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "full", "num_layers": -1, "model": str(tiny_assets["model"])})
    )
    (bundle / "state.json").write_text(json.dumps({"step": 2}))
    exported = export_run(workspace, run.run_id, 2)
    assert not (exported.path / "adapter_config.json").exists()
    model, tokenizer = load(str(exported.path))
    reference, _ = load(str(tiny_assets["model"]), adapter_path=str(bundle))
    diff = mx.abs(_logits(model, tokenizer, "x = 1") - _logits(reference, tokenizer, "x = 1"))
    assert diff.max().item() < 1e-5
    with pytest.raises(ExportError):
        export_run(workspace, run.run_id, 2, fmt="adapter")  # weights, not LoRA adapters


def test_cli(workspace: Workspace, tmp_path: Path) -> None:
    run_dir = workspace.run(LORA_RUN_ID).root
    out = tmp_path / "cli-export"
    cmd = [
        sys.executable,
        "-m",
        "training.export",
        "--run",
        str(run_dir),
        "--format",
        "adapter",
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "adapter_path=" in done.stdout and (out / "adapters.safetensors").is_file()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_cli_exports_a_run_folder_outside_any_workspace(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.export import main

    elsewhere = tmp_path / "elsewhere" / "my-run"
    shutil.copytree(workspace.run(LORA_RUN_ID).root, elsewhere)
    config = elsewhere / "config.yaml"
    config.write_text(config.read_text().replace("models/scratch-tiny", _base_model(workspace)))
    home = tmp_path / "home"
    monkeypatch.setenv("MLX_CPT_HOME", str(home))
    assert main(["--run", str(elsewhere), "--format", "adapter"]) == 0
    exported = home / "exports" / "my-run-final-adapter"
    assert (exported / "adapters.safetensors").is_file()
    assert "## Final losses" in (exported / "README.md").read_text()  # the run's own metrics
    assert main(["--run", str(elsewhere), "--out", str(elsewhere / "x")]) == 2


def test_cli_refuses_to_replace_the_workspace_home_or_a_non_export_folder(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The command line applies the console's guard (export.check_replaceable): exit 2,
    a message naming the folder, nothing touched."""
    from training.export import main

    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "notes" / "todo.txt").write_text("precious")
    monkeypatch.setenv("HOME", str(home))
    run = ["--run", LORA_RUN_ID, "--workspace", str(workspace.root), "--format", "adapter"]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for out, says in (
        (workspace.root, "is the workspace"),
        (workspace.root.parent, "contains the workspace"),
        (home, "is your home folder"),
        (home / "notes", "is not an earlier export"),
    ):
        assert main([*run, "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error (dest): ") and says in err, err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
