"""run.json records, derived run states, atomic run-folder creation, listing, logs and
checkpoint bundles."""

from __future__ import annotations

import json
import os

import pytest

from tests.contract.test_reading import within
from training.console.run_state import derive_state, exit_reason
from training.console.run_store import RunStore, tail_lines
from training.contract.checkpoints import list_checkpoints
from training.contract.errors import RunConflict
from training.contract.files import append_bytes
from training.contract.layout import (
    RunNotFound,
    RunPaths,
    RunRecord,
    Workspace,
    read_record,
    write_record,
)
from training.contract.reading import DamagedFile


@pytest.fixture
def store(tmp_path):
    return RunStore(Workspace(tmp_path))


def record(run_id="20260101-000000-aaaaaa", **kw):
    return RunRecord(run_id, "a run", 1.0, **kw)


def test_create_run_is_all_or_nothing(store, tmp_path):
    paths = store.create_run(record(), "model: m\n")
    assert paths.config.read_text() == "model: m\n"
    assert store.read_record(paths.run_id).name == "a run"
    # A clash fails and leaves no temp folder behind.
    with pytest.raises(OSError):
        store.create_run(record(), "model: other\n")
    assert paths.config.read_text() == "model: m\n"
    assert [p.name for p in store.workspace.runs_dir.iterdir()] == [paths.run_id]


def test_record_round_trip_and_unknown_keys(store):
    paths = store.create_run(record(pid=12, cmdline=["x"]), "")
    data = json.loads(paths.run_json.read_text())
    data["from_a_newer_console"] = True
    paths.run_json.write_text(json.dumps(data))
    rec = read_record(paths)
    assert rec.pid == 12 and rec.cmdline == ["x"]


def test_corrupt_or_missing_run_json_still_lists_the_run(store):
    paths = store.create_run(record(), "")
    paths.run_json.write_text("{broken")
    assert read_record(paths).run_id == paths.run_id
    paths.run_json.unlink()
    rec = read_record(paths)
    # Launched from the trainer's command line: started, no pid; not a remote trainer.
    assert (rec.state, rec.pid, rec.remote) == ("starting", None, False)
    assert derive_state(rec, None, alive=False)[0] == "interrupted"
    assert derive_state(rec, {"state": "running"}, alive=True)[0] == "running"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"exit": "boom"}', "exit must be an object or null"),
        ('{"pid": "12"}', "pid must be a process id or null"),
        ('{"pid": 12.5, "exit": []}', "pid must be"),
        ('{"created": "yesterday"}', "created must be a number"),
        ('{"resumes": {"a": 1}}', "resumes must be a list of objects"),
        ('{"cmdline": [1, 2]}', "cmdline must be a list of text"),
        ('{"stop_requested": "yes"}', "stop_requested must be true or false"),
        ('{"start_seq": -1}', "start_seq must be"),
        ('{"name": 7}', "name must be text"),
        ("[1, 2]", "does not hold a JSON object"),
        ("{broken", "not valid JSON"),
        ("[" * 50_000, "not valid JSON"),
        (b"\xff\xfe garbage", "not UTF-8"),
    ],
)
def test_a_run_json_that_cannot_be_trusted_reads_as_damaged(store, content, says):
    paths = store.create_run(record(), "")
    data = content if isinstance(content, bytes) else content.encode()
    paths.run_json.write_bytes(data)
    rec = read_record(paths)
    assert rec.damaged and says in rec.damaged and "run.json" in rec.damaged
    # Nothing of it is trusted: no process, no exit; the console never writes over it.
    assert (rec.run_id, rec.pid, rec.exit, rec.resumes) == (paths.run_id, None, None, [])
    assert "damaged" not in rec.to_json()
    with pytest.raises(RunConflict, match="cannot be changed"):
        store.write_record(rec)
    assert paths.run_json.read_bytes() == data


