"""The trainer's command line end to end: real subprocesses, real MLX on the CPU, the tiny
scratch model. Bad input exits 2 and creates nothing; a run learns, reports, checkpoints
and leaves a final/ that mlx-lm loads."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_until
from tests.trainer_helpers import (
    EventCollector,
    events,
    last_step_seen,
    run_trainer,
    snapshot,
    start_trainer,
    train_losses,
    write_config,
)
from training.contract.blas import find_openblas
from training.contract.checkpoints import list_checkpoints, read_latest, write_bundle
from training.contract.config import FIELDS, build_config, cli_values
from training.contract.fields import FieldSpec
from training.contract.protocol import EVENTS
from training.trainer.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


# -- the parser the CLI builds agrees with the registry and with YAML ---------------------------


def _sample(spec: FieldSpec) -> tuple[list[str], Any]:
    """A valid value for a field as CLI words and as the YAML value."""
    if spec.name == "eval_sets":
        return [spec.flag, "general=g.txt"], {"general": "g.txt"}
    if spec.name == "distributed.hosts":
        return [spec.flag, "10.0.0.1,10.0.0.2"], ["10.0.0.1", "10.0.0.2"]
    if spec.name == "distributed.python":
        return [spec.flag, "/usr/bin/python3"], "/usr/bin/python3"
    if spec.name == "distributed.env":
        return [spec.flag, "OMP_NUM_THREADS=1"], {"OMP_NUM_THREADS": "1"}
    if spec.name == "sample_prompts":  # one prompt per flag: a prompt may hold commas
        return [spec.flag, "def f(a, b", spec.flag, "The"], ["def f(a, b", "The"]
    if spec.name == "optimizer_config":
        value = {"adamw": {"betas": [0.9, 0.95]}}
        return [spec.flag, json.dumps(value)], value
    if spec.type == "bool":
        return [spec.flag if not spec.default else "--no-" + spec.flag[2:]], not spec.default
    if spec.type in ("choice", "schedule"):
        choice = spec.choices[-1]  # type: ignore[index]
        return [spec.flag, str(choice)], choice
    if spec.type == "int":
        n = max(3, int(spec.minimum or 0) + 1)
        return [spec.flag, str(n)], n
    if spec.type == "float":
        return [spec.flag, "0.25"], 0.25
    if spec.type == "list" and spec.choices:
        return [spec.flag, ",".join(spec.choices)], list(spec.choices)
    if spec.type == "list":
        return [spec.flag, "self_attn.q_proj,mlp.up_proj"], ["self_attn.q_proj", "mlp.up_proj"]
    return [spec.flag, "some/path"], "some/path"


def _nest(name: str, value: Any) -> dict[str, Any]:
    head, _, tail = name.partition(".")
    return {head: _nest(tail, value)} if tail else {name: value}


@pytest.mark.parametrize("spec", FIELDS, ids=lambda s: s.name)
def test_cli_flag_yaml_key_and_registry_agree(spec: FieldSpec) -> None:
    parser = build_parser()
    assert spec.help.strip()
    words, yaml_value = _sample(spec)
    base: dict[str, Any] = {"model": "m", "data": "d"}
    if spec.name in ("train_embeddings", "embedding_lr_scale"):
        base["fine_tune_type"] = "lora"  # the switch applies to lora/dora runs only
    from_cli, _ = build_config(base, cli_values(parser.parse_args(words)))
    from_yaml, _ = build_config(base, _nest(spec.name, yaml_value))
    assert from_cli == from_yaml
    assert from_cli.get(spec.name) == from_yaml.get(spec.name) is not None


def test_parser_has_every_field_and_the_run_options() -> None:
    actions = {a.dest: a for a in build_parser()._actions}
    assert {f.name for f in FIELDS} <= set(actions)
    for option in ("config", "run_dir", "resume", "restart", "report_url"):
        assert actions[option].help


def test_example_configs_are_valid(tiny_assets: dict[str, Path]) -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert {p.name for p in examples} >= {"mlx_lm_lora.yaml", "lora.yaml", "full.yaml"}
    for path in examples:
        raw = yaml.safe_load(path.read_text())
        build_config(raw)  # every key known or an ignored mlx-lm key


# -- bad input: exit 2, a message naming the field, nothing created -----------------------------


def _bad_case(name: str, ws: Path, assets: dict[str, Path]) -> tuple[list[str], str]:
    """argv (after -c config.yaml) and a fragment the error must contain."""
    corpus = ws / "corpus"
    corpus.mkdir(exist_ok=True)
    if name == "missing corpus":
        return ["--data", "nope.txt"], "data"
    if name == "empty corpus":
        (corpus / "empty.txt").write_text("  \n")
        return ["--data", "corpus/empty.txt"], "empty"
    if name == "binary corpus":
        (corpus / "bin.txt").write_bytes(b"\x00\x01\x02binary")
        return ["--data", "corpus/bin.txt"], "binary"
    if name == "non-UTF-8 corpus":
        (corpus / "latin.txt").write_bytes("café".encode("latin-1"))
        return ["--data", "corpus/latin.txt"], "UTF-8"
    if name == "unknown model":
        return ["--model", "models/nope"], "model"
    if name == "negative learning rate":
        return ["--learning-rate", "-1"], "learning_rate"
    if name == "sequence over the model's limit":
        return ["--max-seq-length", "100000"], "max_seq_length"
    if name == "batch 0":
        return ["--batch-size", "0"], "batch_size"
    if name == "too many layers":
        return ["--num-layers", "9"], "num_layers"
    if name == "empty eval set":
        (corpus / "empty.txt").write_text("")
        return ["--eval-set", "general=corpus/empty.txt"], "eval_sets"
    if name == "unknown YAML key":
        bad = ws / "bad.yaml"
        raw = yaml.safe_load((ws / "config.yaml").read_text())
        bad.write_text(yaml.safe_dump({**raw, "learning_rat": 0.1}))
        return ["-c", str(bad)], "learning_rat"
    if name == "folder that is not ours":
        stranger = ws / "photos"
        stranger.mkdir()
        (stranger / "cat.jpg").write_bytes(b"\xff\xd8")
        return ["--run-dir", str(stranger)], "not a run folder"
    if name == "resume without checkpoint":
        return ["--run-dir", str(ws / "runs" / "none"), "--resume"], "config.yaml"
    if name == "unknown optimizer setting":
        return ["--optimizer-config", '{"bogus": 1}'], "optimizer_config"
    if name == "schedule with too many arguments":
        bad = ws / "bad.yaml"
        raw = yaml.safe_load((ws / "config.yaml").read_text())
        schedule = {"name": "cosine_decay", "arguments": [1e-3, 100, 0.0, 1, 2]}
        bad.write_text(yaml.safe_dump({**raw, "lr_schedule": schedule}))
        return ["-c", str(bad)], "lr_schedule"
    if name == "tokenizer without EOS":
        model = ws / "no-eos"
        shutil.copytree(assets["model"], model)
        for file in ("tokenizer_config.json", "special_tokens_map.json"):
            data = json.loads((model / file).read_text())
            data.pop("eos_token", None)
            (model / file).write_text(json.dumps(data))
        return ["--model", str(model)], "EOS"
    if name == "corrupt checkpoint state":
        run = ws / "runs" / "torn"
        run.mkdir(parents=True)
        write_config(run / "config.yaml", assets, iters=2)
        bundle = write_bundle(
            run / "checkpoints", 2, {}, lambda d: (d / "adapters.safetensors").write_bytes(b"")
        )
        (bundle / "state.json").write_text('{"step": 2, "torn')
        return ["--run-dir", str(run), "--resume"], "run_dir"
    if name == "unknown report_to tracker":
        return ["--report-to", "tensorboard,swanlab"], "report_to"
    if name == "report URL checked before the corpus scan":
        (corpus / "bin.txt").write_bytes(b"\x00\x01\x02binary")
        return ["--report-url", "ftp://x", "--data", "corpus/bin.txt"], "report_url"
    raise AssertionError(name)


BAD_CASES = [
    "missing corpus",
    "empty corpus",
    "binary corpus",
    "non-UTF-8 corpus",
    "unknown model",
    "negative learning rate",
    "sequence over the model's limit",
    "batch 0",
    "too many layers",
    "empty eval set",
    "unknown YAML key",
    "folder that is not ours",
    "resume without checkpoint",
    "unknown optimizer setting",
    "schedule with too many arguments",
    "tokenizer without EOS",
    "corrupt checkpoint state",
    "report URL checked before the corpus scan",
    "unknown report_to tracker",
]


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The trainer's workspace (MLX_CPT_HOME), also its working folder."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.setenv("MLX_CPT_HOME", str(ws))
    return ws


def bad_input(argv: list[str], ws: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the trainer on bad input: exit 2, nothing in `ws` created or changed; stderr."""
    before = snapshot(ws)
    capsys.readouterr()
    assert main(argv) == 2
    assert snapshot(ws) == before
    return capsys.readouterr().err


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_and_creates_nothing(
    case: str, tiny_assets: dict[str, Path], ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(ws / "config.yaml", tiny_assets, iters=2)
    args, fragment = _bad_case(case, ws, tiny_assets)
    err = bad_input(["-c", str(ws / "config.yaml"), *args], ws, capsys)
    assert "nothing was created" in err and fragment in err


def test_too_many_layers_for_a_hub_model_is_bad_input(
    tiny_assets: dict[str, Path],
    ws: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import mlx_lm.utils

    real = mlx_lm.utils._download  # a hub id "downloads" to the tiny model (2 blocks)
    monkeypatch.setattr(
        mlx_lm.utils,
        "_download",
        lambda repo, *a, **k: tiny_assets["model"] if repo == "org/tiny" else real(repo, *a, **k),
    )
    write_config(ws / "config.yaml", tiny_assets, iters=2, model="org/tiny")
    err = bad_input(["-c", str(ws / "config.yaml"), "--num-layers", "3"], ws, capsys)
    assert "num_layers: 3 is more than the model's 2 blocks" in err


def test_full_fine_tuning_of_a_quantized_model_is_bad_input(
    tiny_assets: dict[str, Path],
    quantized_model: Path,
    ws: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(ws / "config.yaml", tiny_assets, iters=2, model=str(quantized_model))
    # A model folder: its config.json says so (the settings check, before the model loads).
    err = bad_input(["-c", str(config)], ws, capsys)
    assert f"fine_tune_type: full cannot train {quantized_model}: its weights are quantized " in err
    assert "(4-bit, group size 32)" in err
    assert (
        "use lora or dora, or a dequantized copy of the model (mlx_lm.convert --dequantize)" in err
    )
    # A hub id: only the loaded layers tell, still before anything is created.
    import mlx_lm.utils

    real = mlx_lm.utils._download
    monkeypatch.setattr(
        mlx_lm.utils,
        "_download",
        lambda repo, *a, **k: quantized_model if repo == "org/tiny-4bit" else real(repo, *a, **k),
    )
    for extra in ([], ["--num-layers", "1"]):
        err = bad_input(["-c", str(config), "--model", "org/tiny-4bit", *extra], ws, capsys)
        assert "fine_tune_type: full cannot train org/tiny-4bit: the layers it would train" in err
        assert (
            "QuantizedLinear, 4-bit, group size 32" in err and "mlx_lm.convert --dequantize" in err
        )
        if extra:  # the last block's layers only
            assert "(model.layers.1." in err


@pytest.mark.slow
def test_lora_on_a_quantized_model_trains(
    tiny_assets: dict[str, Path], quantized_model: Path, ws: Path
) -> None:
    config = write_config(
        ws / "config.yaml", tiny_assets, iters=3, model=str(quantized_model), fine_tune_type="lora"
    )
    run_dir = ws / "runs" / "q-lora"
    assert main(["-c", str(config), "--run-dir", str(run_dir)]) == 0
    assert [r["step"] for r in events(run_dir, "train")] == [1, 2, 3]
    assert all(math.isfinite(loss) for loss in train_losses(run_dir).values())
    assert events(run_dir)[-1]["state"] == "finished"
    assert (run_dir / "final" / "adapters.safetensors").is_file()


def test_resume_refuses_another_model_or_data_and_needs_no_config_flag(
    tiny_assets: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ws = tmp_path / "ws"
    for place in ("a", "b"):  # the same relative paths name other files from b/
        shutil.copytree(tiny_assets["model"], ws / place / "model")
        shutil.copy(tiny_assets["general"], ws / place / "corpus.jsonl")
    config = write_config(
        ws / "config.yaml", tiny_assets, iters=2, save_every=2, model="model", data="corpus.jsonl"
    )
    monkeypatch.setenv("MLX_CPT_HOME", str(ws))
    monkeypatch.chdir(ws / "a")
    run_dir = ws / "runs" / "r1"
    assert main(["-c", str(config), "--run-dir", str(run_dir)]) == 0
    before = snapshot(run_dir)
    resume = ["--resume", "--run-dir", str(run_dir), "--iters", "4"]  # no -c: the run's own

    monkeypatch.chdir(ws / "b")
    capsys.readouterr()
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert "model: the base model folder changed since step-00000002" in err
    assert "data: the training corpus path changed since step-00000002" in err

    monkeypatch.chdir(ws / "a")
    corpus = ws / "a" / "corpus.jsonl"
    text = corpus.read_text()
    corpus.write_text(text + json.dumps({"text": "one more document"}) + "\n")
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert "data: the training corpus's text (or the tokenizer) changed" in err
    assert "token cache key" in err and "model:" not in err
    assert snapshot(run_dir) == before

    corpus.write_text(text)
    assert main(resume) == 0
    assert events(run_dir, "run_start")[-1]["resumed_from"] == 2
    assert events(run_dir)[-1]["state"] == "finished" and events(run_dir)[-1]["step"] == 4


def test_restart_starts_a_run_without_checkpoint_again_from_step_0(
    tiny_assets: dict[str, Path], ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose trainer died before its first checkpoint (as a SIGKILL leaves it)."""
    run_dir = ws / "runs" / "dead"
    run_dir.mkdir(parents=True)
    write_config(run_dir / "config.yaml", tiny_assets, iters=2)
    (run_dir / "run.json").write_text('{"name": "by the console"}')
    (run_dir / "stdout.log").write_text("step 1 ...\nKilled\n")
    (run_dir / "data_report.json").write_text("{}")
    rows = [{"v": 1, "seq": n, "event": "train", "time": 1.0, "step": n} for n in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "checkpoints" / ".tmp-step-00000004").mkdir(parents=True)
    resume = bad_input(["--run-dir", str(run_dir), "--resume"], ws, capsys)
    assert "no complete checkpoint" in resume and "add --restart" in resume
    fresh = bad_input(["-c", str(run_dir / "config.yaml"), "--run-dir", str(run_dir)], ws, capsys)
    assert "already holds a run" in fresh and "add --restart" in fresh
    # Bad input on a restart changes nothing either (the folder is cleared last).
    bad = bad_input(["--run-dir", str(run_dir), "--restart", "--learning-rate", "-1"], ws, capsys)
    assert "learning_rate" in bad

    assert main(["--run-dir", str(run_dir), "--restart"]) == 0  # -c: the run's config.yaml
    rows = events(run_dir)
    assert rows[0]["event"] == "run_start" and rows[0]["resumed_from"] is None
    assert [r["seq"] for r in rows] == list(range(4, 4 + len(rows)))  # seq goes on
    assert [r["step"] for r in events(run_dir, "train")] == [1, 2]
    assert rows[1]["message"] == "restarted from step 0" and rows[-1]["state"] == "finished"
    assert json.loads((run_dir / "run.json").read_text()) == {"name": "by the console"}
    assert (run_dir / "stdout.log").read_text() == "step 1 ...\nKilled\n"
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    # Now it has a checkpoint: --restart would throw it away.
    again = bad_input(["--run-dir", str(run_dir), "--restart"], ws, capsys)
    assert "has a complete checkpoint (step-00000002); use --resume" in again


def test_a_run_folder_in_use_by_another_trainer_is_refused(
    tiny_assets: dict[str, Path], ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.trainer.run_folder import lock_run_folder

    run_dir = ws / "runs" / "busy"
    run_dir.mkdir(parents=True)
    config = write_config(ws / "config.yaml", tiny_assets, iters=2)
    held = lock_run_folder(run_dir)  # what a live trainer holds
    try:
        err = bad_input(["-c", str(config), "--run-dir", str(run_dir)], ws, capsys)
    finally:
        os.close(held)
    assert "in use by another trainer" in err


# A trainer whose model load or tokenization receives SIGTERM (sent from inside, at that
# very moment): a clean exit 0 and nothing created.
_STOPPED_TRAINER = """
import os, signal, sys, importlib
module = importlib.import_module(sys.argv[1])
real = getattr(module, sys.argv[2])
def interrupted(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
setattr(module, sys.argv[2], interrupted)
from training.continued_pretraining import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "where",
    [
        ("training.trainer.preflight", "load_base"),
        ("training.trainer.training_run", "make_sources"),
    ],
    ids=["model load", "tokenization"],
)
def test_sigterm_before_training_exits_0_and_creates_nothing(
    where: tuple[str, str], tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    import subprocess
    import sys

    from tests.trainer_helpers import trainer_env

    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(ws / "config.yaml", tiny_assets, iters=2)
    (ws / "cache").mkdir()
    before = snapshot(ws)
    proc = subprocess.run(
        [sys.executable, "-c", _STOPPED_TRAINER, *where, "-c", str(config)],
        cwd=ws, env=trainer_env(ws), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "stopped before the run started; nothing was created" in proc.stderr
    assert not (ws / "runs").exists()
    assert [p for p in snapshot(ws) if not p.startswith("cache")] == [
        p for p in before if not p.startswith("cache")
    ]
    assert not [p for p in (ws / "cache").rglob(".tmp-*")]


@pytest.mark.slow
def test_bad_input_from_a_real_process(tiny_assets: dict[str, Path], tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(ws / "config.yaml", tiny_assets, iters=2)
    before = snapshot(ws)
    proc = run_trainer(ws, "-c", config, "--learning-rate", "-0.5")
    assert proc.returncode == 2, proc.stderr
    assert "learning_rate: must be greater than 0" in proc.stderr
    proc = run_trainer(ws, "-c", config, "--optimizer", "lion")  # argparse's own exit 2
    assert proc.returncode == 2 and "--optimizer" in proc.stderr
    assert snapshot(ws) == before


# -- a real run ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_learns_reports_checkpoints_and_final_generates(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(
        ws / "config.yaml",
        tiny_assets,
        iters=30,
        steps_per_report=5,
        steps_per_eval=15,
        save_every=10,
        keep_checkpoints=2,
        eval_sets={"general": str(tiny_assets["general"])},
    )
    server = EventCollector()
    try:
        proc = run_trainer(
            ws, "-c", config, "--report-url", server.url, MLX_CPT_TOKEN="tok-from-env"
        )
    finally:
        server.close()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run_dir] = (ws / "runs").iterdir()  # no --run-dir: a new run in the workspace
    rows = events(run_dir)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(
        {"v", "seq", "event", "time", "step"} <= set(r) and r["event"] in EVENTS for r in rows
    )

    start = rows[0]
    assert start["event"] == "run_start" and start["total_steps"] == 30
    assert start["resumed_from"] is None and start["eval_sets"] == ["general"]
    assert {"documents", "tokens", "sequences", "tokens_per_step", "steps_per_epoch"} <= set(
        start["data"]
    )
    assert start["data"]["trained_share"] >= 0.98
    assert set(start["versions"]) >= {"mlx", "mlx_lm", "python", "os", "chip", "blas"}
    assert ("OpenBLAS" in start["versions"]["blas"]) == bool(find_openblas())
    assert json.loads((run_dir / "data_report.json").read_text()) == start["data"]

    train = [r for r in rows if r["event"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 0.2
    assert train[-1]["trained_tokens"] == 30 * 2 * 64
    for key in ("learning_rate", "tokens_per_second", "iterations_per_second", "peak_memory"):
        assert isinstance(train[-1][key], float)
    elapsed = [r["elapsed_seconds"] for r in train]
    assert 0 < elapsed[0] and elapsed == sorted(elapsed)
    evals = [r for r in rows if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert all("val_general_loss" in r and "val_general_ppl" in r for r in evals)
    assert [r["step"] for r in rows if r["event"] == "checkpoint"] == [10, 20, 30]
    assert rows[-1]["event"] == "status" and rows[-1]["state"] == "finished"

    # Retention kept 2, latest is the last; every bundle is an mlx-lm adapter folder.
    assert [b["step"] for b in list_checkpoints(run_dir)] == [20, 30]
    assert read_latest(run_dir)["step"] == 30  # type: ignore[index]
    config_yaml = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()))[0]
    assert config_yaml == build_config(yaml.safe_load(config.read_text()))[0]

    # The HTTP reporter POSTed the same events with the token from the environment.
    assert server.events() == rows
    assert {h["Authorization"] for h in server.headers} == {"Bearer tok-from-env"}

    # final/ is a model folder mlx_lm loads and generates with.
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(run_dir / "final"))
    pieces = list(stream_generate(model, tokenizer, "def ", max_tokens=8))
    assert len(pieces) == 8 and pieces[-1].generation_tokens == 8


@pytest.mark.slow
def test_mlx_lm_lora_yaml_runs_and_final_is_an_adapter(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    data = ws / "data"  # mlx-lm's layout: train.jsonl / valid.jsonl with `text`
    data.mkdir(parents=True)
    lines = Path(tiny_assets["corpus"]).read_text().splitlines()
    (data / "train.jsonl").write_text("\n".join(lines[:-2]) + "\n")
    (data / "valid.jsonl").write_text("\n".join(lines[-2:]) + "\n")
    raw = yaml.safe_load((ROOT / "examples" / "mlx_lm_lora.yaml").read_text())
    raw.update(
        model=str(tiny_assets["model"]), data="data", iters=6, max_seq_length=64, num_layers=2
    )
    raw.update(batch_size=2, steps_per_report=2, steps_per_eval=6, val_batches=2, save_every=3)
    (ws / "mlx_lm.yaml").write_text(yaml.safe_dump(raw))
    proc = run_trainer(ws, "-c", "mlx_lm.yaml", "--run-dir", "runs/lora")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = ws / "runs" / "lora"
    assert "ignoring mlx-lm setting 'adapter_path'" in proc.stdout
    assert any(r["kind"] == "config" for r in events(run_dir, "warning"))
    assert events(run_dir, "run_start")[0]["data"]["validation"]["source"] == "valid.jsonl"
    final = run_dir / "final"
    assert {p.name for p in final.iterdir()} >= {"adapters.safetensors", "adapter_config.json"}

    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(tiny_assets["model"]), adapter_path=str(final))
    assert len(list(stream_generate(model, tokenizer, "import ", max_tokens=4))) == 4


@pytest.mark.slow
def test_console_prepared_folder_is_started_and_a_second_start_refused(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    run_dir = ws / "runs" / "prepared"
    run_dir.mkdir(parents=True)
    config = write_config(run_dir / "config.yaml", tiny_assets, iters=2)
    (run_dir / "run.json").write_text('{"name": "by the console"}')
    proc = run_trainer(ws, "-c", config, "--run-dir", run_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run_dir / "run.json").read_text()) == {"name": "by the console"}
    before = snapshot(run_dir)
    again = run_trainer(ws, "-c", config, "--run-dir", run_dir)
    assert again.returncode == 2 and "--resume" in again.stderr
    other = shutil.copy(config, ws / "other.yaml")
    differ = run_trainer(ws, "-c", other, "--run-dir", run_dir, "--resume", "--seed", "7")
    assert differ.returncode == 2 and "seed" in differ.stderr
    assert snapshot(run_dir) == before
    # config.yaml edited by hand after the checkpoint: the bundle's config hash says so.
    edited = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**edited, "seed": 9}))
    before = snapshot(run_dir)
    tampered = run_trainer(ws, "-c", config, "--run-dir", run_dir, "--resume")
    assert tampered.returncode == 2 and "another config" in tampered.stderr
    assert snapshot(run_dir) == before


@pytest.mark.slow
def test_an_error_mid_run_is_status_failed_and_exit_1(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(ws / "config.yaml", tiny_assets, iters=100_000, save_every=200)
    run_dir = ws / "runs" / "broken"
    proc = start_trainer(ws, "-c", config, "--run-dir", run_dir, log=ws / "broken.log")
    try:
        wait_until(lambda: last_step_seen(run_dir) >= 1 or proc.poll() is not None, timeout=240)
        (run_dir / "checkpoints").write_text("a file where the checkpoints folder goes")
        assert proc.wait(timeout=240) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    status = events(run_dir)[-1]
    assert status["event"] == "status" and status["state"] == "failed"
    assert "checkpoints" in status["message"]
    assert "Traceback" in (ws / "broken.log").read_text()


@pytest.mark.slow
def test_options_budget_in_tokens_accumulation_checkpointing_bf16_adafactor(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(ws / "config.yaml", tiny_assets, iters=50)
    proc = run_trainer(
        ws, "-c", config, "--run-dir", "runs/opts",
        "--train-tokens", "1024",  # replaces the file's `iters`: 1024 / (2 x 2 x 64) = 4 steps
        "--grad-accumulation-steps", "2", "--grad-checkpoint", "--dtype", "bfloat16",
        "--optimizer", "adafactor", "--lr-schedule", "linear", "--warmup-steps", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dir = ws / "runs" / "opts"
    start = events(run_dir, "run_start")[0]
    assert start["total_steps"] == 4 and start["total_tokens"] == 1024
    train = events(run_dir, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert train[-1]["trained_tokens"] == 1024
    assert all(isinstance(r["train_loss"], float) for r in train)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train_tokens"] == 1024 and saved["iters"] is None
