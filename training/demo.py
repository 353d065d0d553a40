"""Offline demo assets: a domain corpus, a general-text set and a scratch model.

Every Python install carries text we can train on without a download: the
standard library's sources (the demo's domain: Python code) and the prose of
`pydoc_data.topics` (the general-text set for the forgetting monitor).

    python -m training.demo --workspace DIR [--size tiny|small]
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path
from typing import Any

from training.contract.files import write_atomic
from training.contract.layout import DEMO_CONFIG, DOMAIN_CORPUS, GENERAL_SET, demo_model_dir


def stdlib_documents(max_bytes: int) -> list[str]:
    """Source files of the standard library, in a stable order, up to max_bytes."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for path in sorted(lib.glob("*.py")) + sorted(lib.glob("*/*.py")):
        if "test" in path.parts or path.name.startswith("test"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if len(text) < 2000:
            continue
        docs.append(text)
        total += len(text.encode())
        if total >= max_bytes:
            break
    return docs


def prose_documents(max_bytes: int) -> list[str]:
    """The Python reference's topic texts: English prose, one document each."""
    from pydoc_data.topics import topics

    docs: list[str] = []
    total = 0
    for name in sorted(topics):
        docs.append(topics[name])
        total += len(topics[name].encode())
        if total >= max_bytes:
            break
    return docs


def _write_jsonl(path: Path, docs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps({"text": d}) + "\n" for d in docs))


def demo_config(size: str) -> dict[str, Any]:
    """The demo preset: a full fine-tune that shows loss falling within a minute and ends in
    about ten on a 2-core CPU (small model, 300 steps of 8 x 256 tokens; seconds on Metal)."""
    tiny = size == "tiny"
    return {
        "model": demo_model_dir(size),
        "fine_tune_type": "full",
        "data": DOMAIN_CORPUS,
        "eval_sets": {"general": GENERAL_SET},
        "max_seq_length": 128 if tiny else 256,
        "batch_size": 4 if tiny else 8,
        "iters": 200 if tiny else 300,
        "learning_rate": 3e-3 if tiny else 1e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 10 if tiny else 20,
        "steps_per_report": 5,
        "steps_per_eval": 50,
        # A fixed, small validation set keeps evaluation under 10% of wall time.
        "val_batches": 4 if not tiny else 8,
        "save_every": 100,
    }


def build_demo(
    workspace: str | Path,
    size: str = "small",
    domain_bytes: int = 3_000_000,
    general_bytes: int = 200_000,
) -> dict[str, Path]:
    """Create whatever of the demo assets is missing; never touches existing files."""
    import yaml

    from training.scratch import build_scratch_model

    ws = Path(workspace)
    corpus, general = ws / DOMAIN_CORPUS, ws / GENERAL_SET
    model, config = ws / demo_model_dir(size), ws / DEMO_CONFIG
    if not corpus.exists():
        _write_jsonl(corpus, stdlib_documents(domain_bytes))
    if not general.exists():
        _write_jsonl(general, prose_documents(general_bytes))
    if not model.exists():
        build_scratch_model(corpus, model, size=size)
    if not config.exists():
        write_atomic(
            config,
            "# The demo: continue pre-training a scratch model on Python source code,\n"
            "# watching a general-prose set for forgetting. Paths are workspace-relative.\n"
            + yaml.safe_dump(demo_config(size), sort_keys=False),
        )
    return {"corpus": corpus, "general": general, "model": model, "config": config}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--size", default="small", choices=("tiny", "small"))
    args = parser.parse_args(argv)
    paths = build_demo(args.workspace, args.size)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
