"""The HTTP API through the real WSGI app (Flask's test client): every endpoint's happy
path and its bad requests, which all get JSON {"error", "field"} with the right status."""

from __future__ import annotations

import json
import os

import pytest

from tests.console_helpers import fake_config, make_workspace, set_fake_mode
from tests.helpers import wait_until
from training.contract.fields import FIELDS
from web.app import create_app

TOKEN = "api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def workspace(tmp_path):
    return make_workspace(tmp_path / "ws")


@pytest.fixture
def app(workspace):
    app = create_app(
        {
            "WORKSPACE": workspace,
            "TOKEN": TOKEN,
            "TRAINER_MODULE": "tests.fake_trainer",
            "STOP_GRACE_SECONDS": 5.0,
            "TESTING": True,
        }
    )
    yield app
    console = app.extensions["console"]
    for active in list(console.manager._active.values()):
        if active.popen is not None:
            active.popen.kill()
            active.popen.wait()
    console.close()


@pytest.fixture
def client(app):
    return app.test_client()


def api(client, method, path, body=None, **kw):
    headers = {**AUTH, **kw.pop("headers", {})}
    if body is not None:
        kw["json"] = body
    return getattr(client, method)(path, headers=headers, **kw)


def assert_error(response, status, field=None):
    assert response.status_code == status, response.get_data(as_text=True)
    data = response.get_json()
    assert isinstance(data["error"], str) and data["error"]
    if field is not None:
        assert data["field"] == field, data
    return data


# -- console-wide --


def test_health_is_public_and_reveals_nothing_else(client):
    data = client.get("/api/health").get_json()
    assert data == {"ok": True, "version": data["version"], "async_mode": "threading"}


def test_fields_come_from_the_registry(client):
    fields = api(client, "get", "/api/fields").get_json()["fields"]
    assert [f["name"] for f in fields] == [f.name for f in FIELDS]
    assert {"name", "type", "default", "help", "group", "importance", "depends_on"} <= set(
        fields[0]
    )


def test_validate_config(client):
    ok = api(client, "post", "/api/config/validate", {"config": fake_config(learning_rate="1e-4")})
    data = ok.get_json()
    assert data["ok"] and data["config"]["learning_rate"] == 1e-4 and "model:" in data["yaml"]
    bad = api(
        client,
        "post",
        "/api/config/validate",
        {"config": {"model": "missing", "batch_size": 0, "bogus": 1}},
    ).get_json()
    assert not bad["ok"]
    assert {"model", "data", "batch_size", "bogus"} <= {e["field"] for e in bad["errors"]}
    assert_error(api(client, "post", "/api/config/validate", {"config": []}), 400, "config")


def test_lr_schedule_is_computed_from_the_config(client):
    body = {
        "config": {"learning_rate": 1e-3, "lr_schedule": "wsd", "decay_steps": 4},
        "total_steps": 20,
        "max_points": 100,
    }
    data = api(client, "post", "/api/config/lr_schedule", body).get_json()
    assert data["steps"] == list(range(1, 21)) and data["total_steps"] == 20
    assert data["learning_rates"][:16] == [1e-3] * 16 and data["final"] == 0.0
    spread = api(client, "post", "/api/config/lr_schedule", {**body, "max_points": 5}).get_json()
    assert spread["steps"][0] == 1 and spread["steps"][-1] == 20 and len(spread["steps"]) == 5
    bad = api(
        client,
        "post",
        "/api/config/lr_schedule",
        {"config": {"lr_schedule": "sawtooth"}, "total_steps": 10},
    )
    assert_error(bad, 400, "lr_schedule")
    broken = {"name": "cosine_decay", "arguments": [1e-3, 0]}
    bad = api(
        client,
        "post",
        "/api/config/lr_schedule",
        {"config": {"lr_schedule": broken}, "total_steps": 10},
    )
    assert_error(bad, 400, "lr_schedule")
    assert_error(api(client, "post", "/api/config/lr_schedule", {"config": {}}), 400, "total_steps")


