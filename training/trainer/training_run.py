"""Prepare a checked plan (tokenize, pack, make the model trainable, restore a resume),
then run it: write the run folder, train, save.

preflight checked everything that is cheap to check; prepare() comes
before the run folder is created, so its problems are still bad input (ConfigError, exit 2,
nothing created). From run() on, errors are failures (status `failed`, exit 1; exit 4 when a
full disk leaves no room even for that status).
"""

from __future__ import annotations

import contextlib
import itertools
import platform
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from training.contract import checkpoints
from training.contract.blas import blas_in_use
from training.contract.config import BUDGET_FIELDS, ConfigError, FieldError, RunConfig
from training.contract.disk import disk_full_error
from training.contract.errors import InputError, StopRequested
from training.contract.files import write_atomic, write_json_atomic
from training.contract.protocol import (
    DIVERGED,
    EXIT_DISK_FULL,
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_OK,
    FAILED,
    FINISHED,
    RUN_START,
    RUNNING,
    STOPPED,
)
from training.metrics.writer import HttpReporter, TrainingMetricsLogger
from training.trainer.corpus_scan import CorpusScan, remember_scan
from training.trainer.data import (
    LAYOUT,
    DataInputs,
    RunData,
    Waiter,
    build_run_data,
    data_report,
    format_report,
    make_sources,
    plan_epochs,
    scan_memo_dir,
    tokenize_plan,
)
from training.trainer.data import plan_total_steps as plan_steps
from training.trainer.data_progress import DataProgress
from training.trainer.loop import EvalBatches, LoopArgs, LoopState, train
from training.trainer.loss import make_loss
from training.trainer.mixture import MixState
from training.trainer.model_setup import (
    adapter_config,
    embedding_weight_names,
    parameter_counts,
    prepare_trainable,
    save_final,
)
from training.trainer.optimization import build_optimizer
from training.trainer.packing import Batch
from training.trainer.preflight import Plan
from training.trainer.progress import Progress
from training.trainer.session import SessionContext, StopFlag, TrainingSession
from training.trainer.token_cache import TokenizedCorpus, default_progress
from training.trainer.tokenization import Tokenization
from training.trainer.trackers import TrackerContext, open_trackers
from training.trainer.weights import load_init, load_optimizer, load_trainable


def versions() -> dict[str, Any]:
    import mlx_lm

    return {
        "mlx": getattr(mx, "__version__", "?"),
        "mlx_lm": mlx_lm.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "chip": _chip(),
        "device": str(mx.default_device()),
        "blas": blas_in_use(),
    }


def _chip() -> str:
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=2,
                check=False,
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


@dataclass
class Prepared:
    """What the run trains with, built before its folder exists."""

    data: RunData
    total_steps: int
    optimizer: Any
    state: LoopState
    eval_sets: dict[str, EvalBatches]
    batches: Iterator[Batch]
    progress: DataProgress
    resumed_from: int | None = None
    elapsed_before: float = 0.0
    initialized_from: dict[str, Any] | None = None  # init_from's source (lineage.InitSource)
    loss: Any = None  # the loss function (trainer/loss.py make_loss)
    loss_note: str = ""


def _labels(inputs: DataInputs) -> list[tuple[CorpusScan, str, str]]:
    """Each corpus of the run with the label its progress lines use and the name its
    progress events use (a source's name, `valid`, an eval set's name)."""
    many = len(inputs.sources) > 1
    out = []
    for s in inputs.sources:
        label = f"source '{s.source.name}'" if many else "training corpus"
        out.append((s.scan, label, s.source.name))
        if s.valid is not None:
            out.append((s.valid, f"validation of {label}", f"{s.source.name}:valid"))
    out += [(scan, f"eval set {name}", name) for name, scan in inputs.eval_sets.items()]
    return out


