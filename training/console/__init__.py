"""The console process's logic, below its HTTP layer (`web/`): the TrainingManager that
alone owns trainer processes, the queue, read-only detection of earlier sessions, derived
run states and descriptions, remote runs, the broadcaster behind Socket.IO, the RunStore
data provider, runtime files, file browsing, telemetry, and the evaluation jobs it runs
in worker processes. Loaded only by the console; never imports MLX (not even inside a
function), Flask, `trainer` or `evaluate` (checked by the import contracts in
pyproject.toml)."""