def test_lr_schedule_gives_the_embeddings_rate_of_a_train_embeddings_run(client):
    config = {"learning_rate": 1e-3, "lr_schedule": "cosine", "warmup_steps": 2}
    body = {
        "config": {
            **config,
            "fine_tune_type": "lora",
            "train_embeddings": True,
            "embedding_lr_scale": 0.25,
        },
        "total_steps": 12,
    }
    data = api(client, "post", "/api/config/lr_schedule", body).get_json()
    assert data["embedding_learning_rates"] == [r * 0.25 for r in data["learning_rates"]]
    assert len(set(data["learning_rates"])) > 3  # a real curve, scaled at every step
    plain = {**body, "config": {**config, "fine_tune_type": "lora"}}
    assert (
        "embedding_learning_rates"
        not in api(client, "post", "/api/config/lr_schedule", plain).get_json()
    )


def quantized_model(workspace, name="tiny-4bit"):
    """A model folder as mlx_lm.convert -q writes its config.json (no weights: the console
    reads config.json only)."""
    folder = workspace / "models" / name
    folder.mkdir(parents=True)
    quant = {"group_size": 32, "bits": 4, "mode": "affine"}
    config = {"model_type": "llama", "quantization": quant, "quantization_config": quant}
    (folder / "config.json").write_text(json.dumps(config))
    return f"models/{name}"


def test_validate_reports_full_fine_tuning_of_a_quantized_model(client, workspace):
    model = quantized_model(workspace)
    data = api(
        client, "post", "/api/config/validate", {"config": fake_config(model=model)}
    ).get_json()
    assert not data["ok"] and [e["field"] for e in data["errors"]] == ["fine_tune_type"]
    assert "mlx_lm.convert --dequantize" in data["errors"][0]["message"]
    quant = {"bits": 4, "group_size": 32, "mode": "affine"}
    assert data["model"] == {"quantization": quant}  # the form disables full with it
    lora = api(
        client,
        "post",
        "/api/config/validate",
        {"config": fake_config(model=model, fine_tune_type="lora")},
    ).get_json()
    assert lora["ok"] and lora["model"] == {"quantization": quant}
    plain = api(client, "post", "/api/config/validate", {"config": fake_config()}).get_json()
    assert plain["model"] == {"quantization": None}
    hub = api(
        client, "post", "/api/config/validate", {"config": fake_config(model="org/m")}
    ).get_json()
    assert hub["model"] is None


def test_system(client, workspace):
    data = api(client, "get", "/api/system").get_json()
    assert {"cpu", "memory", "swap", "disk", "platform", "mlx", "trainers"} <= set(data)
    assert data["disk"]["path"] == str(workspace.resolve())


def test_presets(client, workspace):
    (workspace / "demo.yaml").write_text("model: models/tiny\ndata: corpus.txt\n")
    presets = api(client, "get", "/api/presets").get_json()["presets"]
    assert presets[0]["name"] == "demo" and presets[0]["config"]["data"] == "corpus.txt"


# -- runs --


def create(client, **body):
    body.setdefault("config", fake_config())
    return api(client, "post", "/api/runs", body)


def test_create_start_stop_and_describe(client, workspace):
    set_fake_mode(workspace, rate=200)
    response = create(client, config=fake_config(iters=100_000), name="api run")
    assert response.status_code == 201
    run_id = response.get_json()["run_id"]
    wait_until(lambda: api(client, "get", f"/api/runs/{run_id}").get_json()["run"]["step"] > 3)
    run = api(client, "get", f"/api/runs/{run_id}").get_json()["run"]
    assert run["state"] == "running" and run["name"] == "api run" and run["alive"]
    listed = api(client, "get", "/api/runs").get_json()["runs"]
    assert [r["run_id"] for r in listed] == [run_id]
    summary = api(client, "get", "/api/runs/summary").get_json()
    assert summary["counts"] == {"running": 1} and summary["runs"][0]["train_loss"] is not None
    stop = api(client, "post", f"/api/runs/{run_id}/stop", {})
    assert stop.status_code == 202 and stop.get_json()["state"] == "stopping"
    wait_until(
        lambda: api(client, "get", f"/api/runs/{run_id}").get_json()["run"]["state"] == "stopped"
    )
    assert_error(api(client, "post", f"/api/runs/{run_id}/stop", {}), 409)
    stopped = api(client, "get", f"/api/runs/{run_id}").get_json()["run"]
    assert stopped["elapsed_seconds"] == stopped["step"] / 200  # the trainer's own count
    checkpoints = api(client, "get", f"/api/runs/{run_id}/checkpoints").get_json()["checkpoints"]
    assert checkpoints and checkpoints[-1]["is_latest"]
    logs = api(client, "get", f"/api/runs/{run_id}/logs?tail=2").get_json()["lines"]
    assert len(logs) == 2
    assert_error(api(client, "post", f"/api/runs/{run_id}/resume", {}), 400, "confirm")
    assert_error(api(client, "delete", f"/api/runs/{run_id}", {}), 400, "confirm")
    assert api(client, "delete", f"/api/runs/{run_id}", {"confirm": True}).status_code == 200
    assert_error(api(client, "get", f"/api/runs/{run_id}"), 404, "run_id")