def prepare(plan: Plan, stop: StopFlag) -> Prepared:
    """Tokenize into the workspace's cache (in the background, from what the first steps
    need), split and pack, make the model trainable, build the optimizer, restore a resume.
    ConfigError for bad data or a checkpoint that does not fit; StopRequested on a stop (a
    single process; ranks agree afterwards)."""
    config, loaded = plan.config, plan.loaded
    say = default_progress if plan.rank == 0 else None
    # Ranks must run the same collectives: only a lone process stops mid-tokenization.
    should_stop = stop if plan.world == 1 else None
    tokenization = Tokenization(
        loaded.tokenizer, plan.tokenizer_fp, plan.workspace.token_cache_dir, progress=say
    )
    plan.tokenization = tokenization  # closed by plan.release()
    inputs = plan.inputs
    wait = Waiter(tokenization)
    wait.should_stop = should_stop
    wait.on_wait = tokenization.say_progress
    try:
        corpora: dict[str, TokenizedCorpus] = {}
        labels: dict[str, str] = {}
        for scan, label, name in _labels(inputs):
            corpora[scan.content_hash] = tokenization.add(scan, label)
            labels[label] = name
        sources = make_sources(config, inputs, corpora, wait, plan.one_shard)
        tokenization.plan(tokenize_plan(sources))
        if plan.world == 1:
            tokenization.start()  # the rest arrives while training runs
        else:  # ranks start together, on complete data
            tokenization.run_here(should_stop)
        data = build_run_data(
            config, inputs, corpora, wait, rank=plan.rank, world=plan.world, sources=sources
        )
        if config.epochs is not None:  # the budget counts the main corpus's sequences
            main = data.sources[0]
            wait(main.corpus, 0, main.scan.documents)
            data.report = _report(config, inputs, data, corpora, plan.world)
    except InputError as exc:
        raise ConfigError([FieldError(exc.field or "data", str(exc))]) from None
    if plan.rank == 0:  # the next scan of these unchanged files reads nothing
        for scan in inputs.scans():
            remember_scan(scan, scan_memo_dir(plan.workspace))
    if plan.world == 1 and stop.requested:
        raise StopRequested("stopped after tokenizing")
    total_steps = plan_steps(config, data.report)
    seqs_per_step = config.batch_size * config.grad_accumulation_steps
    plan_epochs(data.report, total_steps, seqs_per_step)
    model = loaded.model
    prepare_trainable(model, config)
    if plan.init_source is not None:
        try:
            load_init(plan.init_source.weights, model)
        except (ValueError, OSError) as exc:
            raise ConfigError([FieldError("init_from", str(exc))]) from None
    loss, loss_note = make_loss(model)
    full = embedding_weight_names(model) if config.train_embeddings else None
    optimizer = build_optimizer(config, total_steps, full)  # settings passed check_optimizer
    optimizer.init(model.trainable_parameters())
    state = LoopState()
    resumed_from: int | None = None
    elapsed_before = 0.0
    initialized_from = plan.init_source.to_json() if plan.init_source is not None else None
    if plan.folder.mode == "resume":
        try:
            saved = _restore(plan.folder.root, model, optimizer, state)
        except (ValueError, OSError, KeyError, TypeError) as exc:
            message = f"cannot resume from the latest checkpoint: {exc}"
            raise ConfigError([FieldError("run_dir", message)]) from None
        _check_budget(plan, state.step, total_steps)
        resumed_from = state.step
        elapsed_before = float(saved.get("elapsed_seconds") or 0.0)
        lineage = saved.get("initialized_from")
        initialized_from = lineage if isinstance(lineage, dict) else None
    eval_sets = {name: held.batches for name, held in data.held_out.items()}
    progress = DataProgress(
        tokenization,
        data,
        labels,
        lambda: _report(config, inputs, data, corpora, plan.world),
        total_steps,
        seqs_per_step,
    )
    names = [s.name for s in data.sources]
    single = len(names) == 1
    mix = MixState(
        state.cursor,
        [state.source_cursors.get(n, state.cursor if single else 0) for n in names],
        [state.tokens_by_source.get(n, state.trained_tokens if single else 0) for n in names],
    )
    try:  # the first batch now: its shards are what training waits for before step 1
        batches = data.batches(config, mix, plan.rank, plan.world)
        first = next(batches)
    except InputError as exc:
        raise ConfigError([FieldError(exc.field or "data", str(exc))]) from None
    except ValueError as exc:  # a source with no sequences at all
        raise ConfigError([FieldError("data", str(exc))]) from None
    wait.should_stop = None  # from now on a stop waits for the shard, then checkpoints
    wait.on_wait = progress.tick
    return Prepared(
        data,
        total_steps,
        optimizer,
        state,
        eval_sets,
        progress.watch(itertools.chain([first], batches)),
        progress,
        resumed_from,
        elapsed_before,
        initialized_from,
        loss,
        loss_note,
    )


def _report(
    config: Any,
    inputs: DataInputs,
    data: RunData,
    corpora: dict[str, TokenizedCorpus],
    world: int,
) -> dict[str, Any]:
    return data_report(config, inputs, data.sources, data.held_out, corpora, world)


def _check_budget(plan: Plan, step: int, total_steps: int) -> None:
    """A resume trains on to its budget: one below the checkpoint's step, or a finished run
    resumed without a larger one, is bad input (extend a run with a larger budget)."""
    config = plan.config
    field = next((b for b in BUDGET_FIELDS if config.get(b) is not None), "iters")
    finished = plan.folder.paths.final.is_dir()
    if step > total_steps or (step == total_steps and finished):
        what = "finished at" if step == total_steps else "is past"
        message = (
            f"the run {what} step {step} of this budget ({total_steps} steps); to train it "
            f"further, give a larger budget (e.g. --iters {2 * step})"
        )
        raise ConfigError([FieldError(field, message)])


