"""Machine telemetry for the console: CPU, memory, swap, the workspace's disk, platform.

psutil only: the console never imports MLX, so the MLX device is inferred from the
installed packages and the platform, and MLX's own memory figures (peak_memory) come
from the trainer's `train` events.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import psutil

# cpu_percent(interval=None) compares with the previous call: prime it once at import.
psutil.cpu_percent(interval=None)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def mlx_device() -> dict[str, Any]:
    """What MLX would run on here, without importing it (that costs a second or more)."""
    versions = {name: _version(name) for name in ("mlx", "mlx-metal", "mlx-cuda", "mlx-lm")}
    if sys.platform == "darwin" and platform.machine() == "arm64":
        kind = "gpu (Metal)"
    elif versions.get("mlx-cuda"):
        kind = "gpu (CUDA)"
    else:
        kind = "cpu"
    return {"device": kind, "versions": versions}


def process_stats(pid: int) -> dict[str, Any] | None:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return {
                "pid": pid,
                "rss": proc.memory_info().rss,
                "cpu_percent": proc.cpu_percent(interval=None),
                "threads": proc.num_threads(),
            }
    except psutil.Error:
        return None


def system_snapshot(workspace: str | Path) -> dict[str, Any]:
    mem = psutil.virtual_memory()
    swap = psutil.swap_memory()
    try:
        disk = psutil.disk_usage(str(workspace))
        disk_info: dict[str, Any] = {
            "path": str(workspace),
            "total": disk.total,
            "used": disk.used,
            "free": disk.free,
            "percent": disk.percent,
        }
    except OSError as exc:
        disk_info = {"path": str(workspace), "error": exc.strerror or str(exc)}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "time": time.time(),
        "cpu": {
            "percent": psutil.cpu_percent(interval=None),
            "count": psutil.cpu_count(),
            "load_average": list(load) if load else None,
        },
        "memory": {
            "total": mem.total,
            "available": mem.available,
            "used": mem.used,
            "percent": mem.percent,
        },
        "swap": {"total": swap.total, "used": swap.used, "percent": swap.percent},
        "disk": disk_info,
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
        "mlx": mlx_device(),
    }
