"""A stand-in trainer for fast console lifecycle tests: same command line, same run-folder
files and the same metrics events as training/continued_pretraining.py, no MLX.

    python -m tests.fake_trainer -c config.yaml --run-dir DIR [--resume | --restart] [--iters N]

Behaviour comes from `<cwd>/fake-trainer.json` (the console runs trainers in the
workspace) or $FAKE_TRAINER, e.g. {"mode": "normal", "rate": 200, "steps": 50}:
  normal       report every step, checkpoint every save_every, finish (exit 0)
  fail         exit 1 after `fail_at` steps, no final status
  diverge      status diverged, exit 3
  bad_input    exit 2 before writing anything
  oom          SIGKILL itself after `fail_at` steps (what the OOM killer does)
  ignore_term  ignore SIGTERM (the console must SIGKILL after its grace period)
  hang         write run_start, then wait for a signal without reporting
  disk_full    after `fail_at` steps fill the disk (the file `filler` names) to the last
               byte, then write the final status with the real metrics writer: it does
               not fit, so exit 4 (EXIT_DISK_FULL) with one line, as the real trainer does
SIGTERM/SIGINT: finish the step, checkpoint, status stopped, exit 0 ({"hold_stop": NAME}:
after status stopping, wait for the file NAME in cwd before the checkpoint).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml


def settings() -> dict:
    env = os.environ.get("FAKE_TRAINER")
    data = json.loads(env) if env else {}
    path = Path.cwd() / "fake-trainer.json"
    if path.is_file():
        data.update(json.loads(path.read_text()))
    return data


class Events:
    def __init__(self, path: Path):
        self.path = path
        self.seq = 0
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.seq = max(self.seq, int(json.loads(line)["seq"]))
                except (ValueError, KeyError, TypeError):
                    continue
        self.f = path.open("a", encoding="utf-8")

    def emit(self, event: str, step: int, **fields) -> None:
        self.seq += 1
        row = {"v": 1, "seq": self.seq, "event": event, "time": time.time(), "step": step}
        row.update(fields)
        self.f.write(json.dumps(row) + "\n")  # one write per line, as the real trainer
        self.f.flush()


def checkpoint(run_dir: Path, step: int, events: Events, reason: str = "periodic") -> None:
    ckpt = run_dir / "checkpoints"
    bundle = ckpt / f"step-{step:08d}"
    tmp = ckpt / f".tmp-step-{step:08d}"
    tmp.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "time": time.time(), "reason": reason, "fine_tune_type": "full"}
    (tmp / "state.json").write_text(json.dumps(state))
    (tmp / "adapters.safetensors").write_bytes(b"\0" * 64)
    if bundle.exists():
        import shutil

        shutil.rmtree(bundle)
    os.rename(tmp, bundle)
    latest_tmp = ckpt / "latest.json.tmp"
    latest_tmp.write_text(json.dumps({"bundle": bundle.name, "step": step}))
    os.replace(latest_tmp, ckpt / "latest.json")
    events.emit("checkpoint", step, path=f"checkpoints/{bundle.name}", seconds=0.001)


def fill_disk_and_fail(run_dir: Path, events: Events, step: int, filler: Path) -> int:
    """Leave no byte free, not even in the last block of metrics.jsonl, then report the
    failure the way training_run.report_failure does."""
    from training.contract.disk import free_bytes
    from training.contract.protocol import EXIT_DISK_FULL, EXIT_FAILED
    from training.metrics.writer import TrainingMetricsLogger

    metrics = run_dir / "metrics.jsonl"
    block = os.statvfs(run_dir).f_frsize
    # A real event that ends metrics.jsonl on a block boundary: no slack left to write in.
    events.seq += 1
    row = {"v": 1, "seq": events.seq, "event": "warning", "time": time.time(), "step": step}
    row.update(kind="data", message="")
    size, bare = metrics.stat().st_size, len(json.dumps(row)) + 1
    row["message"] = "." * (-(size + bare) % block)
    events.f.write(json.dumps(row) + "\n")
    events.f.close()
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, free_bytes(filler.parent) or 0)
    finally:
        os.close(fd)
    logger = TrainingMetricsLogger(metrics)
    written = logger.final_status(step, "failed", "fake: disk full", reason="disk_full")
    logger.close()
    with contextlib.suppress(OSError):  # stdout.log may be on the full disk too
        print(f"fake trainer: disk full at step {step}; status written: {written}", flush=True)
    return EXIT_FAILED if written else EXIT_DISK_FULL


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--restart", action="store_true")
    p.add_argument("--iters", type=int)  # a resume that extends the budget
    args = p.parse_args(argv)
    knobs = settings()
    mode = knobs.get("mode", "normal")
    if mode == "bad_input":
        print("error: data: not found (fake)", flush=True)
        return 2
    config = yaml.safe_load(Path(args.config).read_text()) or {}
    run_dir = Path(args.run_dir)
    steps = int(args.iters or knobs.get("steps") or config.get("iters") or 100)
    rate = float(knobs.get("rate", 100.0))
    save_every = int(config.get("save_every") or 100)
    if args.restart:  # as the real trainer: only without a checkpoint; seq goes on
        if (run_dir / "checkpoints" / "latest.json").exists():
            print("error: --restart: it has a complete checkpoint; use --resume", flush=True)
            return 2
        earlier = Events(run_dir / "metrics.jsonl")
        earlier.f.close()
        first_seq = earlier.seq
        for name in ("metrics.jsonl", "data_report.json"):
            (run_dir / name).unlink(missing_ok=True)
        import shutil

        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    events = Events(run_dir / "metrics.jsonl")
    if args.restart:
        events.seq = max(events.seq, first_seq)

    start = 0
    if args.resume:
        latest = run_dir / "checkpoints" / "latest.json"
        if not latest.exists():
            print("error: nothing to resume", flush=True)
            return 2
        start = int(json.loads(latest.read_text())["step"])

    stop = {"requested": False}

    def on_signal(signum, frame):
        stop["requested"] = True

    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    print(f"fake trainer: pid {os.getpid()}, steps {start}..{steps}, mode {mode}", flush=True)
    events.emit(
        "run_start",
        start,
        total_steps=steps,
        total_tokens=steps * 512,
        resumed_from=start or None,
        config_hash="fake",
        data={"documents": 10, "tokens": 5120, "tokens_per_step": 512},
    )
    events.emit("status", start, state="running", message="training")
    if mode == "hang":
        while not stop["requested"]:
            time.sleep(0.02)
    step = start
    loss = 4.0 * (0.99**start)
    while step < steps and not stop["requested"]:
        time.sleep(1.0 / rate)
        step += 1
        loss *= 0.99
        events.emit(
            "train",
            step,
            train_loss=loss,
            learning_rate=1e-3,
            tokens_per_second=5000.0,
            iterations_per_second=rate,
            trained_tokens=step * 512,
            peak_memory=0.1,
            elapsed_seconds=step / rate,
        )
        print(f"step {step}: loss {loss:.4f}", flush=True)
        if mode in ("fail", "oom") and step >= int(knobs.get("fail_at", 5)):
            if mode == "oom":
                os.kill(os.getpid(), signal.SIGKILL)
            print("Traceback: fake failure", flush=True)
            return 1
        if mode == "disk_full" and step >= int(knobs.get("fail_at", 5)):
            return fill_disk_and_fail(run_dir, events, step, Path(knobs["filler"]))
        if mode == "diverge" and step >= int(knobs.get("fail_at", 5)):
            events.emit("warning", step, kind="nan", message="loss is NaN")
            events.emit("status", step, state="diverged", message="loss became NaN")
            return 3
        if step % save_every == 0:
            checkpoint(run_dir, step, events)
    if stop["requested"]:
        events.emit("status", step, state="stopping", message="checkpointing before exit")
        # hold_stop: a file (in cwd) the test creates to let the stop finish, so the run
        # stays "stopping" exactly as long as the test needs.
        held = knobs.get("hold_stop")
        while held and not (Path.cwd() / held).exists():
            time.sleep(0.02)
        checkpoint(run_dir, step, events)
        events.emit("status", step, state="stopped", message="stopped on request")
        return 0
    checkpoint(run_dir, step, events, "final")
    (run_dir / "final").mkdir(exist_ok=True)
    events.emit("status", step, state="finished", message="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