def test_a_run_json_that_is_no_regular_file_reads_as_damaged(store, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"name": "OUTSIDE-MARKER", "pid": 1}))
    paths = store.create_run(record(), "")
    paths.run_json.unlink()
    paths.run_json.symlink_to(secret)
    rec = read_record(paths)
    assert "symbolic link" in rec.damaged and rec.name == paths.run_id and rec.pid is None
    paths.run_json.unlink()
    os.mkfifo(paths.run_json)
    assert "FIFO" in read_record(paths).damaged
    paths.run_json.unlink()
    paths.run_json.mkdir()
    assert "folder" in read_record(paths).damaged
    # A sound name and creation time survive other fields' damage (the list shows them).
    paths.run_json.rmdir()
    paths.run_json.write_text(json.dumps({"name": "kept", "created": 5.0, "exit": 1}))
    rec = read_record(paths)
    assert (rec.name, rec.created) == ("kept", 5.0) and rec.damaged


def test_write_record_is_atomic(store):
    paths = store.create_run(record(), "")
    rec = read_record(paths)
    rec.name = "renamed"
    write_record(paths, rec)
    assert read_record(paths).name == "renamed"
    assert not [p for p in paths.root.iterdir() if p.name.startswith(".")]


def test_run_ids_newest_first_and_invalid_ids(store):
    for rid in ("20260101-000000-aaaaaa", "20260102-000000-bbbbbb"):
        store.create_run(record(rid), "")
    (store.workspace.runs_dir / ".new-tmp").mkdir()
    assert store.run_ids() == ["20260102-000000-bbbbbb", "20260101-000000-aaaaaa"]
    for bad in ("..", "../x", "a/b", "", "x" * 300):
        with pytest.raises(RunNotFound):
            store.paths(bad)
    with pytest.raises(RunNotFound):
        store.paths("20990101-000000-cccccc")


def test_delete_run(store):
    paths = store.create_run(record(), "")
    store.delete_run(paths.run_id)
    assert not paths.root.exists()
    assert store.run_ids() == []


