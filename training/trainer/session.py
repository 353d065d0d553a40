"""One trainer process's side of a run: events, progress, checkpoints and stop requests.

TrainingSession is the training loop's callback. Only rank 0 writes (its logger and
checkpoints are real; other ranks get disabled ones), so the loop needs no rank checks.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from training.contract import checkpoints
from training.contract.disk import DiskFull, check_space, disk_errors
from training.contract.errors import StopRequested
from training.contract.protocol import CHECKPOINT, EVAL, SAMPLE, STOPPING, TRAIN
from training.metrics.writer import TrainingMetricsLogger
from training.trainer.loop import LoopState, scalar
from training.trainer.progress import Progress
from training.trainer.sampling import generate_samples
from training.trainer.weights import checkpoint_bytes, save_optimizer, save_trainable

MEMORY_WARN_PERCENT = 95.0
# Room a bundle needs besides its arrays: state.json, adapter_config.json, latest.json,
# the checkpoint event and each file's last partial block.
CHECKPOINT_MARGIN = 64 * 1024


class StopFlag:
    """SIGTERM and SIGINT ask for a graceful stop: the flag is read between steps, so a
    signal never interrupts a step or a checkpoint write (a second one only says so).

    Installed first thing, before the model loads. While `interrupt` is on (the checks
    before anything is created, in a single process) the first signal also raises
    StopRequested at once: there is nothing to save, so a long model load or download ends
    now rather than when it is done."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self.interrupt = False
        self._previous: dict[int, Any] = {}

    def install(self, *, interrupt: bool = False) -> None:
        self.interrupt = interrupt
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Put back the handlers install() replaced (the trainer run in-process, in tests)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            print("already stopping: finishing the checkpoint", file=sys.stderr, flush=True)
            return
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        if self.interrupt:
            raise StopRequested(f"{self.signal_name} received")

    def __call__(self) -> bool:
        return self.requested


@dataclass
class SessionContext:
    """What a checkpoint records besides the loop state."""

    config_hash: str
    seed: int
    sequences_per_epoch: int
    total_steps: int
    fine_tune_type: str
    adapter_config: dict[str, Any]
    keep_checkpoints: int
    keep_best: bool
    elapsed_before: float = 0.0  # training seconds of the sessions before a resume
    inputs: dict[str, Any] | None = None  # what the run trains on (checked by --resume)
    # More of the data cursor for state.json (per-source cursors, the order's layout).
    data_state: Callable[[LoopState], dict[str, Any]] | None = None
    initialized_from: dict[str, Any] | None = None  # init_from's source, kept across resumes
    sample_prompts: list[str] = field(default_factory=list)  # continued at each evaluation
    sample_max_tokens: int = 48


