"""The measurement files of a run: metrics.jsonl (written by the trainer's `writer`,
followed by the console's `tailer`, indexed by `store`, summarized from its tail by
`summary`, with saved indexes in `snapshot` and chart downsampling in `downsample`) and
evaluations/perplexity.jsonl (`evaluations`), joined with the checkpoints into the
checkpoint table. Loaded by every process: the trainer, the console and the evaluation
worker; no MLX."""
