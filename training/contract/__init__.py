"""The contract between the processes: what the trainer, the console and the evaluation
worker all agree on and all import. The settings registry and `RunConfig`, the workspace
and run-folder layout with run.json, the protocol (event names, run states, exit codes,
environment variables), durable file writes, corpus discovery and the held-out split,
the checkpoint format (naming, reading, the atomic bundle write), how a run's models are
named (model_source), what a model folder's config.json says (model_facts: its
quantization), where exports may go, the error types and the BLAS preload.
Loaded by every process (trainer, console, evaluation worker); nothing here imports MLX
or Flask, or any other package of `training`."""