class TrainingSession:
    def __init__(
        self,
        *,
        run_dir: Path,
        logger: TrainingMetricsLogger,
        progress: Progress,
        stop: StopFlag,
        context: SessionContext,
        model: Any,
        optimizer: Any,
        writer: bool,
        tokenizer: Any = None,
    ) -> None:
        self.run_dir = run_dir
        self.logger = logger
        self.progress = progress
        self.stop = stop
        self.ctx = context
        self.model = model
        self.optimizer = optimizer
        self.writer = writer
        self.tokenizer = tokenizer
        self._stopping_sent = False
        self._started = time.time()
        self._step = progress.start_step
        self._memory_warned = False
        self._last_tokens: int | None = None
        self._bundle_bytes: int | None = None  # the last bundle's size: the next one's estimate

    def elapsed_seconds(self) -> float:
        """Wall seconds of training in this run, across resumes."""
        return self.ctx.elapsed_before + time.time() - self._started

    # -- the loop's callback --

    def should_stop(self) -> bool:
        if self.stop.requested and not self._stopping_sent:
            self._stopping_sent = True
            self.logger.status(self._step, STOPPING, f"{self.stop.signal_name or 'stop'} received")
            self.progress.line("stop requested: finishing the step and saving a checkpoint")
        return self.stop.requested

    def on_step(self, state: LoopState, step_seconds: float) -> None:
        rate = None
        if self._last_tokens is not None:  # (a resume starts counting at its checkpoint)
            rate = (state.trained_tokens - self._last_tokens) / max(step_seconds, 1e-9)
        self._last_tokens = state.trained_tokens
        self.progress.step(state.step, state.trained_tokens, state.last_loss, rate)
        self._step = state.step

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        step = int(info.pop("iteration"))
        eta = self.progress.eta_seconds(step)
        elapsed = round(self.elapsed_seconds(), 3)
        event = self.logger.emit(TRAIN, step, **info, eta_seconds=eta, elapsed_seconds=elapsed)
        self.progress.train(event, eta)
        self._check_memory(step)

    def _check_memory(self, step: int) -> None:
        """One warning when the machine runs out of memory (swapping ruins throughput)."""
        import psutil

        used = psutil.virtual_memory().percent
        if used >= MEMORY_WARN_PERCENT and not self._memory_warned:
            self._memory_warned = True
            self.on_warning(
                step,
                "memory",
                f"system memory is {used:.0f}% used; lower batch_size or max_seq_length, "
                "or turn on grad_checkpoint",
                percent=used,
            )
        elif used < MEMORY_WARN_PERCENT - 5:
            self._memory_warned = False

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        step = int(info.pop("iteration"))
        event = self.logger.emit(EVAL, step, **info)
        self.progress.eval(event)
        self._write_samples(step)

    def _write_samples(self, step: int) -> None:
        """One `sample` event per prompt: the model's greedy continuation at this step
        (rank 0 only: the others wait at the next step's all-reduce)."""
        prompts = self.ctx.sample_prompts
        if not prompts or not self.writer or self.tokenizer is None:
            return
        for prompt, text in generate_samples(
            self.model, self.tokenizer, prompts, self.ctx.sample_max_tokens
        ):
            self.logger.emit(SAMPLE, step, prompt=prompt, text=text)
            shown = (prompt + text).replace("\n", "\\n")
            self.progress.line(f"sample @ {step}: {shown[:160]}")

    def on_warning(self, step: int, kind: str, message: str, **fields: Any) -> None:
        self.logger.warning(step, kind, message, **fields)
        self.progress.line(f"warning ({kind}): {message}")

    def save_checkpoint(self, state: LoopState, reason: str) -> None:
        state.last_saved_step = state.step
        if not self.writer:
            return
        tic = time.perf_counter()
        n = self.ctx.sequences_per_epoch
        record = {
            "reason": reason,
            "trained_tokens": state.trained_tokens,
            "config_hash": self.ctx.config_hash,
            "fine_tune_type": self.ctx.fine_tune_type,
            "data": {
                "cursor": state.cursor,
                "epoch": state.cursor / n if n else None,  # (n: 0 while still tokenizing)
                "sequences_per_epoch": n,
                "seed": self.ctx.seed,
                **(self.ctx.data_state(state) if self.ctx.data_state else {}),
            },
            "schedule": {
                "optimizer_step": int(scalar(self.optimizer.step)),
                "learning_rate": scalar(self.optimizer.learning_rate),
                "total_steps": self.ctx.total_steps,
            },
            # The latest evaluation and its step: it is this bundle's loss only when
            # val_step == step (checkpoints.bundle_val_loss).
            "val_loss": state.val_loss,
            "val_step": state.val_step,
            "best_val_loss": state.best_val_loss,
            "best_step": state.best_step,
            # Cumulative over resumes: this session's seconds plus the earlier sessions'.
            "elapsed_seconds": round(self.elapsed_seconds(), 3),
            "inputs": self.ctx.inputs,
            "initialized_from": self.ctx.initialized_from,
        }

        ckpt_dir = checkpoints.checkpoints_dir(self.run_dir)
        needed = self.checkpoint_estimate()
        what = f"checkpoint {checkpoints.bundle_name(state.step)}"
        # Refused before a byte is written: the previous bundle stays whole and the run's
        # status can still say why.
        check_space(ckpt_dir, needed, what, self._disk_full_hint())

        def write_files(directory: Path) -> None:
            with disk_errors(ckpt_dir, needed, what):
                save_trainable(directory, self.model, self.ctx.adapter_config)
                save_optimizer(directory, self.optimizer)

        try:
            with disk_errors(ckpt_dir, needed, what):
                bundle = checkpoints.write_bundle(ckpt_dir, state.step, record, write_files)
        except DiskFull as full:
            # write_bundle removed the partial bundle: say what is left now.
            full.hint = self._disk_full_hint()
            full.remeasure()
            raise
        seconds = time.perf_counter() - tic
        size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
        self._bundle_bytes = size
        self.logger.emit(
            CHECKPOINT,
            state.step,
            path=str(bundle.relative_to(self.run_dir)),
            seconds=round(seconds, 3),
            size=size,
            reason=reason,
            val_loss=checkpoints.bundle_val_loss(record, state.step),
        )
        removed = checkpoints.apply_retention(
            ckpt_dir, self.ctx.keep_checkpoints, self.ctx.keep_best
        )
        self.progress.line(
            f"checkpoint {bundle.name} ({size / 1e6:.1f} MB, {seconds:.2f}s)"
            + (f"; removed {', '.join(removed)}" if removed else "")
        )

    def _disk_full_hint(self) -> str:
        if checkpoints.has_checkpoint(self.run_dir):
            return "The previous checkpoint is intact: free some space, then resume the run"
        return "No checkpoint was saved yet: free some space, then start the run again"

    def checkpoint_estimate(self) -> int:
        """Bytes the next bundle needs: the previous bundle's size (this session's, or the
        latest on disk for a resume), else its arrays' size, plus a margin."""
        if self._bundle_bytes is None:
            bundles = checkpoints.list_bundles(self.run_dir)
            self._bundle_bytes = (
                bundles[-1].size if bundles else checkpoint_bytes(self.model, self.optimizer)
            )
        return self._bundle_bytes + CHECKPOINT_MARGIN
