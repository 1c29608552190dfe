"""Session rows: the sessions columns, one event as the row a driver takes, and the upserts.

The writer flushes on the event loop beside the flow table, so rows skip SQLAlchemy's per-row
work (parameter dicts, type processors: ~26 µs a row of event-loop time, now ~4 µs with submit()
included; tests/benchmarks/bench_writer.py): the upsert is plain SQL in the driver's paramstyle,
and each row is a tuple of the values the driver takes, built straight from the event. On SQLite
those are exactly what SQLAlchemy's types would store (`driver_values()`).

Two upserts: `upsert_sql()` binds one row (DBAPI executemany of a batch; SQLite), and
`staged_upsert_sql()` upserts what a binary COPY put into a temporary staging table
(PostgreSQL, the writer's path).
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

from sqlalchemy import Dialect

from tunnelacct.enums import CloseReason, EventKind, IpProto, SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.sessions.days import DayMark, day_date, day_of
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.store.models import IpAddress, SessionRecord, table_of

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

# Columns a newer snapshot of an existing session may change; attribution, addresses and
# started_at are fixed when the session opens. A flow-record session may turn incomplete (or
# estimated) with a later record; its payload stays NULL (None in every snapshot).
UPDATED_COLUMNS = (
    "last_seen_at",
    "ended_at",
    "duration_s",
    "bytes_tx",
    "bytes_rx",
    "packets_tx",
    "packets_rx",
    "payload_bytes_tx",
    "payload_bytes_rx",
    "status",
    "close_reason",
    "day_split",
    "estimated",
    "incomplete",
)

# Placeholder for the i-th (1-based) parameter, by DBAPI paramstyle: aiosqlite takes qmark,
# asyncpg (through SQLAlchemy's adapter) numeric_dollar.
_PLACEHOLDERS: dict[str, Callable[[int], str]] = {
    "qmark": lambda i: "?",
    "numeric_dollar": lambda i: f"${i}",
}

# Plain values of the enums, looked up per row (Enum.value and IpProto.label are slow properties).
_CLOSED = EventKind.CLOSED
_COMPLETED = SessionStatus.COMPLETED.value
_ONGOING = SessionStatus.ONGOING.value
_PROTOCOL_LABELS = {p: p.label for p in IpProto}
_REASON_VALUES: dict[CloseReason | None, str | None] = {r: r.value for r in CloseReason}
_REASON_VALUES[None] = None


def placeholders(dialect: Dialect, count: int) -> list[str]:
    """`count` parameter placeholders in `dialect`'s paramstyle, in order."""
    placeholder = _PLACEHOLDERS.get(dialect.paramstyle)
    if placeholder is None:
        raise StoreError(f"unsupported DBAPI paramstyle {dialect.paramstyle!r} ({dialect.name})")
    return [placeholder(i) for i in range(1, count + 1)]


def _placeholders(dialect: Dialect) -> list[str]:
    """The ROW_COLUMNS parameter placeholders of `dialect`'s paramstyle, in order."""
    return placeholders(dialect, len(ROW_COLUMNS))


# The conflict target: the primary key. On PostgreSQL it is (id, started_at), since sessions is
# partitioned by started_at (migration 0004); the same rows conflict, as an id fixes its start.
_CONFLICT_KEYS = {"sqlite": ("id",), "postgresql": ("id", "started_at")}


def _upsert(dialect: Dialect, rows: str, into: str | None = None) -> str:
    """INSERT INTO sessions (ROW_COLUMNS) `rows` ON CONFLICT (primary key) DO UPDATE ...
    (INSERT INTO `into`, a table shaped like sessions, when given).

    A completed row stays completed: only a CLOSED event may update it, so a late checkpoint
    never reopens a session.
    """
    table = table_of(SessionRecord)
    if set(table.columns.keys()) != set(ROW_COLUMNS):
        raise TypeError(f"ROW_COLUMNS {ROW_COLUMNS} do not match the columns of {table.name}")
    quote = dialect.identifier_preparer.quote
    name = quote(into or table.name)
    columns = ", ".join(quote(c) for c in ROW_COLUMNS)
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in UPDATED_COLUMNS)
    keys = _CONFLICT_KEYS.get(dialect.name)
    if keys is None:
        raise StoreError(f"unsupported database dialect {dialect.name!r}")
    status = quote("status")
    # The status literal is our own constant, not data: inlined, it costs no bound parameter.
    return (
        f"INSERT INTO {name} ({columns}) {rows} "
        f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET {updates} "
        f"WHERE {name}.{status} != '{_COMPLETED}' OR excluded.{status} = '{_COMPLETED}'"
    )


def upsert_sql(dialect: Dialect, into: str | None = None) -> str:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE of one session row, as driver SQL for
    `dialect`, into sessions or table `into` (on SQLite, a partition: sqlite/layout.py).

    Parameters are the ROW_COLUMNS values in order; a batch runs it as DBAPI executemany.
    """
    return _upsert(dialect, f"VALUES ({', '.join(_placeholders(dialect))})", into)


def _types(name: str, dialect: Dialect) -> tuple[str, str]:
    """(SQL type of the values rows hold, SQL type of the column) of sessions column `name`.

    They differ for the addresses on PostgreSQL: rows hold inet_ntop text, which asyncpg binds
    as it is, and the server casts it to inet. asyncpg's inet codec would parse each one with
    Python's ipaddress: COPYing str into inet staging columns cost 10 µs a row more of client
    CPU (28,000 rows/s against 38,000-42,000 for text, same server CPU; issue 7, 2-vCPU VM).
    """
    column_type = table_of(SessionRecord).c[name].type
    stored = column_type.compile(dialect=dialect)
    return ("TEXT" if isinstance(column_type, IpAddress) else stored), stored


# PostgreSQL: the per-connection temporary table a batch is COPYed into (writer.py).
STAGING_TABLE = "sessions_staging"


def staging_table_sql(dialect: Dialect) -> str:
    """CREATE TEMP TABLE of STAGING_TABLE, emptied at every commit; PostgreSQL only.

    Shaped like sessions (NOT NULLs included, so bad data fails at the COPY) but with the
    types of the values rows hold (`_types()`: addresses as text, cast by the upsert).
    """
    if dialect.name != "postgresql":
        raise StoreError(f"no staging table for database dialect {dialect.name!r}")
    quote = dialect.identifier_preparer.quote
    table = table_of(SessionRecord)
    columns = ", ".join(
        f"{quote(c)} {_types(c, dialect)[0]}{'' if table.c[c].nullable else ' NOT NULL'}"
        for c in ROW_COLUMNS
    )
    return (
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(STAGING_TABLE)} ({columns}) "
        "ON COMMIT DELETE ROWS"
    )


def staged_upsert_sql(dialect: Dialect) -> str:
    """The upsert of every row in STAGING_TABLE.

    Ids must be unique within a batch (ON CONFLICT cannot touch a row twice in one statement);
    the writer's pending map is keyed by session id, so they are.
    """
    quote = dialect.identifier_preparer.quote
    values = []
    for c in ROW_COLUMNS:
        held, stored = _types(c, dialect)
        values.append(quote(c) if held == stored else f"CAST({quote(c)} AS {stored})")
    return _upsert(dialect, f"SELECT {', '.join(values)} FROM {quote(STAGING_TABLE)}")


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