def test_a_symlinked_run_folder_is_no_run(store, tmp_path):
    """A symlink in runs/ (to a folder outside the workspace, or even to another run) is
    never listed, read or deleted; a runs/ that is itself a link is fine."""
    kept = store.create_run(record("20260101-000000-aaaaaa"), "iters: 5\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    write_record(RunPaths(outside), record("20260102-000000-bbbbbb"))
    (outside / "precious.txt").write_text("not the console's\n")
    runs = store.workspace.runs_dir
    (runs / "20260102-000000-bbbbbb").symlink_to(outside)
    (runs / "20260103-000000-cccccc").symlink_to(kept.root)

    assert store.run_ids() == [kept.run_id]
    for linked in ("20260102-000000-bbbbbb", "20260103-000000-cccccc"):
        for call in (store.paths, store.read_record, store.delete_run):
            with pytest.raises(RunNotFound):
                call(linked)
    assert (outside / "precious.txt").read_text() == "not the console's\n"
    assert store.read_record(kept.run_id).name == "a run"

    elsewhere = RunStore(Workspace(tmp_path / "linked"))
    elsewhere.workspace.root.mkdir()
    elsewhere.workspace.runs_dir.symlink_to(runs)
    assert elsewhere.run_ids() == [kept.run_id]
    assert elsewhere.read_record(kept.run_id).name == "a run"


STATUS = {"seq": 9, "event": "status", "state": "running"}


@pytest.mark.parametrize(
    "rec,status,alive,expected",
    [
        (record(state="created"), None, False, "created"),
        (record(state="queued"), None, False, "queued"),
        (record(state="starting", pid=1), None, True, "starting"),
        (record(state="starting", pid=1), STATUS, True, "running"),
        (record(state="stopping", pid=1, stop_requested=True), STATUS, True, "stopping"),
        (record(pid=1), {**STATUS, "state": "finished"}, False, "finished"),
        (record(pid=1), {**STATUS, "state": "stopped"}, True, "stopping"),  # still exiting
        (record(pid=1), STATUS, False, "interrupted"),
        (record(pid=1), None, False, "interrupted"),
        (record(pid=1, exit={"code": 0}, stop_requested=True), None, False, "stopped"),
        (record(pid=1, exit={"code": 0}), None, False, "finished"),
        (record(pid=1, exit={"code": 1}), None, False, "failed"),
        (record(pid=1, exit={"code": 2}), None, False, "failed"),
        (record(pid=1, exit={"code": 3}), None, False, "diverged"),
        (record(pid=1, exit={"code": None, "signal": "SIGKILL"}), None, False, "failed"),
    ],
)
def test_derived_states(rec, status, alive, expected):
    assert derive_state(rec, status, alive)[0] == expected


def test_remote_runs_go_stale():
    rec = record(remote=True)
    assert derive_state(rec, STATUS, False, now=100.0, last_event_time=90.0)[0] == "running"
    assert derive_state(rec, STATUS, False, now=1000.0, last_event_time=90.0)[0] == "interrupted"


def test_exit_reasons():
    assert "out of memory" in exit_reason(None, "SIGKILL", we_killed=False)
    assert "grace period" in exit_reason(None, "SIGKILL", we_killed=True)
    assert "bad input" in exit_reason(2, None, False)
    assert "diverged" in exit_reason(3, None, False)


def test_tail_lines(tmp_path):
    path = tmp_path / "stdout.log"
    path.write_text("".join(f"line {i}\n" for i in range(10_000)) + "progress 1\rprogress 2\n")
    assert tail_lines(path, 3) == ["line 9998", "line 9999", "progress 2"]
    assert tail_lines(tmp_path / "missing", 3) == []


def test_checkpoint_bundles_are_read_defensively(store):
    paths = store.create_run(record(), "")
    for step in (10, 20):
        folder = paths.checkpoints / f"step-{step:08d}"
        folder.mkdir(parents=True)
        (folder / "state.json").write_text(json.dumps({"step": step}))
        (folder / "weights.safetensors").write_bytes(b"0" * 100)
    (paths.checkpoints / "step-00000030").mkdir()  # half-written: no state.json
    (paths.checkpoints / ".tmp-step-00000040").mkdir()
    (paths.checkpoints / "latest.json").write_text(json.dumps({"bundle": "step-00000020"}))
    bundles = list_checkpoints(paths.root)
    assert [b["step"] for b in bundles] == [10, 20]
    assert bundles[1]["is_latest"] and bundles[0]["size"] >= 100


def test_append_events_skips_retries(store):
    paths = store.create_run(record(remote=True), None)
    events = [{"seq": i, "event": "train", "step": i} for i in (1, 2, 3)]
    assert store.append_events(paths.run_id, events) == (3, 0)
    assert store.append_events(paths.run_id, events[1:] + [{"seq": 4, "event": "train"}]) == (1, 2)
    assert store.metrics(paths.run_id).last_seq == 4
    assert os.path.getsize(paths.metrics) > 0


def test_logs_and_appends_never_go_through_links_or_fifos(store, tmp_path):
    secret = tmp_path / "secret.log"
    secret.write_text("OUTSIDE-MARKER\n")
    paths = store.create_run(record(), "")
    paths.stdout.symlink_to(secret)
    with pytest.raises(DamagedFile, match="stdout.log is a symbolic link"):
        store.log_tail(paths.run_id)
    paths.stdout.unlink()
    os.mkfifo(paths.stdout)
    with pytest.raises(DamagedFile, match="stdout.log is a FIFO"):
        within(5, lambda: store.log_tail(paths.run_id))
    paths.metrics.symlink_to(secret)
    with pytest.raises(DamagedFile):
        append_bytes(paths.metrics, b'{"seq": 1}\n')
    paths.metrics.unlink()
    os.mkfifo(paths.metrics)
    with pytest.raises(DamagedFile):
        within(5, lambda: append_bytes(paths.metrics, b'{"seq": 1}\n'))
    assert secret.read_text() == "OUTSIDE-MARKER\n"
    # config.yaml: text and mapping, or a DamagedFile naming it.
    paths.config.write_text("- not\n- a mapping\n")
    with pytest.raises(DamagedFile, match="config.yaml is not a YAML mapping"):
        store.config(paths.run_id)
    assert store.config_values(paths.run_id) == {}
    paths.config.write_bytes(b"model: caf\xe9\n")
    with pytest.raises(DamagedFile, match="not UTF-8"):
        store.config_text(paths.run_id)


def test_the_log_tail_reads_a_bounded_end(tmp_path):
    path = tmp_path / "stdout.log"
    path.write_bytes(b"first\n" + b"x" * 100_000 + b"\nlast\n")
    assert tail_lines(path, 2, block=4096, max_bytes=10_000) == ["x" * 9_994, "last"]
