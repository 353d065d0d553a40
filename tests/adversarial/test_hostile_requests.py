"""Hostile requests against a REAL console (python start_web_interface.py): every one is
answered in under 10 s, with a JSON 4xx `{"error", "field"}` (never a 5xx, never an HTML
page, never a hang), and the console's memory stays under 1 GB throughout.

The requests: JSON nested deep, bodies over the size limit (declared, chunked, 20 MB),
YAML bombs, tags and self-references, lone surrogates, NUL and over-long text in every
string field, 70 KB query strings and header lines, too many headers, wrong content
types, wrong methods on every route, a wrong type in every field of every body (from the
console's own OpenAPI document) and in every setting of a config, and malformed HTTP.

`pytest -s` prints the count per category and status (the numbers the issue reports).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.console_helpers import make_workspace, set_fake_mode
from tests.live_server import LiveServer
from training.contract.config import ConfigError, build_config
from training.contract.fields import FIELDS
from web.apispec import check_value
from web.errors import ApiError

MAX_SECONDS = 10.0
MAX_RSS = 1024**3
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
MUTATING = ("POST", "PUT", "PATCH", "DELETE")
LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]"
            for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)
HOSTILE_YAML = [
    LAUGHS,  # 9^9 strings from ~400 bytes
    # Under real keys: the console once spent 30 s and 2.8 GB on this before its 400.
    LAUGHS.replace("\ni:", "\noptimizer_config:").replace("\nh:", "\nlora_parameters:"),
    "\n".join(LAUGHS.splitlines()[:7]),  # within the alias budget, still 9^7 strings
    "x: &m [*m]",
    "x: &m {a: *m, b: [*m]}",
    "x: &m {<<: *m}",
    "x: !!binary aGVsbG8=",
    "x: !!set {a, b}",
    "x: !!omap [a: 1, b: 2]",
    "x: !!pairs [a: 1]",
    "x: !!python/object/apply:os.system [echo hi]",
    "x: !!python/name:os.system",
    "x: !custom value",
    "x: " + "[" * 100_000 + "]" * 100_000,
    "".join("  " * i + f"k{i}:\n" for i in range(500)),
    "x: " + "9" * 10_000,
    "x: !!int nope",
    "x: !!float nope",
    "? [1, 2]\n: 3",
    "? {a: 1}\n: 3",
    "a: [",
    "\t\x00\x01",
    "x: " + "a" * 300_000,
    "[1, 2]",
    "just text",
    "model: org/model\ndata: corpus.txt\nunknown_" + "k" * 100_000 + ": 1",
]
# YAML the loader reads, whose config is refused (POST /api/runs and clone only).
BAD_CONFIG_YAML = [
    "model: !!timestamp 2024-01-01",
    "model: org/model\ndata: corpus.txt\niters: {a: [1, {b: 2}]}",
    "model: org/model\ndata: corpus.txt\nlr_schedule: {name: x, arguments: *nope}",
    "model: org/model\ndata: corpus.txt\neval_sets: {'../x': y}",
]
WEIRD_TEXT = [
    "\ud800",
    "a\udfffb",
    "\x00",
    "a\x00b",
    "../../../../etc/passwd",
    "/etc/passwd",
    "~nosuchuser-xyz/x",
    "x" * 5000,
    "x/" * 3000,
    "é" * 300,
    "\u202e\u2066",
    "%00%2e%2e",
]
# JSON values of every kind, for the fields that must reject them.
VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    10**30,
    -(10**30),
    "",
    "x",
    "x" * 5000,
    "\ud800",
    [],
    [1, "a", None],
    [[[[]]]],
    {},
    {"a": {"b": {"c": [1]}}},
]


@dataclass
class Probe:
    """One hostile request: a `requests` call, or raw bytes over a socket."""

    category: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    label: str = ""


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes
    seconds: float


class PeakRss:
    """Samples the console's RSS every 20 ms in a thread (and on demand); keeps the peak."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = self.baseline = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        rss = self.process.memory_info().rss
        self.peak = max(self.peak, rss)
        return rss

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.sample()
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    slowest: float = 0.0


TALLY = Tally()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, PeakRss]]:
    workspace = make_workspace(tmp_path_factory.mktemp("hostile") / "ws")
    # A run that starts anyway exits at once as on bad input: nothing trains.
    set_fake_mode(workspace, mode="bad_input")
    with LiveServer(workspace, fake_trainer=True) as server:
        assert server.process is not None
        rss = PeakRss(server.process.pid)
        yield server, rss
        rss.stop()
        _print_table(rss)
        assert server.process.poll() is None, "the console died"
    assert rss.peak < MAX_RSS


