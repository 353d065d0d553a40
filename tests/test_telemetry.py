"""Machine telemetry without MLX."""

from __future__ import annotations

import os
import sys

from training.telemetry import mlx_device, process_stats, system_snapshot


def test_snapshot(tmp_path):
    snap = system_snapshot(tmp_path)
    assert snap["memory"]["total"] > 0 and 0 <= snap["memory"]["percent"] <= 100
    assert snap["disk"]["path"] == str(tmp_path) and snap["disk"]["free"] > 0
    assert snap["cpu"]["count"] >= 1 and "swap" in snap
    assert snap["platform"]["python"].startswith(f"{sys.version_info[0]}.")
    assert "mlx" not in sys.modules


def test_missing_disk_path_is_reported_not_raised(tmp_path):
    assert "error" in system_snapshot(tmp_path / "gone")["disk"]


def test_process_stats():
    stats = process_stats(os.getpid())
    assert stats["rss"] > 0 and stats["pid"] == os.getpid()
    assert process_stats(2**22 + 12345) is None


def test_mlx_device_is_inferred_without_importing_mlx():
    info = mlx_device()
    assert info["device"] in ("cpu", "gpu (Metal)", "gpu (CUDA)")
    assert info["versions"]["mlx"]
    assert "mlx" not in sys.modules
