"""SQLite's way to write a batch of session rows (store/writer.py flushes, this writes).

Sessions is a view over a few tables per org, each of a span of UTC days (layout.py): a batch
routes each row to the table covering its org and start day, or to sessions_default when none
does, and runs one executemany per table, all in one transaction. It never creates a table
(serve does, ahead of the day): a schema change would cost the flush, and every connection,
tens of milliseconds.

The upsert binds one row and runs as DBAPI executemany. A multi-row VALUES statement was slower
(~10x through SQLAlchemy, which recompiles it per batch; ~10% as plain SQL) and needs chunking
under the bound parameter limit (SQLite 32766).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.store.codec import upsert_sql
from tunnelacct.store.reimport import FreshSession, Reimport
from tunnelacct.store.rows import ROW_COLUMNS
from tunnelacct.store.shares import take_stored_sqlite
from tunnelacct.store.sqlite.layout import (
    DEFAULT_TABLE,
    begin_write,
    partitions,
    routes,
    schema_version,
)
from tunnelacct.store.usage import MONTH_COLUMNS, USAGE_COLUMNS, UsageChanges, usage_upsert_sql

_ID = ROW_COLUMNS.index("id")
_STARTED_AT = ROW_COLUMNS.index("started_at")
_ORG_ID = ROW_COLUMNS.index("org_id")
UPSERTS_KEPT = 4096  # upserts kept, one per table: years of partitions of many orgs
# The page cache of a writing connection. A batch touches the table and six indexes; with
# SQLite's default 2 MiB their pages were evicted and re-read within one flush, and dirty ones
# spilled to the WAL mid-transaction (sqlite3PcacheFetchStress, 19% of the writer thread):
# a session-heavy import wrote 71,000 rows/s with it and 97,000 with 64 MiB (issue 21). Taken
# only as pages are used; readers keep the default.
WRITER_CACHE_KIB = 65_536
# WAL pages after which a commit of the writer copies the WAL into the database (SQLite's
# default 1,000: 4 MiB). Flushes of short sessions touch the same index pages again and again;
# with the default, each 4 MiB checkpoint wrote them back (and synced) anew, and serve's
# collector slowed from 28,000 to 15,000 rows/s once the table passed a million rows, falling
# behind at 50,000 records/s. At 10,000 pages (40 MiB of WAL between checkpoints) a page
# rewritten by several flushes is written back once: 28,000 rows/s throughout (issue 20,
# docs/collector.md). Readers are unaffected; the WAL file keeps its largest size.
WRITER_WAL_AUTOCHECKPOINT_PAGES = 10_000


# None's adapter: a C method that returns None for None (a Python function would cost a frame)
_NONE_ITSELF = cast(Callable[[None], None], {}.get)


def register_none_adapter() -> None:
    """Register an adapter of None that returns it: process-wide, and the same NULL is stored.

    The sqlite3 module binds an int, float or str as it is, but looks for an adapter of any other
    value: for None it builds a key tuple, misses in its registry and looks up `__adapt__` and
    `__conform__` before binding NULL. A session row holds one None or more (day_split; an
    unattributed session's five attribution columns): the rows of a session-heavy import with
    six Nones each, written again with the stdlib sqlite3 module alone, took 12.5-14.1 µs a row
    with this adapter against 13.9-17.5 without (tests/benchmarks/bench_binding.py,
    docs/performance-sessions.md "Rows built where the sessions end").
    """
    sqlite3.register_adapter(type(None), _NONE_ITSELF)


class RoutedWrite:
    """Writes batches of session rows into the tables of SQLite's layout; one at a time, as
    SQLite has one writer at a time."""

    flights = 1

    def __init__(self, engine: AsyncEngine, reimport: Reimport | None) -> None:
        register_none_adapter()
        self._engine = engine
        self._reimport = reimport
        self._upserts: dict[str, str] = {}  # table name -> the upsert into it
        # (org, ISO day) -> its partition, as of schema version _routed_at
        self._routes: dict[tuple[str, str], str] = {}
        self._routed_at: int | None = None
        self._usage_sql = usage_upsert_sql(engine.dialect, ["?"] * len(USAGE_COLUMNS))
        marks = ["?"] * len(MONTH_COLUMNS)
        self._usage_months_sql = usage_upsert_sql(engine.dialect, marks, months=True)

    async def write(
        self, rows: list[tuple[object, ...]], fresh: list[FreshSession], usage: UsageChanges
    ) -> int:
        """Upsert each row into the partition covering its org and UTC start day, or into
        sessions_default, and add `usage` to the rollup, in one transaction; first, for an
        import, delete the rows that `fresh` sessions replace (returns how many), and take
        away the shares of the stored rows of the sessions `usage` rechecks.

        The routes are read again whenever the schema changed (a partition created or dropped
        by serve, a purge, `db partition`): under the write lock, which the caller holds, so
        they hold for the whole flush.
        """
        async with self._engine.begin() as conn:
            # per connection, so on whichever one the pool hands out; a no-op once set
            await conn.exec_driver_sql(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            await conn.exec_driver_sql(
                f"PRAGMA wal_autocheckpoint = {WRITER_WAL_AUTOCHECKPOINT_PAGES}"
            )
            await conn.run_sync(begin_write)
            version = await conn.run_sync(schema_version)
            if version != self._routed_at:
                self._routes = routes(await conn.run_sync(partitions))
                self._routed_at = version
            replaced = 0
            if fresh and self._reimport is not None:
                replaced = await conn.run_sync(
                    self._reimport.replace_sqlite, fresh, self._route, usage
                )
            if usage.recheck:
                await conn.run_sync(take_stored_sqlite, self._tables_of(usage.recheck), usage)
            groups: dict[str, list[tuple[object, ...]]] = {}
            for row in rows:
                key = (row[_ORG_ID], row[_STARTED_AT][:10])  # type: ignore[index]
                name = self._routes.get(key, DEFAULT_TABLE)  # type: ignore[arg-type]
                group = groups.get(name)
                if group is None:
                    groups[name] = group = []
                group.append(row)
            for name, group in groups.items():
                await conn.exec_driver_sql(self._upsert_into(name), group)
            usage_rows = usage.rows()
            if usage_rows:
                await conn.exec_driver_sql(self._usage_sql, usage_rows)
            month_rows = usage.month_rows()
            if month_rows:
                await conn.exec_driver_sql(self._usage_months_sql, month_rows)
        return replaced

    def _tables_of(self, rows: list[tuple[object, ...]]) -> dict[str, list[str]]:
        """The ids of session `rows` by the table that holds them."""
        ids_by_table: dict[str, list[str]] = {}
        for row in rows:
            name = self._route(str(row[_ORG_ID]), str(row[_STARTED_AT])[:10])
            ids_by_table.setdefault(name, []).append(str(row[_ID]))
        return ids_by_table

    def _route(self, org_id: str, day: str) -> str:
        """The table that holds the sessions of `org_id` that started on `day`."""
        return self._routes.get((org_id, day), DEFAULT_TABLE)

    def _upsert_into(self, name: str) -> str:
        sql = self._upserts.get(name)
        if sql is None:
            if len(self._upserts) >= UPSERTS_KEPT:
                self._upserts.clear()
            sql = self._upserts[name] = upsert_sql(self._engine.dialect, name)
        return sql