@pytest.fixture(scope="module")
def document(console: tuple[LiveServer, PeakRss]) -> dict[str, Any]:
    server, _ = console
    response = server.get("/api/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def run_id(console: tuple[LiveServer, PeakRss]) -> str:
    """A real run, so run routes reach their handlers (not only the 404 of a missing run)."""
    server, _ = console
    body = {"config": {"model": "models/tiny", "data": "corpus.txt"}, "start": False}
    response = server.post("/api/runs", body)
    assert response.status_code == 201, response.text
    return response.json()["run_id"]


def _print_table(rss: PeakRss) -> None:
    categories = sorted({c for c, _ in TALLY.statuses})
    statuses = sorted({s for _, s in TALLY.statuses})
    print(f"\n{'category':<16}" + "".join(f"{s:>7}" for s in statuses) + f"{'total':>8}")
    for category in categories:
        row = [TALLY.statuses[(category, s)] for s in statuses]
        print(f"{category:<16}" + "".join(f"{n:>7}" for n in row) + f"{sum(row):>8}")
    totals = [sum(n for (_, s), n in TALLY.statuses.items() if s == status) for status in statuses]
    print(f"{'all':<16}" + "".join(f"{n:>7}" for n in totals) + f"{sum(totals):>8}")
    print(
        f"slowest answer {TALLY.slowest:.2f} s; console RSS {rss.baseline / 2**20:.0f} MB at "
        f"start, {rss.peak / 2**20:.0f} MB at its peak"
    )


# -- sending ---------------------------------------------------------------------------------


def send(server: LiveServer, probe: Probe) -> Answer:
    started = time.monotonic()
    if probe.raw is not None:
        status, content_type, body = _send_raw(server, probe.raw)
    else:
        headers = {"Authorization": f"Bearer {server.token}", **probe.kwargs.pop("headers", {})}
        response = requests.request(
            probe.method,
            server.base_url + probe.path.lstrip("/"),
            headers=headers,
            timeout=MAX_SECONDS,
            **probe.kwargs,
        )
        status, body = response.status_code, response.content
        content_type = response.headers.get("Content-Type", "")
    return Answer(status, content_type, body, time.monotonic() - started)


def _send_raw(server: LiveServer, data: bytes) -> tuple[int, str, bytes]:
    """Raw bytes to the console; the answer read until it closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=MAX_SECONDS) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return status, headers.get("Content-Type", ""), body


def problems_of(probe: Probe, answer: Answer) -> list[str]:
    where = f"{probe.method} {probe.path[:80]} {probe.label}".strip()
    problems = []
    if not 400 <= answer.status < 500:
        problems.append(f"{where}: status {answer.status}: {answer.body[:200]!r}")
    if answer.seconds >= MAX_SECONDS:
        problems.append(f"{where}: answered in {answer.seconds:.1f} s")
    if not answer.content_type.startswith("application/json"):
        problems.append(f"{where}: {answer.content_type!r}, not JSON: {answer.body[:120]!r}")
    else:
        data = json.loads(answer.body)
        if not (isinstance(data.get("error"), str) and data["error"] and "field" in data):
            problems.append(f"{where}: not an error body: {data!r}"[:300])
    return problems


def run_probes(console: tuple[LiveServer, PeakRss], probes: list[Probe]) -> None:
    server, rss = console
    problems: list[str] = []
    for probe in probes:
        try:
            answer = send(server, probe)
        except (requests.RequestException, OSError) as exc:
            problems.append(f"{probe.method} {probe.path[:80]} {probe.label}: {exc!r}"[:300])
            continue
        TALLY.statuses[(probe.category, answer.status)] += 1
        TALLY.slowest = max(TALLY.slowest, answer.seconds)
        problems += problems_of(probe, answer)
        current = rss.sample()
        assert current < MAX_RSS, f"console RSS {current / 2**20:.0f} MB after {probe}"
    assert server.process is not None and server.process.poll() is None, "the console died"
    assert rss.peak < MAX_RSS, f"console RSS peaked at {rss.peak / 2**20:.0f} MB"
    assert not problems, f"{len(problems)} of {len(probes)} answers wrong:\n" + "\n".join(
        problems[:40]
    )


# -- the routes, from the console's own document ----------------------------------------------


def operations(document: dict[str, Any], run_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, concrete path, operation) for every documented operation; a run's routes
    name the real run, a job's a job that does not exist."""
    out = []
    for path, ops in document["paths"].items():
        concrete = path.replace("{run_id}", run_id).replace("{job_id}", "nojob")
        for method, op in ops.items():
            out.append((method.upper(), concrete, op))
    return out


def body_schema(op: dict[str, Any]) -> dict[str, Any] | None:
    body = op.get("requestBody")
    return body["content"]["application/json"]["schema"] if body else None


def json_body(data: bytes | str, **headers: str) -> dict[str, Any]:
    raw = data.encode() if isinstance(data, str) else data
    return {"data": raw, "headers": {"Content-Type": "application/json", **headers}}


def _valid_for(schema: dict[str, Any], candidates: list[Any]) -> Any:
    for value in candidates:
        try:
            check_value(schema, value, ("x",))
        except ApiError:
            continue
        return value
    return None


def baseline_body(schema: dict[str, Any]) -> dict[str, Any]:
    """The body's required keys, each with a value its schema takes (so a probe's bad
    value is the only thing wrong with the body)."""
    properties = schema.get("properties", {})
    return {
        name: _valid_for(properties.get(name, {}), ["x", {}, [], True, 1])
        for name in schema.get("required", ())
    }


# -- the categories ----------------------------------------------------------------------------


def deep_json(ops: list[tuple[str, str, dict[str, Any]]]) -> list[Probe]:
    probes = []
    for method, path, _ in ops:
        if method not in MUTATING:
            continue
        for depth in (65, 1000, 100_000):
            for text in (
                "[" * depth + "]" * depth,
                '{"a":' * depth + "1" + "}" * depth,
                '{"config": ' + '{"a":' * depth + "1" + "}" * depth + "}",
                '{"name": "x", "events": [' + "[" * depth + "]" * depth + "]}",
            ):
                probes.append(Probe("deep_json", method, path, json_body(text), label=f"{depth}"))
    return probes


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    yield b'{"name": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


def huge_bodies(ops: list[tuple[str, str, dict[str, Any]]], run_id: str) -> list[Probe]:
    probes = [
        Probe("huge_body", "POST", "/api/runs", {"json": {"config": {}, "name": "n" * 20_000_000}}),
        Probe("huge_body", "POST", "/api/runs", json_body(b"[" + b"0," * 1_500_000 + b"0]")),
        Probe("huge_body", "POST", "/api/runs", {"data": _chunks(5_000_000), **_ct()}),
        Probe("huge_body", "POST", "/api/ui/parse_yaml", {"json": {"yaml": "x" * 2_000_000}}),
        # Just under the limit: many keys, many items, one long name.
        Probe("huge_body", "POST", "/api/runs", {"json": {f"k{i}": i for i in range(60_000)}}),
        Probe("huge_body", "POST", "/api/runs", {"json": {"config": {}, "name": "n" * 900_000}}),
        Probe("huge_body", "PATCH", f"/api/runs/{run_id}", {"json": {"name": "n" * 900_000}}),
        Probe("huge_body", "POST", "/api/queue/reorder", {"json": {"run_ids": ["r"] * 150_000}}),
        Probe(
            "huge_body",
            "POST",
            f"/api/callbacks/{run_id}",
            {"json": {"events": [{"seq": i} for i in range(60_000)]}},
        ),
        Probe(
            "huge_body",
            "DELETE",
            "/api/caches",
            {"json": {"confirm": True, "names": ["n"] * 90_000}},
        ),
    ]
    for method, path, _ in ops:
        if method in MUTATING:
            probes.append(Probe("huge_body", method, path, json_body(b" " * 1_100_000 + b"{}")))
    return probes


def _ct() -> dict[str, Any]:
    return {"headers": {"Content-Type": "application/json"}}


def yaml_probes(run_id: str) -> list[Probe]:
    probes = []
    for text in HOSTILE_YAML:
        probes += [
            Probe("yaml", "POST", "/api/ui/parse_yaml", {"json": {"yaml": text}}),
            Probe("yaml", "POST", "/api/runs", {"json": {"config": text, "start": False}}),
            Probe("yaml", "POST", f"/api/runs/{run_id}/clone", {"json": {"config": text}}),
        ]
    for text in BAD_CONFIG_YAML:
        probes += [
            Probe("yaml", "POST", "/api/runs", {"json": {"config": text, "start": False}}),
            Probe("yaml", "POST", f"/api/runs/{run_id}/clone", {"json": {"config": text}}),
        ]
    return probes


def text_probes(ops: list[tuple[str, str, dict[str, Any]]], run_id: str) -> list[Probe]:
    probes = []
    for method, path, op in ops:
        schema = body_schema(op)
        if method not in MUTATING or not schema:
            continue
        for name, prop in schema.get("properties", {}).items():
            values = list(WEIRD_TEXT)
            limit = _max_length(prop)
            if limit:
                values.append("x" * (limit + 1))
            for value in values:
                body = {**baseline_body(schema), name: value}
                if _accepts(prop, value) and not _text_is_hostile(value):
                    continue
                probes.append(Probe("text", method, path, {"json": body}, label=name))
    report = [{"path": v} for v in WEIRD_TEXT] + [{"path": "x" * 10_000}]
    probes += [Probe("text", "POST", "/api/data/report", {"json": b}) for b in report]
    for raw in (
        b'{"name": "\xff\xfe"}',
        b'{"name": "\xed\xa0\x80"}',  # a surrogate in UTF-8: not UTF-8
        b'{"x": NaN}',
        b'{"x": Infinity}',
        b'{"x": -Infinity}',
        b'{"x": 1' + b"0" * 5000 + b"}",
        b'{"x": 1e999999}',
        b'{"x": "\\ud800"}',
        b'{"\\udc00": 1}',
        b"\xef\xbb\xbf{}",
        b'{"a": 1, "a": 2}',
        b"",
        b"null",
        b"[]",
        b'"text"',
        b"12",
        b"{",
        b"{'single': 'quotes'}",
    ):
        probes.append(Probe("text", "POST", "/api/runs", json_body(raw), label=repr(raw[:20])))
        probes.append(Probe("text", "DELETE", f"/api/runs/{run_id}", json_body(raw)))
    return probes


def _max_length(schema: dict[str, Any]) -> int | None:
    if "maxLength" in schema:
        return int(schema["maxLength"])
    for option in schema.get("anyOf", ()):
        if "maxLength" in option:
            return int(option["maxLength"])
    return None


def _accepts(schema: dict[str, Any], value: Any) -> bool:
    try:
        check_value(schema, value, ("x",))
    except ApiError:
        return False
    return True


def _text_is_hostile(value: Any) -> bool:
    return isinstance(value, str) and (
        "\x00" in value or any(0xD800 <= ord(c) < 0xE000 for c in value)
    )


def url_and_header_probes(run_id: str) -> list[Probe]:
    big = "a" * 70_000
    probes = [
        Probe("url_headers", "GET", f"/api/runs?state={big}"),
        Probe("url_headers", "GET", f"/api/files?path={'a' * 60_000}"),
        Probe("url_headers", "GET", f"/api/runs/{run_id}/logs?tail={'9' * 5000}"),
        Probe("url_headers", "GET", f"/api/runs/{run_id}/metrics?after_seq=-1"),
        Probe("url_headers", "GET", f"/api/runs/{run_id}/metrics?limit=0&max_points=x"),
        Probe("url_headers", "GET", "/api/files?path=%ED%A0%80"),
        Probe("url_headers", "GET", "/api/files?path=%00"),
        Probe("url_headers", "GET", "/api/files?path=~nosuchuser-xyz"),
        Probe("url_headers", "GET", "/api/files?hidden=maybe"),
        Probe("url_headers", "GET", "/api/runs?state=%ff%fe"),
        Probe("url_headers", "GET", "/api/eval/jobs?run_id=" + "r" * 1000),
        Probe("url_headers", "GET", "/api/runs/%00"),
        Probe("url_headers", "GET", "/api/runs/..%2F..%2Fetc"),
        Probe("url_headers", "GET", "/api/runs/" + "a" * 5000),
        Probe("url_headers", "GET", "/api/runs/%ED%A0%80/logs"),
        Probe("url_headers", "GET", "/api/eval/jobs/%ff"),
        Probe("url_headers", "GET", "/api/nowhere"),
        Probe("url_headers", "GET", "/api"),
        Probe("url_headers", "GET", "/api/runs", {"headers": {"X-Big": big}}),
        Probe("url_headers", "GET", "/api/runs", {"headers": {"Cookie": "a=" + big}}),
        Probe("url_headers", "GET", "/api/runs", {"headers": {"Authorization": "Bearer " + big}}),
        Probe(
            "url_headers",
            "GET",
            "/api/runs",
            {"headers": {f"X-Many-{i}": "v" for i in range(150)}},
        ),
        Probe("url_headers", "GET", "/api/runs", {"headers": {"Authorization": "Bearer \u00e9"}}),
        Probe("url_headers", "POST", "/api/runs", {"json": {}, "headers": {"Authorization": ""}}),
    ]
    return probes


def content_type_probes(ops: list[tuple[str, str, dict[str, Any]]]) -> list[Probe]:
    probes = []
    for method, path, _ in ops:
        if method not in MUTATING:
            continue
        for headers, data in (
            ({"Content-Type": "text/plain"}, b"{}"),
            ({"Content-Type": "application/x-www-form-urlencoded"}, b"confirm=true"),
            ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n\r\n--x--"),
            ({"Content-Type": "application/json-patch+json"}, b"{}"),
            ({"Content-Type": "application/json; charset=latin-1"}, b'{"name": "\xe9"}'),
            ({"Content-Type": ""}, b"{}"),
            ({}, b"{}"),
        ):
            probes.append(Probe("content_type", method, path, {"data": data, "headers": headers}))
    return probes


def method_probes(ops: list[tuple[str, str, dict[str, Any]]]) -> list[Probe]:
    by_path: dict[str, set[str]] = {}
    for method, path, _ in ops:
        by_path.setdefault(path, set()).add(method)
    probes = []
    for path, allowed in by_path.items():
        for method in METHODS:
            if method not in allowed:
                probes.append(Probe("method", method, path, {"json": {}}))
                probes.append(Probe("method", method, path))
    return probes


def field_type_probes(ops: list[tuple[str, str, dict[str, Any]]], run_id: str) -> list[Probe]:
    """A value of a wrong type or out of bounds in every field of every body, one at a time
    (the document says which values a field refuses); and in every setting of a config
    (the registry's build_config says which)."""
    probes = []
    for method, path, op in ops:
        schema = body_schema(op)
        if method not in MUTATING or not schema:
            continue
        for name, prop in schema.get("properties", {}).items():
            for value in VALUES:
                if not _accepts(prop, value):
                    body = {**baseline_body(schema), name: value}
                    probes.append(Probe("field_types", method, path, {"json": body}, label=name))
    base = {"model": "models/tiny", "data": "corpus.txt"}
    for spec in FIELDS:
        for value in VALUES:
            if _config_takes(_nest({**base, spec.name: value})):
                continue
            body = {"config": _nest({**base, spec.name: value}), "start": False}
            probes.append(
                Probe("config_types", "POST", "/api/runs", {"json": body}, label=spec.name)
            )
            if _config_takes(base, _nest({spec.name: value})):
                continue  # an override of None or "" keeps the cloned run's value
            probes.append(
                Probe(
                    "config_types",
                    "POST",
                    f"/api/runs/{run_id}/clone",
                    {"json": {"config": _nest({spec.name: value})}},
                    label=spec.name,
                )
            )
    return probes


def _config_takes(*layers: dict[str, Any]) -> bool:
    """Whether the registry takes this config (build_config, the domain's own check)."""
    try:
        build_config(*layers)
    except ConfigError:
        return False
    return True


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = name.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def raw_http_probes(token: str) -> list[Probe]:
    auth = f"Authorization: Bearer {token}\r\n".encode()
    host = b"Host: 127.0.0.1\r\n"

    def request(line: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
        return line + b"\r\n" + host + auth + headers + b"\r\n" + body

    return [
        Probe(
            "raw_http",
            "RAW",
            "garbage",
            raw=b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
        Probe("raw_http", "RAW", "no version", raw=b"GET\r\n\r\n"),
        Probe("raw_http", "RAW", "bad version", raw=request(b"GET /api/runs HTTP/9.9")),
        Probe(
            "raw_http",
            "RAW",
            "long line",
            raw=request(b"GET /api/runs?" + b"a" * 70_000 + b" HTTP/1.1"),
        ),
        Probe(
            "raw_http",
            "RAW",
            "long header",
            raw=request(b"GET /api/runs HTTP/1.1", b"X: " + b"a" * 70_000 + b"\r\n"),
        ),
        Probe(
            "raw_http",
            "RAW",
            "many headers",
            raw=request(
                b"GET /api/runs HTTP/1.1", b"".join(b"X-%d: v\r\n" % i for i in range(200))
            ),
        ),
        Probe(
            "raw_http",
            "RAW",
            "bad length",
            raw=request(
                b"POST /api/runs HTTP/1.1",
                b"Content-Type: application/json\r\nContent-Length: abc\r\n",
                b"{}",
            ),
        ),
        Probe(
            "raw_http",
            "RAW",
            "negative length",
            raw=request(
                b"POST /api/runs HTTP/1.1",
                b"Content-Type: application/json\r\nContent-Length: -5\r\n",
                b"{}",
            ),
        ),
        Probe(
            "raw_http",
            "RAW",
            "short body",
            raw=request(
                b"POST /api/runs HTTP/1.1",
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n",
                b'{"config": {',
            ),
        ),
        Probe(
            "raw_http",
            "RAW",
            "huge declared length",
            raw=request(
                b"POST /api/runs HTTP/1.1",
                b"Content-Type: application/json\r\nContent-Length: 99999999999\r\n",
                b"{}",
            ),
        ),
        Probe(
            "raw_http",
            "RAW",
            "bad chunks",
            raw=request(
                b"POST /api/runs HTTP/1.1",
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
                b"zz\r\n{}\r\n0\r\n\r\n",
            ),
        ),
        Probe(
            "raw_http",
            "RAW",
            "absolute url",
            raw=request(b"GET http://evil.example/api/runs HTTP/1.1"),
        ),
        Probe("raw_http", "RAW", "NUL in path", raw=request(b"GET /api/runs/\x00x HTTP/1.1")),
        Probe("raw_http", "RAW", "bytes in path", raw=request(b"GET /api/runs/\xff\xfe HTTP/1.1")),
        Probe("raw_http", "RAW", "space in path", raw=request(b"GET /api/runs/a b HTTP/1.1")),
    ]


# -- the tests ---------------------------------------------------------------------------------


def test_deep_json(console, document, run_id):
    run_probes(console, deep_json(operations(document, run_id)))


def test_huge_bodies(console, document, run_id):
    run_probes(console, huge_bodies(operations(document, run_id), run_id))


def test_yaml_bombs_and_tags(console, run_id):
    run_probes(console, yaml_probes(run_id))


def test_surrogates_nul_and_long_text(console, document, run_id):
    run_probes(console, text_probes(operations(document, run_id), run_id))


def test_huge_urls_and_headers(console, run_id):
    run_probes(console, url_and_header_probes(run_id))


def test_wrong_content_types(console, document, run_id):
    run_probes(console, content_type_probes(operations(document, run_id)))


def test_wrong_methods(console, document, run_id):
    run_probes(console, method_probes(operations(document, run_id)))


def test_wrong_types_in_every_field(console, document, run_id):
    run_probes(console, field_type_probes(operations(document, run_id), run_id))


def test_malformed_http(console):
    server, _ = console
    run_probes(console, raw_http_probes(server.token))


def test_hostile_socket_events(console, run_id):
    """A Socket.IO packet nested deeper than a request body may be is dropped unparsed;
    events with wrong types or text no tokenizer takes get an error ack; the connection
    and the console go on."""
    server, rss = console
    sio = server.socket()
    for event, data in (
        ("eval_generate", {"model": {"path": "models/tiny"}, "prompt": "\ud800"}),
        ("eval_generate", {"model": [], "prompt": ["x"]}),
        ("eval_generate", "text"),
        ("join_run", {"run_id": {"a": 1}}),
        ("join_run", {"run_id": run_id, "after_seq": "x" * 10_000}),
        ("join_eval", {"job_id": ["x"]}),
        ("eval_stop", None),
        ("join_run", (1, 2, 3)),  # more arguments than the handler takes
    ):
        ack = sio.call(event, data, timeout=MAX_SECONDS)
        assert ack.get("ok") is False or ack.get("error"), (event, ack)
    deep: Any = run_id
    for _ in range(200):  # past the bound of 64; python-socketio's client recurses on it
        deep = [deep]
    sio.emit("join_run", {"run_id": run_id, "after_seq": deep})
    ack = sio.call("join_run", {"run_id": run_id, "after_seq": 0}, timeout=MAX_SECONDS)
    assert ack["ok"] is True and ack["run_id"] == run_id
    assert rss.sample() < MAX_RSS


def test_the_console_still_serves(console, run_id):
    server, _ = console
    assert server.get("/api/health").json()["ok"] is True
    assert server.get(f"/api/runs/{run_id}").json()["run"]["state"] == "created"
    assert Path(server.workspace / "runs" / run_id / "run.json").is_file()
