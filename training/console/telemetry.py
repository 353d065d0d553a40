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
import threading
import time
from pathlib import Path
from typing import Any

import psutil

# cpu_percent(interval=None) compares with the previous call: prime it once at import.
psutil.cpu_percent(interval=None)

# A process's cpu_percent(interval=None) compares with the previous call on the same
# psutil.Process object (a new one always says 0.0), so trainers' objects are kept.
MAX_TRACKED_PROCESSES = 64
_processes: dict[int, psutil.Process] = {}
_processes_lock = threading.Lock()


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


def _tracked(pid: int) -> tuple[psutil.Process, bool]:
    """The kept psutil.Process for `pid` and whether it is new (a reused pid is a new
    process: is_running() compares start times)."""
    with _processes_lock:
        proc = _processes.get(pid)
        if proc is not None and proc.is_running():
            return proc, False
        proc = psutil.Process(pid)
        if len(_processes) >= MAX_TRACKED_PROCESSES:
            for old in [p for p, known in _processes.items() if not known.is_running()]:
                del _processes[old]
            while len(_processes) >= MAX_TRACKED_PROCESSES:
                del _processes[next(iter(_processes))]
        _processes[pid] = proc
        return proc, True


def process_stats(pid: int) -> dict[str, Any] | None:
    """Memory and CPU of one process. `cpu_percent` is its use since the previous call
    for this pid (100 is one core busy); on the first call, its average since it started."""
    try:
        proc, new = _tracked(pid)
        with proc.oneshot():
            cpu = proc.cpu_percent(interval=None)  # on a new object: 0.0, and primes it
            if new:
                times = proc.cpu_times()
                lifetime = time.time() - proc.create_time()
                cpu = 100.0 * (times.user + times.system) / lifetime if lifetime > 0 else 0.0
            return {
                "pid": pid,
                "rss": proc.memory_info().rss,
                "cpu_percent": round(cpu, 1),
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
