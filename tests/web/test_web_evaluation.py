"""The console's evaluation API and Socket.IO events, against the real console (a live
server subprocess), real python-socketio clients and real evaluation workers."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.eval_fixtures import LORA_RUN_ID, MAX_TOKENS, PROMPT, reference_texts
from tests.helpers import wait_until
from tests.live_server import LiveServer, live_server
from training.contract.layout import Workspace

FINAL = {"run_id": LORA_RUN_ID, "checkpoint": "final"}
BASE = {"run_id": LORA_RUN_ID, "checkpoint": "base"}


@pytest.fixture(scope="module")
def server(
    lora_workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    ws = tmp_path_factory.mktemp("web-eval") / "ws"
    shutil.copytree(lora_workspace.root, ws)
    broken = ws / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    other = ws / "models" / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    (ws / "corpora" / "empty.txt").write_text("")
    (ws / "corpora" / "prose.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    with live_server(ws, args=["--no-autodetect"]) as srv:
        yield srv


class Events:
    """Collects the eval_* events a python-socketio client receives."""

    NAMES = (
        "eval_started",
        "eval_progress",
        "eval_lane",
        "eval_token",
        "eval_lane_end",
        "eval_result",
        "eval_error",
    )

    def __init__(self, sio: Any):
        self.sio = sio
        self.rows: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        for name in self.NAMES:
            sio.on(name, self._handler(name))

    def _handler(self, name: str):
        def handle(data: dict[str, Any]) -> None:
            with self.lock:
                self.rows.append((name, data))

        return handle

    def of(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(n, d) for n, d in self.rows if d.get("job_id") == job_id]

    def wait_end(self, job_id: str, timeout: float = 90) -> tuple[str, dict[str, Any]]:
        return wait_until(
            lambda: next(
                (r for r in self.of(job_id) if r[0] in ("eval_result", "eval_error")), None
            ),
            timeout,
            message=f"job {job_id} to end",
        )


def _generate(server: LiveServer, body: dict[str, Any]) -> tuple[Events, str, dict[str, Any]]:
    sio = server.socket()
    events = Events(sio)
    ack = sio.call("eval_generate", body, timeout=30)
    assert "job_id" in ack, ack
    name, end = events.wait_end(ack["job_id"])
    return events, ack["job_id"], {"name": name, **end}


def test_streamed_tokens_equal_mlx_lm_generate(server: LiveServer) -> None:
    body = {"model": FINAL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temp": 0, "seed": 5}
    events, job_id, end = _generate(server, body)
    assert end["name"] == "eval_result", end
    tokens = [d for n, d in events.of(job_id) if n == "eval_token"]
    assert len(tokens) > 1  # streamed piece by piece, not in one message
    assert [d["seq"] for d in tokens] == sorted(d["seq"] for d in tokens)
    expected = reference_texts(Workspace(server.workspace))["final"]
    assert "".join(d["text"] for d in tokens) == expected


def test_side_by_side_base_and_final_with_the_same_seed(server: LiveServer) -> None:
    body = {
        "model": BASE,
        "compare": FINAL,
        "prompt": PROMPT,
        "max_tokens": MAX_TOKENS,
        "temp": 0,
        "seed": 11,
    }
    events, job_id, end = _generate(server, body)
    assert end["name"] == "eval_result", end
    lanes = {d["lane"]: d for n, d in events.of(job_id) if n == "eval_lane_end"}
    assert set(lanes) == {0, 1} and end["seed"] == 11
    expected = reference_texts(Workspace(server.workspace))
    assert lanes[0]["text"] == expected["base"] and lanes[1]["text"] == expected["final"]


def test_stop_button_ends_the_generation(server: LiveServer) -> None:
    sio = server.socket()
    events = Events(sio)
    body = {"model": FINAL, "prompt": "x", "max_tokens": 4096, "temp": 1.0, "seed": 1}
    job_id = sio.call("eval_generate", body, timeout=30)["job_id"]
    wait_until(lambda: any(n == "eval_token" for n, _ in events.of(job_id)), 60, message="tokens")
    assert sio.call("eval_stop", {"job_id": job_id}, timeout=10) == {"ok": True}
    name, end = events.wait_end(job_id)
    assert name == "eval_result" and end["stopped"] is True
    assert end["lanes"][0]["finish_reason"] == "stopped"


def test_perplexity_job_with_progress_is_stored_per_checkpoint(server: LiveServer) -> None:
    body = {
        "model": {"run_id": LORA_RUN_ID, "checkpoint": "step-00000005"},
        "data": {"set": "val"},  # held out of the training corpus by the trainer
        "num_samples": 8,
        "batch_size": 2,
        "sequence_length": 64,
    }
    response = server.post("/api/eval/perplexity", body)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    sio = server.socket()
    events = Events(sio)
    assert sio.call("join_eval", {"job_id": job_id, "after_seq": 0}, timeout=10)["ok"]
    name, end = events.wait_end(job_id)
    assert name == "eval_result", end
    assert [d["done"] for n, d in events.of(job_id) if n == "eval_progress" and d.get("total")] == [
        1,
        2,
        3,
        4,
    ]
    table = server.get(f"/api/runs/{LORA_RUN_ID}/evaluations").json()
    row = next(r for r in table["rows"] if r["checkpoint"] == "step-00000005")
    stored = row["perplexity"][-1]
    assert stored["data_label"] == "val" and stored["perplexity"] == pytest.approx(
        end["perplexity"]
    )
    assert table["sets"] == ["val", "general"] and sum(r["best"] for r in table["rows"]) == 1
    job = server.get(f"/api/eval/jobs/{job_id}").json()["job"]
    assert job["state"] == "done" and job["run_id"] == LORA_RUN_ID


def test_export_job_loads_with_mlx_lm_and_asks_before_overwriting(server: LiveServer) -> None:
    from mlx_lm import generate, load

    body = {"model": FINAL, "format": "model", "dest": "exports/my-export"}
    response = server.post("/api/eval/export", body)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    job = wait_until(
        lambda: (
            (j := server.get(f"/api/eval/jobs/{job_id}").json()["job"])["state"] != "running" and j
        ),
        90,
        message="the export",
    )
    assert job["state"] == "done", job
    path = Path(job["result"]["path"])
    assert path == server.workspace.resolve() / "exports" / "my-export"
    model, tokenizer = load(str(path))
    assert generate(model, tokenizer, "def ", max_tokens=4)

    again = server.post("/api/eval/export", body)
    assert again.status_code == 409 and again.json()["field"] == "overwrite"
    assert again.json()["dest"] == str(path)  # the dialog names the folder it replaces
    confirmed = server.post("/api/eval/export", {**body, "overwrite": True})
    assert confirmed.status_code == 202


def test_quantized_export_job_is_measured_next_to_the_unquantized_model(
    server: LiveServer,
) -> None:
    """The run page's export card: a LoRA run's final model fused and quantized to 4 bits by
    a real worker, its perplexity on the run's validation set next to the unquantized
    model's, both stored with the run for the checkpoint table; the command to load it."""
    from mlx_lm import load

    body = {"model": FINAL, "format": "model", "quantize": 4, "group_size": 32}
    response = server.post("/api/eval/export", body)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    job = wait_until(
        lambda: (
            (j := server.get(f"/api/eval/jobs/{job_id}").json()["job"])["state"] != "running" and j
        ),
        120,
        message="the quantized export",
    )
    assert job["state"] == "done", job
    result = job["result"]
    assert result["quantization"] == {"bits": 4, "group_size": 32, "mode": "affine"}
    path = Path(result["path"])
    assert path.name == f"{LORA_RUN_ID}-final-4bit-g32" and load(str(path))
    assert result["command"] == f"mlx_lm.generate --model {path} --prompt 'Hello'"
    measured = result["perplexity"]
    assert measured["data_label"] == "val"
    assert measured["quantized"]["tokens"] == measured["unquantized"]["tokens"] > 0
    table = server.get(f"/api/runs/{LORA_RUN_ID}/evaluations").json()
    (final,) = [r for r in table["rows"] if r["checkpoint"] == "final"]
    stored = {bool(p.get("quantization")): p["perplexity"] for p in final["perplexity"]}
    assert stored == {
        False: measured["unquantized"]["perplexity"],
        True: measured["quantized"]["perplexity"],
    }


