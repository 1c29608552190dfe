"""What the usage rollup holds of stored session rows (store/usage.py), read back by id.

A session's share of the rollup is a function of its stored row alone, so a write that must
know what the rollup holds of a session reads the row, in its own transaction:

- an import that replaces a stored row takes that row's share away (store/reimport.py);
- a write retried after an attempt that failed without saying whether it committed (a
  connection lost during COMMIT, a write given up on that finished later) takes away the
  share of the row as the store holds it now, whichever attempt wrote it, and adds the
  session's whole share: the rollup then counts the session once (`UsageChanges.recheck`).

The rows are read with the ids and start times the writer stores (store/codec.py): on
SQLite hex text and naive UTC text, in the table of the row's org and start day (SQLite has
one writer at a time: the read sees every write before it); on PostgreSQL UUIDs and aware
datetimes, locked (FOR UPDATE), so that a row an earlier attempt is still updating on a
connection the server has not yet seen go is read once that attempt ends. (A first insert of
that attempt still in flight is not seen; the writer retries after a backoff of 0.1 s and
more, and a server finishes a COMMIT it has received in far less.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection

from tunnelacct.enums import SessionStatus
from tunnelacct.store.rows import day_marks_of
from tunnelacct.store.usage import StoredShare, UsageChanges

SHARE_COLUMNS = (
    "org_id",
    "client_id",
    "user_id",
    "resource_id",
    "protocol",
    "gateway",
    "started_at",
    "last_seen_at",
    "status",
    "bytes_tx",
    "bytes_rx",
    "packets_tx",
    "packets_rx",
    "day_split",
)
SQLITE_IDS_PER_STATEMENT = 500  # ids in one IN (...) list: far below SQLite's 32,766 parameters
_COMPLETED = SessionStatus.COMPLETED.value
_SHARES_POSTGRESQL = (
    f"SELECT {', '.join(SHARE_COLUMNS)} FROM sessions WHERE (id, started_at) IN "
    "(SELECT * FROM unnest($1::uuid[], $2::timestamptz[])) FOR UPDATE"
)


def stored_share(row: Sequence[Any], timestamp: Callable[[Any], float]) -> StoredShare:
    """What the rollup holds of a stored row read as SHARE_COLUMNS; `timestamp` reads a time
    as the driver gives it, in epoch seconds."""
    values = dict(zip(SHARE_COLUMNS, row, strict=True))
    return StoredShare(
        org_id=values["org_id"],
        client_id=values["client_id"],
        user_id=values["user_id"],
        resource_id=values["resource_id"],
        protocol=values["protocol"],
        gateway=values["gateway"],
        started_ts=timestamp(values["started_at"]),
        last_ts=timestamp(values["last_seen_at"]),
        completed=values["status"] == _COMPLETED,
        bytes_tx=values["bytes_tx"],
        bytes_rx=values["bytes_rx"],
        packets_tx=values["packets_tx"],
        packets_rx=values["packets_rx"],
        day_marks=day_marks_of(values["day_split"]),
    )


def sqlite_ts(text: str) -> float:
    """A time as SQLite holds it (naive UTC text) in epoch seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def aware_ts(at: datetime) -> float:
    """A time as PostgreSQL's driver gives it (an aware datetime) in epoch seconds."""
    return at.timestamp()


def take_stored_sqlite(
    conn: Connection, ids_by_table: Mapping[str, Sequence[str]], usage: UsageChanges
) -> None:
    """SQLite: take the share of the stored rows `ids_by_table` (table name -> hex ids) out
    of `usage`, on `conn` inside the caller's transaction. An id with no row takes nothing."""
    quote = conn.dialect.identifier_preparer.quote
    columns = ", ".join(SHARE_COLUMNS)
    for name, ids in ids_by_table.items():
        for first in range(0, len(ids), SQLITE_IDS_PER_STATEMENT):
            chunk = ids[first : first + SQLITE_IDS_PER_STATEMENT]
            marks = ", ".join("?" * len(chunk))
            shares = f"SELECT {columns} FROM {quote(name)} WHERE id IN ({marks})"
            for row in conn.exec_driver_sql(shares, tuple(chunk)):
                usage.take_stored(stored_share(row, sqlite_ts))


async def take_stored_postgresql(
    driver: Any, ids: Sequence[Any], starts: Sequence[Any], usage: UsageChanges
) -> None:
    """PostgreSQL: take the share of the stored rows (`ids`[i], `starts`[i]) out of `usage`,
    on asyncpg connection `driver` inside the caller's transaction, locking them. A key with
    no row takes nothing."""
    for row in await driver.fetch(_SHARES_POSTGRESQL, list(ids), list(starts)):
        usage.take_stored(stored_share(row, aware_ts))
