"""Damaged run folders against the real console: every kind of damage a run folder can
hold (links out of the workspace, FIFOs, a socket, folders in place of files, lines of
megabytes, binary garbage, invalid UTF-8, wrong JSON types, truncated, empty and deeply
nested files), each in two runs: one damaged before the console starts (its start-up
scan reads it) and one damaged after the console has listed, indexed and streamed it.

For every case and every endpoint of a run: an answer within 10 s, never a 5xx, 200 or
a 422 naming the damaged file, never a byte of the outside files (each holds MARKER),
never a checkpoint from outside; `join_run` always acknowledges; and the healthy runs
beside them list and stream as before.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.console_helpers import make_workspace
from tests.live_server import LiveServer
from training.contract.checkpoints import write_bundle
from training.contract.layout import RunPaths, RunRecord, write_record
from training.contract.protocol import RUN_STATES

MARKER = "OUTSIDE-7f3a9c-MARKER"
OUTSIDE_STEP = 777
TIMEOUT = 10.0  # seconds any answer may take
TWO_MB = 2 << 20
# The endpoints of one run: (key, path after /api/runs/<id>).
ENDPOINTS = {
    "run": "",
    "metrics": "/metrics",
    "history": "/metrics?max_points=50",
    "logs": "/logs?tail=20",
    "checkpoints": "/checkpoints",
    "evaluations": "/evaluations",
    "config": "/config",
}
GOOD_RUNS = ("20250101-000000-good01", "20250101-000000-good02")


# -- the outside world the links point at -----------------------------------------------------


def build_outside(root: Path) -> Path:
    """Files outside the workspace, each holding MARKER (or the step 777 bundle)."""
    root.mkdir()
    (root / "secret.log").write_text(f"{MARKER} a system file\n" * 10)
    rows = [{"seq": i, "event": "train", "step": i, "note": MARKER} for i in range(1, 30)]
    rows.append({"seq": 30, "event": "status", "state": "finished", "message": MARKER})
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "config.yaml").write_text(f"model: {MARKER}\ndata: {MARKER}\niters: 777\n")
    (root / "run.json").write_text(json.dumps({"name": MARKER, "created": 1.0}))

    def arrays(folder: Path) -> None:
        (folder / "adapters.safetensors").write_bytes(MARKER.encode() * 1000)
        (folder / "adapter_config.json").write_text(json.dumps({"marker": MARKER}))

    write_bundle(root / "checkpoints", OUTSIDE_STEP, {"marker": MARKER}, arrays)
    (root / "final").mkdir()
    (root / "final" / "config.json").write_text(json.dumps({"marker": MARKER}))
    (root / "final" / "model.safetensors").write_bytes(MARKER.encode() * 1000)
    (root / "final" / "state.json").write_text(json.dumps({"step": OUTSIDE_STEP}))
    (root / "evaluations").mkdir()
    record = {"checkpoint": "step-00000010", "perplexity": 777.0, "data_label": MARKER}
    (root / "evaluations" / "perplexity.jsonl").write_text(json.dumps(record) + "\n")
    return root


# -- a healthy run ----------------------------------------------------------------------------


def _arrays(folder: Path) -> None:
    (folder / "adapters.safetensors").write_bytes(b"w" * 100)
    (folder / "adapter_config.json").write_text('{"fine_tune_type": "lora"}')


def metrics_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"event": "run_start", "step": 0, "total_steps": 40, "total_tokens": 4000},
        {"event": "status", "step": 0, "state": "running", "message": "training"},
    ]
    for step in range(1, 21):
        rows.append(
            {
                "event": "train",
                "step": step,
                "train_loss": 3.0 - step / 20,
                "learning_rate": 1e-3,
                "iterations_per_second": 2.0,
                "trained_tokens": 100 * step,
            }
        )
        if step % 10 == 0:
            rows.append({"event": "eval", "step": step, "val_loss": 2.5 - step / 40})
            rows.append({"event": "checkpoint", "step": step, "path": f"step-{step:08d}"})
    rows.append({"event": "status", "step": 20, "state": "stopped", "message": "stopped"})
    return [{"v": 1, "seq": i, "time": 1000.0 + i, **r} for i, r in enumerate(rows, 1)]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def healthy_run(runs_dir: Path, run_id: str) -> RunPaths:
    """A stopped LoRA run: config, run.json, 27 metrics rows, a log, two checkpoints
    (steps 10 and 20, latest 20) and a stored perplexity."""
    paths = RunPaths(runs_dir / run_id)
    paths.root.mkdir(parents=True)
    paths.config.write_text("model: models/tiny\ndata: corpus.txt\niters: 40\n")
    paths.config.write_text(paths.config.read_text() + "fine_tune_type: lora\n")
    write_record(paths, RunRecord(run_id, f"run {run_id}", time.time(), state="starting"))
    paths.metrics.write_bytes(jsonl(metrics_rows()))
    paths.stdout.write_text("".join(f"step {i}: fine\n" for i in range(30)))
    for step in (10, 20):
        write_bundle(paths.checkpoints, step, {"val_loss": 2.0, "val_step": step}, _arrays)
    paths.evaluations.mkdir()
    record = {"checkpoint": "step-00000010", "perplexity": 12.0, "data_label": "val"}
    (paths.evaluations / "perplexity.jsonl").write_text(json.dumps(record) + "\n")
    return paths


# -- the damage -------------------------------------------------------------------------------

Damage = Callable[[RunPaths, Path], None]


def _replace(path: Path) -> Path:
    """Clear a name (a file, a folder, a link) so something else can take it."""
    if path.is_symlink() or path.is_file() or path.exists() and not path.is_dir():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    return path


def link(rel: str, target: str) -> Damage:
    def damage(run: RunPaths, outside: Path) -> None:
        _replace(run.root / rel).symlink_to(outside / target)

    return damage


def fifo(rel: str) -> Damage:
    return lambda run, _outside: os.mkfifo(_replace(run.root / rel))


def folder(rel: str) -> Damage:
    def damage(run: RunPaths, _outside: Path) -> None:
        _replace(run.root / rel).mkdir()
        (run.root / rel / "inside").write_text(MARKER)  # never read either

    return damage


def content(rel: str, data: bytes | Callable[[], bytes]) -> Damage:
    def damage(run: RunPaths, _outside: Path) -> None:
        _replace(run.root / rel).write_bytes(data() if callable(data) else data)

    return damage


def unix_socket(rel: str) -> Damage:
    def damage(run: RunPaths, _outside: Path) -> None:
        # Bound at a short path (sun_path is ~100 bytes), then moved into the run.
        short = Path(tempfile.mkdtemp(dir="/tmp")) / "s"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(short))
        server.close()
        os.rename(short, _replace(run.root / rel))
        short.parent.rmdir()

    return damage


def link_bundle(run: RunPaths, outside: Path) -> None:
    name = f"step-{OUTSIDE_STEP:08d}"
    (run.checkpoints / name).symlink_to(outside / "checkpoints" / name)
    (run.latest).write_text(json.dumps({"step": OUTSIDE_STEP, "bundle": name}))


def bundle_file(rel: str) -> Damage:
    def damage(run: RunPaths, outside: Path) -> None:
        target = outside / "checkpoints" / f"step-{OUTSIDE_STEP:08d}" / rel
        _replace(run.checkpoints / "step-00000020" / rel).symlink_to(target)

    return damage


def long_metrics_line(run: RunPaths, _outside: Path) -> None:
    rows = metrics_rows()
    huge = json.dumps({"v": 1, "seq": 10_000, "event": "train", "pad": "x" * TWO_MB})
    run.metrics.write_bytes(jsonl(rows[:-1]) + huge.encode() + b"\n" + jsonl(rows[-1:]))


def long_first_metrics_line(run: RunPaths, _outside: Path) -> None:
    huge = json.dumps({"v": 1, "seq": 0, "event": "run_start", "pad": "x" * TWO_MB})
    run.metrics.write_bytes(huge.encode() + b"\n" + jsonl(metrics_rows()))


def unterminated_metrics_tail(run: RunPaths, _outside: Path) -> None:
    run.metrics.write_bytes(jsonl(metrics_rows()) + b'{"seq": 99, "pad": "' + b"y" * TWO_MB)


def long_log_line(run: RunPaths, _outside: Path) -> None:
    run.stdout.write_bytes(b"start\n" + b"z" * TWO_MB + b"\nafter 1\nafter 2\n")


def wrong_metrics_types(run: RunPaths, _outside: Path) -> None:
    rows: list[Any] = [
        {"seq": "1", "event": "train", "step": 1},
        {"seq": 2, "event": 7, "step": "x", "time": "y"},
        {"seq": 3, "event": "run_start", "total_steps": {"a": 1}, "total_tokens": [1]},
        {"seq": 4, "event": "train", "step": "five", "iterations_per_second": "fast"},
        {"seq": 5, "event": "train", "step": 10**400, "train_loss": 10**400, "time": 10**400},
        {"seq": 6, "event": "eval", "step": 1.5, "val_loss": "low", "general_loss": None},
        {"seq": 7, "event": "status", "state": 5, "message": ["not", "text"], "time": "now"},
        {"seq": 2**70, "event": "train"},
        [1, 2, 3],
        "a string",
        None,
    ]
    run.metrics.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows))


GARBAGE = bytes(range(256)) * 64 + b"\n\x00\xff\xfe\n" * 50


@dataclass(frozen=True)
class Case:
    name: str
    damage: Damage
    unreadable: str | None = None  # the file the run's reason names when it is unreadable
    fails: frozenset[str] = field(default_factory=frozenset)  # endpoints answering 422


METRICS_UNREADABLE = frozenset({"metrics", "history"})

CASES = [
    # Links out of the workspace.
    Case("link-stdout.log", link("stdout.log", "secret.log"), fails=frozenset({"logs"})),
    Case(
        "link-metrics.jsonl",
        link("metrics.jsonl", "metrics.jsonl"),
        "metrics.jsonl",
        METRICS_UNREADABLE,
    ),
    Case(
        "dangling-link-metrics.jsonl",
        link("metrics.jsonl", "nowhere"),
        "metrics.jsonl",
        METRICS_UNREADABLE,
    ),
    Case("link-config.yaml", link("config.yaml", "config.yaml"), fails=frozenset({"config"})),
    Case("link-run.json", link("run.json", "run.json"), "run.json"),
    Case("link-checkpoints", link("checkpoints", "checkpoints")),
    Case("link-bundle", link_bundle),
    Case("link-bundle-adapters", bundle_file("adapters.safetensors")),
    Case("link-bundle-state.json", bundle_file("state.json")),
    Case("link-latest.json", link("checkpoints/latest.json", "checkpoints/latest.json")),
    Case("link-final", link("final", "final")),
    Case("link-evaluations", link("evaluations", "evaluations")),
    Case(
        "link-perplexity.jsonl",
        link("evaluations/perplexity.jsonl", "evaluations/perplexity.jsonl"),
    ),
    # FIFOs (and a socket): never opened in a way that blocks.
    Case("fifo-stdout.log", fifo("stdout.log"), fails=frozenset({"logs"})),
    Case("fifo-metrics.jsonl", fifo("metrics.jsonl"), "metrics.jsonl", METRICS_UNREADABLE),
    Case("fifo-config.yaml", fifo("config.yaml"), fails=frozenset({"config"})),
    Case("fifo-run.json", fifo("run.json"), "run.json"),
    Case("fifo-latest.json", fifo("checkpoints/latest.json")),
    Case("fifo-state.json", fifo("checkpoints/step-00000020/state.json")),
    Case("fifo-in-bundle", fifo("checkpoints/step-00000020/extra")),
    Case("fifo-perplexity.jsonl", fifo("evaluations/perplexity.jsonl")),
    Case("socket-metrics.jsonl", unix_socket("metrics.jsonl"), "metrics.jsonl", METRICS_UNREADABLE),
    # Folders where files belong.
    Case("dir-stdout.log", folder("stdout.log"), fails=frozenset({"logs"})),
    Case("dir-metrics.jsonl", folder("metrics.jsonl"), "metrics.jsonl", METRICS_UNREADABLE),
    Case("dir-config.yaml", folder("config.yaml"), fails=frozenset({"config"})),
    Case("dir-run.json", folder("run.json"), "run.json"),
    Case("dir-latest.json", folder("checkpoints/latest.json")),
    Case("dir-state.json", folder("checkpoints/step-00000020/state.json")),
    Case("file-checkpoints", content("checkpoints", b"not a folder\n")),
    Case("file-evaluations", content("evaluations", b"not a folder\n")),
    # Lines of megabytes.
    Case("2mb-line-then-more-metrics", long_metrics_line),
    Case("2mb-first-metrics-line", long_first_metrics_line),
    Case("2mb-unterminated-metrics-tail", unterminated_metrics_tail),
    Case("2mb-log-line", long_log_line),
    Case("5mb-run.json", content("run.json", b'{"name": "' + b"n" * (5 << 20) + b'"}'), "run.json"),
    Case("5mb-config.yaml", content("config.yaml", b"# " * (5 << 20)), fails=frozenset({"config"})),
    # Binary garbage and invalid UTF-8.
    Case("garbage-metrics.jsonl", content("metrics.jsonl", GARBAGE)),
    Case("garbage-run.json", content("run.json", GARBAGE), "run.json"),
    Case("garbage-config.yaml", content("config.yaml", GARBAGE), fails=frozenset({"config"})),
    Case("garbage-stdout.log", content("stdout.log", GARBAGE)),
    Case("garbage-latest.json", content("checkpoints/latest.json", GARBAGE)),
    Case("garbage-state.json", content("checkpoints/step-00000020/state.json", GARBAGE)),
    Case("garbage-perplexity.jsonl", content("evaluations/perplexity.jsonl", GARBAGE)),
    Case(
        "latin1-config.yaml",
        content("config.yaml", "model: café\n".encode("latin-1")),
        fails=frozenset({"config"}),
    ),  # fmt: skip
    Case("latin1-run.json", content("run.json", '{"name": "café"}'.encode("latin-1")), "run.json"),
    Case("latin1-metrics.jsonl", content("metrics.jsonl", b'{"seq": 1, "event": "\xe9"}\n')),
    # Wrong JSON types.
    Case("run.json-exit-boom", content("run.json", b'{"exit": "boom"}'), "run.json"),
    Case("run.json-pid-text", content("run.json", b'{"pid": "12", "created": "x"}'), "run.json"),
    Case("run.json-list", content("run.json", b"[1, 2, 3]"), "run.json"),
    Case("run.json-resumes", content("run.json", b'{"resumes": 5, "cmdline": "x"}'), "run.json"),
    Case("run.json-huge-int", content("run.json", b'{"pid": 1' + b"0" * 400 + b"}"), "run.json"),
    Case("latest.json-types", content("checkpoints/latest.json", b'{"bundle": 5, "step": "x"}')),
    Case(
        "state.json-types",
        content(
            "checkpoints/step-00000020/state.json",
            b'{"time": "noon", "val_loss": "low", "val_step": 20, "step": "two"}',
        ),
    ),
    Case("metrics-wrong-types", wrong_metrics_types),
    Case(
        "config.yaml-not-a-mapping",
        content("config.yaml", b"- a\n- list\n"),
        fails=frozenset({"config"}),
    ),  # fmt: skip
    # Truncated, empty and nested too deeply.
    Case("truncated-run.json", content("run.json", b'{"name": "half", "crea'), "run.json"),
    Case("truncated-metrics.jsonl", content("metrics.jsonl", jsonl(metrics_rows())[:-17])),
    Case("truncated-latest.json", content("checkpoints/latest.json", b'{"step": 20, "bun')),
    Case("truncated-state.json", content("checkpoints/step-00000020/state.json", b'{"st')),
    Case(
        "truncated-config.yaml",
        content("config.yaml", b"model: [models/tiny,\n"),
        fails=frozenset({"config"}),
    ),  # fmt: skip
    Case("empty-run.json", content("run.json", b""), "run.json"),
    Case("empty-metrics.jsonl", content("metrics.jsonl", b"")),
    Case("empty-config.yaml", content("config.yaml", b"")),
    Case("deep-run.json", content("run.json", b"[" * 100_000), "run.json"),
    Case("deep-metrics-line", content("metrics.jsonl", b'{"a":' * 50_000 + b"\n" + b"[" * 99_999)),
]
CASE_IDS = [case.name for case in CASES]
PHASES = ("cold", "warm")  # damaged before the console started / after it read the run


def run_id(case: Case, phase: str) -> str:
    return f"{phase}-{CASES.index(case):03d}-{case.name}"[:120]


# -- the console over all of them -------------------------------------------------------------


@dataclass
class Damaged:
    server: LiveServer
    outside: Path
    sio: Any
    received: list[dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)


# Seconds each answer took, by kind (reported at the end with -rA).
LATENCY: dict[str, list[float]] = {"http": [], "join_run": []}


def _get(server: LiveServer, path: str) -> requests.Response:
    began = time.monotonic()
    response = server.session.get(
        server.base_url + path.lstrip("/"),
        headers={"Authorization": f"Bearer {server.token}"},
        timeout=TIMEOUT,
    )
    elapsed = time.monotonic() - began
    LATENCY["http"].append(elapsed)
    assert elapsed < TIMEOUT, f"{path} took {elapsed:.1f} s"
    return response


def _join(damaged: Damaged, rid: str) -> dict[str, Any]:
    began = time.monotonic()
    ack = damaged.sio.call("join_run", {"run_id": rid, "after_seq": 0}, timeout=TIMEOUT)
    LATENCY["join_run"].append(time.monotonic() - began)
    assert LATENCY["join_run"][-1] < TIMEOUT
    return ack


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Damaged]:
    """One console over a workspace holding two good runs and, per case, a run damaged
    before it started (cold) and one damaged after it listed, indexed and joined it (warm)."""
    tmp = tmp_path_factory.mktemp("damaged")
    ws = make_workspace(tmp / "ws")
    outside = build_outside(tmp / "outside")
    runs = ws / "runs"
    # One healthy run built (and fsynced) once, copied for every case: run.json's run_id
    # is the folder's name when read.
    template = healthy_run(tmp / "template", "template").root
    for rid in [*GOOD_RUNS, *(run_id(c, p) for c in CASES for p in PHASES)]:
        shutil.copytree(template, runs / rid)
    for case in CASES:
        case.damage(RunPaths(runs / run_id(case, "cold")), outside)
    server = LiveServer(ws, fake_trainer=True)
    began = time.monotonic()
    server.start(timeout=60)
    seconds = {"start": time.monotonic() - began}
    try:
        received: list[dict[str, Any]] = []
        sio = server.socket()
        sio.on("run_metrics", received.append)
        sio.on("run_status", received.append)
        # The warm runs are read as healthy first: listed, indexed, tailed and followed.
        began = time.monotonic()
        assert _get(server, "/api/runs").status_code == 200
        for case in CASES:
            rid = run_id(case, "warm")
            # The run page's view builds its metrics index; the join follows its file.
            assert _get(server, f"/api/runs/{rid}").status_code == 200
            assert sio.call("join_run", {"run_id": rid, "after_seq": 0}, timeout=TIMEOUT)["ok"]
        seconds["warm-up"] = time.monotonic() - began
        for case in CASES:
            case.damage(RunPaths(runs / run_id(case, "warm")), outside)
        yield Damaged(server, outside, sio, received, seconds)
    finally:
        server.stop()


def test_the_console_starts_and_lists_every_run(damaged: Damaged) -> None:
    server = damaged.server
    assert damaged.seconds["start"] < 30
    for path in ("/api/runs", "/api/runs/summary", "/api/eval/models", "/api/system"):
        response = _get(server, path)
        assert response.status_code == 200, (path, response.text)
        assert MARKER not in response.text, path
    runs = {r["run_id"]: r for r in _get(server, "/api/runs").json()["runs"]}
    assert len(runs) == len(GOOD_RUNS) + 2 * len(CASES)
    for good in GOOD_RUNS:
        assert (runs[good]["state"], runs[good]["step"], runs[good]["total_steps"]) == (
            "stopped",
            20,
            40,
        )
    for case in CASES:
        for phase in PHASES:
            run = runs[run_id(case, phase)]
            assert run["state"] in RUN_STATES
            if case.unreadable:
                assert run["state"] == "unreadable", (case.name, phase, run)
                assert case.unreadable in run["reason"], (case.name, phase, run["reason"])
            else:
                assert run["state"] != "unreadable", (case.name, phase, run["reason"])
    summary = _get(server, "/api/runs/summary").json()
    unreadable = sum(1 for c in CASES if c.unreadable) * 2
    assert summary["counts"].get("unreadable", 0) == unreadable
    assert summary["counts"]["stopped"] >= len(GOOD_RUNS)
    models = _get(server, "/api/eval/models").json()["runs"]
    for entry in models:
        assert {c["step"] for c in entry["choices"]} <= {None, 10, 20}
        assert "final" not in {c["checkpoint"] for c in entry["choices"]}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_endpoint_answers_and_serves_nothing_from_outside(
    damaged: Damaged, case: Case, phase: str
) -> None:
    rid = run_id(case, phase)
    answers: dict[str, int] = {}
    for key, suffix in ENDPOINTS.items():
        response = _get(damaged.server, f"/api/runs/{rid}{suffix}")
        answers[key] = response.status_code
        assert MARKER not in response.text, (key, response.text[:300])
        assert f"{OUTSIDE_STEP:08d}" not in response.text, key
        body = response.json()
        if response.status_code == 422:
            assert body["file"] and body["file"] in body["error"], body
        if key == "checkpoints" and response.status_code == 200:
            assert {b["step"] for b in body["checkpoints"]} <= {10, 20}
        if key == "evaluations" and response.status_code == 200:
            assert {r["step"] for r in body["rows"]} <= {10, 20}
        if key == "run":
            assert body["run"]["state"] in RUN_STATES and body["run"]["reason"] is not None
    expected = {key: 422 if key in case.fails else 200 for key in ENDPOINTS}
    assert answers == expected
    ack = _join(damaged, rid)
    if case.unreadable == "metrics.jsonl":
        assert not ack["ok"] and ack["file"] == "metrics.jsonl" and ack["error"], ack
    else:
        assert ack["ok"] and isinstance(ack["last_seq"], int), ack
    assert MARKER not in json.dumps(ack)


def test_nothing_outside_was_written_and_the_streams_carried_nothing_of_it(
    damaged: Damaged,
) -> None:
    """Resuming a run whose stdout.log is a link or a FIFO must not write through it (the
    trainer's output would land outside) nor wait on it."""
    server = damaged.server
    secret = (damaged.outside / "secret.log").read_bytes()
    for name in ("link-stdout.log", "fifo-stdout.log", "dir-stdout.log"):
        rid = run_id(CASES[CASE_IDS.index(name)], "cold")
        began = time.monotonic()
        response = server.session.post(
            server.base_url + f"api/runs/{rid}/resume",
            json={"confirm": True},
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=TIMEOUT,
        )
        assert time.monotonic() - began < TIMEOUT
        assert response.status_code == 409 and "stdout.log" in response.json()["error"]
        assert MARKER not in response.text
    assert (damaged.outside / "secret.log").read_bytes() == secret

    # A remote trainer's events never go through a link at metrics.jsonl, nor into a file
    # or a link where a run folder belongs.
    def report(rid: str, seq: int) -> requests.Response:
        event = {"v": 1, "seq": seq, "event": "train", "step": seq, "time": 1.0}
        return server.session.post(
            server.base_url + f"api/callbacks/{rid}",
            json={"events": [event]},
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=TIMEOUT,
        )

    remote = "remote-run-1"
    assert report(remote, 1).status_code == 200
    outside_metrics = (damaged.outside / "metrics.jsonl").read_bytes()
    metrics = server.workspace / "runs" / remote / "metrics.jsonl"
    metrics.unlink()
    metrics.symlink_to(damaged.outside / "metrics.jsonl")
    answer = report(remote, 2)
    assert answer.status_code == 422 and answer.json()["file"] == "metrics.jsonl"
    assert (damaged.outside / "metrics.jsonl").read_bytes() == outside_metrics
    (server.workspace / "runs" / "remote-file").write_text("a file, not a run\n")
    (server.workspace / "runs" / "remote-link").symlink_to(damaged.outside)
    assert report("remote-file", 1).status_code == 404
    assert report("remote-link", 1).status_code == 404
    assert (damaged.outside / "metrics.jsonl").read_bytes() == outside_metrics
    # The good runs still stream: rows appended now reach a client that joins.
    good = RunPaths(server.workspace / "runs" / GOOD_RUNS[0])
    with good.metrics.open("a") as f:
        f.write(json.dumps({"v": 1, "seq": 28, "event": "train", "step": 21, "time": 9.0}) + "\n")
    ack = _join(damaged, GOOD_RUNS[0])
    assert ack["ok"] and ack["last_seq"] == 28
    assert MARKER not in json.dumps(damaged.received, default=str)
    runs = {r["run_id"]: r for r in _get(server, "/api/runs").json()["runs"]}
    assert runs[GOOD_RUNS[1]]["state"] == "stopped"
    for kind, seconds in LATENCY.items():
        if seconds:
            print(f"{kind}: {len(seconds)} answers, max {max(seconds):.3f} s")
    print(f"{len(CASES)} kinds x {len(PHASES)} phases; console start {damaged.seconds}")
