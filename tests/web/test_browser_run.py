"""The console in a real browser, with the real trainer on the tiny scratch model: fill the
form and start, watch loss points arrive, reload mid-run without a gap, stop, resume through
the confirmation, inline validation, and run names that must stay text.

One console for the module; the tests share it and its token cache, so later runs start
faster. They also write the README screenshots (docs/screenshots/).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import APIResponse, Page, Route, expect

from tests.browser import assert_no_js_errors, save_screenshot, signed_in
from tests.helpers import wait_until
from tests.live_server import LiveServer, live_server

pytestmark = pytest.mark.browser

XSS_NAME = "<img src=x onerror=alert(1)>"
# Small and quick: a handful of seconds of training on two CPU cores.
QUICK = {
    "max_seq_length": 64,
    "batch_size": 2,
    "steps_per_report": 2,
    "steps_per_eval": 20,
    "save_every": 20,
    "warmup_steps": 4,
}


@pytest.fixture(scope="module")
def server(console_workspace: Path) -> Iterator[LiveServer]:
    with live_server(console_workspace) as s:
        yield s


def wait_js(page: Page, condition: str, timeout: float = 30_000) -> None:
    """Poll a JavaScript condition. A function, not a string: under the console's CSP
    (no 'unsafe-eval') Playwright cannot eval a string predicate in the page."""
    page.wait_for_function(
        f"() => {{ try {{ return {condition}; }} catch (e) {{ return false; }} }}",
        timeout=timeout,
    )


def actions(page: Page):
    """The run page's own action buttons (the page also holds the evaluation panel's)."""
    return page.get_by_role("group", name="Run actions")


def train_points(page: Page) -> int:
    return page.evaluate("window.cpt.run.train.n")


def chart_steps(page: Page) -> list[float]:
    return page.evaluate(
        "Array.from(window.cpt.run.train.col('step').subarray(0, window.cpt.run.train.n))"
    )


def file_train_steps(server: LiveServer, run_id: str) -> list[int]:
    """Train steps in metrics.jsonl; after a resume the newest row of a step wins."""
    steps: list[int] = []
    for line in (server.workspace / "runs" / run_id / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("event") == "train":
            steps = [s for s in steps if s < row["step"]] + [row["step"]]
    return steps


def create_run(
    server: LiveServer, name: str, start: bool = True, queue: bool = False, **config: object
) -> str:
    body = {
        "config": {**demo_config(server), **QUICK, **config},
        "name": name,
        "start": start,
        "queue": queue,
    }
    response = server.post("/api/runs", body)
    assert response.status_code == 201, response.text
    return response.json()["run_id"]


def demo_config(server: LiveServer) -> dict:
    presets = server.get("/api/presets").json()["presets"]
    return next(p["config"] for p in presets if p["name"] == "demo")


def test_fill_the_form_start_and_watch_loss_grow(server: LiveServer, page: Page) -> None:
    signed_in(page, server)
    page.get_by_role("link", name="New run").click()
    # The demo preset fills the form (the workspace has demo.yaml).
    expect(page.locator('[name="model"]')).to_have_value("models/scratch-tiny")
    page.fill('[name="name"]', "first light")
    for field, value in {**QUICK, "iters": 80}.items():
        page.fill(f'[name="{field}"]', str(value))
    expect(page.locator("#validity")).to_have_text("Ready")
    expect(page.locator("#config-yaml")).to_contain_text("iters: 80")
    page.locator("#lr-chart canvas").wait_for()
    page.evaluate("window.scrollTo(0, 0)")
    save_screenshot(page, "new-run")

    page.get_by_role("button", name="Start now").click()
    page.wait_for_url(re.compile(r"/runs/[0-9]{8}-"))
    expect(page.locator("#run-name")).to_have_text("first light")
    # Points appear while it trains and grow to one per report (growth over a long run,
    # whatever the machine's speed, is checked in test_reload_mid_run_then_stop_and_resume).
    wait_js(page, "window.cpt.run.train.n >= 2", timeout=90_000)
    expect(page.locator("#run-state")).to_have_text("finished", timeout=90_000)
    expect(page.locator(".toast", has_text="Run finished")).to_be_visible()
    wait_js(page, "window.cpt.run.train.n >= 40")  # 80 steps, one point per 2
    expect(page.locator("#eval-table")).to_contain_text("step-00000080")  # the last checkpoint
    assert int(page.locator("#chart-loss").get_attribute("data-points")) >= 40
    expect(page.locator("#log")).to_contain_text("final model")
    page.evaluate("document.querySelectorAll('.toast').forEach((t) => t.remove())")
    page.evaluate("window.scrollTo(0, 0)")
    save_screenshot(page, "run-detail")
    # The same page in the dark theme (Settings stores the choice in localStorage).
    page.evaluate("localStorage.setItem('cpt.settings', JSON.stringify({theme: 'dark'}))")
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    wait_js(page, "window.cpt.run.train.n >= 40")
    save_screenshot(page, "run-detail-dark")

    # Clone & edit: the form again, with this run's settings.
    actions(page).get_by_role("link", name="Clone & edit").click()
    expect(page.locator('[name="name"]')).to_have_value("first light (copy)")
    expect(page.locator('[name="iters"]')).to_have_value("80")
    expect(page.locator('[name="max_seq_length"]')).to_have_value("64")
    assert_no_js_errors(page)


def test_validation_errors_appear_next_to_the_field(server: LiveServer, page: Page) -> None:
    signed_in(page, server)
    page.goto(server.base_url + "runs/new")
    expect(page.locator('[name="model"]')).to_have_value("models/scratch-tiny")
    page.fill('[name="learning_rate"]', "-1")
    page.fill('[name="batch_size"]', "lots")
    page.fill('[name="model"]', "missing-model")
    lr = page.locator('[data-field="learning_rate"]')
    expect(lr.locator(".field-error")).to_contain_text("greater than 0")
    expect(lr.locator('[name="learning_rate"]')).to_have_attribute("aria-invalid", "true")
    expect(page.locator('[data-field="batch_size"] .field-error')).to_contain_text("whole number")
    expect(page.locator('[data-field="model"] .field-error')).to_contain_text("no model folder")
    # A valid field carries no message.
    expect(page.locator('[data-field="iters"] .field-error')).to_be_hidden()
    expect(page.locator("#validity")).to_have_text(re.compile(r"\d+ to fix"))
    # Starting anyway is refused and keeps the person on the form.
    page.get_by_role("button", name="Start now").click()
    expect(page.locator('[data-field="model"] .field-error')).to_be_visible()
    assert page.url.endswith("/runs/new")
    # Fixing a field clears its message.
    page.fill('[name="learning_rate"]', "0.001")
    expect(lr.locator(".field-error")).to_be_hidden()
    assert_no_js_errors(page)


def test_form_rules_pickers_yaml_and_command_line(
    server: LiveServer, page: Page, tmp_path: Path
) -> None:
    signed_in(page, server)
    page.goto(server.base_url + "runs/new")
    expect(page.locator('[name="model"]')).to_have_value("models/scratch-tiny")
    # depends_on: LoRA settings only for lora/dora.
    rank = page.locator('[data-field="lora_parameters.rank"]')
    expect(rank).to_be_hidden()
    page.select_option('[name="fine_tune_type"]', "lora")
    expect(rank).to_be_visible()
    page.select_option('[name="fine_tune_type"]', "full")
    expect(rank).to_be_hidden()
    # A rule on a hidden field fails too: the embeddings' rate needs train_embeddings, which
    # is lora/dora only, so a full run shows neither even with the switch left on.
    scale = page.locator('[data-field="embedding_lr_scale"]')
    page.select_option('[name="fine_tune_type"]', "lora")
    expect(scale).to_have_js_property("hidden", True)
    page.locator('[name="train_embeddings"]').check()
    expect(scale).to_have_js_property("hidden", False)
    # The LR plot adds the embeddings' and head's own rate (embedding_lr_scale x).
    expect(page.locator("#lr-summary")).to_contain_text("embeddings and head (dashed)")
    page.select_option('[name="fine_tune_type"]', "full")
    expect(page.locator('[data-field="train_embeddings"]')).to_be_hidden()
    expect(scale).to_have_js_property("hidden", True)

    # The model picker lists the workspace and picks a model folder.
    page.fill('[name="model"]', "")
    page.get_by_role("button", name="Browse for model").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="models/").click()
    dialog.get_by_role("button", name="scratch-tiny").click()
    expect(page.locator('[name="model"]')).to_have_value("models/scratch-tiny")

    # Load YAML (mlx-lm keys), then the command line shows what differs from defaults.
    config = tmp_path / "mine.yaml"
    config.write_text(
        "learning_rate: 2e-4\niters: 123\ngrad_checkpoint: true\nreport_to: tensorboard\n"
    )
    page.locator("#yaml-file").set_input_files(str(config))
    expect(page.locator('[name="iters"]')).to_have_value("123")
    expect(page.locator('[name="learning_rate"]')).to_have_value("0.0002")
    # report_to: both trackers offered as boxes beside mlx-lm's comma-separated text.
    trackers = page.get_by_role("group", name="Report to choices")
    expect(page.locator('[name="report_to"]')).to_have_value("tensorboard")
    expect(trackers.get_by_role("checkbox", name="tensorboard")).to_be_checked()
    expect(trackers.get_by_role("checkbox", name="wandb")).not_to_be_checked()
    trackers.get_by_role("checkbox", name="wandb").check()
    expect(page.locator('[name="report_to"]')).to_have_value("tensorboard,wandb")
    expect(page.locator("#config-yaml")).to_contain_text("report_to:")
    page.get_by_role("tab", name="Command line").click()
    cli = page.locator("#config-cli")
    expect(cli).to_contain_text("python -m training.continued_pretraining")
    expect(cli).to_contain_text("--iters 123")
    expect(cli).to_contain_text("--grad-checkpoint")
    expect(cli).to_contain_text("--report-to tensorboard,wandb")
    # Typing names the boxes too; an unknown tracker is refused next to the field.
    page.fill('[name="report_to"]', "wandb,mlflow")
    expect(trackers.get_by_role("checkbox", name="tensorboard")).not_to_be_checked()
    expect(trackers.get_by_role("checkbox", name="wandb")).to_be_checked()
    expect(page.locator('[data-field="report_to"] .field-error')).to_contain_text("mlflow")
    page.fill('[name="report_to"]', "")
    expect(page.locator('[data-field="report_to"] .field-error')).to_be_hidden()
    assert_no_js_errors(page)


def test_a_quantized_model_turns_full_fine_tuning_off(
    server: LiveServer, page: Page, quantized_model: Path
) -> None:
    shutil.copytree(quantized_model, server.workspace / "models" / "tiny-4bit", dirs_exist_ok=True)
    signed_in(page, server)
    page.goto(server.base_url + "runs/new")
    expect(page.locator('[name="model"]')).to_have_value("models/scratch-tiny")
    full = page.locator('[name="fine_tune_type"] option[value="full"]')
    field = page.locator('[data-field="fine_tune_type"]')
    expect(full).to_be_enabled()
    page.fill('[name="model"]', "models/tiny-4bit")
    expect(full).to_be_disabled()
    expect(field.locator(".field-note")).to_contain_text("quantized (4-bit, group size 32)")
    expect(field.locator(".field-error")).to_contain_text("mlx_lm.convert --dequantize")
    field.get_by_role("button", name="Use lora").click()
    expect(page.locator('[name="fine_tune_type"]')).to_have_value("lora")
    expect(page.locator("#validity")).to_have_text("Ready")
    page.fill('[name="model"]', "models/scratch-tiny")
    expect(full).to_be_enabled()
    expect(field.locator(".field-note")).to_be_hidden()
    assert_no_js_errors(page)


def test_a_run_killed_before_its_first_checkpoint_starts_again_from_step_0(
    server: LiveServer, page: Page
) -> None:
    run_id = "20250101-120000-dead00"  # as a trainer SIGKILLed at step 4 leaves it
    run_dir = server.workspace / "runs" / run_id
    run_dir.mkdir(parents=True)
    config = {**demo_config(server), **QUICK, "iters": 6}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = [
        {"event": "run_start", "step": 0, "total_steps": 6, "resumed_from": None},
        {"event": "status", "step": 0, "state": "running", "message": "started"},
        *({"event": "train", "step": n, "train_loss": 6.0} for n in (2, 4)),
    ]
    lines = [{"v": 1, "seq": i + 1, "time": time.time(), **r} for i, r in enumerate(rows)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    signed_in(page, server)
    page.goto(server.base_url + f"runs/{run_id}")
    expect(page.locator("#run-state")).to_have_text("interrupted")
    actions(page).get_by_role("button", name="Resume…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("nothing to resume from")
    dialog.get_by_role("button", name="Cancel").click()  # nothing without a confirmation
    expect(page.locator("#run-state")).to_have_text("interrupted")
    assert not (run_dir / "run.json").exists()
    actions(page).get_by_role("button", name="Resume…").click()
    dialog.get_by_role("button", name="Start again from step 0").click()
    expect(page.locator("#run-state")).to_have_text("finished", timeout=90_000)
    assert file_train_steps(server, run_id) == [2, 4, 6]
    assert server.run(run_id)["resumes"][-1]["restart"] is True
    assert_no_js_errors(page)


def test_run_names_render_as_text(server: LiveServer, page: Page) -> None:
    run_id = create_run(server, XSS_NAME, start=False)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    signed_in(page, server)
    link = page.locator(f'#runs-body a[href="/runs/{run_id}"]')
    expect(link).to_have_text(XSS_NAME)
    assert page.locator("#runs-body img, #interrupted img").count() == 0
    link.click()
    expect(page.locator("#run-name")).to_have_text(XSS_NAME)
    assert page.locator("main img").count() == 0
    page.goto(server.base_url + f"compare?runs={run_id}")
    expect(page.locator(f'#run-picker li[data-run-id="{run_id}"]')).to_contain_text(XSS_NAME)
    assert page.locator("main img").count() == 0
    assert dialogs == []
    assert_no_js_errors(page)


def test_reload_mid_run_then_stop_and_resume(server: LiveServer, page: Page) -> None:
    run_id = create_run(server, "long run", iters=4000)
    signed_in(page, server)
    page.goto(server.base_url + f"runs/{run_id}")
    wait_js(page, "window.cpt.run.train.n >= 3", timeout=90_000)
    seen = train_points(page)
    wait_js(page, f"window.cpt.run.train.n > {seen}", timeout=60_000)  # live points grow
    before = train_points(page)

    # Reload mid-run: history, then live rows after the last seq, with no gap or repeat.
    page.reload()
    wait_js(page, f"window.cpt.run.train.n > {before + 2}", timeout=60_000)
    steps = chart_steps(page)
    assert steps == sorted(set(steps)), "duplicate or out-of-order points after reload"
    on_disk = file_train_steps(server, run_id)
    assert steps == on_disk[: len(steps)], "the chart has a gap the file does not"

    actions(page).get_by_role("button", name="Stop").click()
    expect(page.locator("#run-state")).to_have_text("stopped", timeout=60_000)
    expect(page.locator("#run-reason")).to_contain_text("Stopped")
    stopped_at = chart_steps(page)[-1]

    actions(page).get_by_role("button", name="Resume…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("from the checkpoint at step")
    expect(dialog).to_contain_text("same run folder")
    dialog.get_by_role("button", name="Resume training").click()
    expect(page.locator("#run-state")).to_have_text(re.compile("starting|running"), timeout=30_000)
    wait_js(
        page,
        f"window.cpt.run.train.col('step')[window.cpt.run.train.n - 1] > {stopped_at + 4}",
        timeout=90_000,
    )
    steps = chart_steps(page)
    assert steps == sorted(set(steps)), "a resumed run must not repeat steps on the chart"
    assert steps == file_train_steps(server, run_id)[: len(steps)]

    actions(page).get_by_role("button", name="Stop").click()
    expect(page.locator("#run-state")).to_have_text("stopped", timeout=60_000)
    assert_no_js_errors(page)


def test_queue_reorder_remove_and_start(server: LiveServer, page: Page) -> None:
    assert server.post("/api/queue/pause").status_code == 200
    first = create_run(server, "queued first", start=False, queue=True, iters=10)
    second = create_run(server, "queued second", start=False, queue=True, iters=10)
    signed_in(page, server)
    items = page.locator("#queue-list li")
    expect(items).to_have_count(2)
    expect(page.locator("#queue-state")).to_have_text("paused")

    page.get_by_role("button", name="Move queued first down").click()
    expect(items.first).to_have_attribute("data-run-id", second)
    assert server.get("/api/queue").json()["queue"]["run_ids"] == [second, first]

    page.get_by_role("button", name="Remove queued second from the queue").click()
    expect(items).to_have_count(1)
    assert server.run(second)["state"] == "created"

    page.get_by_role("button", name="Start queue").click()
    server.wait_for_state(first, "finished", timeout=90)
    expect(page.locator(f'#runs-body tr[data-run-id="{first}"] .badge')).to_have_text("finished")
    expect(page.locator("#queue-empty")).to_be_visible()
    assert_no_js_errors(page)


def test_runs_page_lists_every_run_with_its_link(server: LiveServer, page: Page) -> None:
    signed_in(page, server)
    runs = server.get("/api/runs").json()["runs"]
    assert len(runs) >= 3
    for run in runs:
        row = page.locator(f'#runs-body tr[data-run-id="{run["run_id"]}"]')
        expect(row.locator(f'a[href="/runs/{run["run_id"]}"]')).to_be_visible()
        expect(row.locator(".badge")).to_have_text(run["state"])
    expect(page.locator('#runs-body tr[data-state="finished"] .progress').first).to_be_visible()
    assert_no_js_errors(page)


def test_compare_overlays_runs_and_diffs_their_configs(server: LiveServer, page: Page) -> None:
    runs = {r["name"]: r["run_id"] for r in server.get("/api/runs").json()["runs"]}
    a, b = runs["first light"], runs["long run"]
    signed_in(page, server)
    page.goto(server.base_url + f"compare?runs={a},{b}")
    wait_js(page, "Number(document.querySelector('#chart-compare').dataset.points) > 10")
    iters = page.locator('#diff-body tr[data-setting="iters"] td')
    expect(iters).to_have_text(["iters", "80", "4000"])
    expect(page.locator('#diff-body tr[data-setting="model"]')).to_have_count(0)  # the same
    page.get_by_label("Only differences").uncheck()
    expect(page.locator('#diff-body tr[data-setting="model"]')).to_have_count(1)
    page.get_by_label("Metric").select_option("val_loss")
    wait_js(page, "Number(document.querySelector('#chart-compare').dataset.points) > 0")
    assert_no_js_errors(page)


def test_settings_persist_across_reloads(server: LiveServer, page: Page) -> None:
    signed_in(page, server)
    page.goto(server.base_url + "settings")
    page.locator("label", has_text="Dark").click()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    page.get_by_label("Log scale").check()
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    expect(page.get_by_label("Log scale")).to_be_checked()
    expect(page.locator('input[name="theme"][value="dark"]')).to_be_checked()
    page.goto(server.base_url)
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    assert_no_js_errors(page)


def test_caches_are_listed_and_deleted_only_after_confirmation(
    server: LiveServer, page: Page
) -> None:
    tokens = server.workspace / "cache" / "tokens"
    for name, corpus in (("feedc0de01", "corpora/one.txt"), ("feedc0de02", "corpora/two.txt")):
        (tokens / name).mkdir(parents=True)
        meta = {"files": [str(server.workspace / corpus)], "documents": 3}
        (tokens / name / "meta.json").write_text(json.dumps(meta))
        (tokens / name / "tokens.bin").write_bytes(b"\0" * 4096)
    before = {p.name for p in tokens.iterdir()}
    create_run(server, "keeps its folder", start=False)
    runs = sorted(p.name for p in (server.workspace / "runs").iterdir())
    signed_in(page, server)
    page.goto(server.base_url + "settings")
    row = page.locator('#caches-body tr[data-cache="feedc0de01"]')
    expect(row).to_contain_text("corpora/one.txt")
    expect(row.locator("td").nth(2)).to_have_text(re.compile(r"^4\.\d KB$"))

    page.get_by_role("button", name="Clear all…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Runs, checkpoints and exports are not touched")
    dialog.get_by_role("button", name="Cancel").click()
    row.get_by_role("button", name="Delete the cache of corpora/one.txt").click()
    expect(dialog).to_contain_text("corpora/one.txt")
    dialog.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    expect(page.locator('#caches-body tr[data-cache="feedc0de02"]')).to_have_count(1)
    assert {p.name for p in tokens.iterdir()} == before - {"feedc0de01"}
    assert sorted(p.name for p in (server.workspace / "runs").iterdir()) == runs
    assert_no_js_errors(page)


def test_remote_reports_refresh_the_run_page_once_per_status(
    server: LiveServer, page: Page
) -> None:
    """Train rows only extend the charts; a status row refreshes the run once (it arrives
    as a row and as run_status), and batches of train rows refresh nothing."""
    run_id = "20260404-000000-remote"
    seq = iter(range(1, 1000))

    def report(count: int = 1, event: str = "train", **extra: object) -> None:
        rows = [
            {
                "v": 1,
                "seq": (s := next(seq)),
                "event": event,
                "time": time.time(),
                "step": s,
                **extra,
            }
            for _ in range(count)
        ]
        response = server.post(f"/api/callbacks/{run_id}", {"events": rows})
        assert response.status_code == 200, response.text

    report(event="status", state="running")
    report(3, train_loss=2.0)
    signed_in(page, server)
    page.goto(f"{server.base_url}runs/{run_id}")
    wait_js(page, "window.cpt.run.train.n === 3")
    expect(page.locator("#run-state")).to_have_text("running")
    wait_js(page, "!window.cpt.page.refreshPending")
    fetched: list[str] = []
    path = f"/api/runs/{run_id}"
    page.on("request", lambda r: fetched.append(r.url) if r.url.endswith(path) else None)
    for _ in range(5):
        report(train_loss=1.5)
    wait_js(page, "window.cpt.run.train.n === 8")
    report(event="status", state="finished")
    expect(page.locator("#run-state")).to_have_text("finished")
    report(train_loss=1.0)  # arrives after every message the status caused
    wait_js(page, "window.cpt.run.train.n === 9 && !window.cpt.page.refreshPending")
    assert len(fetched) == 1, fetched
    assert_no_js_errors(page)


def test_compare_untick_during_load_leaves_no_follower(server: LiveServer, page: Page) -> None:
    """A live run unticked while its history loads is not followed afterwards, and ticked
    again it is followed once."""
    run_id = "20260405-000000-remote"
    rows = [
        {"v": 1, "seq": s, "event": "train", "time": time.time(), "step": s, "train_loss": 2.0}
        for s in range(1, 4)
    ]
    assert server.post(f"/api/callbacks/{run_id}", {"events": rows}).status_code == 200
    other = "20260405-000000-other1"
    assert server.post(f"/api/callbacks/{other}", {"events": rows}).status_code == 200
    held = []
    page.route(f"**/api/runs/{run_id}/metrics*", lambda route: held.append(route))
    signed_in(page, server)
    page.goto(server.base_url + f"compare?runs={other}")
    box = page.locator(f'#run-picker li[data-run-id="{run_id}"] input[type=checkbox]')
    box.check()
    wait_js(page, f"window.cpt.state.data.has('{run_id}') && window.cpt.state.loading > 0")
    box.uncheck()
    wait_js(page, f"!window.cpt.state.data.has('{run_id}')")
    held[0].continue_()  # the stale load finishes now
    page.unroute(f"**/api/runs/{run_id}/metrics*")
    wait_js(page, "window.cpt.state.loading === 0")
    assert run_id not in page.evaluate("window.cpt.followedRuns()")
    box.check()
    wait_js(page, f"window.cpt.state.loading === 0 && window.cpt.followedRuns()['{run_id}'] === 1")
    box.uncheck()
    wait_js(page, f"!('{run_id}' in window.cpt.followedRuns())")
    assert_no_js_errors(page)


def test_live_rows_stay_bounded_without_gaps(server: LiveServer, page: Page) -> None:
    """A long live run: past 4x the history's points the page fetches the downsampled
    history again and rebuilds, keeping every row that came after it. The history's
    answer is held back until more rows have arrived live, so the rows that came while
    it was out are exactly known (no race with the server's timing)."""
    run_id = "20260406-000000-remote"
    seq = iter(range(1, 10_000))

    def report(count: int, event: str = "train", **extra: object) -> int:
        rows = []
        for _ in range(count):
            s = next(seq)
            rows.append({"v": 1, "seq": s, "event": event, "time": time.time(), "step": s,
                         "train_loss": 1.0 + (s * 37 % 11) / 10, **extra})  # fmt: skip
        assert server.post(f"/api/callbacks/{run_id}", {"events": rows}).status_code == 200
        return rows[-1]["seq"]

    report(1, event="status", state="running")
    report(9)
    signed_in(page, server)
    page.evaluate("localStorage.setItem('cpt.settings', JSON.stringify({maxPoints: 20}))")
    page.goto(f"{server.base_url}runs/{run_id}")
    wait_js(page, "window.cpt.run.train.n === 9")
    held: list[tuple[Route, APIResponse]] = []
    # The refetch is answered now (the history up to this moment) but delivered later.
    page.route("**/metrics?max_points=*", lambda route: held.append((route, route.fetch())))
    history_end = report(80)  # 89 rows: over 4 x 20, so the page asks for the history again
    wait_until(lambda: page.evaluate("1") and held, message="the history request")
    last = report(10)  # these arrive while the history is out
    wait_js(page, f"window.cpt.run.lastSeq === {last}")
    route, response = held[0]
    route.fulfill(response=response)
    wait_js(page, "window.cpt.run.train.n < 60")  # rebuilt from the downsampled history
    steps = chart_steps(page)
    assert steps == sorted(set(steps)) and steps[0] == 2  # no duplicate, the start kept
    assert steps[-10:] == list(range(history_end + 1, last + 1))  # no gap after the history
    assert len(held) == 1  # one refetch, and the rebuilt run is small again
    page.evaluate("localStorage.removeItem('cpt.settings')")
    assert_no_js_errors(page)
