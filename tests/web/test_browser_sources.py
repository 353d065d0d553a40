"""Weighted sources in a real browser, with the real trainer (its token cache written part
by part a little slower, so the corpus is still tokenizing when training starts): the New
run form's sources table and its replay preset, the run page's tokenization progress and
forgetting beside the domain gain, and Compare's one point per run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import assert_no_js_errors, signed_in
from tests.live_server import LiveServer, live_server
from training.contract.protocol import SHARD_CHARS_ENV

pytestmark = pytest.mark.browser

QUICK = {"max_seq_length": 64, "batch_size": 2, "steps_per_report": 2, "steps_per_eval": 10,
         "save_every": 40, "warmup_steps": 4, "iters": 40}  # fmt: skip
SIGNED = re.compile(r"^[+−]\d+\.\d{3}$")


@pytest.fixture(scope="module")
def server(console_workspace: Path) -> Iterator[LiveServer]:
    with live_server(
        console_workspace,
        env={SHARD_CHARS_ENV: "20000"},
        trainer_module="tests.slow_tokenizing_trainer",
    ) as s:
        yield s


def test_replay_general_text_then_watch_tokenizing_and_forgetting(
    server: LiveServer, page: Page
) -> None:
    signed_in(page, server)
    page.goto(f"{server.base_url}runs/new")
    path = page.get_by_label("Source 1 path")
    expect(path).to_have_value("corpora/python-stdlib.jsonl")  # the demo preset
    expect(page.locator("#sources-mix")).to_have_text("")
    page.get_by_role("button", name="Replay general text (5%)").click()
    expect(page.get_by_label("Source 2 path")).to_have_value("corpora/general-prose.jsonl")
    expect(page.get_by_label("Source 2 name")).to_have_value("general")
    expect(page.locator("#sources-mix")).to_have_text("Mixture: python-stdlib 95% · general 5.0%")
    # The general set now trains: the eval set of the same file is dropped.
    expect(page.locator('[name="eval_sets"]')).to_have_value("")
    page.fill('[name="name"]', "replay 5%")
    for field, value in QUICK.items():
        page.fill(f'[name="{field}"]', str(value))
    # A weight edited in the table is the mixture shown and the config sent.
    page.get_by_label("Source 2 weight").fill("0.25")
    expect(page.locator("#sources-mix")).to_have_text("Mixture: python-stdlib 79% · general 21%")
    page.get_by_label("Source 2 weight").fill("0.05")
    expect(page.locator("#validity")).to_have_text("Ready")
    expect(page.locator("#config-yaml")).to_contain_text("weight: 0.05")

    page.get_by_role("button", name="Start now").click()
    page.wait_for_url(re.compile(r"/runs/[0-9]{8}-"))
    run_id = page.url.rstrip("/").split("/")[-1]
    expect(page.locator("#run-state")).to_have_text("finished", timeout=120_000)
    # Training started before the corpus was tokenized: the page says how that went.
    box = page.locator("#tokenization")
    expect(box).to_have_attribute("data-done", "true")
    expect(box).to_contain_text("Tokenized")
    expect(box).to_contain_text("while training ran")
    # The replay source's validation is charted and forgetting shown beside the gain.
    expect(page.locator("#forgetting")).to_be_visible()
    expect(page.locator("#s-forget-sub")).to_have_text("general loss since step 0")
    assert SIGNED.match(page.locator("#s-forget").inner_text())
    assert SIGNED.match(page.locator("#s-gain").inner_text())
    start = server.get(f"/api/runs/{run_id}/metrics").json()["rows"][0]
    assert [s["name"] for s in start["data"]["sources"]] == ["python-stdlib", "general"]

    page.goto(f"{server.base_url}compare?runs={run_id}")
    point = page.locator(f'#tradeoff-chart g[data-run-id="{run_id}"]')
    expect(point).to_have_count(1)
    row = page.locator(f'#tradeoff-table tr[data-run-id="{run_id}"]')
    expect(row).to_contain_text("replay 5%")
    expect(row).to_contain_text("general")
    assert_no_js_errors(page)
