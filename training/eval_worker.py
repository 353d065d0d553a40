"""The evaluation worker's command: `python -m training.eval_worker [--job FILE] [--events
FILE]`, one process per Playground generation, perplexity or export job (the protocol is
in training/evaluate/worker.py)."""

from __future__ import annotations

import sys

from training.contract.blas import reexec_with_openblas
from training.evaluate.worker import main

if __name__ == "__main__":
    reexec_with_openblas()  # before MLX loads: the CPU wheel's own BLAS is far slower
    sys.exit(main())
