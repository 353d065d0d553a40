"""The Playground and the run page's evaluation panel in a real browser, against the real
console and real evaluation workers, on a LoRA run of the real trainer."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import assert_no_js_errors, save_screenshot, signed_in
from tests.eval_fixtures import LORA_RUN_ID, MAX_TOKENS, PROMPT, reference_texts
from tests.live_server import LiveServer, live_server
from training.contract.layout import Workspace

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(
    lora_workspace: Workspace, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    ws = tmp_path_factory.mktemp("browser-eval") / "ws"
    shutil.copytree(lora_workspace.root, ws)
    with live_server(ws, args=["--no-autodetect"]) as srv:
        yield srv


def _open_playground(page: Page, server: LiveServer) -> Page:
    signed_in(page, server)
    page.goto(f"{server.base_url}playground?run_id={LORA_RUN_ID}&checkpoint=final")
    expect(page.locator("#playground[data-ready='true']")).to_be_attached(timeout=20_000)
    return page


def _settings(page: Page, max_tokens: int, temp: float) -> None:
    page.fill("input[name=max_tokens]", str(max_tokens))
    page.fill("input[name=temp]", str(temp))


def test_playground_streams_side_by_side_and_stops(page: Page, server: LiveServer) -> None:
    _open_playground(page, server)
    root = page.locator("#playground")
    page.fill("textarea[name=prompt]", PROMPT)
    _settings(page, MAX_TOKENS, 0)
    page.check("input[name=side_by_side]")
    expect(page.locator("select[name=compare]")).to_have_value(f"run:{LORA_RUN_ID}:base")
    page.click("button[name=generate]")
    expect(root).to_have_attribute("data-done", "true", timeout=60_000)
    lanes = page.locator(".pg-lane .pg-text")
    expected = reference_texts(Workspace(server.workspace))
    assert lanes.nth(0).text_content() == expected["final"]
    assert lanes.nth(1).text_content() == expected["base"]
    expect(page.locator(".pg-lane[data-lane='1'] .pg-lane-label")).to_contain_text("base")
    save_screenshot(page, "playground")

    # Stop: a long continuation ends when the button is pressed. Greedy, because this
    # prompt's greedy text runs to the context length (4086 tokens, seconds), while a
    # sampled one can end with EOS in under a second, before Stop is pressed.
    page.uncheck("input[name=side_by_side]")
    _settings(page, 4096, 0)
    page.click("button[name=generate]")
    expect(lanes.nth(0)).not_to_be_empty(timeout=30_000)
    page.click("button[name=stop]")
    expect(root).to_have_attribute("data-done", "true", timeout=30_000)
    expect(page.locator(".pg-lane[data-lane='0']")).to_have_attribute("data-finish", "stopped")
    expect(page.locator("button[name=generate]")).to_be_enabled()
    assert_no_js_errors(page)


def test_bad_input_is_shown_next_to_the_field(page: Page, server: LiveServer) -> None:
    _open_playground(page, server)
    page.fill("textarea[name=prompt]", "")
    page.click("button[name=generate]")
    expect(page.locator("[data-error-for='prompt']")).to_contain_text("type a prompt")
    # Over the context length: found by the worker, reported next to the prompt too.
    page.fill("textarea[name=prompt]", "x " * 5000)
    _settings(page, 4, 0)
    page.click("button[name=generate]")
    expect(page.locator("[data-error-for='prompt']")).to_contain_text(
        "context length", timeout=30_000
    )
    expect(page.locator("button[name=generate]")).to_be_enabled()
    assert_no_js_errors(page)


def test_run_page_checkpoint_table_and_perplexity(page: Page, server: LiveServer) -> None:
    signed_in(page, server)
    page.goto(f"{server.base_url}runs/{LORA_RUN_ID}")
    table = page.locator("#eval-table")
    # The forgetting monitor's set is a named column next to the validation loss.
    expect(table.locator("th", has_text="general loss")).to_be_visible(timeout=20_000)
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table.locator("tr[data-best='true'] .badge")).to_have_text("best")
    # ...and a separate named `eval` series on the run's loss chart.
    page.wait_for_function(
        "() => window.cpt && window.cpt.run.evalSets.some((s) => s.endsWith('general'))",
        timeout=20_000,
    )

    row = table.locator("tr[data-checkpoint='step-00000010']")
    row.get_by_role("button", name="Perplexity…").click()
    dialog = page.locator("dialog")
    dialog.locator("select[name=data_set]").select_option("general")
    dialog.locator("input[name=num_samples]").fill("4")
    dialog.locator("[data-confirm]").click()
    expect(page.locator(".ev-job[data-state='done']")).to_contain_text("perplexity", timeout=60_000)
    expect(row.locator("td").nth(4)).to_contain_text("general ", timeout=10_000)
    page.locator("#evaluation").scroll_into_view_if_needed()
    save_screenshot(page, "run-evaluation")
    assert_no_js_errors(page)


def test_any_model_folder_through_the_folder_picker(page: Page, server: LiveServer) -> None:
    _open_playground(page, server)
    page.click("button[name=browse_model]")
    dialog = page.locator("dialog")
    dialog.get_by_role("button", name="models/").click()
    dialog.get_by_role("button", name="scratch-tiny").click()
    expect(page.locator("select[name=model]")).to_have_value("path:models/scratch-tiny")
    page.fill("textarea[name=prompt]", "class ")
    _settings(page, 6, 0)
    page.click("button[name=generate]")
    expect(page.locator("#playground")).to_have_attribute("data-done", "true", timeout=60_000)
    expect(page.locator(".pg-lane[data-lane='0'] .pg-lane-label")).to_have_text("scratch-tiny")
    assert_no_js_errors(page)


def test_export_card_asks_before_replacing_and_shows_a_quantized_export(
    page: Page, server: LiveServer
) -> None:
    old = server.workspace / "exports" / "earlier"
    old.mkdir(parents=True, exist_ok=True)
    (old / "README.md").write_text("---\ntags:\n- continued-pretraining\n---\n# earlier\n")
    (old / "adapter_config.json").write_text("{}")
    signed_in(page, server)
    page.goto(f"{server.base_url}runs/{LORA_RUN_ID}")
    row = page.locator("#eval-table tr[data-checkpoint='step-00000010']")
    row.get_by_role("button", name="Export…").click()
    card = page.locator("#export-card")
    expect(card.locator("select[name=checkpoint]")).to_have_value("step-00000010")
    # A LoRA run (from its run record): the adapter format is offered.
    expect(card.locator("select[name=format] option[value=adapter]")).to_be_enabled()
    card.locator("select[name=format]").select_option("adapter")
    expect(card.locator("select[name=quantize]")).to_be_disabled()  # only models quantize
    card.locator("input[name=dest]").fill("exports/earlier")
    card.locator("button[name=export]").click()
    confirm = page.get_by_role("dialog", name="Replace the existing export?")
    expect(confirm).to_contain_text(str(old.resolve()), timeout=10_000)
    confirm.get_by_role("button", name="Cancel").click()
    expect(page.locator("dialog")).to_have_count(0)
    assert (old / "README.md").is_file()  # nothing replaced without the confirmation

    # The final model, fused and quantized to 4 bits: progress, then where it went, its
    # size, its perplexity next to the unquantized model's, and the command to load it.
    card.locator("select[name=checkpoint]").select_option("final")
    card.locator("select[name=format]").select_option("model")
    card.locator("select[name=quantize]").select_option("4")
    card.locator("select[name=group_size]").select_option("32")
    expect(card.locator("input[name=perplexity]")).to_be_checked()
    card.locator("input[name=dest]").fill("")
    card.locator("button[name=export]").click()
    status = card.locator("#export-status")
    expect(status).to_have_attribute("data-state", "done", timeout=120_000)
    expect(card.locator("dd[data-key=format]")).to_have_text("model · 4-bit, group size 32")
    expect(card.locator("dd[data-key=size]")).to_contain_text("KB")
    expect(card.locator("dd[data-key=perplexity]")).to_contain_text("quantized")
    expect(card.locator("dd[data-key=command]")).to_contain_text(
        f"mlx_lm.generate --model {server.workspace.resolve()}/exports/{LORA_RUN_ID}-final-4bit-g32"
    )
    final = page.locator("#eval-table tr[data-checkpoint='final']")
    expect(final.locator("td").nth(4)).to_contain_text("val 4-bit", timeout=10_000)
    card.scroll_into_view_if_needed()
    save_screenshot(page, "run-export")

    # The run's metrics as CSV, downloaded through the page's link: a row per event.
    with page.expect_download() as download:
        page.locator("#act-metrics-csv").click()
    assert download.value.suggested_filename == f"{LORA_RUN_ID}-metrics.csv"
    table = Path(download.value.path()).read_text()
    jsonl = Workspace(server.workspace).run(LORA_RUN_ID).metrics.read_text().splitlines()
    header, *rows = list(csv.reader(io.StringIO(table)))
    assert header[:4] == ["seq", "event", "step", "time"] and len(rows) == len(jsonl)
    assert [r[0] for r in rows] == [str(json.loads(line)["seq"]) for line in jsonl]
    assert_no_js_errors(page)


def test_a_generation_survives_a_socket_reconnect(page: Page, server: LiveServer) -> None:
    """The connection drops mid-generation: the page rejoins the job with the last seq it
    has, gets what it missed once, and ends with exactly the worker's text."""
    _open_playground(page, server)
    root = page.locator("#playground")
    page.fill("textarea[name=prompt]", "def ")
    _settings(page, 4096, 1.0)
    page.click("button[name=generate]")
    lane = page.locator(".pg-lane[data-lane='0'] .pg-text")
    expect(lane).not_to_be_empty(timeout=30_000)
    dropped_mid_generation = page.evaluate(
        "() => { if (document.querySelector('#playground').dataset.done) return false;"
        " window.cptSocket.once('connect', () => { window.reconnected = true; });"
        " window.cptSocket.io.engine.close(); return true; }"  # the connection drops
    )
    assert dropped_mid_generation, "the generation ended before the connection could drop"
    page.wait_for_function("() => window.reconnected === true", timeout=15_000)
    # The worker keeps generating while the page is away and may finish (the context limit or
    # an EOS) before it is back: stop it only if it still runs, in one step in the page.
    page.evaluate(
        "() => { const stop = document.querySelector('button[name=stop]');"
        " if (!stop.disabled) stop.click(); }"
    )
    expect(root).to_have_attribute("data-done", "true", timeout=30_000)
    job_id = root.get_attribute("data-job-id")
    job = server.get(f"/api/eval/jobs/{job_id}").json()["job"]
    assert lane.text_content() == job["result"]["lanes"][0]["text"] != ""
    assert_no_js_errors(page)
