"""The login rate limit: failed sign-ins counted per user name and per client address.

After `max_failures` failures of one key within `window_s`, that key's sign-ins are refused
(429 with Retry-After) until its oldest failure leaves the window; a right password is refused
too meanwhile, so guessing gains nothing from the refusal. A success clears the name's count::

    throttle = LoginThrottle()
    wait_s = throttle.wait_s(["user:alice", "addr:192.0.2.7"], now_s)   # 0: may try
    throttle.failed(["user:alice", "addr:192.0.2.7"], now_s)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable

MAX_FAILURES = 5
WINDOW_S = 15 * 60.0
MAX_KEYS = 100_000  # a flood of made-up names cannot grow memory past this


class LoginThrottle:
    """Failed sign-ins per key within a sliding window (see the module docstring)."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now_s: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now_s - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def wait_s(self, keys: Iterable[str], now_s: float) -> int:
        """Whole seconds until every key may try again; 0 when all may try now."""
        wait = 0.0
        for key in keys:
            times = self._recent(key, now_s)
            if len(times) >= self.max_failures:
                wait = max(wait, times[0] + self.window_s - now_s)
        return math.ceil(wait)

    def failed(self, keys: Iterable[str], now_s: float) -> None:
        """Count one failed sign-in against each key."""
        if len(self._failures) >= MAX_KEYS:
            self._failures.clear()  # forget everyone rather than grow without bound
        for key in keys:
            self._failures.setdefault(key, deque()).append(now_s)

    def succeeded(self, key: str) -> None:
        """Forget `key`'s failures (a right password for that name)."""
        self._failures.pop(key, None)
