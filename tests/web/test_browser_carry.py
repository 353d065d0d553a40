"""Carrying a model forward in a real browser (issue 12), with the real trainer on the tiny
model: a finished run's samples as a timeline, its grad_norm chart, Continue training
into a New run form filled with init_from and the memory estimate on the Launch card
(with its warning), and the lineage on the new run's page and in Compare."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import assert_no_js_errors, signed_in
from tests.live_server import LiveServer, live_server
from tests.web.test_browser_run import QUICK, demo_config, wait_js

pytestmark = pytest.mark.browser

SAMPLED = {
    **QUICK,
    "iters": 6,
    "steps_per_eval": 3,
    "steps_per_report": 1,
    "sample_prompts": ["def ", "class "],
    "sample_max_tokens": 4,
}


@pytest.fixture(scope="module")
def server(console_workspace: Path) -> Iterator[LiveServer]:
    with live_server(console_workspace) as s:
        yield s


def test_samples_grad_norm_continue_training_memory_and_lineage(
    server: LiveServer, page: Page
) -> None:
    body = {"config": {**demo_config(server), **SAMPLED}, "name": "source", "start": True}
    response = server.post("/api/runs", body)
    assert response.status_code == 201, response.text
    source = response.json()["run_id"]
    server.wait_for_state(source, "finished", timeout=120)

    signed_in(page, server)
    page.goto(server.base_url + f"runs/{source}")
    # Samples: one slider position per evaluation (steps 0, 3, 6), the newest shown.
    expect(page.locator("#samples")).to_be_visible()
    expect(page.locator("#sample-step-label")).to_have_text("step 6 (3 of 3)")
    expect(page.locator("#sample-texts .sample")).to_have_count(2)
    page.locator("#sample-step").fill("0")
    expect(page.locator("#sample-step-label")).to_have_text("step 0 (1 of 3)")
    expect(page.locator("#sample-texts")).to_contain_text("class ")
    # grad_norm: a chart of its own, fed from the train events.
    wait_js(page, "window.cpt.run.train.n >= 6")
    norms = page.evaluate(
        "Array.from(window.cpt.run.train.col('grad_norm').subarray(0, window.cpt.run.train.n))"
    )
    assert len(norms) == 6 and all(n > 0 for n in norms)
    page.locator("#chart-gnorm canvas").wait_for()

    # Continue training: the New run form with this run's settings and init_from.
    page.get_by_role("link", name="Continue training").click()
    expect(page.locator('[name="init_from"]')).to_have_value(source)
    expect(page.locator('[name="name"]')).to_have_value("source (continued)")
    expect(page.locator("#validity")).to_have_text("Ready")
    expect(page.get_by_test_id("memory-total")).to_contain_text("Estimated peak memory")
    expect(page.get_by_test_id("memory-warning")).to_have_count(0)
    # A batch far beyond the machine: the Launch card says it will not fit.
    page.fill('[name="batch_size"]', "4096")
    page.fill('[name="max_seq_length"]', "4096")
    expect(page.get_by_test_id("memory-warning")).to_contain_text("will not fit")
    page.fill('[name="batch_size"]', "2")
    page.fill('[name="max_seq_length"]', "64")
    expect(page.get_by_test_id("memory-warning")).to_have_count(0)
    page.fill('[name="iters"]', "2")
    page.get_by_role("button", name="Start now").click()
    page.wait_for_url(lambda url: f"runs/{source}" not in url and "/runs/2" in url)
    child = page.url.rstrip("/").rsplit("/", 1)[-1]
    expect(page.locator("#run-lineage")).to_contain_text(f"Initialized from {source}")
    server.wait_for_state(child, "finished", "failed", timeout=120)
    assert server.run(child)["state"] == "finished"

    # Compare: the lineage is the first row of the settings table.
    page.goto(server.base_url + f"compare?runs={source},{child}")
    row = page.locator('tr[data-setting="initialized_from"]')
    expect(row).to_contain_text(f"{source} @ final (step 6)")
    assert_no_js_errors(page)
