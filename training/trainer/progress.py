"""Progress for a person: a live status line on a terminal, plain report lines in a file.

On a TTY the current step, tokens, loss, tok/s and ETA are redrawn in place (at most ten
times a second, so printing never costs a step); reports, evaluations and messages are
printed as lines above it. When stdout is a file (the console's stdout.log) only the
lines are written, so the log reads like a table.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from training.contract.disk import is_disk_full
from training.contract.protocol import PLAIN_PROGRESS_ENV


def human(n: float) -> str:
    """1234 -> 1.2k, 5_600_000 -> 5.6M."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        stream: TextIO | None = None,
        tty: bool | None = None,
        enabled: bool = True,
    ) -> None:
        self.stream = stream or sys.stdout
        if tty is None:  # a terminal, unless the console asked for plain lines
            tty = self.stream.isatty() and not os.environ.get(PLAIN_PROGRESS_ENV)
        self.tty = tty
        self.enabled = enabled
        self.total_steps = total_steps
        self.start_step = start_step
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._status = ""
        self.last_loss: float | None = None
        self.tokens_per_second = 0.0

    def begin(self, total_steps: int, start_step: int = 0) -> None:
        """Training starts now (at `start_step` of a resume): the ETA's pace counts from
        here, not from the model load and tokenization before it."""
        self.total_steps, self.start_step = total_steps, start_step
        self._start = time.perf_counter()

    def eta_seconds(self, step: int) -> float | None:
        """Remaining wall time at this session's average pace since begin() (evaluations
        included)."""
        done = step - self.start_step
        if done <= 0:
            return None
        pace = (time.perf_counter() - self._start) / done
        return pace * max(0, self.total_steps - step)

    def _write(self, text: str) -> None:
        """Write and flush; a full disk (stdout.log sits in the run folder) loses the
        line, not the run: metrics.jsonl says what happened."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError as exc:
            if not is_disk_full(exc):
                raise

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        prefix = "\r\x1b[2K" if self.tty and self._status else ""
        suffix = self._status if self.tty and self._status else ""
        self._write(prefix + text + "\n" + suffix)

    def step(
        self,
        step: int,
        trained_tokens: int,
        loss: float | None = None,
        tokens_per_second: float | None = None,
    ) -> None:
        if not (self.enabled and self.tty):
            return
        if loss is not None:  # smoothed: one step's numbers jump around
            self.last_loss = loss if self.last_loss is None else 0.9 * self.last_loss + 0.1 * loss
        if tokens_per_second:
            rate = self.tokens_per_second
            self.tokens_per_second = (
                tokens_per_second if not rate else 0.9 * rate + 0.1 * tokens_per_second
            )
        now = time.perf_counter()
        if now - self._last_draw < 0.1 and step != self.total_steps:
            return
        self._last_draw = now
        shown = f"{self.last_loss:.4f}" if self.last_loss is not None else "-"
        self._status = (
            f"step {step}/{self.total_steps} | {human(trained_tokens)} tok | loss {shown} | "
            f"{human(self.tokens_per_second)} tok/s | ETA {duration(self.eta_seconds(step))}"
        )
        self._write("\r\x1b[2K" + self._status)

    def train(self, info: dict[str, Any], eta: float | None) -> None:
        self.last_loss = info["train_loss"]
        self.tokens_per_second = info["tokens_per_second"]
        self.line(
            f"step {info['step']:>6}/{self.total_steps}  loss {info['train_loss']:.4f}  "
            f"lr {info['learning_rate']:.3g}  {human(info['tokens_per_second'])} tok/s  "
            f"{human(info['trained_tokens'])} tokens  ETA {duration(eta)}"
        )

    def eval(self, info: dict[str, Any]) -> None:
        parts = [
            f"{k[:-5]} {v:.4f}"
            for k, v in info.items()
            if k.startswith("val") and k.endswith("_loss") and isinstance(v, float)
        ]
        self.line(
            f"step {info['step']:>6}/{self.total_steps}  eval  {'  '.join(parts)}  "
            f"({info.get('val_time', 0):.1f}s)"
        )

    def close(self) -> None:
        if self.enabled and self.tty and self._status:
            self._write("\n")
            self._status = ""
