"""Use OpenBLAS for the Linux CPU wheel of MLX.

The `mlx[cpu]` wheel links a slow reference BLAS; preloading the system's OpenBLAS makes
matmuls (and so training) several times faster. A library must be preloaded before the
process starts, so the trainer re-executes itself once with LD_PRELOAD set (os.execv keeps
the pid, which the console has recorded). MLX_CPT_OPENBLAS=0 turns this off.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

OPT_OUT_ENV = "MLX_CPT_OPENBLAS"
# Set on the re-executed process so a preload the loader ignored can never loop.
_REEXEC_MARK = "MLX_CPT_OPENBLAS_REEXEC"
OPENBLAS_PATHS: tuple[str, ...] = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
)


def find_openblas(candidates: tuple[str, ...] = OPENBLAS_PATHS) -> str | None:
    for path in candidates:
        if Path(path).is_file():
            return path
    return None


def preload_command(
    argv: list[str], env: dict[str, str], platform: str = sys.platform
) -> tuple[list[str], dict[str, str]] | None:
    """The (argv, env) to re-execute with OpenBLAS preloaded, or None when not wanted."""
    if platform != "linux" or env.get(OPT_OUT_ENV, "1") == "0" or env.get(_REEXEC_MARK):
        return None
    lib = find_openblas()
    if lib is None:
        return None
    current = env.get("LD_PRELOAD", "")
    if lib in current.replace(" ", ":").split(":"):
        return None
    new_env = dict(env)
    new_env["LD_PRELOAD"] = f"{lib}:{current}" if current else lib
    new_env[_REEXEC_MARK] = "1"
    local = local_ranks(env)
    if local > 1 and "OPENBLAS_NUM_THREADS" not in env:
        # Ranks sharing one machine would oversubscribe its cores (measured 4x slower).
        new_env["OPENBLAS_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // local))
    return argv, new_env


def local_ranks(env: dict[str, str]) -> int:
    """How many ranks of an `mlx.launch --backend ring` job run on this machine (1 if none)."""
    hostfile = env.get("MLX_HOSTFILE")
    if not hostfile or "MLX_RANK" not in env:
        return 1
    try:
        hosts = json.loads(Path(hostfile).read_text())
    except (OSError, ValueError):
        return 1
    if not isinstance(hosts, list):
        return 1
    addresses = [str(h[0] if isinstance(h, list) and h else h) for h in hosts]
    return max(1, sum(a.startswith(("127.", "localhost", "[::1]")) for a in addresses))


def reexec_with_openblas() -> None:
    """Replace this process with itself plus OpenBLAS preloaded; returns when not needed.

    Call first thing in `__main__`, before MLX is imported. Uses sys.orig_argv so
    `python -m training.continued_pretraining ...` comes back exactly as launched.
    """
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    plan = preload_command(argv, dict(os.environ))
    if plan is None:
        return
    new_argv, new_env = plan
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, new_argv, new_env)


def blas_in_use() -> str:
    """Which BLAS this process runs on, for the log and run_start."""
    if sys.platform == "darwin":
        return "Accelerate"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    if "libopenblas" in maps:
        return "OpenBLAS (preloaded)"
    if os.environ.get(OPT_OUT_ENV) == "0":
        return f"MLX's bundled BLAS ({OPT_OUT_ENV}=0)"
    return "MLX's bundled BLAS (install libopenblas0-pthread for a faster CPU)"
