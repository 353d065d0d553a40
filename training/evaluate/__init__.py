"""The evaluation worker (`python -m training.eval_worker`, one process per Playground
generation, perplexity or export job) and the `evaluation` and `export` commands: model
loading, streamed generation, perplexity as mlx-lm computes it, exporting with a model
card. Imports MLX (inside its functions, so the commands can re-exec with OpenBLAS
first); the console only talks to it through the worker protocol, never imports it."""
