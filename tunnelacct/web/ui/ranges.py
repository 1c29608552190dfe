"""The session log's time range: `from` and `to` as a dashboard link or a person writes them,
turned into the filter language's `started_after:` and `started_before:` terms.

A bound is epoch milliseconds (Grafana's `${__from}`), `now`, `now-<N><s|m|h|d>` (relative: a
refresh moves it), an RFC 3339 time with an offset, or a date (UTC midnight)::

    window = time_range("now-6h", "", now)      # started in the last 6 hours, up to now
    text = with_range("resource:db", window)    # 'resource:db started_after:2026-...Z'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tunnelacct.errors import TunnelacctError
from tunnelacct.query.filters import parse_time
from tunnelacct.query.records import format_time

_RELATIVE = re.compile(r"now(?:-([0-9]{1,6})([smhd]))?")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EPOCH_MS = re.compile(r"[0-9]{10,14}")
BOUND_FORMS = (
    "epoch milliseconds, now, now-6h (s, m, h or d), an RFC 3339 time with offset, "
    "or a date YYYY-MM-DD"
)


class RangeError(TunnelacctError):
    """A `from` or `to` that does not parse: names the parameter and its value."""

    def __init__(self, parameter: str, value: str) -> None:
        self.parameter = parameter
        self.value = value
        super().__init__(f"{parameter} {value!r}: expected {BOUND_FORMS}")


@dataclass(frozen=True, slots=True)
class TimeRange:
    """Sessions started at or after `start` and before `end` (None: unbounded)."""

    start: datetime | None = None
    end: datetime | None = None


def bound(parameter: str, value: str, now: datetime) -> datetime | None:
    """One bound as an aware UTC time (None when empty); RangeError when it does not parse."""
    value = value.strip()
    if not value:
        return None
    relative = _RELATIVE.fullmatch(value)
    if relative is not None:
        if relative.group(1) is None:
            return now
        return now - timedelta(seconds=int(relative.group(1)) * _UNIT_S[relative.group(2)])
    if _EPOCH_MS.fullmatch(value):
        try:
            return datetime.fromtimestamp(int(value) / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            raise RangeError(parameter, value) from None
    try:
        return parse_time(value)
    except ValueError:
        raise RangeError(parameter, value) from None


def time_range(first: str, last: str, now: datetime) -> TimeRange:
    """The range of `from` = first and `to` = last."""
    return TimeRange(start=bound("from", first, now), end=bound("to", last, now))


def with_range(filter_text: str, window: TimeRange) -> str:
    """`filter_text` with the range's bounds as filter terms: what the API's `q` would be."""
    terms = [filter_text.strip()] if filter_text.strip() else []
    if window.start is not None:
        terms.append(f"started_after:{format_time(window.start)}")
    if window.end is not None:
        terms.append(f"started_before:{format_time(window.end)}")
    return " ".join(terms)
