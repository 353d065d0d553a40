"""The trainer's command line: parse, then run the three phases (preflight, prepare,
claim the folder and train), with ranks agreeing after each (DESIGN.md "Command lines")."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import mlx.core as mx

from training.contract.config import ConfigError, FieldError, add_field_arguments
from training.contract.disk import disk_full_error
from training.contract.errors import StopRequested
from training.contract.protocol import (
    EXIT_BAD_INPUT,
    EXIT_DISK_FULL,
    EXIT_OK,
    TOKEN_ENV,
    WORKSPACE_ENV,
)
from training.trainer.preflight import Plan, claim_folder, preflight
from training.trainer.session import StopFlag
from training.trainer.training_run import prepare, run, say

T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.continued_pretraining",
        description="Continue pre-training a language model on raw text with MLX. Settings "
        "come from the field registry: defaults < the -c YAML (mlx-lm keys work) < flags.",
    )
    parser.add_argument(
        "-c",
        "--config",
        help="YAML config file (an mlx-lm config works); with --resume or --restart it "
        "defaults to the run folder's config.yaml",
    )
    parser.add_argument(
        "--run-dir",
        help=f"Run folder (default: <workspace>/runs/<new run_id>; workspace from {WORKSPACE_ENV})",
    )
    again = parser.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="Continue the run in --run-dir from its latest checkpoint",
    )
    again.add_argument(
        "--restart",
        action="store_true",
        help="Start the run in --run-dir again from step 0: only for a run that ended before "
        "its first checkpoint; what its trainer wrote (metrics, data report, unfinished "
        "checkpoints) is cleared, config.yaml is kept",
    )
    parser.add_argument(
        "--report-url",
        help="Also POST events to this URL (e.g. http://127.0.0.1:PORT/api/callbacks/RUN_ID); "
        f"the bearer token is read from the {TOKEN_ENV} environment variable",
    )
    add_field_arguments(parser)
    return parser


def print_errors(errors: list[FieldError]) -> None:
    print("error: the run was not started (nothing was created or changed):", file=sys.stderr)
    for e in errors:
        print(f"  {e}", file=sys.stderr)


@dataclass
class Outcome:
    """One phase's result on this rank: a value, bad input, or a stop request."""

    value: Any = None
    error: ConfigError | None = None
    stopped: bool = False


def _phase(fn: Callable[[], T]) -> Outcome:
    try:
        return Outcome(value=fn())
    except ConfigError as exc:
        return Outcome(error=exc)
    except StopRequested:
        return Outcome(stopped=True)


def _agree(group: Any, outcome: Outcome, stop_requested: bool) -> int | None:
    """The exit code every rank takes after a phase (None: go on). With several ranks they
    sum their verdicts, so bad input or a stop anywhere ends all of them together."""
    bad, stop = outcome.error is not None, outcome.stopped or stop_requested
    if group is not None and group.size() > 1:
        votes = mx.distributed.all_sum(mx.array([float(bad), float(stop)]), stream=mx.cpu)
        bad, stop = float(votes[0].item()) > 0, float(votes[1].item()) > 0  # type: ignore[arg-type]
    if bad:
        if outcome.error is not None:
            print_errors(outcome.error.errors)
        else:
            print("error: another worker found bad input; nothing was created", file=sys.stderr)
        return EXIT_BAD_INPUT
    if stop:
        if group is None or group.rank() == 0:
            print("stopped before the run started; nothing was created", file=sys.stderr)
        return EXIT_OK
    return None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    args = build_parser().parse_args(argv)
    group = mx.distributed.init()
    rank, world = group.rank(), group.size()
    stop = StopFlag()
    # Alone, a stop during the checks ends them at once (nothing exists yet to save); with
    # several ranks it is a flag they agree on after each phase, so none waits alone.
    stop.install(interrupt=world == 1)
    plan: Plan | None = None
    try:
        checked = _phase(lambda: preflight(args, rank, world))
        stop.interrupt = False
        plan = checked.value
        exit_code = _agree(group, checked, stop.requested)
        if exit_code is not None or plan is None:
            return EXIT_BAD_INPUT if exit_code is None else exit_code
        plan.group = group
        prepared = _phase(lambda: prepare(plan, stop))
        exit_code = _agree(group, prepared, stop.requested)
        if exit_code is not None:
            return exit_code
        exit_code = _agree(group, _phase(lambda: claim_folder(plan)), False)
        if exit_code is not None:
            return exit_code
        return run(plan, prepared.value, stop)
    except OSError as exc:
        # Before the run trains (the token cache, the run folder): no status to write.
        full = disk_full_error(exc)
        if full is None:
            raise
        say(f"error: {full}; nothing was trained")
        return EXIT_DISK_FULL
    finally:
        if plan is not None:
            plan.release()
        stop.uninstall()
