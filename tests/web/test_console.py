"""Console.close(): the console's own evaluation workers stop with it; trainers do not."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.console_helpers import fake_config, make_workspace, set_fake_mode
from tests.helpers import wait_until
from web.app import create_app

TOKEN = "console-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_close_stops_evaluation_workers_and_leaves_trainers_running(
    tmp_path: Path, tiny_assets: dict[str, Path]
) -> None:
    ws = make_workspace(tmp_path / "ws")
    set_fake_mode(ws, mode="hang")  # the trainer runs until it is signalled
    app = create_app(
        {
            "WORKSPACE": ws,
            "TOKEN": TOKEN,
            "TRAINER_MODULE": "tests.fake_trainer",
            "BROWSE_ROOTS": [ws, tiny_assets["workspace"]],
            "TESTING": True,
        }
    )
    console = app.extensions["console"]
    client = app.test_client()
    created = client.post("/api/runs", json={"config": fake_config(), "start": True}, headers=AUTH)
    assert created.status_code == 201, created.get_data(as_text=True)
    run_id = created.get_json()["run_id"]
    trainer = console.manager._active[run_id].popen
    assert trainer is not None
    try:
        started = client.post(
            "/api/eval/generate",
            json={
                "model": {"path": str(tiny_assets["model"])},
                "prompt": "def ",
                "max_tokens": 4000,
            },
            headers=AUTH,
        )
        assert started.status_code == 202, started.get_data(as_text=True)
        job = console.eval_jobs.get(started.get_json()["job_id"])
        wait_until(lambda: job.last_seq > 0, 60, message="the worker's first event")
        assert job.state == "running"

        live = console.close()

        assert job.process.poll() is not None, "the evaluation worker outlived the console"
        assert job.finished.is_set() and job.state == "stopped"
        assert live == [run_id]
        assert trainer.poll() is None, "closing the console must not stop a trainer"
    finally:
        trainer.kill()
        trainer.wait()
        # The manager's watcher records the exit; let it finish inside this test.
        for thread in threading.enumerate():
            if thread.name == f"trainer-{run_id}":
                thread.join(10)
