"""The house rules of the layout that the import contracts (pyproject.toml, `lint-imports`)
cannot state: start_web_interface.py is only a doorway to web/cli.py, the commands are the
only modules directly in training/, and every package says what it owns."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import training

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"continued_pretraining", "evaluation", "export", "eval_worker", "demo", "scratch"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, inside functions too."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_the_console_command_only_opens_web_cli() -> None:
    assert imported_modules(ROOT / "start_web_interface.py") == {"__future__", "sys", "web.cli"}


def test_only_the_commands_live_directly_in_training() -> None:
    modules = {m.name for m in pkgutil.iter_modules(training.__path__) if not m.ispkg}
    packages = {m.name for m in pkgutil.iter_modules(training.__path__) if m.ispkg}
    assert modules == COMMANDS
    assert packages == {"contract", "trainer", "metrics", "console", "evaluate"}


def test_every_package_says_what_it_owns_and_which_process_loads_it() -> None:
    packages = ("contract", "trainer", "metrics", "console", "evaluate")
    for name in ("training", *(f"training.{p}" for p in packages), "web"):
        doc = importlib.import_module(name).__doc__ or ""
        assert len(doc.split()) >= 30, f"{name}/__init__.py needs a paragraph on what it owns"
        assert "process" in doc, name