@pytest.mark.parametrize(
    "body, field",
    [
        ({"quantize": 5}, "quantize"),
        ({"quantize": 4, "group_size": 48}, "group_size"),
        ({"quantize": 4, "group_size": 128}, "group_size"),  # the tiny model's hidden size is 64
        ({"format": "gguf", "quantize": 8}, "quantize"),
        ({"perplexity": True}, "perplexity"),
        ({"format": "tflite"}, "format"),
    ],
)
def test_bad_export_options_are_400_naming_the_field(
    server: LiveServer, body: dict[str, Any], field: str
) -> None:
    exports = server.workspace / "exports"
    before = sorted(exports.rglob("*")) if exports.exists() else []
    response = server.post("/api/eval/export", {"model": FINAL, **body})
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field and response.json()["error"]
    assert (sorted(exports.rglob("*")) if exports.exists() else []) == before


def test_gguf_of_another_architecture_is_400_and_writes_nothing(server: LiveServer) -> None:
    exports = server.workspace / "exports"
    before = sorted(exports.rglob("*")) if exports.exists() else []
    body = {"model": {"path": "models/other"}, "format": "gguf", "dest": "exports/other-gguf"}
    response = server.post("/api/eval/export", body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "format"
    assert "llama family" in response.json()["error"]
    assert (sorted(exports.rglob("*")) if exports.exists() else []) == before


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        (
            "/api/eval/generate",
            {"model": {"run_id": LORA_RUN_ID, "checkpoint": 999}, "prompt": "x"},
            404,
            "model",
        ),
        ("/api/eval/generate", {"model": {"run_id": "no-such-run"}, "prompt": "x"}, 404, "model"),
        ("/api/eval/generate", {"model": FINAL, "prompt": ""}, 400, "prompt"),
        ("/api/eval/generate", {"model": FINAL, "prompt": "x", "temp": -1}, 400, "temp"),
        (
            "/api/eval/perplexity",
            {"model": FINAL, "data": {"path": "corpora/empty.txt"}},
            400,
            "data",
        ),
        ("/api/eval/perplexity", {"model": FINAL, "data": {"path": "/etc/passwd"}}, 400, "data"),
        ("/api/eval/export", {"model": FINAL, "dest": "/etc/evil"}, 400, "dest"),
        ("/api/eval/export", {"model": FINAL, "dest": f"runs/{LORA_RUN_ID}/x"}, 400, "dest"),
        # An export replaces its destination: never the workspace, nor a non-export folder.
        ("/api/eval/export", {"model": FINAL, "dest": ".", "overwrite": True}, 400, "dest"),
        ("/api/eval/export", {"model": FINAL, "dest": "corpora", "overwrite": True}, 400, "dest"),
        (
            "/api/eval/perplexity",
            {"model": FINAL, "data": {"set": "val"}, "run_id": 5},
            400,
            "run_id",
        ),
        ("/api/eval/explode", {}, 404, None),  # no such route
    ],
)
def test_bad_requests_are_json_errors(
    server: LiveServer, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    response = server.post(path, body)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field and response.json()["error"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"model": {"path": "models/broken"}, "prompt": "x"}, "model", "could not load"),
        ({"model": FINAL, "prompt": "x " * 5000, "max_tokens": 2}, "prompt", "context length"),
    ],
)
def test_worker_failures_reach_the_client(
    server: LiveServer, body: dict[str, Any], field: str, words: str
) -> None:
    _, job_id, end = _generate(server, body)
    assert end["name"] == "eval_error" and end["field"] == field and words in end["error"]
    job = wait_until(
        lambda: (
            (j := server.get(f"/api/eval/jobs/{job_id}").json()["job"])["exit_code"] is not None
            and j
        ),
        30,
        message="the worker to exit",
    )
    assert job["state"] == "failed" and job["exit_code"] == 2  # the worker exited cleanly


