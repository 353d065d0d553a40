"""report_to (training/trainer/trackers.py): the real trainer logs to TensorBoard event
files and to an offline wandb run in its run folder, the same numbers as metrics.jsonl,
read back with TensorBoard's own reader and wandb's record format; a tracker that fails
only warns, and the run goes on."""

from __future__ import annotations

import csv
import glob
import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.trainer_helpers import events, run_trainer, write_config
from training.contract.config import build_config
from training.metrics.csv_export import MetricsCsv
from training.metrics.writer import TrainingMetricsLogger
from training.trainer.trackers import (
    SAMPLE,
    TensorBoardTracker,
    TrackerContext,
    Trackers,
    open_trackers,
)


def offline_env(tmp_path: Path) -> dict[str, str]:
    """wandb with no network, and none of its files outside the test's folder."""
    home = tmp_path / "wandb-home"
    return {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
    }


def tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Every scalar series, read by TensorBoard's own loader: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    reader.Reload()
    return {tag: {e.step: e.value for e in reader.Scalars(tag)} for tag in reader.Tags()["scalars"]}


def wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """The history rows of the run's offline wandb files. A .wandb file is wandb's record
    log (LevelDB's log format: 32 KiB blocks of chunks, each with a 7-byte header: crc32,
    length, type full/first/middle/last) of protobuf Records after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for file in sorted(glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))):
        data = Path(file).read_bytes()
        assert data[:4] == b":W&B", file
        records, pending, pos, block = [], b"", 7, 32768
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header is padding
                pos += block - pos % block
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            if kind == 0 and length == 0:
                break
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):
                records.append(pending)
        for raw in records:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                items = record.history.item
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
                )
    return rows


def test_tensorboard_and_offline_wandb_hold_every_number_of_the_run(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    config = write_config(
        ws / "config.yaml",
        tiny_assets,
        iters=8,
        steps_per_eval=4,
        report_to="tensorboard,wandb",
        project_name="cpt-tests",
    )
    run_dir = ws / "runs" / "tracked"
    proc = run_trainer(ws, "-c", config, "--run-dir", run_dir, **offline_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "step      8/8" in proc.stdout  # wandb did not take over the trainer's output
    assert not [w for w in events(run_dir, "warning") if w["kind"] == "tracker"]
    train, evals = events(run_dir, "train"), events(run_dir, "eval")
    losses = {r["step"]: r["train_loss"] for r in train}
    assert sorted(losses) == list(range(1, 9))

    # TensorBoard: every number of every train and eval event, at its step (float32).
    import numpy as np

    scalars = tensorboard_scalars(run_dir / "tensorboard")
    assert scalars["train/train_loss"] == {s: float(np.float32(v)) for s, v in losses.items()}
    for key in ("learning_rate", "tokens_per_second", "trained_tokens", "peak_memory"):
        assert len(scalars[f"train/{key}"]) == len(train), key
    assert scalars["eval/val_loss"] == {r["step"]: float(np.float32(r["val_loss"])) for r in evals}

    # wandb, offline: the same values, exactly (its history stores them as JSON).
    history = wandb_history(run_dir)
    logged = {row["_step"]: row["train_loss"] for row in history if "train_loss" in row}
    assert logged == losses
    assert {row["_step"]: row["val_loss"] for row in history if "val_loss" in row} == {
        r["step"]: r["val_loss"] for r in evals
    }

    # The CSV download: one row per event, the same numbers as metrics.jsonl.
    table = MetricsCsv(run_dir / "metrics.jsonl")
    header, *rows = list(csv.reader(io.StringIO("".join(table))))
    assert len(rows) == len(events(run_dir)) and header[:3] == ["seq", "event", "step"]
    column = header.index("train_loss")
    assert [float(r[column]) for r in rows if r[1] == "train"] == list(losses.values())


def test_a_tracker_that_cannot_start_only_warns(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    """`tensorboard` is a file where the event files would go: the run says why in a
    warning event and on its output, and trains to the end (a restart: the run folder
    exists before the trainer starts)."""
    ws = tmp_path / "ws"
    run_dir = ws / "runs" / "untracked"
    run_dir.mkdir(parents=True)
    config = write_config(run_dir / "config.yaml", tiny_assets, iters=2, report_to="tensorboard")
    (run_dir / "tensorboard").write_text("in the way\n")
    proc = run_trainer(ws, "-c", config, "--run-dir", run_dir, "--restart")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (warning,) = [w for w in events(run_dir, "warning") if w["kind"] == "tracker"]
    assert warning["tracker"] == "tensorboard" and "could not start" in warning["message"]
    assert "training goes on without it" in proc.stdout
    assert events(run_dir, "status")[-1]["state"] == "finished"


class Broken:
    def __init__(self) -> None:
        self.calls = 0

    def log(self, event: dict[str, Any]) -> None:
        self.calls += 1
        raise ConnectionError("the tracker's server went away")

    def close(self) -> None:
        raise RuntimeError("and cannot flush either")


def test_a_tracker_failing_mid_run_is_dropped_with_one_warning(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    broken = Broken()
    logger = TrainingMetricsLogger(path)

    def warn(step: int, name: str, message: str) -> None:
        logger.warning(step, "tracker", message, tracker=name)

    logger.sinks.append(Trackers({"wandb": broken}, warn))
    for step in range(1, 4):
        logger.emit("train", step, train_loss=1.0)
    logger.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    warnings = [r for r in rows if r["event"] == "warning"]
    assert broken.calls == 1 and len(warnings) == 1
    assert warnings[0]["step"] == 1 and "ConnectionError" in warnings[0]["message"]
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3]


def test_sample_events_are_text_and_a_start_failure_is_named(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, _ = build_config({"model": "m", "data": "d", "report_to": "tensorboard"})
    context = TrackerContext(run_dir=tmp_path, run_id="r", config=config)
    tracker = TensorBoardTracker(context)
    tracker.log({"event": SAMPLE, "step": 5, "samples": [{"prompt": "def ", "text": "f(x):"}]})
    tracker.log({"event": "train", "step": 5, "train_loss": 2.5, "ok": True, "note": "x"})
    tracker.close()
    reader = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    reader.Reload()
    assert set(reader.Tags()["tensors"]) == {"config/text_summary", "samples/text_summary"}
    (sample,) = reader.Tensors("samples/text_summary")
    text = sample.tensor_proto.string_val[0].decode()
    assert sample.step == 5 and "def " in text and "f(x):" in text
    assert reader.Tags()["scalars"] == ["train/train_loss"]  # numbers only, no bools

    warned: list[tuple[int, str, str]] = []
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "tensorboard").write_text("a file")
    trackers = open_trackers(
        ["tensorboard"],
        TrackerContext(run_dir=blocked, run_id="r", config=config),
        lambda step, name, message: warned.append((step, name, message)),
    )
    assert trackers.trackers == {} and warned[0][:2] == (0, "tensorboard")
    assert "NotADirectoryError" in warned[0][2]


@pytest.mark.parametrize("value", ["mlflow", "tensorboard, comet"])
def test_an_unknown_tracker_is_bad_input_naming_report_to(value: str) -> None:
    from training.contract.config import ConfigError

    with pytest.raises(ConfigError) as err:
        build_config({"model": "m", "data": "d", "report_to": value})
    assert [e.field for e in err.value.errors] == ["report_to"]
