"""RunStore: the console's data provider for run folders (DESIGN.md "Run folder contract").

Web handlers never open a run's files themselves; they ask this store, as TensorBoard
plugins ask theirs. No MLX here. Every file of a run folder is read through
contract/reading.py: no link followed, only regular files, bounded reads; a file that
cannot be read that way raises DamagedFile (an OSError naming the file).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from training.contract.checkpoints import list_checkpoints
from training.contract.config import ConfigError, parse_yaml_text
from training.contract.disk import disk_full_error, is_disk_full
from training.contract.errors import RunConflict
from training.contract.files import append_bytes, write_atomic
from training.contract.layout import (
    RunNotFound,
    RunPaths,
    RunRecord,
    Workspace,
    is_valid_run_id,
    read_record,
    write_record,
)
from training.contract.reading import (
    MAX_RECORD_BYTES,
    DamagedFile,
    open_file,
    opened,
    read_text,
    split_path,
)
from training.metrics.csv_export import MetricsCsv
from training.metrics.store import MetricsCache, RunMetrics
from training.metrics.summary import MetricsSummary

MAX_NAME_LENGTH = 200
# Seconds between attempts to write a run.json the disk refused (RunStore.keep_unsaved).
UNSAVED_RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
# The log tail reads at most this much from the end of stdout.log (5000 lines of a
# normal log fit many times over; one endless line does not cost more).
MAX_LOG_TAIL_BYTES = 8 << 20


class RunStore:
    """Everything the console reads or writes in run folders, in one place.

    Web handlers never open files themselves; they ask this store (and the
    TrainingManager for anything involving processes), as TensorBoard plugins ask
    their data provider.
    """

    def __init__(self, workspace: Workspace, metrics_capacity: int = 32):
        self.workspace = workspace
        self.metrics_cache = MetricsCache(metrics_capacity, workspace.metrics_index_dir)
        self._summaries: dict[Path, MetricsSummary] = {}
        self._summaries_lock = threading.Lock()
        self._config_cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}
        # run.json records the disk refused: run_id -> (record, when to try again).
        self._unsaved: dict[str, tuple[RunRecord, float]] = {}
        self._unsaved_lock = threading.Lock()

    def paths(self, run_id: str) -> RunPaths:
        """The run's paths; RunNotFound for an invalid run_id, a missing folder or a
        symlinked one (Workspace.existing_run)."""
        return self.workspace.existing_run(run_id)

    def run_ids(self) -> list[str]:
        """Every run folder, newest first (run_ids sort by creation time)."""
        try:
            entries = list(os.scandir(self.workspace.runs_dir))
        except FileNotFoundError:
            return []
        # Symlinked folders are no runs (Workspace.existing_run).
        ids = [
            e.name for e in entries if e.is_dir(follow_symlinks=False) and is_valid_run_id(e.name)
        ]
        return sorted(ids, reverse=True)

    def read_record(self, run_id: str) -> RunRecord:
        unsaved = self._unsaved_record(run_id)
        return unsaved if unsaved is not None else read_record(self.paths(run_id))

    def write_record(self, record: RunRecord) -> None:
        """Replace run.json; refused (RunConflict, 409) for a record read from a damaged
        run.json: the console never writes over what it could not read."""
        if record.damaged:
            raise RunConflict(
                f"run {record.run_id} cannot be changed: {record.damaged}; repair or delete it"
            )
        write_record(self.paths(record.run_id), record)
        with self._unsaved_lock:
            self._unsaved.pop(record.run_id, None)  # the file holds the newest record now

    def keep_unsaved(self, record: RunRecord) -> None:
        """A record the disk refused (run.json on a full disk) that must not be lost, such
        as a trainer's exit: read from memory from now on, and written again on a later
        read once there is space (at most every UNSAVED_RETRY_SECONDS)."""
        with self._unsaved_lock:
            self._unsaved[record.run_id] = (
                _copy(record),
                time.monotonic() + UNSAVED_RETRY_SECONDS,
            )

    def unsaved(self, run_id: str) -> bool:
        """Whether the run's newest record lives in memory only."""
        with self._unsaved_lock:
            return run_id in self._unsaved

    def _unsaved_record(self, run_id: str) -> RunRecord | None:
        with self._unsaved_lock:
            entry = self._unsaved.get(run_id)
            if entry is None:
                return None
            record, next_try = entry
            if time.monotonic() >= next_try:
                try:
                    write_record(self.paths(run_id), record)
                except OSError:
                    self._unsaved[run_id] = (record, time.monotonic() + UNSAVED_RETRY_SECONDS)
                except RunNotFound:
                    del self._unsaved[run_id]  # deleted meanwhile
                    raise
                else:
                    del self._unsaved[run_id]
                    log.info("run %s: run.json written (it was kept in memory)", run_id)
            return _copy(record)

    def create_run(self, record: RunRecord, config_yaml: str | None) -> RunPaths:
        """Create the run folder with config.yaml and run.json, all or nothing: written
        into a hidden temp folder in runs/, then renamed into place. (A remote run has
        no config.yaml: its trainer holds it.)"""
        runs = self.workspace.runs_dir
        runs.mkdir(parents=True, exist_ok=True)
        final = self.workspace.run(record.run_id)
        tmp = Path(tempfile.mkdtemp(dir=runs, prefix=f".new-{record.run_id}-"))
        try:
            staged = RunPaths(tmp)
            if config_yaml is not None:
                write_atomic(staged.config, config_yaml)
            write_record(staged, record)
            os.chmod(tmp, 0o755)
            # rename() refuses to replace a non-empty folder: a clash fails loudly.
            os.rename(tmp, final.root)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            full = disk_full_error(exc, runs)  # named by runs/, not the temp folder now gone
            if full is not None:
                raise full from exc
            raise
        return final

    def delete_run(self, run_id: str) -> None:
        """Remove a run folder: renamed away first, so a crash never leaves half a run."""
        paths = self.paths(run_id)
        self.metrics_cache.drop(paths.metrics)
        with self._summaries_lock:
            self._summaries.pop(paths.metrics, None)
        with self._unsaved_lock:
            self._unsaved.pop(run_id, None)
        try:
            trash = Path(
                tempfile.mkdtemp(dir=self.workspace.runs_dir, prefix=f".deleted-{run_id}-")
            )
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # No room for a new folder (deleting is how space comes back): a rename
            # within runs/ needs none.
            trash = self.workspace.runs_dir / f".deleted-{run_id}-{secrets.token_hex(4)}"
            os.rename(paths.root, trash)
        else:
            os.rename(paths.root, trash / run_id)
        shutil.rmtree(trash, ignore_errors=True)

    def config_text(self, run_id: str) -> str:
        """config.yaml's text ("" when there is none); DamagedFile when it cannot be read
        safely (a link, not a regular file, over 4 MiB, not UTF-8)."""
        try:
            return read_text(self.paths(run_id).root, CONFIG_FILE, MAX_RECORD_BYTES)
        except FileNotFoundError:
            return ""

    def config(self, run_id: str) -> tuple[str, dict[str, Any]]:
        """config.yaml as text and as a mapping; DamagedFile when it cannot be read or does
        not hold a YAML mapping."""
        text = self.config_text(run_id)
        try:
            return text, parse_yaml_text(text) if text else {}
        except ConfigError as exc:
            raise DamagedFile(CONFIG_FILE, f"is not a YAML mapping of settings: {exc}") from None

    def config_values(self, run_id: str) -> dict[str, Any]:
        """config.yaml as a raw mapping ({} when missing or unreadable), cached by mtime:
        the runs list reads every run's model and data names."""
        path = self.paths(run_id).config
        try:
            st = path.lstat()
        except FileNotFoundError:
            return {}
        if not stat.S_ISREG(st.st_mode):
            return {}  # a link or a FIFO: config_text says why when asked
        key = (st.st_mtime_ns, st.st_size)
        cached = self._config_cache.get(path)
        if cached and cached[0] == key:
            return cached[1]
        try:
            values = self.config(run_id)[1]
        except OSError:
            values = {}
        self._config_cache[path] = (key, values)
        return values

    def metrics(self, run_id: str) -> RunMetrics:
        """The run's metrics index, refreshed to the end of metrics.jsonl."""
        return self.metrics_cache.get(self.paths(run_id).metrics)

    def metrics_csv(self, run_id: str) -> MetricsCsv:
        """The run's metrics.jsonl as CSV, streamed (its keys read first: DamagedFile now,
        not halfway through a download)."""
        paths = self.paths(run_id)
        return MetricsCsv(paths.metrics, paths.root)

    def summary(self, run_id: str) -> MetricsSummary:
        """The newest row of each kind and the last seq, from the tail of metrics.jsonl
        (no index: what the runs list and derived states need)."""
        path = self.paths(run_id).metrics
        with self._summaries_lock:
            summary = self._summaries.get(path)
            if summary is None:
                summary = self._summaries[path] = MetricsSummary(path)
        summary.refresh()
        return summary

    def append_events(self, run_id: str, events: list[dict[str, Any]]) -> tuple[int, int]:
        """Append a remote trainer's events (seq above the file's last, in order) as one
        write. Returns (appended, skipped as already present)."""
        last = self.summary(run_id).last_seq
        fresh: list[dict[str, Any]] = []
        for event in sorted(events, key=lambda e: e["seq"]):
            if event["seq"] > last:
                fresh.append(event)
                last = event["seq"]
        if fresh:
            blob = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in fresh)
            # Never through a link: a remote run's metrics.jsonl could point anywhere.
            append_bytes(self.paths(run_id).metrics, blob.encode("utf-8"))
        return len(fresh), len(events) - len(fresh)

    def log_tail(self, run_id: str, lines: int = 100) -> list[str]:
        """The last lines of stdout.log; DamagedFile when it cannot be read safely."""
        paths = self.paths(run_id)
        return tail_lines(paths.stdout, lines, root=paths.root)

    def checkpoints(self, run_id: str) -> list[dict[str, Any]]:
        return list_checkpoints(self.paths(run_id).root)

    def close(self) -> None:
        self.metrics_cache.close()
        with self._unsaved_lock:
            for run_id, (record, _) in list(self._unsaved.items()):
                try:  # a last try: what stays in memory ends with this console
                    write_record(self.paths(run_id), record)
                except (OSError, RunNotFound) as exc:
                    log.warning("run %s: run.json could not be written: %s", run_id, exc)
                else:
                    del self._unsaved[run_id]


