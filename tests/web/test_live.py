"""Socket.IO against a live console: join/leave, bad payloads, reconnects with the last
seq, run_status broadcasts, and a client that never reads stalling nobody."""

from __future__ import annotations

import json

import pytest
import websocket

from tests.console_helpers import fake_config, make_workspace, set_fake_mode
from tests.helpers import wait_until
from tests.live_server import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workspace = make_workspace(tmp_path_factory.mktemp("live") / "ws")
    with LiveServer(workspace, fake_trainer=True) as live:
        yield live


def start_run(server, **knobs):
    set_fake_mode(server.workspace, **{"rate": 100, **knobs})
    response = server.post("/api/runs", {"config": fake_config(iters=100_000)})
    assert response.status_code == 201, response.text
    return response.json()["run_id"]


def line_count(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def stop_run(server, run_id):
    server.post(f"/api/runs/{run_id}/stop")
    server.wait_for_state(run_id, "stopped")


@pytest.mark.parametrize(
    "payload,field",
    [
        (None, "run_id"),
        ("x", "run_id"),
        ({}, "run_id"),
        ({"run_id": "../etc"}, "run_id"),
        ({"run_id": "20990101-000000-ffffff"}, "run_id"),
        ({"run_id": "20990101-000000-ffffff", "after_seq": -1}, "after_seq"),
        ({"run_id": "20990101-000000-ffffff", "after_seq": "3"}, "after_seq"),
    ],
)
def test_bad_join_payloads_get_clear_errors(server, payload, field):
    sio = server.socket()
    ack = sio.call("join_run", payload, timeout=10)
    assert ack["ok"] is False and ack["field"] == field and ack["error"]
    assert sio.call("leave_run", None, timeout=10)["ok"] is False


def test_reconnect_with_the_last_seq_loses_and_repeats_nothing(server):
    run_id = start_run(server)
    try:
        rows: list[dict] = []
        first = server.socket()
        first.on("run_metrics", lambda data: rows.extend(data["rows"]))
        first.call("join_run", {"run_id": run_id, "after_seq": 0})
        wait_until(lambda: len(rows) > 20)
        first.disconnect()
        last = rows[-1]["seq"]
        metrics = server.workspace / "runs" / run_id / "metrics.jsonl"
        wait_until(lambda: line_count(metrics) > last + 30, message="rows missed")
        second = server.socket()
        second.on("run_metrics", lambda data: rows.extend(data["rows"]))
        ack = second.call("join_run", {"run_id": run_id, "after_seq": last})
        assert ack["ok"] and ack["last_seq"] >= last + 30
        wait_until(lambda: rows[-1]["seq"] > ack["last_seq"] + 10)
        seqs = [r["seq"] for r in rows]
        assert seqs == list(range(1, len(seqs) + 1))
        # leave_run: no more rows for this client
        second.call("leave_run", {"run_id": run_id})
        count = len(rows)
        wait_until(lambda: line_count(metrics) > seqs[-1] + 20)
        assert len(rows) <= count + 1  # at most one batch already in flight
    finally:
        stop_run(server, run_id)


def test_run_status_reaches_every_client(server):
    statuses: list[tuple[str, str]] = []
    watcher = server.socket()  # in no room: status changes are for every page
    watcher.on("run_status", lambda data: statuses.append((data["run_id"], data["state"])))
    run_id = start_run(server)
    wait_until(lambda: (run_id, "running") in statuses)
    stop_run(server, run_id)
    wait_until(lambda: (run_id, "stopped") in statuses)


def test_a_client_that_never_reads_stalls_nobody(server):
    """A raw WebSocket joins a busy run and never reads a byte: the other client still
    gets rows promptly and the trainer keeps its pace."""
    run_id = start_run(server, rate=200)
    stuck = websocket.create_connection(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket", timeout=10
    )
    try:
        stuck.recv()  # engine.io open
        stuck.send("40" + json.dumps({"token": server.token}))
        stuck.recv()  # connected
        stuck.send("42" + json.dumps(["join_run", {"run_id": run_id, "after_seq": 0}]))
        rows: list[dict] = []
        healthy = server.socket()
        healthy.on("run_metrics", lambda data: rows.extend(data["rows"]))
        healthy.call("join_run", {"run_id": run_id, "after_seq": 0})
        metrics = server.workspace / "runs" / run_id / "metrics.jsonl"
        target = line_count(metrics) + 400  # ~2 s of training at 200 steps/s
        wait_until(
            lambda: line_count(metrics) >= target,
            timeout=30,
            message="the trainer to keep going",
        )
        wait_until(
            lambda: rows and rows[-1]["seq"] >= target - 5,
            timeout=10,
            message="the healthy client to keep up",
        )
    finally:
        stuck.close()
        stop_run(server, run_id)


def test_concurrent_identical_starts_over_http(server):
    """Two tabs press Start at once: exactly one trainer, the other request gets 409."""
    from concurrent.futures import ThreadPoolExecutor

    set_fake_mode(server.workspace, rate=100)
    before = set(r["run_id"] for r in server.get("/api/runs").json()["runs"])
    body = {"config": fake_config(iters=100_000, seed=7)}
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: server.post("/api/runs", body), range(4)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 409, 409, 409], [r.text for r in responses]
    created = set(r["run_id"] for r in server.get("/api/runs").json()["runs"]) - before
    run_id = next(r.json()["run_id"] for r in responses if r.status_code == 201)
    assert created == {run_id}
    assert all(
        r.json()["error"] and r.json()["field"] is None for r in responses if r.status_code == 409
    )
    stop_run(server, run_id)


def test_a_huge_seq_is_refused_and_one_bad_line_breaks_nothing(server):
    run_id = "20260303-000000-bigseq"
    row = {"v": 1, "event": "train", "time": 1.0, "step": 1, "train_loss": 2.0}
    first = server.post(f"/api/callbacks/{run_id}", {"events": [{**row, "seq": 1}]})
    assert first.status_code == 200, first.text
    for seq in (2**53, 2**63):
        bad = server.post(f"/api/callbacks/{run_id}", {"events": [{**row, "seq": seq}]})
        assert bad.status_code == 400 and bad.json()["field"] == "events", bad.text
    # A line no index can hold (written by a trainer, not through the API) is a malformed
    # line: the run, its history and the runs list all still read.
    with (server.workspace / "runs" / run_id / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({**row, "seq": 2**63}) + "\n" + json.dumps({**row, "seq": 2}) + "\n")
    assert server.get("/api/runs").status_code == 200
    assert server.get("/api/runs/summary").status_code == 200
    history = server.get(f"/api/runs/{run_id}/metrics").json()
    assert [r["seq"] for r in history["rows"]] == [1, 2] and history["malformed"] == 1
    assert server.run(run_id)["last_seq"] == 2


def test_an_error_in_an_event_handler_is_an_error_ack_and_never_a_connection(tmp_path):
    """The default Socket.IO error handler (web/live.py): an event whose handler raised
    gets an error ack; a connect whose handler raised stays refused."""
    from flask import request

    from web.app import create_app
    from web.live import on_event_error

    app = create_app({"WORKSPACE": tmp_path / "ws", "TOKEN": "t"})
    try:
        with app.test_request_context("/socket.io/"):
            request.event = {"message": "connect", "args": ()}  # type: ignore[attr-defined]
            assert on_event_error(RuntimeError("boom")) is False
            request.event = {"message": "join_run", "args": (1, 2)}  # type: ignore[attr-defined]
            ack = on_event_error(TypeError("too many arguments"))
            assert ack["ok"] is False and "join_run" in ack["error"]
    finally:
        app.extensions["console"].close()