def test_mutations_need_json_and_the_token(server: LiveServer) -> None:
    form = server.request(
        "POST",
        "/api/eval/generate",
        data="prompt=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415
    anonymous = server.post("/api/eval/generate", {"model": FINAL, "prompt": "x"}, auth=False)
    assert anonymous.status_code == 401
    assert server.get("/api/eval/models", auth=False).status_code == 401


def test_a_run_under_evaluation_cannot_be_deleted(server: LiveServer) -> None:
    copy_id = "20260101-000000-lora02"
    shutil.copytree(server.workspace / "runs" / LORA_RUN_ID, server.workspace / "runs" / copy_id)
    sio = server.socket()
    events = Events(sio)
    body = {"model": {"run_id": copy_id, "checkpoint": "final"}, "prompt": "x", "max_tokens": 4096}
    job_id = sio.call("eval_generate", {**body, "temp": 1.0, "seed": 1}, timeout=30)["job_id"]
    refused = server.delete(f"/api/runs/{copy_id}", {"confirm": True})
    assert refused.status_code == 409 and "evaluation" in refused.json()["error"], refused.text
    sio.call("eval_stop", {"job_id": job_id}, timeout=10)
    events.wait_end(job_id)
    wait_until(
        lambda: server.delete(f"/api/runs/{copy_id}", {"confirm": True}).status_code == 200,
        30,
        message="the delete once the worker is gone",
    )
    assert not (server.workspace / "runs" / copy_id).exists()


def test_the_console_token_stays_out_of_evaluation_workers(server: LiveServer) -> None:
    import psutil

    sio = server.socket()
    events = Events(sio)
    body = {"model": FINAL, "prompt": "x", "max_tokens": 4096, "temp": 1.0, "seed": 2}
    job_id = sio.call("eval_generate", body, timeout=30)["job_id"]
    assert server.process is not None
    console = psutil.Process(server.process.pid)
    workers = wait_until(
        lambda: [p for p in console.children() if "training.eval_worker" in " ".join(p.cmdline())],
        30,
        message="the worker process",
    )
    environ = workers[0].environ()
    assert "MLX_CPT_TOKEN" not in environ and server.token not in str(environ)
    sio.call("eval_stop", {"job_id": job_id}, timeout=10)
    events.wait_end(job_id)
