"""Terminal progress: redrawn status line on a TTY, plain lines in a file."""

from __future__ import annotations

import io

from training.trainer.progress import Progress, duration, human

INFO = {
    "step": 5,
    "train_loss": 2.5,
    "learning_rate": 1e-3,
    "tokens_per_second": 12345.0,
    "trained_tokens": 5000,
}


def test_plain_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    p = Progress(total_steps=10, stream=out, tty=False)
    p.step(5, 5000)  # no status line in a file
    p.train(INFO, eta=12.0)
    p.eval({"step": 5, "val_loss": 2.0, "val_general_loss": 3.0, "val_time": 0.2})
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].split() == [
        "step", "5/10", "loss", "2.5000", "lr", "0.001", "12.3k", "tok/s", "5.0k", "tokens",
        "ETA", "12s",
    ]  # fmt: skip
    assert "val 2.0000" in lines[1] and "val_general 3.0000" in lines[1]


def test_tty_redraws_a_status_line_with_eta() -> None:
    out = io.StringIO()
    p = Progress(total_steps=10, stream=out, tty=True)
    p.train(INFO, eta=None)
    p.step(10, 9000)
    p.close()
    text = out.getvalue()
    assert "\r\x1b[2K" in text and "step 10/10" in text and "tok/s" in text and "ETA" in text


def test_formatting() -> None:
    assert human(999) == "999" and human(1500) == "1.5k" and human(2.5e6) == "2.5M"
    assert duration(5) == "5s" and duration(125) == "2m05s" and duration(7300) == "2h01m"
    assert duration(None) == "?"


def test_eta_counts_training_from_begin_not_the_setup_before_it(monkeypatch) -> None:
    import training.trainer.progress as progress_module

    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    p = Progress(total_steps=0, stream=io.StringIO(), tty=False)
    now[0] += 300.0  # loading the model and tokenizing
    p.begin(total_steps=110, start_step=10)  # a resume at step 10
    now[0] += 20.0
    assert p.eta_seconds(20) == 180.0  # 2 s per step, 90 steps to go
