"""A run on two (stand-in) hosts in a real browser: the New run form's Check hosts lists
each host's verdict; the run page's Ranks panel shows each rank's host and address, and
its own tokens per second and peak memory, live; Stop from the page stops both ranks
(tests/multihost.py makes the hosts)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import assert_no_js_errors, save_screenshot, signed_in
from tests.live_server import LiveServer
from tests.multihost import end_processes_naming, run_config, stand_in_hosts

pytestmark = pytest.mark.browser


@pytest.fixture
def server(console_workspace: Path) -> Iterator[LiveServer]:
    server = LiveServer(console_workspace, args=["--stop-grace", "20"])
    try:
        yield server.start()
    finally:
        server.stop()
        end_processes_naming(str(console_workspace))


def test_the_ranks_panel_shows_each_host_live_and_stop_ends_both(
    tiny_assets: dict[str, Path], server: LiveServer, page: Page
) -> None:
    with stand_in_hosts(2) as hosts:
        # The form (the demo preset) with the two hosts: Check hosts says both are ready.
        signed_in(page, server).goto(f"{server.base_url}runs/new")
        page.locator('[name="distributed.hosts"]').fill(",".join(hosts.addresses))
        page.get_by_role("button", name="Check hosts").click()
        verdicts = page.locator("#hosts-check > li")
        expect(verdicts).to_have_count(2, timeout=60_000)
        expect(page.locator('#hosts-check > li[data-ok="true"]')).to_have_count(2)
        expect(verdicts.first).to_contain_text(f"rank 0: {hosts.addresses[0]}")

        body = run_config(tiny_assets, hosts.addresses, iters=100_000)
        response = server.post("/api/runs", {"config": body, "name": "on two hosts"})
        assert response.status_code == 201, response.text
        run_id = response.json()["run_id"]
        page.goto(f"{server.base_url}runs/{run_id}")
        panel = page.locator("#ranks-panel")
        expect(panel).to_be_visible()
        rows = panel.locator("tbody tr")
        expect(rows).to_have_count(2)
        for rank, address in enumerate(hosts.addresses):
            row = panel.locator(f'tbody tr[data-rank="{rank}"]')
            expect(row).to_contain_text(address)
            # Live from the train reports: a number, then "GB".
            expect(row.locator('[data-key="tokens_per_second"]')).not_to_have_text(
                "–", timeout=120_000
            )
            expect(row.locator('[data-key="peak_memory"]')).to_contain_text("GB")
        expect(page.locator("#ranks-sub")).to_contain_text("ring · 2 hosts")
        save_screenshot(page, "run-ranks")

        page.get_by_role("group", name="Run actions").get_by_role("button", name="Stop").click()
        expect(page.locator("#run-state")).to_have_text("stopped", timeout=60_000)
        assert server.run(run_id)["checkpoints"] == 1
        assert_no_js_errors(page)