def run(plan: Plan, prepared: Prepared, stop: StopFlag) -> int:
    """Train a prepared plan in its (claimed) run folder; the exit code."""
    writer = plan.rank == 0
    paths = plan.folder.paths
    reporter = HttpReporter(plan.report_url) if plan.report_url and writer else None
    logger = TrainingMetricsLogger(
        paths.metrics, reporter=reporter, enabled=writer, first_seq=plan.first_seq
    )
    progress = Progress(total_steps=prepared.total_steps, enabled=writer)
    state = prepared.state  # a failure reports the step it reached
    try:
        if writer and plan.config.report_to:
            _start_trackers(plan, prepared, logger, progress)
        if writer:
            if plan.rewrite_config:  # new runs, resumes that changed the budget or intervals
                write_atomic(paths.config, plan.config.to_yaml())
            checkpoints.clean_stale_temp(paths.checkpoints)
            progress.line(f"run folder: {paths.root}  (BLAS: {blas_in_use()})")
        for message in plan.warnings:
            logger.warning(0, "config", message)
            progress.line(f"warning: {message}")
        outcome = _train(plan, prepared, logger, progress, stop)
    except Exception as exc:
        return report_failure(logger, state.step, exc, paths.root)
    finally:
        progress.close()
        logger.close()
    return {FINISHED: EXIT_OK, STOPPED: EXIT_OK, DIVERGED: EXIT_DIVERGED}[outcome]


def _start_trackers(
    plan: Plan, prepared: Prepared, logger: TrainingMetricsLogger, progress: Progress
) -> None:
    """report_to's trackers take every event from now on; one that fails only warns."""

    def warn(step: int, name: str, message: str) -> None:
        logger.warning(step, "tracker", message, tracker=name)
        progress.line(f"warning (tracker): {message}")

    paths = plan.folder.paths
    context = TrackerContext(
        run_dir=paths.root,
        run_id=paths.run_id,
        config=plan.config,
        resumed_from=prepared.resumed_from,
        restart=plan.folder.mode == "restart",
    )
    logger.sinks.append(open_trackers(list(plan.config.report_to or ()), context, warn))


def report_failure(logger: TrainingMetricsLogger, step: int, exc: Exception, run_dir: Path) -> int:
    """A failure as the run's final status; the exit code. A full disk is no bug: one line
    naming the folder and the space, no traceback, and the status carries the numbers.
    When even the status cannot be written, the exit code says it (EXIT_DISK_FULL)."""
    full = disk_full_error(exc, run_dir)
    if full is None:
        with contextlib.suppress(OSError):  # stderr may sit on the disk that failed
            traceback.print_exc()
        written = logger.final_status(step, FAILED, f"{type(exc).__name__}: {exc}")
    else:
        written = logger.final_status(step, FAILED, str(full), **full.event_fields())
        say(f"error: {full}" + ("" if written else "; not even the final status fit"))
    if not written:
        if full is None:
            say(f"error: the disk is full: the final status could not be written ({exc})")
        return EXIT_DISK_FULL
    return EXIT_FAILED


