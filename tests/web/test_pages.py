"""The page shells (web/pages.py) through Flask's test client: routes, sign-in, and markup
that a strict CSP (`default-src 'self'`, no inline code) can serve.

What the pages do in a browser is tested in tests/test_browser_*.py."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "pages-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAGES = ["/", "/runs/new", "/runs/20260101-000000-abcdef", "/compare", "/settings"]


@pytest.fixture
def client(tmp_path: Path):
    app = create_app({"WORKSPACE": str(tmp_path / "ws"), "TOKEN": TOKEN, "AUTODETECT": False})
    with app.test_client() as client:
        yield client
    app.extensions["console"].close()


class Markup(HTMLParser):
    """Collects what a CSP cares about: scripts, styles, inline handlers, links."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_code: list[str] = []
        self.links: list[dict[str, str | None]] = []
        self.names: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in a:
            if name.startswith("on") or name == "style":
                self.inline_code.append(f"<{tag} {name}=...>")
        if tag == "script":
            self.scripts.append(a)
            self._in_script = True
        if tag == "style":
            self.inline_code.append("<style>")
        if tag == "a":
            self.links.append(a)
        if a.get("name"):
            self.names.append(str(a["name"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_code.append(f"<script>{data.strip()[:40]}")


def parse(html: str) -> Markup:
    m = Markup()
    m.feed(html)
    return m


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_without_inline_code(client, path: str) -> None:
    response = client.get(path, headers=AUTH)
    assert response.status_code == 200
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    markup = parse(response.get_data(as_text=True))
    assert markup.inline_code == []
    for script in markup.scripts:
        src = script.get("src") or ""
        assert src.startswith("/static/"), f"script from outside the console: {src!r}"
        assert (ROOT / src.lstrip("/").split("?")[0]).is_file(), f"missing {src}"


@pytest.mark.parametrize("path", PAGES)
def test_exactly_one_new_run_control_on_every_page(client, path: str) -> None:
    html = client.get(path, headers=AUTH).get_data(as_text=True)
    # DESIGN.md "Pages": the form is reached by a link named "New run" (and only one, so a
    # script's get_by_role("link", name="New run") is unambiguous).
    controls = re.findall(r"<(?:a|button)\b[^>]*>\s*New run\s*</(?:a|button)>", html)
    assert len(controls) == 1
    assert parse(html).links and any(a.get("href") == "/runs/new" for a in parse(html).links)


def test_pages_need_the_token(client) -> None:
    response = client.get("/")
    assert response.status_code == 401
    assert "Not signed in" in response.get_data(as_text=True)


def test_the_printed_url_signs_the_browser_in(client) -> None:
    response = client.get(f"/?token={TOKEN}")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    assert "HttpOnly" in response.headers["Set-Cookie"]
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("run_id", ["..", "a b", "-starts-with-dash", "x" * 200])
def test_run_page_refuses_an_invalid_run_id(client, run_id: str) -> None:
    assert client.get(f"/runs/{run_id}", headers=AUTH).status_code == 404


def test_run_page_carries_its_run_id_as_data_not_code(client) -> None:
    html = client.get("/runs/20260101-000000-abcdef", headers=AUTH).get_data(as_text=True)
    assert 'data-run-id="20260101-000000-abcdef"' in html


def _make_run(client, run_id: str) -> None:
    from training.contract.layout import RunRecord

    store = client.application.extensions["console"].store
    store.create_run(RunRecord(run_id, run_id, 1.0), "iters: 5\n")


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("run_id=20260101-000000-abcdef", 404, "No run &#39;20260101-000000-abcdef&#39;"),
        ("run_id=%3Cscript%3Ealert(1)%3C/script%3E", 404, "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ("run_id=../../etc", 404, "No run &#39;../../etc&#39;"),
        ("run_id=20260101-000000-aaaaaa&checkpoint=%3Cb%3Ebest", 400, "unknown checkpoint"),
    ],
)
def test_playground_refuses_unknown_model_params_as_text(
    client, query: str, status: int, says: str
) -> None:
    _make_run(client, "20260101-000000-aaaaaa")
    response = client.get(f"/playground?{query}", headers=AUTH)
    html = response.get_data(as_text=True)
    assert response.status_code == status, html
    assert says in html
    assert "<script>alert" not in html and "<b>best" not in html


def test_playground_preselects_a_known_run(client) -> None:
    _make_run(client, "20260101-000000-aaaaaa")
    for query in (
        "",
        "?run_id=20260101-000000-aaaaaa",
        "?run_id=20260101-000000-aaaaaa&checkpoint=5",
    ):
        assert client.get(f"/playground{query}", headers=AUTH).status_code == 200, query


def test_static_modules_exist_and_never_assign_html() -> None:
    """Run-provided text must stay text: no innerHTML/outerHTML/insertAdjacentHTML writes,
    no document.write, no eval in our own modules."""
    banned = re.compile(
        r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write|\beval\(|new Function"
    )
    modules = sorted((ROOT / "static" / "js").glob("*.js"))
    assert modules
    for path in modules:
        assert not banned.search(path.read_text()), f"{path.name} writes HTML or evals"


def test_vendored_files_carry_their_version() -> None:
    vendor = ROOT / "static" / "vendor"
    for path in vendor.iterdir():
        if path.suffix in (".js", ".css"):
            assert re.search(r"-\d+\.\d+\.\d+", path.name), path.name
    assert (vendor / "LICENSES.md").is_file()


def test_parse_yaml_endpoint(client) -> None:
    text = "model: models/m\nlearning_rate: 1e-4\nlora_parameters:\n  rank: 4\nmask_prompt: true\n"
    response = client.post("/api/ui/parse_yaml", json={"yaml": text}, headers=AUTH)
    assert response.status_code == 200
    body = response.get_json()
    assert body["config"]["learning_rate"] == 1e-4
    assert body["config"]["lora_parameters"] == {"rank": 4}
    assert any("mask_prompt" in w for w in body["warnings"])


def test_answers_are_strict_json(client) -> None:
    """A YAML .inf or .nan echoed back is null: a browser's JSON.parse refuses NaN."""
    text = "learning_rate: .inf\nwarmup_steps: .nan\n"
    response = client.post("/api/ui/parse_yaml", json={"yaml": text}, headers=AUTH)
    body = json.loads(response.get_data(as_text=True), parse_constant=pytest.fail)
    assert body["config"] == {"learning_rate": None, "warmup_steps": None}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"yaml": "- a list\n"}, "mapping"),
        ({"yaml": "a: [unclosed\n"}, "invalid YAML"),
        ({}, "yaml"),
    ],
)
def test_parse_yaml_refuses_bad_input(client, body: dict, message: str) -> None:
    response = client.post("/api/ui/parse_yaml", json=body, headers=AUTH)
    assert response.status_code == 400
    assert message in response.get_json()["error"]
    assert response.get_json()["field"] == "yaml"


def test_parse_yaml_needs_the_token(client) -> None:
    assert client.post("/api/ui/parse_yaml", json={"yaml": "a: 1"}).status_code == 401
