"""Small test utilities shared by every test module."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | Literal[False] | None],
    timeout: float = 30.0,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Poll `predicate` until it returns something truthy (and return that); fail with
    `message` at the deadline."""
    deadline = time.monotonic() + timeout
    last = predicate()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")
        time.sleep(interval)
        last = predicate()
    return last  # truthy: neither False nor None
