"""Session rows: one event as the row of values a database driver takes.

Each row is a tuple of the sessions columns in ROW_COLUMNS order, built straight from the event
(`session_values()`), in the values the engine's driver binds (`driver_values()`): on SQLite,
exactly what SQLAlchemy's types would store. No SQLAlchemy here: `tunnelacct import` builds the
rows of sessions complete in one write in its own process, which never imports it, and its
writer child writes them (store/complete.py); the upserts are in codec.py.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from tunnelacct.enums import CloseReason, EventKind, IpProto, SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.sessions.days import DayMark, day_date, day_of
from tunnelacct.sessions.events import SessionEvent

T = TypeVar("T")

# The sessions columns in the order session_values() returns them.
ROW_COLUMNS = (
    "id",
    "org_id",
    "client_id",
    "client_name",
    "user_id",
    "resource_id",
    "resource_name",
    "protocol",
    "ip_version",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "started_at",
    "ended_at",
    "last_seen_at",
    "duration_s",
    "bytes_tx",
    "bytes_rx",
    "packets_tx",
    "packets_rx",
    "payload_bytes_tx",
    "payload_bytes_rx",
    "status",
    "close_reason",
    "midstream",
    "community_id",
    "gateway",
    "interface",
    "day_split",
    "estimated",
    "incomplete",
)

# Plain values of the enums, looked up per row (Enum.value and IpProto.label are slow properties).
_CLOSED = EventKind.CLOSED
_COMPLETED = SessionStatus.COMPLETED.value
_ONGOING = SessionStatus.ONGOING.value
_PROTOCOL_LABELS = {p: p.label for p in IpProto}
_REASON_VALUES: dict[CloseReason | None, str | None] = {r: r.value for r in CloseReason}
_REASON_VALUES[None] = None


def sqlite_time_text(cache_size: int = 4096) -> Callable[[float], str]:
    """A converter of epoch seconds to the text SQLAlchemy stores for a UTC time on SQLite.

    `text(1795430445.123456) == "2026-11-23 10:40:45.123456"`: equal to formatting
    `datetime.fromtimestamp(ts, UTC)`, whose rounding to the microsecond (half to even, on
    the fraction alone) it repeats, at a third of the cost: the date and time up to the second
    come from a cache of the last `cache_size` seconds seen.
    """
    prefixes: dict[float, str] = {}
    modf = math.modf
    fromtimestamp = datetime.fromtimestamp

    def text(ts: float) -> str:
        # CPython's _PyTime_DoubleToDenominator, which datetime.fromtimestamp uses.
        frac, whole = modf(ts)
        us = round(frac * 1e6)
        if us >= 1_000_000:
            us -= 1_000_000
            whole += 1.0
        elif us < 0:
            us += 1_000_000
            whole -= 1.0
        prefix = prefixes.get(whole)
        if prefix is None:
            if len(prefixes) >= cache_size:
                prefixes.clear()
            # isoformat, not strftime: %Y does not zero-pad years before 1000 on glibc.
            prefix = fromtimestamp(whole, UTC).isoformat(" ")[:19] + "."
            prefixes[whole] = prefix
        return prefix + str(us).zfill(6)

    return text


@dataclass(frozen=True, slots=True)
class DriverValues:
    """How a driver takes the values SQLAlchemy's column types would convert.

    `ident` converts the session id, `at` epoch seconds, `flag` a bool.
    """

    ident: Callable[[uuid.UUID], Any]
    at: Callable[[float], Any]
    flag: Callable[[bool], Any]


def _same(value: T) -> T:
    return value


# The values as the model types hold them (and asyncpg takes them): UUID, aware UTC datetime.
MODEL_VALUES = DriverValues(_same, functools.partial(datetime.fromtimestamp, tz=UTC), _same)


def driver_values(dialect_name: str) -> DriverValues:
    """The value conversions for the driver of `dialect_name` (the only dialect-specific code).

    SQLite gets exactly what SQLAlchemy's types store there: `Uuid` as 32 lower-case hex
    digits, `UtcDateTime` as naive UTC text with microseconds, `Boolean` as 0 or 1 (an int
    also binds ~0.3 µs faster than a bool). PostgreSQL (asyncpg) gets the model values.
    """
    if dialect_name == "sqlite":
        return DriverValues(operator.attrgetter("hex"), sqlite_time_text(), int)
    if dialect_name == "postgresql":
        return MODEL_VALUES
    raise StoreError(f"unsupported database dialect {dialect_name!r}")


def session_values(event: SessionEvent, gateway: str, driver: DriverValues) -> tuple[Any, ...]:
    """The sessions row for one event as a ROW_COLUMNS tuple (status from its kind).

    `gateway` is the writer's own ([gateway] name): the row's unless the event carries its
    own (a flow exporter's, issue 20). Payloads of None (flow records) are stored as NULL.
    """
    who = event.attribution
    at = driver.at
    last_ts = event.last_ts
    ended_ts = event.ended_ts
    last_seen_at = at(last_ts)
    if ended_ts is None:
        ended_at = None
    elif ended_ts == last_ts:  # a closed session usually ends at its last packet
        ended_at = last_seen_at
    else:
        ended_at = at(ended_ts)
    return (
        driver.ident(event.session_id),
        who.org_id,
        who.client_id,
        who.client_name,
        who.user_id,
        who.resource_id,
        who.resource_name,
        _PROTOCOL_LABELS[event.proto],
        event.family,
        event.src_addr,
        event.dst_addr,
        event.src_port,
        event.dst_port,
        at(event.started_ts),
        ended_at,
        last_seen_at,
        last_ts - event.started_ts,
        event.bytes_tx,
        event.bytes_rx,
        event.packets_tx,
        event.packets_rx,
        event.payload_bytes_tx,
        event.payload_bytes_rx,
        _COMPLETED if event.kind is _CLOSED else _ONGOING,
        _REASON_VALUES[event.close_reason],
        driver.flag(event.midstream),
        event.community_id,
        gateway if event.gateway is None else event.gateway,
        event.interface,
        day_split_text(event.day_marks) if event.day_marks else None,
        driver.flag(event.estimated),
        driver.flag(event.incomplete),
    )


def day_split_text(marks: tuple[DayMark, ...]) -> str:
    """A session's day marks as the day_split column holds them: JSON, days as ISO dates."""
    return json.dumps(
        [[day_date(day).isoformat(), *counters] for day, *counters in marks],
        separators=(",", ":"),
    )


def day_marks_of(day_split: str | None) -> tuple[DayMark, ...]:
    """The day marks a day_split column holds (none for NULL)."""
    if not day_split:
        return ()
    marks = []
    for iso_day, bytes_tx, bytes_rx, packets_tx, packets_rx in json.loads(day_split):
        day = day_of(datetime.fromisoformat(iso_day).replace(tzinfo=UTC).timestamp())
        marks.append((day, int(bytes_tx), int(bytes_rx), int(packets_tx), int(packets_rx)))
    return tuple(marks)


def event_row(event: SessionEvent, gateway: str) -> dict[str, Any]:
    """The sessions row for one event by column name, in model types (UUID, aware UTC times);
    `gateway` as session_values() takes it."""
    return dict(zip(ROW_COLUMNS, session_values(event, gateway, MODEL_VALUES), strict=True))
