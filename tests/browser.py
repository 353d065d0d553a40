"""Playwright fixtures for the browser tests: a real Chromium against a real console.

    # tests/conftest.py registers this module as a plugin (pytest_plugins).

    def test_x(console, page): page.goto(console.base_url) ...

- `browser` (session): Debian's /usr/bin/chromium (or $CHROMIUM; on macOS Google Chrome or
  Chromium from /Applications) driven through `executable_path`, headless, with a fresh
  profile (Playwright's own temporary --user-data-dir). No browser means the test FAILS
  with how to install one: never a skip.
- `page` (per test): a new 1280x800 context; JavaScript errors and CSP violations are
  collected in `page.js_errors`; when the test fails a full-page screenshot goes to
  test-artifacts/<test>.png.
- `console_workspace(tmp_path_factory, tiny_assets)`: a fresh workspace holding copies of
  the tiny demo assets (model, corpora, demo.yaml), for a LiveServer (tests/live_server.py).
- `signed_in(page, server)`: opens the console's tokened URL (sets the cookie).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOTS = ROOT / "docs" / "screenshots"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAC_BROWSERS = (
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    "/Applications/Google Chrome Canary.app/Contents/MacOS/Google Chrome Canary",
)


def chromium_executable() -> str:
    """The browser to drive; fails (never skips) with the fix when there is none."""
    candidates = [os.environ.get("CHROMIUM", "")]
    if sys.platform == "darwin":
        candidates += list(MAC_BROWSERS)
        candidates += [str(Path.home() / p.lstrip("/")) for p in MAC_BROWSERS]
    else:
        candidates += ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
    for path in candidates:
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    hint = (
        "install Google Chrome or Chromium in /Applications, or set CHROMIUM=/path/to/browser"
        if sys.platform == "darwin"
        else "run scripts/setup.sh dev (installs Debian's chromium), or set CHROMIUM=/path"
    )
    pytest.fail(f"no Chromium for the browser tests: {hint}", pytrace=False)


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    # Playwright gives every launch a new temporary profile (its own --user-data-dir, which
    # it refuses as an argument) and deletes it on close: a fresh profile per session.
    browser = playwright_instance.chromium.launch(
        executable_path=chromium_executable(), args=LAUNCH_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            errors.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and not _expected_console_error(msg.text)
            else None
        ),
    )
    page.js_errors = errors  # type: ignore[attr-defined]
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)[-120:]
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        except Exception as exc:  # a crashed page cannot be photographed; say so
            print(f"no failure screenshot for {request.node.nodeid}: {exc}")
    context.close()


def _expected_console_error(text: str) -> bool:
    # A console that is killed on purpose makes the socket and fetches fail while it is away
    # (refused once it is gone, reset when it dies mid-handshake).
    return any(
        sign in text
        for sign in ("ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET", "Failed to load resource")
    )


def assert_no_js_errors(page: Page) -> None:
    """No uncaught exception and no CSP violation happened on this page."""
    errors = page.js_errors  # type: ignore[attr-defined]
    assert not errors, "JavaScript errors:\n" + "\n".join(errors)


@pytest.fixture(scope="module")
def console_workspace(tmp_path_factory: pytest.TempPathFactory, tiny_assets: dict) -> Path:
    """A new workspace with copies of the tiny demo assets (so the pickers, which stay
    inside the workspace after resolving links, find them)."""
    ws = tmp_path_factory.mktemp("console-ws")
    src = Path(tiny_assets["workspace"])
    for name in ("models", "corpora"):
        shutil.copytree(src / name, ws / name)
    shutil.copy2(tiny_assets["config"], ws / "demo.yaml")
    return ws


def signed_in(page: Page, server) -> Page:
    """Open the URL the console prints (token once, then the HttpOnly cookie)."""
    page.goto(server.url_with_token)
    return page


def save_screenshot(page: Page, name: str) -> Path:
    """A README screenshot from the running tests: into test-artifacts/screenshots/, and into
    docs/screenshots/ when UPDATE_SCREENSHOTS=1 (so a test run leaves the tree clean)."""
    folder = (
        SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else ARTIFACTS / "screenshots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