def say(line: str) -> None:
    """One line on stderr, which may itself be a file on the full disk."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _train(
    plan: Plan,
    prepared: Prepared,
    logger: TrainingMetricsLogger,
    progress: Progress,
    stop: StopFlag,
) -> str:
    config, loaded, paths = plan.config, plan.loaded, plan.folder.paths
    data, state, total_steps = prepared.data, prepared.state, prepared.total_steps
    watcher = prepared.progress
    # Tokenized already (cached, or small): every figure of the report is known now.
    report = data.report if watcher.tokenization.pending else watcher.complete_report()
    report["tokenization"] = watcher.fields()
    if plan.rank == 0:
        write_json_atomic(paths.data_report, report)
        progress.line(format_report(report))

    model, optimizer = loaded.model, prepared.optimizer
    resumed_from = prepared.resumed_from
    trainable, total = parameter_counts(model)
    base_model = str(config.model)
    logger.emit(
        RUN_START,
        state.step,
        run_id=paths.run_id,
        config_hash=config.config_hash(),
        versions=versions(),
        total_steps=total_steps,
        total_tokens=total_steps * report["tokens_per_step"],
        resumed_from=resumed_from,
        data=report,
        eval_sets=data.eval_set_names,
        world_size=plan.world,
        model=base_model,
        fine_tune_type=config.fine_tune_type,
        trainable_parameters=trainable,
        total_parameters=total,
        initialized_from=prepared.initialized_from,
    )
    started = "restarted from step 0" if plan.folder.mode == "restart" else "started"
    logger.status(state.step, RUNNING, "resumed" if resumed_from is not None else started)
    progress.line(
        f"training {trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters "
        f"({config.fine_tune_type}{_full_note(config, model)}) for {total_steps} steps"
        + (f", resuming at step {state.step}" if resumed_from is not None else "")
    )
    source = prepared.initialized_from
    if source is not None and resumed_from is None:
        where = source.get("run_id") or source.get("path")
        at = f" {source['bundle']}" if source.get("bundle") else ""
        progress.line(f"initialized from {where}{at}: a fresh optimizer, this run's schedule")
    progress.line(prepared.loss_note)
    progress.begin(total_steps, state.step)

    session = TrainingSession(
        run_dir=paths.root,
        logger=logger,
        progress=progress,
        stop=stop,
        context=SessionContext(
            config_hash=config.config_hash(),
            seed=config.seed,
            sequences_per_epoch=(report["sequences"] or 0),
            total_steps=total_steps,
            fine_tune_type=config.fine_tune_type,
            adapter_config=adapter_config(config, base_model, model),
            keep_checkpoints=config.keep_checkpoints,
            keep_best=config.keep_best,
            elapsed_before=prepared.elapsed_before,
            inputs=plan.identity,
            data_state=lambda st: {
                "sources": {
                    name: {"cursor": st.source_cursors.get(name), "tokens": tokens}
                    for name, tokens in st.tokens_by_source.items()
                },
                "layout": LAYOUT,
            },
            initialized_from=prepared.initialized_from,
            sample_prompts=list(config.sample_prompts or []),
            sample_max_tokens=config.sample_max_tokens,
        ),
        model=model,
        optimizer=optimizer,
        writer=plan.rank == 0,
        tokenizer=loaded.tokenizer,
    )
    batches = prepared.batches
    watcher.on_complete = lambda full: setattr(
        session.ctx, "sequences_per_epoch", full["sequences"] or 0
    )
    writer = plan.rank == 0
    watcher.attach(
        logger if writer else None,
        paths.data_report if writer else None,
        progress.line if writer else None,
        lambda: state.step,
    )
    args = LoopArgs(
        total_steps=total_steps,
        grad_accumulation_steps=config.grad_accumulation_steps,
        steps_per_report=config.steps_per_report,
        steps_per_eval=config.steps_per_eval,
        save_every=config.save_every,
        grad_clip=config.grad_clip,
        seed=config.seed,
        clear_cache_threshold=config.clear_cache_threshold,
        loss_spike_factor=config.loss_spike_factor,
        eval_at_start=resumed_from is None,
    )
    outcome = train(
        model,
        optimizer,
        batches,
        args,
        state,
        session,
        eval_sets=prepared.eval_sets,
        loss=prepared.loss,
        group=plan.group,
    )
    if outcome == FINISHED:
        if plan.rank == 0:
            final = save_final(paths.final, loaded, config, base_model)
            progress.line(f"final model: {final}")
        logger.status(state.step, FINISHED, f"trained {total_steps} steps")
    elif outcome == STOPPED:
        logger.status(state.step, STOPPED, "stopped on request; resume with --resume")
    else:
        latest = checkpoints.read_latest(paths.root)
        logger.status(
            state.step,
            DIVERGED,
            "loss is not finite; last good checkpoint: " + (latest["bundle"] if latest else "none"),
        )
    return outcome


def _full_note(config: RunConfig, model: Any) -> str:
    """' + model.embed_tokens, lm_head at 0.2x the rate' for a train_embeddings run."""
    if not config.train_embeddings:
        return ""
    names = ", ".join(embedding_weight_names(model))
    return f" + {names} at {config.embedding_lr_scale:g}x the rate"


def _restore(run_dir: Path, model: Any, optimizer: Any, state: LoopState) -> dict[str, Any]:
    """Weights, optimizer state and loop position from the latest bundle (preflight checked
    that it exists and matches the config); returns its state.json."""
    bundle = checkpoints.latest_bundle(run_dir)
    if bundle is None:
        raise ValueError(f"{run_dir} lost its latest checkpoint")
    saved = checkpoints.read_state(bundle)
    load_trainable(bundle, model)
    load_optimizer(bundle, optimizer)
    mx.eval(model.parameters(), optimizer.state)
    state.step = state.last_saved_step = int(saved["step"])
    state.cursor = int(saved["data"]["cursor"])
    state.trained_tokens = int(saved["trained_tokens"])
    for name, entry in (saved["data"].get("sources") or {}).items():
        state.source_cursors[str(name)] = int(entry["cursor"])
        state.tokens_by_source[str(name)] = int(entry["tokens"])
    state.val_loss = saved.get("val_loss")
    state.val_step = saved.get("val_step")
    state.best_val_loss = saved.get("best_val_loss")
    state.best_step = saved.get("best_step")
    return saved
