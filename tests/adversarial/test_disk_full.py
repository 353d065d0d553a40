"""A full disk loses nothing and tells the truth, on a real filesystem that fills up (a
small tmpfs this test mounts and always unmounts):

- the real trainer refuses a checkpoint that cannot fit, naming the folder, the space
  needed and the space left; the previous checkpoint stays loadable and a resume after
  space is freed continues exactly;
- a trainer that cannot even write its final status exits 4 (EXIT_DISK_FULL) and the
  console records that exit although run.json cannot be written either;
- a console on a full workspace keeps serving reads, answers its writes 507, and a new
  console refuses to start with one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI, ROOT
from tests.console_helpers import fake_config, make_manager, make_workspace, set_fake_mode
from tests.helpers import wait_until
from tests.live_server import LiveServer
from tests.trainer_helpers import TINY, run_trainer, train_losses
from training.console.manager import TrainingManager
from training.contract.checkpoints import list_checkpoints, read_latest
from training.contract.disk import DiskFull, disk_errors, free_bytes, is_disk_full
from training.contract.layout import new_run_id
from training.contract.protocol import EXIT_DISK_FULL, EXIT_FAILED
from training.metrics.writer import TrainingMetricsLogger

REAL_TRAINER = "training.continued_pretraining"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Any]:
    """mount(path, size) mounts a tmpfs of `size` there; every mount is undone at the
    end. Where mounting is not permitted: a failure under CI, an expected failure (with
    the reason) elsewhere, never a skip."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            problem = result.stderr.strip() if result.returncode else ""
        except OSError as exc:
            problem = str(exc)
        if problem:
            message = f"cannot mount a tmpfs (the disk-full tests need root on Linux): {problem}"
            if IN_CI:
                pytest.fail(message, pytrace=False)
            pytest.xfail(message)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], check=True)  # a straggler holds it


def fill(folder: Path, leave: int, name: str = "filler") -> Path:
    """Take the free space of `folder`'s filesystem with one file, leaving exactly `leave`
    bytes (a multiple of the block size)."""
    path = folder / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, (free_bytes(folder) or 0) - leave)
    finally:
        os.close(fd)
    assert free_bytes(folder) == leave
    return path


def stop_trainers(manager: TrainingManager) -> None:
    for run_id in manager.active_run_ids():
        active = manager._active[run_id]
        if active.popen is not None:
            active.popen.kill()
            active.popen.wait()
    manager.close()


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a metrics file, which must end with a complete line."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"torn last line: {data[-80:]!r}"
    return [json.loads(line) for line in data.splitlines()]


