"""The real trainer on weighted sources, on the formats corpora come in, and on a corpus
still being tokenized while it trains: shares, tokens_by_source, exact resumes."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
import zstandard

from tests.helpers import wait_until
from tests.trainer_helpers import TINY, events, last_step_seen, train_losses, trainer_env
from training.contract.protocol import SHARD_CHARS_ENV

pytestmark = pytest.mark.slow

# The trainer, with each part of the token cache taking a moment longer to tokenize: a
# stand-in for a corpus of gigabytes, so training starts (and is stopped) while the rest
# of the corpus is still being tokenized.
_SLOW_TOKENIZER = """
import sys, time
from training.contract.blas import reexec_with_openblas
reexec_with_openblas()
from training.trainer import token_cache
write_part = token_cache.EntryBuilder.write_part
def slow_write_part(self, *args, **kwargs):
    time.sleep(0.03)
    return write_part(self, *args, **kwargs)
token_cache.EntryBuilder.write_part = slow_write_part
from training.continued_pretraining import main
sys.exit(main(sys.argv[1:]))
"""


def _argv(*args: str | Path, slow: bool = False) -> list[str]:
    head = ["-c", _SLOW_TOKENIZER] if slow else ["-m", "training.continued_pretraining"]
    return [sys.executable, *head, *map(str, args)]


def _env(ws: Path, shard_chars: int) -> dict[str, str]:
    return trainer_env(ws, **{SHARD_CHARS_ENV: str(shard_chars)})


def _run(ws: Path, *args: str | Path, slow: bool = False, shard_chars: int = 20_000) -> None:
    ws.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        _argv(*args, slow=slow), cwd=ws, env=_env(ws, shard_chars), capture_output=True,
        text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _stop_and_resume(
    ws: Path, config: Path, run_dir: Path, after_step: int, slow: bool = False
) -> dict[str, Any]:
    """Train, SIGTERM after `after_step`, resume; the stopped session's last train event."""
    ws.mkdir(parents=True, exist_ok=True)
    with (ws / "stopped.log").open("wb") as log:
        proc = subprocess.Popen(
            _argv("-c", config, "--run-dir", run_dir, slow=slow), cwd=ws,
            env=_env(ws, 20_000), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_until(
            lambda: last_step_seen(run_dir) >= after_step or proc.poll() is not None,
            timeout=240,
            message=f"step {after_step}",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, (ws / "stopped.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped_at = events(run_dir, "train")[-1]
    _run(ws, "-c", run_dir / "config.yaml", "--run-dir", run_dir, "--resume", slow=slow)
    return stopped_at


def _config(path: Path, data: Any, model: Path, **values: Any) -> Path:
    config = {"model": str(model), "data": data, **TINY, "steps_per_eval": 1000, **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _assert_same_losses(a: Path, b: Path, steps: int) -> None:
    first, second = train_losses(a), train_losses(b)
    assert sorted(first) == sorted(second) == list(range(1, steps + 1))
    for step in first:  # same ops on the same CPU, same data in the same order
        assert second[step] == pytest.approx(first[step], rel=1e-6, abs=1e-6), step


def test_two_sources_keep_their_shares_report_tokens_and_resume_exactly(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    steps = 260
    general = tmp_path / "general.jsonl"  # a small replay set, repeated several times
    short = sorted(tiny_assets["general"].read_text().splitlines(True), key=len)[:12]
    general.write_text("".join(short))
    data = [str(tiny_assets["corpus"]), {"path": str(general), "weight": 0.2, "name": "general"}]
    config = _config(tmp_path / "config.yaml", data, tiny_assets["model"], iters=steps)
    straight, stopped = tmp_path / "a" / "runs" / "straight", tmp_path / "b" / "runs" / "stopped"
    _run(tmp_path / "a", "-c", config, "--run-dir", straight)

    [start] = events(straight, "run_start")
    sources = start["data"]["sources"]
    assert [(s["name"], s["weight"]) for s in sources] == [("python-stdlib", 0.8), ("general", 0.2)]
    keys = {"name", "path", "documents", "tokens", "weight", "epochs_planned"}
    assert all(keys <= set(s) for s in sources)
    assert Path(sources[1]["path"]).name == "general.jsonl"
    assert all(s["documents"] > 0 and s["tokens"] > 0 for s in sources)
    # The general set runs out long before the budget: it is repeated.
    assert sources[1]["epochs_planned"] > 1 > sources[0]["epochs_planned"] > 0
    assert start["eval_sets"] == ["general"]
    evals = events(straight, "eval")
    assert {"val_loss", "val_general_loss"} <= set(evals[0]) and evals[-1]["step"] == steps
    rows = events(straight, "train")
    assert all(sum(r["tokens_by_source"].values()) == r["trained_tokens"] for r in rows)
    by_step = {0: {"python-stdlib": 0, "general": 0}} | {
        r["step"]: r["tokens_by_source"] for r in rows
    }
    for begin in range(steps - 100 + 1):  # every window of 100 consecutive steps
        done = {k: by_step[begin + 100][k] - by_step[begin][k] for k in by_step[0]}
        share = done["general"] / sum(done.values())
        assert abs(share - 0.2) <= 0.01, (begin, share)

    stopped_at = _stop_and_resume(tmp_path / "b", config, stopped, after_step=60)
    assert 60 <= stopped_at["step"] < steps
    _assert_same_losses(straight, stopped, steps)
    assert events(stopped, "train")[-1]["tokens_by_source"] == rows[-1]["tokens_by_source"]


def _write_formats(folder: Path, docs: list[str]) -> list[dict[str, Any]]:
    """The same kind of text as Parquet (in a column named content), .jsonl.gz,
    .jsonl.zst and a saved Hugging Face dataset."""
    import datasets

    folder.mkdir(parents=True)
    quarter = len(docs) // 4
    parts = [docs[i * quarter : (i + 1) * quarter] for i in range(4)]
    pq.write_table(pa.table({"content": parts[0]}), folder / "a.parquet", row_group_size=3)
    lines = "".join(json.dumps({"text": d}) + "\n" for d in parts[1]).encode()
    (folder / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    lines = "".join(json.dumps({"text": d}) + "\n" for d in parts[2]).encode()
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    datasets.Dataset.from_dict({"text": parts[3]}).save_to_disk(str(folder / "d-hf"))
    return [
        {"path": str(folder / "a.parquet"), "name": "parquet", "text_field": "content"},
        {"path": str(folder / "b.jsonl.gz"), "name": "gz"},
        {"path": str(folder / "c.jsonl.zst"), "name": "zst"},
        {"path": str(folder / "d-hf"), "name": "hf"},
    ]


def test_parquet_gzip_zstd_and_a_datasets_folder_each_train(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    docs = [json.loads(line)["text"] for line in tiny_assets["general"].read_text().splitlines()]
    data = _write_formats(tmp_path / "corpora", docs)
    config = _config(tmp_path / "config.yaml", data, tiny_assets["model"], iters=4)
    run_dir = tmp_path / "ws" / "runs" / "formats"
    _run(tmp_path / "ws", "-c", config, "--run-dir", run_dir)
    [start] = events(run_dir, "run_start")
    quarter = len(docs) // 4
    for source in start["data"]["sources"]:
        held = source["validation"]["documents"]
        assert source["documents"] + held == quarter  # every row is a document
        assert source["weight"] == 0.25
    trained = events(run_dir, "train")[-1]["tokens_by_source"]
    assert set(trained) == {"parquet", "gz", "zst", "hf"} and min(trained.values()) > 0
    assert events(run_dir)[-1]["state"] == "finished"


def test_training_starts_while_the_corpus_tokenizes_and_resumes_exactly(
    tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    """A corpus of ~15 shards whose tokenizing outlasts the first steps: the run starts
    after the shards its validation and first batches need, reports progress, completes
    its data report; stopped mid-tokenization and resumed, it trains what the
    uninterrupted run trained."""
    steps = 400
    docs = [json.loads(line)["text"] for line in tiny_assets["corpus"].read_text().splitlines()]
    corpus = tmp_path / "corpus.jsonl"
    copies = [f"# copy {i}\n{doc}" for i in range(3) for doc in docs]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in copies))
    config = _config(tmp_path / "config.yaml", str(corpus), tiny_assets["model"], iters=steps)
    straight, stopped = tmp_path / "a" / "runs" / "straight", tmp_path / "b" / "runs" / "stopped"
    _run(tmp_path / "a", "-c", config, "--run-dir", straight, slow=True)

    [start] = events(straight, "run_start")
    assert start["data"]["tokenization"]["done"] is False
    assert start["data"]["sequences"] is None  # not known before the whole corpus is
    progress = events(straight, "tokenization")
    assert progress and progress[-1]["done"] is True
    final = progress[-1]["data"]
    assert final["sequences"] > 0 and final["sources"][0]["epochs_planned"] > 0
    corpus_progress = progress[-1]["corpora"]["corpus"]
    assert corpus_progress["shards_done"] == corpus_progress["shards"] > 10
    report = json.loads((straight / "data_report.json").read_text())
    assert report["sequences"] == final["sequences"]

    _stop_and_resume(tmp_path / "b", config, stopped, after_step=5, slow=True)
    resumed = events(stopped, "run_start")
    assert resumed[0]["data"]["tokenization"]["done"] is False
    _assert_same_losses(straight, stopped, steps)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("notes.csv", ["unsupported file type '.csv'"]),
        ("rows.parquet", ["'text'", "text_field", "content"]),
    ],
)
def test_an_unknown_format_or_a_missing_field_is_bad_input_naming_file_and_field(
    tiny_assets: dict[str, Path], tmp_path: Path, name: str, expected: list[str]
) -> None:
    bad = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"content": ["one document", "another"]}), bad)
    else:
        bad.write_text("text\nhello\n")
    data = [str(tiny_assets["corpus"]), {"path": str(bad), "weight": 0.1}]
    config = _config(tmp_path / "config.yaml", data, tiny_assets["model"], iters=2)
    ws, run_dir = tmp_path / "ws", tmp_path / "ws" / "runs" / "bad"
    ws.mkdir()
    proc = subprocess.run(
        _argv("-c", config, "--run-dir", run_dir), cwd=ws, env=_env(ws, 20_000),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    message = proc.stdout + proc.stderr
    assert proc.returncode == 2, message
    assert str(bad) in message and "Traceback" not in message
    for fragment in expected:
        assert fragment in message
    assert not run_dir.exists()  # nothing created
