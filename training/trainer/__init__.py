"""The trainer process (`python -m training.continued_pretraining`, started by the console
or by hand, one process per rank under mlx.launch). Preflight checks, tokenization and
the token cache, packing, model setup, the optimizer and schedule, the training loop,
the session (events, checkpoints, stop requests) and the arrays of a checkpoint. Imports
MLX; only the trainer process loads this package. It writes the run folder through
`contract` and its metrics through `metrics.writer`; it never imports `console`."""
