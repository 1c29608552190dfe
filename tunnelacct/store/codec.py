"""The sessions upserts: SQL in each driver's paramstyle for the rows that `rows.py` builds.

The writer flushes on the event loop beside the flow table, so rows skip SQLAlchemy's per-row
work (parameter dicts, type processors: ~26 µs a row of event-loop time, now ~4 µs with submit()
included; tests/benchmarks/bench_writer.py): the upsert is plain SQL in the driver's paramstyle,
and each row is a tuple of the values the driver takes (`rows.py`).

Two upserts: `upsert_sql()` binds one row (DBAPI executemany of a batch; SQLite), and
`staged_upsert_sql()` upserts what a binary COPY put into a temporary staging table
(PostgreSQL, the writer's path).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Dialect

from tunnelacct.enums import SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.store.models import IpAddress, SessionRecord, table_of
from tunnelacct.store.rows import ROW_COLUMNS

_COMPLETED = SessionStatus.COMPLETED.value


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
