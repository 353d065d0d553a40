"""Bad input a person can fix, naming the input at fault, and actions the console refuses.

One base for every such error keeps their handling in one place: the API answers
400 {"error", "field"}, the command lines exit 2 with the message. The refusals live
here too so every part of training/ can raise them (the API answers 409 and 400).
"""

from __future__ import annotations


class InputError(ValueError):
    """A message that says what is wrong and how to fix it, and the field it concerns."""

    default_field: str | None = None

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field if field is not None else self.default_field


class StopRequested(Exception):
    """A stop request (SIGTERM, SIGINT) honoured before training started: not an error.
    The trainer's own control flow, distinct from the OS's InterruptedError (EINTR)."""


class RunConflict(RuntimeError):
    """The request does not fit the run's state (HTTP 409)."""


class ConfirmRequired(ValueError):
    """A destructive or expensive action without {"confirm": true} (HTTP 400)."""

    field = "confirm"