def test_create_with_a_bad_config_writes_nothing(client, workspace):
    data = assert_error(create(client, config={"model": "nope", "learning_rate": "fast"}), 400)
    assert {e["field"] for e in data["errors"]} >= {"model", "data", "learning_rate"}
    assert not (workspace / "runs").exists() or not os.listdir(workspace / "runs")


def test_creating_a_full_run_of_a_quantized_model_is_400_and_writes_nothing(client, workspace):
    config = fake_config(model=quantized_model(workspace))
    data = assert_error(create(client, config=config), 400, "fine_tune_type")
    assert "use lora or dora" in data["error"]
    assert [e["field"] for e in data["errors"]] == ["fine_tune_type"]
    assert not (workspace / "runs").exists() or not os.listdir(workspace / "runs")


def test_restart_a_run_that_ended_before_its_first_checkpoint(client, workspace):
    set_fake_mode(workspace, mode="fail", fail_at=2, rate=500)
    run_id = create(client, config=fake_config(save_every=1000)).get_json()["run_id"]
    url = f"/api/runs/{run_id}"
    wait_until(lambda: api(client, "get", url).get_json()["run"]["exit"] is not None)
    run = api(client, "get", url).get_json()["run"]
    assert run["state"] == "failed" and not run["resumable"] and run["restartable"]
    assert (
        "restart"
        in assert_error(api(client, "post", f"{url}/resume", {"confirm": True}), 409)["error"]
    )
    assert_error(api(client, "post", f"{url}/restart", {}), 400, "confirm")
    assert_error(api(client, "post", f"{url}/restart", {"confirm": "yes"}), 400, "confirm")
    set_fake_mode(workspace, rate=500)
    response = api(client, "post", f"{url}/restart", {"confirm": True})
    assert response.status_code == 202
    assert response.get_json()["run"]["state"] in ("starting", "running", "finished")
    wait_until(lambda: api(client, "get", url).get_json()["run"]["state"] == "finished")
    assert_error(api(client, "post", f"{url}/restart", {"confirm": True}), 409)


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "config"),
        ({"config": 5}, "config"),
        ({"config": "model: [unclosed"}, "config"),
        ({"config": {}, "start": "yes"}, "start"),
        ({"config": {}, "name": 5}, "name"),
    ],
)
def test_create_bad_requests(client, body, field):
    assert_error(api(client, "post", "/api/runs", body), 400, field)


def test_yaml_text_config_and_created_runs(client):
    text = "model: models/tiny\ndata: corpus.txt\niters: 5\n"
    response = create(client, config=text, start=False)
    assert response.status_code == 201
    run = response.get_json()["run"]
    assert run["state"] == "created"
    cfg = api(client, "get", f"/api/runs/{run['run_id']}/config").get_json()
    assert cfg["config"]["iters"] == 5 and "iters: 5" in cfg["yaml"]
    renamed = api(client, "patch", f"/api/runs/{run['run_id']}", {"name": "new name"})
    assert renamed.get_json()["run"]["name"] == "new name"
    assert_error(api(client, "patch", f"/api/runs/{run['run_id']}", {"state": "x"}), 400, "name")
    assert_error(api(client, "patch", f"/api/runs/{run['run_id']}", {"name": ""}), 400, "name")
    clone = api(
        client,
        "post",
        f"/api/runs/{run['run_id']}/clone",
        {"config": {"iters": 8}, "name": "clone"},
    )
    assert clone.status_code == 201
    assert clone.get_json()["run"]["cloned_from"] == run["run_id"]
    assert_error(
        api(client, "post", f"/api/runs/{run['run_id']}/clone", {"start": 1}), 400, "start"
    )


