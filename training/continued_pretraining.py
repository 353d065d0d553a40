"""The trainer: continue pre-training a language model on raw text with MLX.

    python -m training.continued_pretraining -c config.yaml [--run-dir DIR] [--resume]
        [--report-url URL] [--<any field> VALUE]

Exit codes: 0 finished, or stopped on request (SIGTERM/SIGINT; a stop before training
starts creates nothing), 1 failed, 2 bad input (nothing created or changed), 3 diverged
(non-finite loss), 4 disk full with no room even for the final status (a checkpoint that
does not fit is refused first: status `failed`, reason `disk_full`, exit 1). The console
spawns this same program.

Three phases, so that bad input never leaves a half-made run folder:
1. preflight (trainer/preflight.py): the config, the cheap checks, the run folder
   (locked for this trainer), the corpus scan, the model and tokenizer, and for --resume
   that the model and data are the ones the checkpoint was trained on;
2. prepare (trainer/training_run.py): tokenize into the workspace's cache, pack, make the
   model trainable, build the optimizer, restore the checkpoint;
3. only then is a new run folder created (and locked) and the run starts.
With several processes (mlx.launch) the ranks agree after each phase, so one rank's bad
input or stop request ends them all instead of leaving the others waiting.
"""

from __future__ import annotations

import sys

from training.contract.blas import reexec_with_openblas


def main(argv: list[str] | None = None) -> int:
    """The trainer's command line (training/trainer/cli.py); the exit code."""
    # Imported here, after a BLAS re-exec: the trainer loads MLX at import.
    from training.trainer.cli import main as run_trainer

    return run_trainer(argv)


if __name__ == "__main__":
    reexec_with_openblas()
    sys.exit(main())
