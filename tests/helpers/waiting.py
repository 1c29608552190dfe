"""Waiting in tests: poll a condition until it holds, with one generous deadline.

The deadline only ends a wait that would never succeed, so it costs nothing when things work
and sits far above what a loaded 2-core CI machine needs (issue 15, item 19). A test never
sleeps a fixed time to let something happen: it waits for what the sleep was for.

    rows = wait_until(lambda: query(url, "SELECT id FROM sessions"), "a written session")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WAIT_S = 120.0  # the deadline of a wait for a condition that should hold within seconds


def wait_until(
    ready: Callable[[], T], what: str, *, timeout_s: float = WAIT_S, interval_s: float = 0.1
) -> T:
    """Call `ready()` every `interval_s` until it returns a true value, and return that value;
    raise AssertionError naming `what` when timeout_s pass first."""
    deadline = time.monotonic() + timeout_s
    while not (value := ready()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:g} s")
        time.sleep(interval_s)
    return value
