"""A console that dies mid-run, in a real browser: the open page says it is offline and
catches up when the console is back; a run whose trainer died too is shown as
interrupted, and no trainer starts until the person confirms Resume (the rule the old
design broke). The first test leaves a stopped run behind for the README screenshot."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Page, expect

from tests.browser import assert_no_js_errors, save_screenshot, signed_in
from tests.helpers import wait_until
from tests.live_server import LiveServer

pytestmark = pytest.mark.browser


def trainers_of(run_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names this run's folder (a trainer of it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "continued_pretraining" in cmdline and str(run_dir) in cmdline:
            found.append(proc)
    return found


def start_long_run(server: LiveServer, name: str, save_every: int) -> str:
    """The demo preset made long and fine-grained: it trains for as long as a test needs."""
    presets = server.get("/api/presets").json()["presets"]
    config = next(p["config"] for p in presets if p["name"] == "demo")
    config.update(
        iters=4000,
        max_seq_length=64,
        batch_size=2,
        steps_per_report=2,
        save_every=save_every,
        steps_per_eval=1000,
    )
    response = server.post("/api/runs", {"config": config, "name": name})
    assert response.status_code == 201, response.text
    return response.json()["run_id"]


def train_steps_on_disk(run_dir: Path) -> list[int]:
    steps: list[int] = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("event") == "train":
            steps = [s for s in steps if s < row["step"]] + [row["step"]]
    return steps


def test_run_page_catches_up_after_the_console_comes_back(
    console_workspace: Path, page: Page
) -> None:
    """The trainer outlives its console; the open run page resumes from its last seq: the
    rows written while the console was away arrive once, none missing, none repeated."""
    server = LiveServer(console_workspace)
    server.start()
    try:
        run_id = start_long_run(server, "outlives its console", save_every=1000)
        run_dir = console_workspace / "runs" / run_id

        signed_in(page, server)
        page.goto(server.base_url + f"runs/{run_id}")
        page.wait_for_function("() => window.cpt && window.cpt.run.train.n >= 3", timeout=90_000)

        server.kill()  # the console only: the trainer runs in its own session
        expect(page.locator("#offline-banner")).to_be_visible(timeout=15_000)
        on_disk = len(train_steps_on_disk(run_dir))
        wait_until(
            lambda: len(train_steps_on_disk(run_dir)) > on_disk + 3,
            60,
            message="the trainer to keep writing while the console is away",
        )

        server.restart()
        expect(page.locator("#offline-banner")).to_be_hidden(timeout=30_000)
        target = len(train_steps_on_disk(run_dir))
        page.wait_for_function(f"() => window.cpt.run.train.n >= {target}", timeout=60_000)
        steps = page.evaluate(
            "Array.from(window.cpt.run.train.col('step').subarray(0, window.cpt.run.train.n))"
        )
        assert steps == sorted(set(steps)), "a point arrived twice"
        assert steps == train_steps_on_disk(run_dir)[: len(steps)], "a point went missing"

        assert server.post(f"/api/runs/{run_id}/stop").status_code == 202
        server.wait_for_state(run_id, "stopped", timeout=60)
        assert_no_js_errors(page)
    finally:
        for proc in trainers_of(console_workspace / "runs"):
            proc.kill()
        server.stop()


def test_killed_console_shows_interrupted_run_and_resumes_only_on_confirm(
    console_workspace: Path, page: Page
) -> None:
    server = LiveServer(console_workspace)
    server.start()
    try:
        run_id = start_long_run(server, "survives a crash", save_every=10)
        run_dir = console_workspace / "runs" / run_id
        wait_until(lambda: server.run(run_id)["latest_checkpoint_step"], 90, message="a checkpoint")

        signed_in(page, server)
        row = page.locator(f'#runs-body tr[data-run-id="{run_id}"]')
        expect(row.locator(".badge")).to_have_text("running")

        # The console crashes, and the machine takes the trainer with it.
        server.kill()
        pid = json.loads((run_dir / "run.json").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_until(
            lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
            10,
            message="the trainer to die",
        )
        expect(page.locator("#offline-banner")).to_be_visible(timeout=15_000)

        server.restart()  # same port: the open page reconnects by itself
        expect(page.locator("#offline-banner")).to_be_hidden(timeout=30_000)
        card = page.locator(f'.interrupted-card[data-run-id="{run_id}"]')
        expect(card).to_be_visible(timeout=15_000)
        expect(card).to_contain_text("survives a crash")
        expect(card).to_contain_text("Last checkpoint")
        expect(row.locator(".badge")).to_have_text("interrupted")
        # Its training time, from the trainer's own count (no exit was seen).
        expect(row.locator("td").nth(5)).to_have_text(re.compile(r"\d+s$"))
        assert trainers_of(run_dir) == [], "a trainer started without the person's consent"
        save_screenshot(page, "runs")

        # Cancel changes nothing.
        card.get_by_role("button", name="Resume…").click()
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text("from the checkpoint at step")
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        assert server.run(run_id)["state"] == "interrupted"
        assert trainers_of(run_dir) == []

        # Confirm resumes: now, and only now, a trainer runs.
        card.get_by_role("button", name="Resume…").click()
        page.get_by_role("dialog").get_by_role("button", name="Resume training").click()
        server.wait_for_state(run_id, "starting", "running", timeout=30)
        wait_until(lambda: trainers_of(run_dir), 30, message="the resumed trainer")
        expect(row.locator(".badge")).to_have_text("running", timeout=60_000)
        expect(card).to_be_hidden()

        assert server.post(f"/api/runs/{run_id}/stop").status_code == 202
        server.wait_for_state(run_id, "stopped", timeout=60)
        assert_no_js_errors(page)
    finally:
        for proc in trainers_of(console_workspace / "runs"):
            proc.kill()
        server.stop()
