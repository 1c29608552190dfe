"""The SQLite backend (store/backend.py): the embedded store, a file beside the service."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.store.reimport import Reimport
from tunnelacct.store.sqlite import cells, layout, purge
from tunnelacct.store.sqlite.layout import (
    begin_read,
    begin_write,
    cover_days,
    move_default_rows,
    org_periods,
    org_tables,
    table_named,
)
from tunnelacct.store.sqlite.lock import LeaseLock
from tunnelacct.store.sqlite.write import RoutedWrite

log = logging.getLogger("tunnelacct.store.engine")  # where partitions ahead are logged


class SqliteBackend:
    name = "sqlite"
    label = "SQLite"
    purge_batches_take_write_lock = True  # one writer at a time: a batch waits for the flush

    def batch_write(self, engine: AsyncEngine, reimport: Reimport | None) -> RoutedWrite:
        return RoutedWrite(engine, reimport)

    async def ensure_days_ahead(self, engine: AsyncEngine, days: list[date]) -> None:
        """The partitions of every org with logging on and a retention (layout.py), from
        tomorrow: today's rows stay where they are (sessions_default at first), a move that
        would stall the writer; none starts before tomorrow."""
        coming = days[1:]
        async with engine.begin() as conn:
            periods = await conn.run_sync(org_periods, True)
            keys = {(org, day) for org in periods for day in coming}
            made, _ = await conn.run_sync(cover_days, keys, periods, min(coming))
        if made:
            log.info("created %d sessions partitions (%s)", len(made), ", ".join(made))

    def purge_lock(self, engine: AsyncEngine, holder: str) -> LeaseLock:
        return LeaseLock(engine, holder)

    def range_tables(
        self, conn: Connection, org_id: str, first: datetime, last: datetime
    ) -> list[Table] | None:
        """sessions_default and the org's partitions that hold the span, listed in a read
        transaction begun here: SQLite sorts the rows of the sessions view again (a temporary
        B-tree) when a read computes anything from its columns, as the CSV export does, where
        it merges a compound SELECT of the tables in their indexes' order (layout.py). None
        (the view) for a span of more tables than one compound SELECT may hold."""
        begin_read(conn)
        names = org_tables(conn, org_id, first, last)
        if len(names) > layout.VIEW_CHUNK:  # past SQLite's cap on a compound SELECT's terms
            return None  # the view, which unites views of VIEW_CHUNK tables each
        return [table_named(name) for name in names]

    # the engine's own modules do these
    drop_expired = staticmethod(purge.drop_expired)
    expired_batches = staticmethod(purge.expired_batches)
    cell_sql = staticmethod(cells.cell_sql)

    async def statement_interrupter(
        self, conn: AsyncConnection, timeout_s: float
    ) -> Callable[[], None] | None:
        """SQLite's interrupt() of the connection: the caller calls it after `timeout_s`."""
        raw = await conn.get_raw_connection()
        sqlite = raw.driver_connection._conn  # type: ignore[union-attr]
        return sqlite.interrupt  # type: ignore[no-any-return]

    def day_text_sql(self, time_column: str) -> str:
        """The first 10 characters: times are stored as UTC text, "2026-11-23 10:40:45.123456"."""
        return f"substr({time_column}, 1, 10)"

    async def lock_usage(self, conn: AsyncConnection) -> None:
        """SQLite's write lock (one writer at a time): BEGIN IMMEDIATE."""
        await conn.run_sync(begin_write)

    def week_start_sql(self, day_column: str) -> str:
        """The Monday of the week of an ISO date column: the next Sunday (the day itself if a
        Sunday), less 6 days."""
        return f"date({day_column}, 'weekday 0', '-6 days')"

    def place_unpartitioned_rows(self, engine: Engine) -> int | None:
        """Move the rows of sessions_default into partitions (layout.move_default_rows)."""
        return move_default_rows(engine)
