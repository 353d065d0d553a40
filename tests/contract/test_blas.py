"""The OpenBLAS preload decision (the re-exec itself runs in every trainer test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.contract import blas


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(blas, "find_openblas", lambda: "/usr/lib/x/libopenblas.so.0")
    return "/usr/lib/x/libopenblas.so.0"


def test_linux_preloads_once_keeping_argv_and_other_preloads(lib: str) -> None:
    argv = ["/py", "-m", "training.continued_pretraining", "-c", "x.yaml"]
    plan = blas.preload_command(argv, {"LD_PRELOAD": "/other.so", "A": "1"}, "linux")
    assert plan is not None
    new_argv, env = plan
    assert new_argv == argv and env["LD_PRELOAD"] == f"{lib}:/other.so" and env["A"] == "1"
    assert blas.preload_command(argv, env, "linux") is None  # already preloaded: no loop


@pytest.mark.parametrize(
    ("env", "platform"),
    [({"MLX_CPT_OPENBLAS": "0"}, "linux"), ({}, "darwin"), ({"LD_PRELOAD": ""}, "win32")],
)
def test_no_preload_when_opted_out_or_not_linux(
    lib: str, env: dict[str, str], platform: str
) -> None:
    assert blas.preload_command(["py"], env, platform) is None


def test_no_library_no_preload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "find_openblas", lambda: None)
    assert blas.preload_command(["py"], {}, "linux") is None


def test_local_ranks_share_the_cores(lib: str, tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"]]))
    env = {"MLX_HOSTFILE": str(hostfile), "MLX_RANK": "1"}
    assert blas.local_ranks(env) == 2
    plan = blas.preload_command(["py"], env, "linux")
    assert plan is not None and int(plan[1]["OPENBLAS_NUM_THREADS"]) >= 1
    assert blas.local_ranks({}) == 1


def test_blas_in_use_names_a_library() -> None:
    assert blas.blas_in_use()
