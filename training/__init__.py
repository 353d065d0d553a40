"""The MLX continued-pretraining console's Python side: one sub-package per process.

- `contract/`: what every process shares (settings, run-folder layout, protocol, files).
- `trainer/`: the trainer process (MLX).
- `metrics/`: the metrics files, written by the trainer, read by the console.
- `console/`: the console process's logic (no MLX, no Flask; `web/` is its HTTP layer).
- `evaluate/`: the evaluation worker (MLX): generation, perplexity, export.

The modules directly in here are the commands people type (`python -m training.<name>`).
"""
