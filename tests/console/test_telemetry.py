"""Machine telemetry without MLX."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import wait_until
from training.console.telemetry import mlx_device, process_stats, system_snapshot


def test_snapshot(tmp_path):
    snap = system_snapshot(tmp_path)
    assert snap["memory"]["total"] > 0 and 0 <= snap["memory"]["percent"] <= 100
    assert snap["disk"]["path"] == str(tmp_path) and snap["disk"]["free"] > 0
    assert snap["cpu"]["count"] >= 1 and "swap" in snap
    assert snap["platform"]["python"].startswith(f"{sys.version_info[0]}.")


def test_missing_disk_path_is_reported_not_raised(tmp_path):
    assert "error" in system_snapshot(tmp_path / "gone")["disk"]


def test_process_stats():
    stats = process_stats(os.getpid())
    assert stats["rss"] > 0 and stats["pid"] == os.getpid()
    assert process_stats(2**22 + 12345) is None


def test_a_busy_process_reports_its_cpu_on_later_samples():
    """Each call compares with the previous one for the same pid (a fresh psutil.Process
    per call would always say 0.0)."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        first = process_stats(busy.pid)
        assert first is not None and first["cpu_percent"] >= 0
        stats = wait_until(
            lambda: (s := process_stats(busy.pid)) and s["cpu_percent"] > 0 and s,
            20,
            message="a busy process to report its CPU use",
        )
        assert stats["pid"] == busy.pid
    finally:
        busy.kill()
        busy.wait()
    assert process_stats(busy.pid) is None


def test_mlx_device_is_inferred_without_importing_mlx(tmp_path):
    info = mlx_device()
    assert info["device"] in ("cpu", "gpu (Metal)", "gpu (CUDA)")
    assert info["versions"]["mlx"]
    # In a fresh interpreter: other tests load MLX into this one.
    probe = (
        "import sys\n"
        "from training.console.telemetry import mlx_device, system_snapshot\n"
        f"mlx_device(); system_snapshot({str(tmp_path)!r})\n"
        "sys.exit(1 if any(m.split('.')[0] in ('mlx', 'mlx_lm') for m in sys.modules) else 0)"
    )
    assert (
        subprocess.run(
            [sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[2]
        ).returncode
        == 0
    )
