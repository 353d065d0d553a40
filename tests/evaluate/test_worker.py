"""The evaluation worker and its console-side owner: real worker processes, real MLX."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.eval_fixtures import LORA_RUN_ID, MAX_TOKENS, PROMPT, reference_texts
from tests.helpers import wait_until
from training.console.eval_jobs import EvalJob, EvalJobs
from training.contract.layout import Workspace
from training.contract.model_source import resolve_source

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    def __init__(self) -> None:
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()

    def __call__(self, job: EvalJob, event: dict[str, Any]) -> None:
        with self.lock:
            self.events.setdefault(job.job_id, []).append(event)

    def of(self, job: EvalJob) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.events.get(job.job_id, []))


@pytest.fixture
def jobs() -> EvalJobs:
    recorder = Recorder()
    owner = EvalJobs(recorder)
    owner.recorder = recorder  # type: ignore[attr-defined]
    yield owner
    owner.shutdown()


def _finish(job: EvalJob, timeout: float = 90) -> EvalJob:
    wait_until(job.finished.is_set, timeout, message=f"job {job.kind} to finish")
    return job


def _source(ws: Workspace, checkpoint: str) -> dict[str, Any]:
    return resolve_source(ws, LORA_RUN_ID, checkpoint).to_json()


def test_generation_streams_the_same_text_as_mlx_lm_generate(
    jobs: EvalJobs, lora_workspace: Workspace
) -> None:
    prompt = PROMPT
    spec = {
        "prompt": prompt,
        "models": [_source(lora_workspace, "final")],
        "max_tokens": MAX_TOKENS,
        "temp": 0.0,
        "seed": 1,
    }
    job = _finish(jobs.start("generate", spec))
    events = jobs.recorder.of(job)  # type: ignore[attr-defined]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "result" and "lane_end" in kinds
    assert job.state == "done" and job.exit_code == 0
    streamed = "".join(e["text"] for e in events if e["event"] == "token")
    assert streamed == reference_texts(lora_workspace)["final"]
    assert job.result and job.result["lanes"][0]["text"] == streamed
    assert all(e["job_id"] == job.job_id and e["v"] == 1 for e in events)


def test_side_by_side_runs_both_lanes_with_the_same_seed(
    jobs: EvalJobs, lora_workspace: Workspace
) -> None:
    final = _source(lora_workspace, "final")
    spec = {
        "prompt": "import os\n",
        "models": [final, final],
        "max_tokens": 16,
        "temp": 1.0,
        "top_p": 0.95,
        "seed": 42,
    }
    job = _finish(jobs.start("generate", spec))
    assert job.state == "done", job.error
    lanes = job.result["lanes"]  # type: ignore[index]
    assert [lane["lane"] for lane in lanes] == [0, 1]
    # Same model, same seed, sampled at temperature 1: identical only if the seed is honoured.
    assert lanes[0]["text"] == lanes[1]["text"] and lanes[0]["text"]


def test_perplexity_job_stores_its_result_in_the_run(
    jobs: EvalJobs, lora_workspace: Workspace, tiny_assets: dict[str, Path], tmp_path: Path
) -> None:
    from training.evaluate.models import load_source
    from training.evaluate.perplexity import (
        evaluate_perplexity,
        pack_documents,
        read_eval_documents,
    )

    run_dir = tmp_path / "run"
    run_dir.mkdir()  # results go into an existing run folder (never recreate a deleted one)
    spec = {
        "model": _source(lora_workspace, "step-00000005"),
        "data": str(tiny_assets["general"]),
        "data_label": "general",
        "sequence_length": 64,
        "num_samples": 16,
        "batch_size": 4,
        "run_dir": str(run_dir),
    }
    job = _finish(jobs.start("perplexity", spec))
    assert job.state == "done", job.error
    progress = [e for e in jobs.recorder.of(job) if e["event"] == "progress"]  # type: ignore[attr-defined]
    assert [e["done"] for e in progress if e["stage"] == "evaluating"] == [1, 2, 3, 4]
    stored_file = run_dir / "evaluations" / "perplexity.jsonl"
    stored = [json.loads(line) for line in stored_file.read_text().splitlines()]
    assert (
        len(stored) == 1 and stored[0]["checkpoint"] == "step-00000005" and stored[0]["step"] == 5
    )

    loaded = load_source(resolve_source(lora_workspace, LORA_RUN_ID, 5))
    docs = read_eval_documents(tiny_assets["general"])
    expected = evaluate_perplexity(loaded.model, pack_documents(loaded.tokenizer, docs, 64, 16), 4)
    assert expected is not None
    # The worker may run on OpenBLAS and this process on MLX's bundled BLAS: the same
    # float32 arithmetic summed in another order, ~1e-6 apart; 1e-4 leaves room, and is
    # far below any difference between two checkpoints.
    assert stored[0]["perplexity"] == pytest.approx(expected.perplexity, rel=1e-4)


def test_stop_ends_a_generation_cleanly(jobs: EvalJobs, lora_workspace: Workspace) -> None:
    spec = {
        "prompt": "x",
        "models": [_source(lora_workspace, "final")],
        "max_tokens": 4000,
        "temp": 1.0,
        "seed": 0,
    }
    job = jobs.start("generate", spec)
    wait_until(lambda: any(e["event"] == "token" for e in job.events), 60, message="a token")
    assert jobs.stop(job.job_id)
    _finish(job)
    assert job.state == "stopped" and job.exit_code == 0
    lane = job.result["lanes"][0]  # type: ignore[index]
    assert lane["finish_reason"] == "stopped" and lane["generation_tokens"] < 4000


@pytest.mark.parametrize(
    ("kind", "spec", "field"),
    [
        ("generate", {"prompt": "x " * 5000, "max_tokens": 2}, "prompt"),
        ("generate", {"prompt": "hi", "models": [{"model": "/nonexistent/model"}]}, "model"),
        ("perplexity", {"data": "EMPTY"}, "data"),
        ("explode", {}, "kind"),
    ],
)
def test_bad_input_is_an_error_event_and_a_clean_exit(
    jobs: EvalJobs, lora_workspace: Workspace, tmp_path: Path, kind: str, spec: dict, field: str
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    spec = {
        "models": [_source(lora_workspace, "final")],
        "model": _source(lora_workspace, "final"),
        **spec,
    }
    if spec.get("data") == "EMPTY":
        spec["data"] = str(empty)
    job = _finish(jobs.start(kind, spec))
    assert job.state == "failed" and job.exit_code == 2
    assert job.error and job.error["field"] == field and job.error["error"]
    assert job.process.poll() == 2  # the process is gone


def test_a_killed_worker_is_reported(jobs: EvalJobs, lora_workspace: Workspace) -> None:
    spec = {"prompt": "x", "models": [_source(lora_workspace, "final")], "max_tokens": 4000}
    job = jobs.start("generate", spec)
    wait_until(lambda: any(e["event"] == "token" for e in job.events), 60, message="a token")
    os.killpg(job.process.pid, signal.SIGKILL)
    _finish(job)
    assert job.state == "failed" and "killed by signal 9" in job.error["error"]  # type: ignore[index]


def test_worker_stops_when_stdin_closes_and_keeps_stdout_clean(
    lora_workspace: Workspace,
) -> None:
    spec = {
        "kind": "generate",
        "job_id": "j1",
        "prompt": "x",
        "max_tokens": 4000,
        "models": [_source(lora_workspace, "final")],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.eval_worker"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    # The job, then end of input: the console went away.
    out, _ = proc.communicate((json.dumps(spec) + "\n").encode(), timeout=60)
    lines = out.splitlines()
    assert proc.returncode == 0
    events = [json.loads(line) for line in lines]  # every stdout line is an event
    assert events[-1]["event"] == "result" and events[-1]["stopped"] is True


def test_events_are_written_whole_when_the_stream_takes_a_few_bytes_at_a_time() -> None:
    from training.evaluate.worker import Events

    class Trickle:
        """An unbuffered stream that, like a pipe interrupted by a signal, takes 7 bytes."""

        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> int:
            self.data += bytes(data[:7])
            return min(7, len(data))

        def flush(self) -> None:
            pass

    stream = Trickle()
    Events(stream, "job-1").emit("progress", stage="load", message="x" * 50)  # type: ignore[arg-type]
    row = json.loads(stream.data)
    assert stream.data.endswith(b"\n") and row["message"] == "x" * 50