@pytest.mark.parametrize("run_id", ["missing-run", "..", "..%2F..%2Fetc", "%00", "a" * 300])
def test_unknown_or_invalid_run_ids_are_404(client, run_id):
    for method, suffix, body in [
        ("get", "", None),
        ("get", "/metrics", None),
        ("get", "/logs", None),
        ("get", "/checkpoints", None),
        ("get", "/config", None),
        ("post", "/stop", {}),
        ("post", "/resume", {"confirm": True}),
        ("post", "/restart", {"confirm": True}),
        ("post", "/start", {}),
        ("patch", "", {"name": "x"}),
        ("delete", "", {"confirm": True}),
    ]:
        response = api(client, method, f"/api/runs/{run_id}{suffix}", body)
        assert response.status_code == 404, (method, suffix, response.get_data(as_text=True))
        assert response.get_json()["error"]


def test_metrics_endpoint(client, app):
    store = app.extensions["console"].store
    from training.contract.layout import RunRecord

    paths = store.create_run(RunRecord("20260101-000000-aaaaaa", "r", 1.0), "")
    with paths.metrics.open("w") as f:
        for i in range(1, 3001):
            loss = 50.0 if i == 1234 else 1.0
            f.write(json.dumps({"seq": i, "event": "train", "step": i, "train_loss": loss}) + "\n")
    base = "/api/runs/20260101-000000-aaaaaa/metrics"
    data = api(client, "get", f"{base}?after_seq=2990").get_json()
    assert [r["seq"] for r in data["rows"]] == list(range(2991, 3001)) and data["last_seq"] == 3000
    page = api(client, "get", f"{base}?limit=100").get_json()
    assert len(page["rows"]) == 100 and page["more"] and page["last_seq"] == 100
    down = api(client, "get", f"{base}?max_points=100").get_json()
    assert down["downsampled"] and len(down["rows"]) <= 100 and down["total"] == 3000
    assert any(r["seq"] == 1234 for r in down["rows"])
    for query, field in [
        ("after_seq=-1", "after_seq"),
        ("max_points=x", "max_points"),
        ("max_points=100000000", "max_points"),
        ("limit=0", "limit"),
    ]:
        assert_error(api(client, "get", f"{base}?{query}"), 400, field)
    assert_error(api(client, "get", "/api/runs/20260101-000000-aaaaaa/logs?tail=x"), 400, "tail")


def test_metrics_download_as_csv(client, app, tmp_path):
    """GET /api/runs/<run_id>/metrics.csv: a streamed attachment, one row per event, the
    union of the keys as columns; a metrics file that is a link is refused (422)."""
    store = app.extensions["console"].store
    from training.contract.layout import RunRecord

    paths = store.create_run(RunRecord("20260101-000000-aaaaaa", "r", 1.0), "")
    rows = [{"seq": i, "event": "train", "step": i, "train_loss": 1 / i} for i in range(1, 2501)]
    rows.append({"seq": 2501, "event": "eval", "step": 2500, "val_loss": 0.5, "note": "a, b"})
    paths.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    response = api(client, "get", "/api/runs/20260101-000000-aaaaaa/metrics.csv")
    assert response.status_code == 200 and response.is_streamed
    assert response.mimetype == "text/csv"
    assert (
        'filename="20260101-000000-aaaaaa-metrics.csv"' in response.headers["Content-Disposition"]
    )
    lines = response.get_data(as_text=True).splitlines()
    assert lines[0] == "seq,event,step,train_loss,val_loss,note"
    assert len(lines) == 1 + len(rows)
    assert lines[3] == f"3,train,3,{1 / 3!r},,"
    assert lines[-1] == '2501,eval,2500,,0.5,"a, b"'

    assert_error(api(client, "get", "/api/runs/20260101-000000-nosuch/metrics.csv"), 404)
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text(paths.metrics.read_text())
    paths.metrics.unlink()
    paths.metrics.symlink_to(outside)
    data = assert_error(api(client, "get", "/api/runs/20260101-000000-aaaaaa/metrics.csv"), 422)
    assert data["file"] == "metrics.jsonl"


def test_callbacks_from_a_remote_trainer(client):
    run_id = "20260202-000000-remote"
    events = [
        {"v": 1, "seq": i, "event": "train", "time": 1.0, "step": i, "train_loss": 2.0}
        for i in (1, 2, 3)
    ]
    response = api(client, "post", f"/api/callbacks/{run_id}", {"events": events})
    assert response.get_json() == {"accepted": 3, "duplicates": 0, "last_seq": 3}
    retry = api(client, "post", f"/api/callbacks/{run_id}", {"events": events[1:]})
    assert retry.get_json()["duplicates"] == 2
    run = api(client, "get", f"/api/runs/{run_id}").get_json()["run"]
    assert run["remote"] and run["step"] == 3
    rows = api(client, "get", f"/api/runs/{run_id}/metrics").get_json()["rows"]
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert_error(api(client, "post", f"/api/callbacks/{run_id}", {"events": "x"}), 400, "events")
    assert_error(
        api(client, "post", f"/api/callbacks/{run_id}", {"events": [{"seq": 0}]}), 400, "events"
    )
    local = create(client, start=False).get_json()["run_id"]
    assert_error(api(client, "post", f"/api/callbacks/{local}", {"events": events}), 409)
    assert_error(api(client, "post", "/api/callbacks/..", {"events": events}), 404)


