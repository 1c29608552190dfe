"""The SQLite backend (store/backend.py): the embedded store, a file beside the service."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date, datetime

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable

from tunnelacct.store.cells import CellKind
from tunnelacct.store.purgework import PurgeWork
from tunnelacct.store.reimport import Reimport
from tunnelacct.store.sqlite import cells, purge
from tunnelacct.store.sqlite.layout import cover_days, move_default_rows, org_periods
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

    async def drop_expired(self, work: PurgeWork) -> None:
        await purge.drop_expired(work)

    async def expired_batches(
        self, engine: AsyncEngine, org_id: str, cutoff: datetime, batch_size: int, emptied: set[str]
    ) -> Sequence[Executable]:
        return await purge.expired_batches(engine, org_id, cutoff, batch_size, emptied)

    def cell_sql(self, column: str, kind: CellKind, formula_prefixes: Sequence[str]) -> str:
        return cells.cell_sql(column, kind, formula_prefixes)

    async def statement_interrupter(
        self, conn: AsyncConnection, timeout_s: float
    ) -> Callable[[], None] | None:
        """SQLite's interrupt() of the connection: the caller calls it after `timeout_s`."""
        raw = await conn.get_raw_connection()
        sqlite = raw.driver_connection._conn  # type: ignore[union-attr]
        return sqlite.interrupt  # type: ignore[no-any-return]

    def place_unpartitioned_rows(self, engine: Engine) -> int | None:
        """Move the rows of sessions_default into partitions (layout.move_default_rows)."""
        return move_default_rows(engine)