def test_a_checkpoint_that_does_not_fit_fails_clearly_then_resumes_exactly(
    tiny_assets: dict[str, Path], tmp_path: Path, tmpfs: Any
) -> None:
    config = {
        "model": str(tiny_assets["model"]),
        "data": str(tiny_assets["corpus"]),
        **TINY,
        "iters": 8,
        "save_every": 2,
    }
    # The same run without interruption, outside the small disk (sharing its token cache).
    ws, reference = tmp_path / "ws", tmp_path / "reference"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    straight = run_trainer(ws, "-c", tmp_path / "config.yaml", "--run-dir", reference)
    assert straight.returncode == 0, straight.stdout + straight.stderr

    runs = tmpfs(ws / "runs", "30m")
    # Room for one bundle (1.6 MB) and the small files, not for a second one.
    filler = fill(runs, leave=2_400_000 // 4096 * 4096)
    manager = make_manager(ws, trainer_module=REAL_TRAINER)
    try:
        run_id = manager.create_run(config, name="on a small disk")
        wait_until(lambda: manager.state(run_id)[0] == "failed", 240, message="the run to fail")
        run = manager.describe(run_id)
        run_dir = runs / run_id
        ckpt_dir = run_dir / "checkpoints"
        status = run["last"]["status"]
        assert status["state"] == "failed" and status["reason"] == "disk_full"
        assert status["path"] == str(ckpt_dir) and status["step"] == 4
        needed, free = status["needed_bytes"], status["free_bytes"]
        assert 0 < free < needed
        # What is left once the attempt was cleaned up (a partial bundle would hold up to
        # all of it); the lines logged after the status may take a page or two.
        assert 0 <= free - (free_bytes(runs) or 0) <= 4 * 4096
        message = status["message"]
        for part in (f"disk full: {free} bytes free in {ckpt_dir}", f"needs about {needed}"):
            assert part in message
        assert run["reason"] == message
        numbers = {"path": str(ckpt_dir), "needed_bytes": needed, "free_bytes": free}
        assert run["disk_full"] == numbers
        record = wait_until(lambda: (r := manager.store.read_record(run_id)).exit and r)
        assert record.exit["code"] == EXIT_FAILED  # the status said it all
        # The estimate covers the bundle that did fit (1.6 MB) and the previous one stays.
        [bundle] = list_checkpoints(run_dir)
        assert bundle["step"] == 2 and bundle["size"] < needed
        assert read_latest(run_dir)["step"] == 2  # type: ignore[index]
        assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest.json", "step-00000002"]
        import mlx.core as mx

        assert mx.load(str(ckpt_dir / "step-00000002" / "adapters.safetensors"))
        assert "Traceback" not in (run_dir / "stdout.log").read_text()
        whole_lines(run_dir / "metrics.jsonl")

        filler.unlink()
        manager.resume(run_id, confirm=True)
        wait_until(lambda: manager.state(run_id)[0] == "finished", 240, message="the resume")
        rows = whole_lines(run_dir / "metrics.jsonl")
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        a, b = train_losses(reference), train_losses(run_dir)
        assert sorted(a) == sorted(b) == list(range(1, 9))
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step
    finally:
        stop_trainers(manager)


def test_no_room_for_the_final_status_exits_4_and_the_console_records_it(
    tmp_path: Path, tmpfs: Any
) -> None:
    ws = make_workspace(tmp_path / "ws")
    runs = tmpfs(ws / "runs", "8m")
    filler = runs / "filler"
    set_fake_mode(ws, mode="disk_full", fail_at=3, rate=200, filler=str(filler))
    manager = make_manager(ws)
    try:
        run_id = manager.create_run(fake_config(iters=50), name="full")
        run_dir = runs / run_id
        wait_until(lambda: manager.state(run_id)[0] == "failed", 30, message="failed")
        assert free_bytes(runs) == 0
        run = manager.describe(run_id)
        assert run["reason"].startswith(f"disk full (exit code {EXIT_DISK_FULL})")
        assert run["exit"]["code"] == EXIT_DISK_FULL
        assert run["disk_full"] == {"path": str(run_dir), "needed_bytes": None, "free_bytes": 0}
        # No status fitted, and none was left half-written.
        rows = whole_lines(run_dir / "metrics.jsonl")
        assert [r["state"] for r in rows if r["event"] == "status"] == ["running"]
        # run.json could not take the exit: the console holds it, and says so.
        assert json.loads((run_dir / "run.json").read_text())["exit"] is None
        assert manager.store.unsaved(run_id)
        # A write the console cannot do fails as a full disk and changes nothing.
        with pytest.raises(OSError) as refused:
            manager.rename(run_id, "renamed")
        assert is_disk_full(refused.value)
        assert manager.describe(run_id)["name"] == "full"

        filler.unlink()  # space is back: the kept record is written on the next read
        wait_until(
            lambda: (
                manager.state(run_id) and json.loads((run_dir / "run.json").read_text())["exit"]
            ),
            10,
            message="run.json to get the exit",
        )
        saved = json.loads((run_dir / "run.json").read_text())["exit"]
        assert saved["code"] == EXIT_DISK_FULL and saved["free_bytes"] == 0
        assert not manager.store.unsaved(run_id)
        assert manager.state(run_id)[0] == "failed"
        manager.rename(run_id, "renamed")
        assert manager.describe(run_id)["name"] == "renamed"
    finally:
        stop_trainers(manager)


def test_a_full_workspace_serves_reads_answers_writes_507_and_a_new_console_refuses(
    tmp_path: Path, tmpfs: Any
) -> None:
    ws = make_workspace(tmpfs(tmp_path / "ws", "8m"))
    set_fake_mode(ws, mode="fail", fail_at=5, rate=500)
    server = LiveServer(ws, fake_trainer=True).start()
    try:
        response = server.post("/api/runs", {"config": fake_config(iters=50, save_every=2)})
        failed = response.json()["run_id"]
        server.wait_for_state(failed, "failed")
        response = server.post("/api/runs", {"config": fake_config(), "start": False})
        created = response.json()["run_id"]
        remote = new_run_id()  # a trainer elsewhere reporting over HTTP
        event = {"v": 1, "seq": 1, "event": "train", "time": 1.0, "step": 1, "train_loss": 2.0}
        assert server.post(f"/api/callbacks/{remote}", {"events": [event]}).status_code == 200
        fill(ws, leave=0)

        reads = [
            "/api/runs",
            "/api/runs/summary",
            f"/api/runs/{failed}",
            f"/api/runs/{failed}/metrics?max_points=100",
            f"/api/runs/{failed}/logs?tail=20",
            f"/api/runs/{failed}/checkpoints",
            f"/api/runs/{failed}/config",
            "/api/queue",
            "/api/system",
        ]
        for path in reads:
            assert server.get(path).status_code == 200, path

        def refused(response: Any) -> None:
            assert response.status_code == 507, response.text
            body = response.json()
            assert body["field"] is None
            assert f"disk full: 0 bytes free in {ws}" in body["error"], body

        before = sorted(p.name for p in (ws / "runs").iterdir())
        refused(server.post("/api/runs", {"config": fake_config(), "start": False}))
        refused(server.post("/api/runs", {"config": fake_config()}))
        refused(server.patch(f"/api/runs/{failed}", {"name": "renamed"}))
        refused(server.post(f"/api/runs/{failed}/resume", {"confirm": True}))
        refused(server.post(f"/api/runs/{created}/start"))
        refused(server.post("/api/queue/add", {"run_id": created}))
        refused(server.patch("/api/queue", {"stop_on_failure": True}))
        # Events a remote trainer reports: all or nothing, never a torn line.
        metrics = ws / "runs" / remote / "metrics.jsonl"
        kept = metrics.read_bytes()
        late = [{**event, "seq": 2, "note": "x" * 20_000}]
        refused(server.post(f"/api/callbacks/{remote}", {"events": late}))
        assert metrics.read_bytes() == kept
        # Nothing changed, nothing started.
        assert sorted(p.name for p in (ws / "runs").iterdir()) == before
        assert server.run(failed)["state"] == "failed" and server.run(failed)["name"] != "renamed"
        assert server.run(created)["state"] == "created"
        queue = server.get("/api/queue").json()["queue"]
        assert queue["run_ids"] == [] and queue["stop_on_failure"] is False
        # Deleting is how space comes back: it works on a full disk.
        response = server.delete(f"/api/runs/{created}", {"confirm": True})
        assert response.status_code == 200, response.text
        assert "Traceback" not in server.output()
    finally:
        server.stop()

    fill(ws, leave=0, name="filler-2")  # what the deleted run and console.json gave back
    result = subprocess.run(
        [sys.executable, str(ROOT / "start_web_interface.py"), "--workspace", str(ws)]
        + ["--port", "0", "--no-browser"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: the console cannot start: cannot write {ws / 'console.json'}")
    assert f"disk full: 0 bytes free in {ws}" in line
    assert not (ws / "console.json").exists()


def test_stop_reaches_the_trainer_when_run_json_cannot_be_written(
    tmp_path: Path, tmpfs: Any
) -> None:
    ws = make_workspace(tmp_path / "ws")
    runs = tmpfs(ws / "runs", "8m")
    set_fake_mode(ws, rate=50)
    manager = make_manager(ws)
    try:
        run_id = manager.create_run(fake_config(iters=100_000))
        wait_until(lambda: manager.describe(run_id)["step"] >= 2, 30, message="training")
        fill(runs, leave=0)
        assert manager.stop(run_id) == "stopping"  # kept in memory, SIGTERM sent all the same
        assert manager.store.read_record(run_id).stop_requested
        wait_until(lambda: run_id not in manager.active_run_ids(), 30, message="the trainer to end")
    finally:
        stop_trainers(manager)


def padded(path: Path, slack: int) -> Path:
    """A metrics file of one valid event whose last block has exactly `slack` bytes free."""
    row = {"v": 1, "seq": 1, "event": "warning", "time": 1.0, "step": 0, "kind": "data"}
    bare = len(json.dumps({**row, "message": ""})) + 1
    row["message"] = "." * ((-bare - slack) % 4096)
    path.write_text(json.dumps(row) + "\n")
    assert path.stat().st_size % 4096 == (4096 - slack) % 4096
    return path


def test_the_metrics_writer_never_leaves_a_torn_line(tmp_path: Path, tmpfs: Any) -> None:
    disk = tmpfs(tmp_path / "disk", "1m")
    path = padded(disk / "metrics.jsonl", slack=100)
    logger = TrainingMetricsLogger(path)
    filler = fill(disk, leave=0)
    before = path.read_bytes()
    # 100 bytes fit in the last block: the kernel takes them, then refuses the rest.
    with pytest.raises(DiskFull) as info:
        logger.emit("train", 1, train_loss=1.0, note="x" * 300)
    assert path.read_bytes() == before  # the 100 bytes were cut back off
    assert info.value.path == str(disk) and info.value.free_bytes == 0
    assert info.value.needed_bytes is not None and info.value.needed_bytes > 300
    message = "no room for this line: " + "." * 100
    assert logger.final_status(1, "failed", message) is False
    assert path.read_bytes() == before
    filler.unlink()
    assert logger.final_status(1, "failed", message) is True
    logger.close()
    assert [r["seq"] for r in whole_lines(path)] == [1, 2]  # the refused lines took no seq


def test_the_trainer_exits_4_when_not_even_its_failure_fits(
    tmp_path: Path, tmpfs: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.trainer.training_run import report_failure

    disk = tmpfs(tmp_path / "disk", "1m")
    path = padded(disk / "metrics.jsonl", slack=0)
    logger = TrainingMetricsLogger(path)
    filler = fill(disk, leave=0)
    before = path.read_bytes()
    full = DiskFull(disk / "checkpoints", 0, 5000, "checkpoint step-00000003")
    assert report_failure(logger, 3, full, disk) == EXIT_DISK_FULL
    assert path.read_bytes() == before
    [line] = capsys.readouterr().err.splitlines()  # one line, no traceback
    assert line.startswith(f"error: disk full: 0 bytes free in {disk / 'checkpoints'}")
    filler.unlink()
    assert report_failure(logger, 3, full, disk) == EXIT_FAILED
    logger.close()
    status = whole_lines(path)[-1]
    assert status["state"] == "failed" and status["message"] == str(full)
    assert status["reason"] == "disk_full" and status["path"] == str(disk / "checkpoints")
    assert (status["needed_bytes"], status["free_bytes"]) == (5000, 0)


def test_mlx_write_errors_count_as_disk_full_only_on_a_full_disk(
    tmp_path: Path, tmpfs: Any
) -> None:
    import mlx.core as mx

    disk = tmpfs(tmp_path / "disk", "1m")
    fill(disk, leave=4 * 4096)
    with pytest.raises(DiskFull) as info, disk_errors(disk, 300_000, "the weights"):
        mx.save_safetensors(str(disk / "w.safetensors"), {"w": mx.zeros((65_536,))})
    assert "Unable to write" in str(info.value.__cause__)
    assert "the weights needs about 300000 bytes" in str(info.value)
    # The same words with room to spare are some other I/O error.
    with pytest.raises(RuntimeError), disk_errors(tmp_path, 10, "x"):
        raise RuntimeError("[write] Unable to write 10 bytes to file.")


@pytest.mark.browser
def test_the_pages_show_a_run_that_failed_for_lack_of_space(
    page: Any, tmp_path: Path, tmpfs: Any
) -> None:
    from playwright.sync_api import expect

    from tests.browser import assert_no_js_errors, signed_in

    ws = make_workspace(tmp_path / "ws")
    runs = tmpfs(ws / "runs", "8m")
    # A trainer from the command line whose checkpoint did not fit: its status has the numbers.
    refused = runs / new_run_id()
    refused.mkdir()
    checkpoints = refused / "checkpoints"
    message = f"disk full: 786432 bytes free in {checkpoints}; checkpoint step-00000004 needs more"
    rows = [
        {"event": "status", "step": 0, "state": "running", "message": "started"},
        {"event": "status", "step": 4, "state": "failed", "message": message}
        | {"reason": "disk_full", "needed_bytes": 1649622, "free_bytes": 786432}
        | {"path": str(checkpoints)},
    ]
    lines = [json.dumps({"v": 1, "seq": i, "time": 1.0, **r}) for i, r in enumerate(rows, 1)]
    (refused / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    set_fake_mode(ws, mode="disk_full", fail_at=3, rate=200, filler=str(runs / "filler"))
    with LiveServer(ws, fake_trainer=True) as server:
        full = server.post("/api/runs", {"config": fake_config(iters=50)}).json()["run_id"]
        server.wait_for_state(full, "failed")
        signed_in(page, server)
        expect(page.locator(f'tr[data-run-id="{refused.name}"] .state-note')).to_have_text(
            "disk full: 768 KB free, ~1.6 MB needed"
        )
        expect(page.locator(f'tr[data-run-id="{full}"] .state-note')).to_have_text(
            "disk full: 0 B free"
        )
        page.goto(f"{server.base_url}runs/{refused.name}")
        facts = page.locator("#run-reason .disk-full")
        expect(facts).to_contain_text(str(checkpoints))
        expect(facts).to_contain_text("768 KB (786,432 bytes)")
        expect(facts).to_contain_text("about 1.6 MB (1,649,622 bytes)")
        page.goto(f"{server.base_url}runs/{full}")
        expect(page.locator("#run-reason")).to_contain_text("disk full (exit code 4)")
        facts = page.locator("#run-reason .disk-full")
        expect(facts).to_contain_text("not even the final status")
        expect(facts).to_contain_text("no checkpoint was saved")
        assert_no_js_errors(page)