def test_queue_endpoints(client, workspace):
    set_fake_mode(workspace, rate=500)
    api(client, "post", "/api/queue/pause", {})
    a = create(client, config=fake_config(iters=5), queue=True).get_json()["run_id"]
    b = create(client, config=fake_config(iters=6), start=False).get_json()["run_id"]
    queue = api(client, "post", "/api/queue/add", {"run_id": b}).get_json()["queue"]
    assert queue["run_ids"] == [a, b] and queue["paused"]
    queue = api(client, "post", "/api/queue/reorder", {"run_ids": [b, a]}).get_json()["queue"]
    assert queue["run_ids"] == [b, a]
    assert_error(api(client, "post", "/api/queue/reorder", {"run_ids": [a]}), 400, "run_ids")
    for bad, says in (([a, b, "nope"], "not queued: nope"), ([a, b, a], f"listed twice: {a}")):
        error = assert_error(api(client, "post", "/api/queue/reorder", {"run_ids": bad}), 400)
        assert error["field"] == "run_ids" and says in error["error"], error
    assert_error(api(client, "post", "/api/queue/reorder", {"run_ids": "x"}), 400, "run_ids")
    assert_error(api(client, "post", "/api/queue/add", {}), 400, "run_id")
    assert_error(api(client, "post", "/api/queue/remove", {"run_id": "nope"}), 409)
    settings = api(client, "patch", "/api/queue", {"stop_on_failure": True}).get_json()
    assert settings["queue"]["stop_on_failure"]
    assert_error(api(client, "patch", "/api/queue", {"stop_on_failure": "y"}), 400)
    assert_error(api(client, "patch", "/api/queue", {"other": 1}), 400)
    api(client, "post", "/api/queue/start", {})
    wait_until(
        lambda: api(client, "get", f"/api/runs/{a}").get_json()["run"]["state"] == "finished"
    )
    assert api(client, "get", "/api/queue").get_json()["queue"]["run_ids"] == []


# -- files, corpus reports, caches --


def test_file_listing_is_confined(client, workspace, tmp_path):
    roots = api(client, "get", "/api/files").get_json()["roots"]
    assert roots[0]["path"] == "."
    listing = api(client, "get", "/api/files?path=.").get_json()
    names = {e["name"]: e for e in listing["entries"]}
    assert names["models"]["type"] == "dir" and names["corpus.txt"]["type"] == "file"
    models = api(client, "get", "/api/files?path=models").get_json()
    assert models["entries"][0]["is_model"] and models["entries"][0]["path"] == "models/tiny"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (workspace / "link-out").symlink_to(outside)
    assert "link-out" not in {
        e["name"] for e in api(client, "get", "/api/files?path=.").get_json()["entries"]
    }
    for bad in [
        "../outside",
        str(outside),
        "link-out",
        "models/../../outside",
        "%2e%2e/outside",
        "corpus.txt\x00",
        "/etc",
    ]:
        response = api(client, "get", "/api/files", query_string={"path": bad})
        assert response.status_code in (400, 404), bad
        assert response.get_json()["field"] == "path"
    assert_error(api(client, "get", "/api/files?path=corpus.txt"), 400, "path")


def test_data_report(client, workspace, tmp_path):
    report = api(client, "post", "/api/data/report", {"path": "corpus.txt"}).get_json()["report"]
    assert report["documents"] == 1 and report["bytes"] > 100 and report["estimated"]
    assert report["preview"].startswith("Some text")
    assert_error(api(client, "post", "/api/data/report", {"path": "missing.txt"}), 400, "data")
    assert_error(api(client, "post", "/api/data/report", {"path": "../x"}), 400, "data")
    assert_error(api(client, "post", "/api/data/report", {}), 400, "data")
    (workspace / "blob.bin").write_bytes(b"\0\1")
    assert_error(api(client, "post", "/api/data/report", {"path": "blob.bin"}), 400, "data")


