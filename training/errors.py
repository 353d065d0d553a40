"""Bad input a person can fix, naming the input at fault.

One base for every such error keeps their handling in one place: the API answers
400 {"error", "field"}, the command lines exit 2 with the message.
"""

from __future__ import annotations


class InputError(ValueError):
    """A message that says what is wrong and how to fix it, and the field it concerns."""

    default_field: str | None = None

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field if field is not None else self.default_field
