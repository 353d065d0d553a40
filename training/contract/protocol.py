"""The words the processes exchange, defined once: metrics events, run states, exit codes,
environment variables and the evaluation worker's events (DESIGN.md "Metrics events",
"Run states", "Evaluation jobs").

Writers and readers import these names; a literal event or state name elsewhere is a bug.
"""

from __future__ import annotations

# -- metrics.jsonl events ---------------------------------------------------------------------

SCHEMA_VERSION = 1

RUN_START = "run_start"
TRAIN = "train"
EVAL = "eval"
CHECKPOINT = "checkpoint"
STATUS = "status"
WARNING = "warning"
# Progress of the corpus's tokenization while the run trains (issue 11); the last one has
# `done: true` and the completed data report.
TOKENIZATION = "tokenization"
SAMPLE = "sample"  # a greedy continuation of a sample prompt, at an evaluation
EVENTS: tuple[str, ...] = (
    RUN_START,
    TRAIN,
    EVAL,
    CHECKPOINT,
    STATUS,
    WARNING,
    TOKENIZATION,
    SAMPLE,
)

# `tracker`: a report_to tracker (TensorBoard, wandb) failed; training went on without it.
WARNING_KINDS: tuple[str, ...] = (
    "loss_spike",
    "nan",
    "memory",
    "truncation",
    "data",
    "config",
    "tracker",
)


def eval_set_keys(name: str) -> tuple[str, str, str]:
    """Keys of a held-out set inside an `eval` event: (loss, perplexity, tokens). The
    validation set "val" is val_loss, val_ppl, val_tokens; an extra set NAME is
    val_NAME_loss, val_NAME_ppl, val_NAME_tokens."""
    prefix = "val" if name == "val" else f"val_{name}"
    return f"{prefix}_loss", f"{prefix}_ppl", f"{prefix}_tokens"


# -- run states -------------------------------------------------------------------------------

# States a trainer's `status` event may carry.
RUNNING, STOPPING, STOPPED, FINISHED, FAILED, DIVERGED = (
    "running",
    "stopping",
    "stopped",
    "finished",
    "failed",
    "diverged",
)
STATUS_STATES: tuple[str, ...] = (RUNNING, STOPPING, STOPPED, FINISHED, FAILED, DIVERGED)
# The trainer's final states; `interrupted` is derived at read time, never written by anyone.
FINAL_STATES: tuple[str, ...] = (STOPPED, FINISHED, FAILED, DIVERGED)
# The console's own: `created` (never started), `queued`, `starting` (spawned).
CREATED, QUEUED, STARTING, INTERRUPTED = "created", "queued", "starting", "interrupted"
ACTIVE_STATES: tuple[str, ...] = (STARTING, RUNNING, STOPPING)
# The runs list's flag for a run whose files cannot be read.
UNREADABLE = "unreadable"
RUN_STATES: tuple[str, ...] = (
    CREATED,
    QUEUED,
    *ACTIVE_STATES,
    *FINAL_STATES,
    INTERRUPTED,
    UNREADABLE,
)
RESUMABLE_STATES: tuple[str, ...] = (STOPPED, INTERRUPTED, FAILED, DIVERGED)

# -- exit codes (the trainer's and the evaluation worker's) -----------------------------------

EXIT_OK = 0  # done, or stopped on request
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2  # nothing was created or changed
EXIT_DIVERGED = 3  # the loss became NaN or infinite
# The disk filled up: the exit code carries it when even the final status could not be
# written (the run reads "failed: disk full").
EXIT_DISK_FULL = 4
# What a trainer's exit means when it wrote no final status.
EXIT_CODE_STATES: dict[int, str] = {
    EXIT_OK: FINISHED,
    EXIT_FAILED: FAILED,
    EXIT_BAD_INPUT: FAILED,
    EXIT_DIVERGED: DIVERGED,
    EXIT_DISK_FULL: FAILED,
}

# -- environment variables --------------------------------------------------------------------

WORKSPACE_ENV = "MLX_CPT_HOME"
# Characters per tokenization shard (trainer/corpus_scan.py; default 4,000,000): the unit
# tokenized in the background and shuffled by the data order, so a resume needs the same.
SHARD_CHARS_ENV = "MLX_CPT_SHARD_CHARS"
# The console's access token: read by the console and by a reporting trainer, and never
# passed on to the processes the console starts (console/trainer_process.child_env).
TOKEN_ENV = "MLX_CPT_TOKEN"
# Set (to 1) for the ranks the console starts with mlx.launch: their stdout is a terminal
# (mlx.launch runs `ssh -tt`) whose output ends in stdout.log, so the trainer prints plain
# report lines instead of redrawing a status line.
PLAIN_PROGRESS_ENV = "MLX_CPT_PLAIN_PROGRESS"

# -- the evaluation worker's events (stdout, one JSON object per line) -------------------------

WORKER_PROTOCOL_VERSION = 1
JOB_STARTED = "started"
JOB_PROGRESS = "progress"
JOB_LANE = "lane"
JOB_TOKEN = "token"
JOB_LANE_END = "lane_end"
JOB_RESULT = "result"
JOB_ERROR = "error"
JOB_FINAL_EVENTS: tuple[str, ...] = (JOB_RESULT, JOB_ERROR)
GENERATE, PERPLEXITY, EXPORT = "generate", "perplexity", "export"  # job kinds
JOB_KINDS: tuple[str, ...] = (GENERATE, PERPLEXITY, EXPORT)

# Past this, sampling is noise; the console's form and API use the same bound.
MAX_TEMPERATURE = 5.0