def _copy(record: RunRecord) -> RunRecord:
    """A record callers may change without changing the one kept."""
    return RunRecord.from_json(record.to_json())


def tail_lines(
    path: Path,
    lines: int,
    block: int = 64 * 1024,
    root: Path | None = None,
    max_bytes: int = MAX_LOG_TAIL_BYTES,
) -> list[str]:
    """The last `lines` lines of a text file, reading backwards from its end, at most
    `max_bytes` of it. The file is reached from `root` (default: its folder) without
    following links; DamagedFile when it is not a regular file."""
    if lines <= 0:
        return []
    folder, rel = split_path(path, root)
    try:
        fd = open_file(folder, rel)
    except FileNotFoundError:
        return []
    chunks: list[bytes] = []
    with opened(fd):
        end = pos = os.fstat(fd).st_size
        newlines = 0
        while pos > 0 and newlines <= lines and end - pos < max_bytes:
            step = min(block, pos, max_bytes - (end - pos))
            pos -= step
            chunk = os.pread(fd, step, pos)
            chunks.append(chunk)
            newlines += chunk.count(b"\n")
    text = b"".join(reversed(chunks)).decode("utf-8", errors="replace")
    # Progress bars rewrite a line with \r: show its last state.
    if text.endswith("\n"):
        text = text[:-1]
    out = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    return out[-lines:]
