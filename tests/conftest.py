"""Fixtures shared across the suite. Expensive assets are built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.demo import build_demo  # noqa: E402

IN_CI = bool(os.environ.get("CI"))

# Browser fixtures (browser, page, console_workspace) for the tests/test_browser_*.py modules.
pytest_plugins = ["tests.browser"]


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny scratch model (hidden 64, 2 layers, vocab 512), a small Python-code corpus
    and a general-prose set, built offline once for the whole run. Treat as read-only:
    tests that write copy what they need into their own tmp_path."""
    ws = tmp_path_factory.mktemp("assets")
    paths = build_demo(ws, size="tiny", domain_bytes=400_000, general_bytes=60_000)
    return {**paths, "workspace": ws}


@pytest.fixture(scope="session")
def quantized_model(tiny_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny scratch model quantized by mlx-lm's own convert (4-bit, group size 32: the
    hidden size 64 and the MLP's 192 divide by it), built once. Read-only, as tiny_assets."""
    import contextlib
    import io

    from mlx_lm.convert import convert

    out = tmp_path_factory.mktemp("quantized") / "scratch-tiny-4bit"
    with contextlib.redirect_stdout(io.StringIO()):  # its [INFO] lines
        convert(str(tiny_assets["model"]), str(out), quantize=True, q_group_size=32, q_bits=4)
    return out


# The evaluation/export tests' shared session fixture (a short LoRA run in a workspace).
from tests.eval_fixtures import lora_workspace, quant_workspace  # noqa: E402, F401