def test_clear_caches(client, workspace):
    cache = workspace / "cache" / "tokens"
    (cache / "abc123").mkdir(parents=True)
    (cache / "abc123" / "tokens.npy").write_bytes(b"0" * 1000)
    (cache / "def456").mkdir()
    listed = api(client, "get", "/api/caches").get_json()
    assert [c["name"] for c in listed["caches"]] == ["abc123", "def456"]
    assert listed["total_size"] == 1000
    assert_error(api(client, "delete", "/api/caches", {}), 400, "confirm")
    assert_error(
        api(client, "delete", "/api/caches", {"confirm": True, "names": ["../runs"]}), 400, "names"
    )
    assert_error(
        api(client, "delete", "/api/caches", {"confirm": True, "names": "abc123"}), 400, "names"
    )
    removed = api(client, "delete", "/api/caches", {"confirm": True, "names": ["abc123"]})
    assert removed.get_json()["removed"] == ["abc123"]
    api(client, "delete", "/api/caches", {"confirm": True})
    assert not list(cache.iterdir())
    assert (workspace / "models").is_dir()  # never anything else


# -- the request rules every endpoint shares --

MUTATIONS = [
    ("post", "/api/config/validate"),
    ("post", "/api/runs"),
    ("post", "/api/data/report"),
    ("delete", "/api/caches"),
    ("post", "/api/queue/pause"),
    ("post", "/api/queue/start"),
    ("patch", "/api/queue"),
    ("post", "/api/callbacks/20260101-000000-aaaaaa"),
    ("post", "/api/runs/20260101-000000-aaaaaa/stop"),
    ("post", "/api/runs/20260101-000000-aaaaaa/restart"),
]


@pytest.mark.parametrize("method,path", MUTATIONS)
def test_mutations_are_json_only(client, method, path):
    for kwargs in (
        {"data": "{}", "content_type": "text/plain"},
        {"data": {"a": "b"}},  # a form
        {"data": ""},
    ):
        response = getattr(client, method)(path, headers=AUTH, **kwargs)
        assert_error(response, 415, "Content-Type")
    response = getattr(client, method)(
        path, headers=AUTH, data="{bad", content_type="application/json"
    )
    assert_error(response, 400, "body")
    response = getattr(client, method)(
        path, headers=AUTH, data="[1]", content_type="application/json"
    )
    assert_error(response, 400, "body")


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/x/stop",
        "/api/runs/x/resume",
        "/api/runs/x/restart",
        "/api/queue/start",
        "/api/callbacks/x",
        "/api/config/validate",
    ],
)
def test_mutations_are_never_get(client, path):
    assert_error(api(client, "get", path), 405)


def test_unknown_api_routes_are_json_404(client):
    assert_error(api(client, "get", "/api/nope"), 404)


@pytest.mark.parametrize("query", ["max_points=10", "limit=1000", ""])
def test_history_and_its_last_seq_come_from_one_moment(client, app, monkeypatch, query):
    """Rows appended while a history request is answered must not end up in the rows past
    the answer's last_seq (or behind it): the client follows the live stream after
    last_seq, so anything sampled away between them would be lost for good."""
    from training.contract.layout import RunRecord
    from training.metrics.store import RunMetrics

    store = app.extensions["console"].store
    paths = store.create_run(RunRecord("20260101-000000-aaaaaa", "r", 1.0), "")

    def append(first, count):
        with paths.metrics.open("a") as f:
            for i in range(first, first + count):
                row = {"seq": i, "event": "train", "step": i, "train_loss": 1.0 + i % 7}
                f.write(json.dumps(row) + "\n")

    append(1, 500)
    # The trainer appends, and another request refreshes the index, in the middle of ours.
    for name in ("last_seq", "count"):
        real = getattr(RunMetrics, name)

        def racing(self, real=real):
            value = real.fget(self)
            if not getattr(self, "raced", False):  # read, then the file grows
                self.raced = True
                append(501, 500)
                self.refresh()
            return value

        monkeypatch.setattr(RunMetrics, name, property(racing))
    data = api(client, "get", f"/api/runs/20260101-000000-aaaaaa/metrics?{query}").get_json()
    seqs = [r["seq"] for r in data["rows"]]
    assert seqs and max(seqs) == data["last_seq"], (max(seqs), data["last_seq"])
