"""The UTC days of a session's packets (issue 18): a packet counts on the day of its own time.

A session that runs across midnight keeps a *day mark* per day it had packets on before its
last one: its counters as they stood at the end of that day. The flow table takes the marks
when packet time crosses midnight (it splits a batch at the boundary), the session row stores
them, and the usage rollup splits the session's traffic by them:

    marks ((2026-11-30, 1200 B tx, 800 B rx, 10, 8),)   totals 1500 B tx, 900 B rx, 14, 9
    -> 2026-11-30: 1200, 800, 10, 8   and   2026-12-01 (the last packet's day): 300, 100, 4, 1

A session whose packets all fall on one day has no marks.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

DAY_S = 86_400
EPOCH_DAY = date(1970, 1, 1).toordinal()

# (day, bytes_tx, bytes_rx, packets_tx, packets_rx): the day as days since 1970-01-01, the
# counters as they stood at the end of that day (tx = initiator to responder)
DayMark = tuple[int, int, int, int, int]
# (day, bytes_tx, bytes_rx, packets_tx, packets_rx) moved on that day
DayTraffic = tuple[int, int, int, int, int]


def day_of(ts: float) -> int:
    """The UTC day of epoch time `ts`, as days since 1970-01-01."""
    return int(ts // DAY_S)


def day_date(day: int) -> date:
    """Day number `day` as a date."""
    return date.fromordinal(EPOCH_DAY + day)


def day_start(day: int) -> datetime:
    """Midnight UTC that begins day number `day`."""
    return datetime.fromtimestamp(day * DAY_S, UTC)


def traffic_by_day(
    marks: tuple[DayMark, ...],
    last_day: int,
    totals: tuple[int, int, int, int],
) -> list[DayTraffic]:
    """What a session moved on each day: the marks' differences, then what came after the
    last mark on `last_day` (its last packet's day). `totals` are its counters (bytes tx, rx,
    packets tx, rx)."""
    if not marks:
        return [(last_day, *totals)]
    by_day: list[DayTraffic] = []
    before = (0, 0, 0, 0)
    for day, bytes_tx, bytes_rx, packets_tx, packets_rx in marks:
        at_end = (bytes_tx, bytes_rx, packets_tx, packets_rx)
        by_day.append((day, *_minus(at_end, before)))
        before = at_end
    after = _minus(totals, before)
    if any(after) or by_day[-1][0] != last_day:
        by_day.append((last_day, *after))
    return by_day


def _minus(
    later: tuple[int, int, int, int], earlier: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    return (
        later[0] - earlier[0],
        later[1] - earlier[1],
        later[2] - earlier[2],
        later[3] - earlier[3],
    )


def trimmed(marks: tuple[DayMark, ...], totals: tuple[int, int, int, int]) -> tuple[DayMark, ...]:
    """`marks` without those at the end that equal `totals` (no packet came after them): a
    session whose packets all fell on one day keeps no mark."""
    end = len(marks)
    while end and marks[end - 1][1:] == totals:
        end -= 1
    return marks[:end]
