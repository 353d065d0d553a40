"""GET /api/openapi.json: generated from the routes' declarations (web/apispec.py), it
names every /api route, and every route is fuzzed from it with schemathesis: no request,
however malformed, gets a 5xx, and every answer conforms to the document (status code,
content type, body schema)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.console_helpers import set_fake_mode
from web.apispec import api_routes, check_value, openapi_path
from web.app import create_app
from web.errors import ApiError

TOKEN = "openapi-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Examples per operation and generation mode (positive, negative): the whole fuzz run
# stays within about a minute on two cores, and derandomize makes it the same every time.
EXAMPLES = 40


def make_app(workspace: Path) -> Flask:
    return create_app(
        {
            "WORKSPACE": workspace,
            "TOKEN": TOKEN,
            # Nothing the fuzzer sends can start real work. A run it creates and starts
            # runs the fake trainer, told to exit at once as on bad input (it writes
            # nothing). An evaluation job needs a model: the only browse root is a
            # workspace with no model folder, and a run's model needs its run_id, which
            # the fuzzer cannot guess (new run_ids are random); the module's teardown
            # checks that no evaluation worker ever started.
            "TRAINER_MODULE": "tests.fake_trainer",
            "BROWSE_ROOTS": [workspace],
            "STOP_GRACE_SECONDS": 2.0,
            # No host is ever contacted: a config naming hosts (an address, or a name to
            # look up) gets its SSH checks from `false`, which fails them all.
            "SSH_COMMAND": "false",
            "TESTING": True,
        }
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    app = make_app(tmp_path / "ws")
    yield app.test_client()
    app.extensions["console"].close()


def test_the_document_names_every_api_route(client: Any) -> None:
    app = client.application
    undeclared = [f"{m} {r.rule}" for r, m, op in api_routes(app) if op is None]
    assert not undeclared, f"/api routes without an @operation declaration: {undeclared}"
    doc = client.get("/api/openapi.json", headers=AUTH).get_json()
    assert doc["openapi"].startswith("3.1")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    routes = {(openapi_path(r), m.lower()) for r, m, _ in api_routes(app)}
    assert routes == documented
    assert ("/api/openapi.json", "get") in routes and len(routes) > 30
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            statuses = set(op["responses"])
            assert any(s.startswith("2") for s in statuses), (method, path)
            assert "403" in statuses and ("401" in statuses) == (path != "/api/health")
            if method in ("post", "patch", "delete"):
                assert {"400", "413", "415"} <= statuses, (method, path)
            for status, response in op["responses"].items():
                if status >= "400":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}


def test_the_document_needs_the_token(client: Any) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 401 and response.get_json()["field"] == "token"


def test_the_run_config_schema_comes_from_the_registry(client: Any) -> None:
    from training.contract.fields import FIELDS

    doc = client.get("/api/openapi.json", headers=AUTH).get_json()
    config = doc["components"]["schemas"]["RunConfig"]
    for spec in FIELDS:
        *parent, leaf = spec.name.split(".")
        node = config["properties"][parent[0]] if parent else config
        schema = node["properties"][leaf]
        assert schema["description"] == spec.help
        if spec.choices and spec.type == "choice":
            assert schema["enum"][:-1] == list(spec.choices)
        if spec.type == "int" and spec.maximum is not None:
            assert schema["anyOf"][0]["maximum"] == spec.maximum
    assert config["required"] == [f.name for f in FIELDS if f.required]


@pytest.mark.parametrize(
    "schema, value, field",
    [
        ({"type": "object", "properties": {"a": {"type": "string"}}}, {"a": 1}, "a"),
        ({"type": "object", "required": ["a"]}, {}, "a"),
        ({"type": "object", "properties": {"a": {"type": "integer"}}}, {"a": True}, "a"),
        ({"type": "object", "properties": {"a": {"maxLength": 2}}}, {"a": "abc"}, "a"),
        (
            {"type": "object", "properties": {"a": {"type": "array", "items": {"enum": [1]}}}},
            {"a": [1, 2]},
            "a",
        ),
        ({"type": "object", "additionalProperties": False}, {"b": 1}, "b"),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, 3, "body"),
    ],
)
def test_request_checks_name_the_field(schema: dict[str, Any], value: Any, field: str) -> None:
    with pytest.raises(ApiError) as info:
        check_value(schema, value, ())
    assert info.value.status == 400 and info.value.field == field


# The fuzzed console: built when the module is imported, because schemathesis' pytest
# integration parametrizes the test by the document's operations at collection time (its
# fixture-based loader, from_fixture, does not run on pytest 9.2: it reads Node._nodeid).
FUZZ_WORKSPACE = Path(tempfile.mkdtemp(prefix="mlx-cpt-openapi-")) / "ws"
FUZZ_WORKSPACE.mkdir()
(FUZZ_WORKSPACE / "corpus.txt").write_text("Some text to train on.\n" * 20)
set_fake_mode(FUZZ_WORKSPACE, mode="bad_input")
FUZZ_APP = make_app(FUZZ_WORKSPACE)
atexit.register(shutil.rmtree, FUZZ_WORKSPACE.parent, ignore_errors=True)
# Hypothesis keeps caches (not examples: database=None) beside the fuzzed workspace, not
# in the checkout.
set_hypothesis_home_dir(FUZZ_WORKSPACE.parent / "hypothesis")
STATUSES: Counter[int] = Counter()

schema = schemathesis.openapi.from_wsgi(
    "/api/openapi.json",
    FUZZ_APP,
    headers=AUTH,
    # A request that breaks the document is refused with any 4xx the document names for
    # it (schemathesis leaves out 413: a body over the size limit is such a request too).
    config=schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": ["4XX"]}}}
    ),
)


@pytest.fixture(scope="module", autouse=True)
def fuzz_console() -> Iterator[None]:
    """After the module: no trainer left running, no evaluation worker ever started."""
    started = time.monotonic()
    yield
    console = FUZZ_APP.extensions["console"]
    for active in list(console.manager._active.values()):
        if active.popen is not None and active.popen.poll() is None:
            active.popen.kill()
            active.popen.wait()
    jobs = console.eval_jobs.list_jobs()
    console.close()
    shutil.rmtree(FUZZ_WORKSPACE.parent, ignore_errors=True)
    if STATUSES:
        table = ", ".join(f"{status}: {n}" for status, n in sorted(STATUSES.items()))
        print(
            f"\nfuzzed {sum(STATUSES.values())} requests in {time.monotonic() - started:.0f} s "
            f"({table})"
        )
    assert not jobs, f"the fuzzer started evaluation workers: {[j.kind for j in jobs]}"


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzz(case: Any) -> None:
    started = time.monotonic()
    response = case.call_and_validate(
        headers=AUTH,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )
    assert time.monotonic() - started < 10
    STATUSES[response.status_code] += 1
