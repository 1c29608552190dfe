"""The PostgreSQL backend (store/backend.py): one store that several gateways write to."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.store.postgres import cells, purge
from tunnelacct.store.postgres.lock import AdvisoryLock
from tunnelacct.store.postgres.partitions import ensure_partitions
from tunnelacct.store.postgres.write import CopyWrite
from tunnelacct.store.reimport import Reimport


class PostgresBackend:
    name = "postgresql"
    label = "PostgreSQL"
    # A batch locks only its rows: waiting for every writer flush between batches made a purge
    # beside a busy writer take minutes (one wait per partition and org).
    purge_batches_take_write_lock = False

    def batch_write(self, engine: AsyncEngine, reimport: Reimport | None) -> CopyWrite:
        return CopyWrite(engine, reimport)

    async def ensure_days_ahead(self, engine: AsyncEngine, days: list[date]) -> None:
        """One partition per day, today's too: a day's first rows then never wait for its
        partition (the writer creates a missing one itself)."""
        await ensure_partitions(engine, days)

    def purge_lock(self, engine: AsyncEngine, holder: str) -> AdvisoryLock:
        return AdvisoryLock(engine, holder)

    def range_tables(
        self, conn: Connection, org_id: str, first: datetime, last: datetime
    ) -> list[Table] | None:
        """None: the sessions table, whose partitions PostgreSQL itself reads in index order
        and merges (Merge Append)."""
        return None

    # the engine's own modules do these
    drop_expired = staticmethod(purge.drop_expired)
    expired_batches = staticmethod(purge.expired_batches)
    cell_sql = staticmethod(cells.cell_sql)

    async def statement_interrupter(
        self, conn: AsyncConnection, timeout_s: float
    ) -> Callable[[], None] | None:
        """The server's statement_timeout for the transaction, at the same limit (the task's
        cancel stops the statement sooner); nothing to call."""
        await conn.execute(text(f"SET LOCAL statement_timeout = {int(timeout_s * 1000) + 1}"))
        return None

    def day_text_sql(self, time_column: str) -> str:
        return f"to_char({time_column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    async def lock_usage(self, conn: AsyncConnection) -> None:
        """A table lock that conflicts with the writer's upserts (ROW EXCLUSIVE), not with
        readers: they wait until the rebuild commits."""
        await conn.execute(text("LOCK TABLE usage_days IN SHARE ROW EXCLUSIVE MODE"))

    def week_start_sql(self, day_column: str) -> str:
        """The Monday of the week of an ISO date column (date_trunc's weeks are ISO weeks)."""
        return f"to_char(date_trunc('week', CAST({day_column} AS date)), 'YYYY-MM-DD')"

    def place_unpartitioned_rows(self, engine: Engine) -> int | None:
        return None  # every row is in its day's partition
