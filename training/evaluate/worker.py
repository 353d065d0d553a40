"""The evaluation worker: one process per Playground generation, perplexity or export job.

The console never imports MLX, so it starts this process for each job and reads what
it reports. The protocol (version 1):

- stdin, first line: the job, one JSON object (below). Later lines: {"command": "stop"}.
  End of stdin also means stop: a console that went away leaves no worker behind.
  (`--job FILE` reads the job from a file instead and does not watch stdin.)
  The job never travels in argv, so prompts and paths stay out of `ps`.
- stdout (or `--events FILE`): one JSON object per line, one write each, every object
  with `v`, `job_id`, `event`, `time`:
    started   {kind, pid}
    progress  {stage, message, done?, total?, lane?}
    lane      {lane, label}                       a generation lane begins
    token     {lane, text, token, n}              one streamed piece of text
    lane_end  {lane, label, text, generation_tokens, prompt_tokens, tokens_per_second,
               finish_reason}                     finish_reason: stop, length or stopped
    result    {kind, stopped, ...kind-specific}   the last line of a successful job
    error     {error, field, lane?}               the last line of a failed job
  Anything else the libraries print goes to stderr, never into the event stream.
- exit status: 0 done (or stopped on request), 1 failed, 2 bad input.

Jobs:
  {"kind": "generate", "job_id", "prompt", "models": [source, source?], "max_tokens",
   "temp", "top_p", "seed"}                 side by side: the lanes run one after the
                                            other with the same seed (one model in memory)
  {"kind": "perplexity", "job_id", "model": source, "data": path, "data_label",
   "sequence_length"?, "num_samples"?, "batch_size"?, "seed"?, "run_dir"?}
                                            with run_dir, the result is appended to
                                            <run_dir>/evaluations/perplexity.jsonl
  {"kind": "export", "job_id", "model": source, "workspace", "dest", "format",
   "overwrite", "quantize"?: 4|8, "group_size"?, "perplexity"?: {"data", "data_label",
   "holdout_fraction"?, "num_samples"?}}   a quantized export measured on that text next
                                            to the unquantized model (both results are
                                            appended to the run's perplexity.jsonl)
where a source is ModelSource.to_json() (training/contract/model_source.py).

    python -m training.eval_worker [--job FILE] [--events FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from training.contract.errors import InputError
from training.contract.eval_text import EvalText
from training.contract.exports import parse_quantization
from training.contract.layout import RunPaths, Workspace
from training.contract.model_source import ModelSource
from training.contract.protocol import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXPORT,
    GENERATE,
    JOB_ERROR,
    JOB_LANE,
    JOB_LANE_END,
    JOB_PROGRESS,
    JOB_RESULT,
    JOB_STARTED,
    JOB_TOKEN,
    PERPLEXITY,
    WORKER_PROTOCOL_VERSION,
)
from training.evaluate.exporting import (
    ExportStopped,
    PerplexityCheck,
    export_source,
    store_perplexities,
)
from training.evaluate.generation import GenerationSettings, generate_tokens
from training.evaluate.models import EvaluationError, load_source
from training.evaluate.perplexity import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DATA_SEED,
    DEFAULT_NUM_SAMPLES,
    check_sequence_length,
    default_sequence_length,
    evaluate_perplexity,
    held_out_documents,
    pack_documents,
    read_eval_documents,
)
from training.metrics.evaluations import PERPLEXITY_FILE, append_evaluation

BAD_INPUT = (InputError,)


class Events:
    """Writes protocol events, one os.write per line so a reader never sees half a line."""

    def __init__(self, stream: BinaryIO, job_id: str = ""):
        self.stream = stream
        self.job_id = job_id

    def emit(self, event: str, **fields: Any) -> None:
        row = {
            "v": WORKER_PROTOCOL_VERSION,
            "job_id": self.job_id,
            "event": event,
            "time": time.time(),
        }
        row.update(fields)
        view = memoryview((json.dumps(row, default=str) + "\n").encode())
        while view:  # an unbuffered write may take part of the line (a pipe, a signal)
            written = self.stream.write(view)
            view = view[written if written is not None else 0 :]
        self.stream.flush()


class Job:
    """What a job function gets: its spec, the event writer and the stop flag."""

    def __init__(self, spec: dict[str, Any], events: Events, stop: threading.Event):
        self.spec = spec
        self.events = events
        self.stop = stop
        self.lane: int | None = None  # the generation lane at work, for error events

    def get(self, key: str, kind: type, default: Any = None, *, required: bool = False) -> Any:
        value = self.spec.get(key)
        if value is None:
            if required:
                raise EvaluationError(f"{key} is required", key)
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # JSON true is an int to Python: only a bool field takes it.
        if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
            raise EvaluationError(f"{key} must be a {kind.__name__}", key)
        return value

    def source(self, key: str = "model") -> ModelSource:
        data = self.spec.get(key)
        if not isinstance(data, dict):
            raise EvaluationError(f"{key} must name a model", key)
        return ModelSource.from_json(data)

    def progress(self, stage: str, message: str, **extra: Any) -> None:
        self.events.emit(JOB_PROGRESS, stage=stage, message=message, **extra)


# -- jobs -----------------------------------------------------------------------------------


def run_generate(job: Job) -> dict[str, Any]:
    models = job.spec.get("models")
    if not isinstance(models, list) or not 1 <= len(models) <= 2:
        raise EvaluationError("give one model, or two to compare side by side", "models")
    settings = GenerationSettings(
        max_tokens=job.get("max_tokens", int, GenerationSettings.max_tokens),
        temp=job.get("temp", float, GenerationSettings.temp),
        top_p=job.get("top_p", float, GenerationSettings.top_p),
        seed=job.get("seed", int, GenerationSettings.seed),
    )
    settings.check()
    prompt = job.get("prompt", str, required=True)
    sources = [ModelSource.from_json(m) for m in models]
    lanes: list[dict[str, Any]] = []
    for lane, source in enumerate(sources):
        if job.stop.is_set():
            break
        job.lane = lane
        job.progress("loading", f"loading {source.label}", lane=lane)
        loaded = load_source(source)
        job.events.emit(JOB_LANE, lane=lane, label=source.label)
        pieces: list[str] = []
        last = None
        for n, token in enumerate(generate_tokens(loaded, prompt, settings, job.stop.is_set), 1):
            pieces.append(token.text)
            last = token
            job.events.emit(JOB_TOKEN, lane=lane, text=token.text, token=token.token, n=n)
        summary = {
            "lane": lane,
            "label": source.label,
            "text": "".join(pieces),
            "generation_tokens": last.generation_tokens if last else 0,
            "prompt_tokens": last.prompt_tokens if last else 0,
            "tokens_per_second": round(last.generation_tps, 2) if last else 0.0,
            "finish_reason": last.finish_reason if last else "stopped",
        }
        job.events.emit(JOB_LANE_END, **summary)
        lanes.append(summary)
        job.lane = None
        # Side by side keeps one model in memory at a time: free this one first.
        del loaded
        gc.collect()
        _clear_mlx_cache()
    return {"lanes": lanes, "seed": settings.seed}


def _clear_mlx_cache() -> None:
    import mlx.core as mx

    mx.clear_cache()


def run_perplexity(job: Job) -> dict[str, Any]:
    source = job.source("model")
    data = job.get("data", str, required=True)
    label = job.get("data_label", str, Path(data).name)
    batch_size = job.get("batch_size", int, DEFAULT_BATCH_SIZE)
    num_samples = job.get("num_samples", int, DEFAULT_NUM_SAMPLES)
    seed = job.get("seed", int, DEFAULT_DATA_SEED)
    if not 1 <= batch_size <= 1024:
        raise EvaluationError("batch_size must be between 1 and 1024", "batch_size")
    if num_samples == 0 or num_samples < -1:
        raise EvaluationError("num_samples must be -1 (all) or at least 1", "num_samples")
    job.progress("reading", f"reading {label}")
    documents = read_eval_documents(data)
    holdout = job.get("holdout_fraction", float)
    if holdout is not None:
        documents = held_out_documents(documents, holdout)
    job.progress("loading", f"loading {source.label}")
    loaded = load_source(source)
    length = job.get("sequence_length", int) or default_sequence_length(loaded)
    check_sequence_length(loaded, length)
    job.progress("tokenizing", f"tokenizing {len(documents)} documents")
    packed = pack_documents(loaded.tokenizer, documents, length, num_samples, seed)

    def progress(done: int, total: int) -> None:
        job.progress("evaluating", f"batch {done}/{total}", done=done, total=total)

    started = time.perf_counter()
    result = evaluate_perplexity(loaded.model, packed, batch_size, progress, job.stop.is_set)
    if result is None:
        return {"stopped": True}
    record = {
        "job_id": job.events.job_id,
        "time": time.time(),
        "run_id": source.run_id,
        "checkpoint": source.checkpoint,
        "step": source.step,
        "model": source.label,
        "data": str(data),
        "data_label": label,
        "num_samples": num_samples,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 3),
        **result.to_json(),
    }
    run_dir = job.get("run_dir", str)
    if run_dir:
        append_evaluation(RunPaths(Path(run_dir)), record)
        record["stored"] = str(RunPaths(Path(run_dir)).evaluations / PERPLEXITY_FILE)
    return record


def run_export(job: Job) -> dict[str, Any]:
    source = job.source("model")
    workspace = Workspace(Path(job.get("workspace", str, required=True)))
    fmt = job.get("format", str, "model")
    dest = job.get("dest", str, required=True)
    quant = parse_quantization(job.spec.get("quantize"), job.spec.get("group_size"))
    check = None
    measure = job.get("perplexity", dict)
    if measure is not None:
        data = measure.get("data")
        if not isinstance(data, str) or not data:
            raise EvaluationError("perplexity needs the text to measure on (data)", "perplexity")
        fraction = measure.get("holdout_fraction")
        samples = measure.get("num_samples", DEFAULT_NUM_SAMPLES)
        if (
            not isinstance(samples, int)
            or isinstance(samples, bool)
            or not (samples == -1 or samples >= 1)
        ):
            raise EvaluationError("num_samples must be -1 (all) or at least 1", "num_samples")
        text = EvalText(
            Path(data),
            str(measure.get("data_label") or Path(data).name),
            float(fraction) if isinstance(fraction, (int, float)) else None,
        )
        check = PerplexityCheck(text, num_samples=samples)

    def progress(message: str, **extra: Any) -> None:
        job.progress("exporting", message, **extra)

    try:
        result = export_source(
            source,
            Path(dest),
            fmt,
            workspace,
            overwrite=bool(job.get("overwrite", bool, False)),
            quantization=quant,
            perplexity=check,
            progress=progress,
            should_stop=job.stop.is_set,
        )
    except ExportStopped:
        return {"stopped": True}
    out = result.to_json()
    stored = store_perplexities(result, job.events.job_id)
    if stored is not None:
        out["stored"] = str(stored)
    return out


JOBS: dict[str, Callable[[Job], dict[str, Any]]] = {
    GENERATE: run_generate,
    PERPLEXITY: run_perplexity,
    EXPORT: run_export,
}


# -- process --------------------------------------------------------------------------------


def _private_stdout() -> BinaryIO:
    """Keep the real stdout for events and point fd 1 at stderr, so prints from mlx-lm,
    transformers or C code cannot corrupt the event stream."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "wb", buffering=0)


def _watch_stdin(stop: threading.Event) -> None:
    """Stop on {"command": "stop"} or when stdin closes (the console is gone)."""
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("command") == "stop":
            break
    stop.set()


def read_job(args: argparse.Namespace) -> dict[str, Any]:
    text = Path(args.job).read_text() if args.job else sys.stdin.readline()
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise EvaluationError(f"the job is not valid JSON: {exc}", "job") from exc
    if not isinstance(spec, dict):
        raise EvaluationError("the job must be a JSON object", "job")
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval_worker", description=__doc__)
    parser.add_argument("--job", help="read the job from this file instead of stdin")
    parser.add_argument("--events", help="append events to this file instead of stdout")
    args = parser.parse_args(argv)
    # Local folders only, and no download prompts: this process must never touch the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    stream = _private_stdout()
    if args.events:
        stream = open(args.events, "ab", buffering=0)  # lives as long as the process
    events = Events(stream)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    job: Job | None = None
    try:
        spec = read_job(args)
        events.job_id = str(spec.get("job_id", ""))
        if not args.job:
            threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
        kind = spec.get("kind")
        if kind not in JOBS:
            raise EvaluationError(f"unknown job kind {kind!r}; one of {', '.join(JOBS)}", "kind")
        events.emit(JOB_STARTED, kind=kind, pid=os.getpid())
        job = Job(spec, events, stop)
        result = JOBS[kind](job)
        result.setdefault("stopped", stop.is_set())
        events.emit(JOB_RESULT, kind=kind, **result)
        return EXIT_OK
    except BAD_INPUT as exc:
        extra = {"lane": job.lane} if job is not None and job.lane is not None else {}
        events.emit(JOB_ERROR, error=str(exc), field=getattr(exc, "field", None), **extra)
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - report any failure as an event, then exit 1
        traceback.print_exc()
        events.emit(JOB_ERROR, error=f"{type(exc).__name__}: {exc}", field=None)
        return EXIT_FAILED
