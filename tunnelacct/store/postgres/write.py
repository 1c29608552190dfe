"""PostgreSQL's way to write a batch of session rows (store/writer.py flushes, this writes).

A batch is COPYed (binary, asyncpg's copy_records_to_table on the pooled connection's driver)
into a temporary staging table and upserted from it, in one transaction, and up to FLIGHTS
batches are written at once. Issue 7 measured both with tests/benchmarks/bench_writer.py
(200,000 events, batches of 5,000, PostgreSQL 15 on the same 2-vCPU VM). Through asyncpg alone
with prebuilt rows, one batch at a time, the COPY path did 57,000-64,000 rows/s and the
previous path, one `unnest()` of one array per column, 37,500-40,700: asyncpg encodes the
COPY's records in ~3 µs a row of client CPU, the arrays in ~9.5 µs, at about the same server
CPU (~14 µs a row, mostly the indexes). With one batch in flight, the writer did 46,500-53,300
rows/s: the server was busy ~70% of the time and the event loop ~30%, one after the other. With
two batches in flight, which overlaps the two, it did 59,500-69,700.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.store.codec import STAGING_TABLE, staged_upsert_sql, staging_table_sql
from tunnelacct.store.postgres.errors import sqlstate
from tunnelacct.store.postgres.partitions import ensure_partitions
from tunnelacct.store.reimport import FreshSession, Reimport
from tunnelacct.store.rows import ROW_COLUMNS
from tunnelacct.store.shares import take_stored_postgresql
from tunnelacct.store.usage import USAGE_COLUMNS, UsageChanges, usage_upsert_sql

# Batches a flush writes at once, on as many connections: while the server works on one, the
# event loop builds and sends the other (issue 7, tests/benchmarks/bench_writer.py).
PG_FLIGHTS = 2

# A row for a UTC day without a sessions partition fails with check_violation ("no partition
# of relation ... found for row"); sessions has no CHECK constraint of its own.
NO_PARTITION_SQLSTATE = "23514"
_ID = ROW_COLUMNS.index("id")
_STARTED_AT = ROW_COLUMNS.index("started_at")


class CopyWrite:
    """Writes batches of session rows into PostgreSQL's day partitions, PG_FLIGHTS at once."""

    flights = PG_FLIGHTS

    def __init__(self, engine: AsyncEngine, reimport: Reimport | None) -> None:
        self._engine = engine
        self._reimport = reimport
        self._upsert_sql = staged_upsert_sql(engine.dialect)
        self._staging_sql = staging_table_sql(engine.dialect)
        placeholders = [f"${number}" for number in range(1, len(USAGE_COLUMNS) + 1)]
        self._usage_sql = usage_upsert_sql(engine.dialect, placeholders)
        self._usage_months_sql = usage_upsert_sql(engine.dialect, placeholders, months=True)
        # the UTC days whose sessions partition this writer has made sure of, so that only the
        # first batch of a day asks the store (issue 7)
        self._days: set[date] = set()

    async def write(
        self, rows: list[tuple[object, ...]], fresh: list[FreshSession], usage: UsageChanges
    ) -> int:
        """Make sure the partitions of the rows' days exist, then COPY and upsert, and add
        `usage` to the rollup; first, for an import, delete the rows that `fresh` sessions
        replace (returns how many), and take away the shares of the stored rows of the
        sessions `usage` rechecks.

        A day seen before may have lost its partition since: retention drops a day's partition
        once every row in it has expired, and a late row (an old capture imported now) may
        follow. Then the write fails on the missing partition, which is created again, once.
        """
        days = {row[_STARTED_AT].date() for row in rows}  # type: ignore[attr-defined]
        if not days <= self._days:
            await ensure_partitions(self._engine, days - self._days)
            self._days |= days
        try:
            async with self._engine.connect() as conn:
                return await self._copy_upsert(conn, rows, fresh, usage)
        except Exception as exc:
            if sqlstate(exc) != NO_PARTITION_SQLSTATE:
                raise
            self._days -= days
            await ensure_partitions(self._engine, days)
            self._days |= days
            async with self._engine.connect() as conn:
                return await self._copy_upsert(conn, rows, fresh, usage)

    async def _copy_upsert(
        self,
        conn: AsyncConnection,
        rows: list[tuple[object, ...]],
        fresh: list[FreshSession],
        usage: UsageChanges,
    ) -> int:
        """COPY `rows` into the connection's staging table and upsert them, in one transaction,
        after deleting the rows that `fresh` sessions of an import replace (returns how many).

        Runs on the asyncpg connection itself (SQLAlchemy has no COPY), so its errors are
        asyncpg's: those with a SQLSTATE are judged by it, and a connection lost meanwhile is
        invalidated in the pool and raised as DisconnectionError.
        """
        pooled = await conn.get_raw_connection()
        driver = pooled.driver_connection
        assert driver is not None  # a checked-out connection has its driver connection
        try:
            async with driver.transaction():
                replaced = 0
                if fresh and self._reimport is not None:
                    replaced = await self._reimport.replace_postgresql(driver, fresh, usage)
                if usage.recheck:
                    ids = [row[_ID] for row in usage.recheck]
                    starts = [row[_STARTED_AT] for row in usage.recheck]
                    await take_stored_postgresql(driver, ids, starts, usage)
                # IF NOT EXISTS: the table lasts as long as the connection, so this creates it
                # on a connection's first flush and costs one round trip (of 5,000 rows) after.
                await driver.execute(self._staging_sql)
                await driver.copy_records_to_table(STAGING_TABLE, records=rows, columns=ROW_COLUMNS)
                await driver.execute(self._upsert_sql)
                usage_rows = usage.rows()
                if usage_rows:
                    await driver.executemany(self._usage_sql, usage_rows)
                month_rows = usage.month_rows()
                if month_rows:
                    await driver.executemany(self._usage_months_sql, month_rows)
            return replaced
        except BaseException as exc:
            cancelled = not isinstance(exc, Exception)  # given up on by write_timeout
            if not driver.is_closed() and (cancelled or driver.is_in_transaction()):
                # A write cancelled mid-way (a server that does not answer) or a rollback that
                # did not happen leaves the connection in a state the pool cannot reset: the
                # server's open transaction with its staged rows, or asyncpg's record of one
                # that the server no longer has (the next write's BEGIN became a SAVEPOINT and
                # failed). Close it rather than hand it to the next write.
                driver.terminate()
            if driver.is_closed():
                if not isinstance(exc, Exception):  # cancelled: the caller gave up on it
                    await conn.invalidate()
                    raise
                await conn.invalidate(exc)
                first = exc  # the server's reason, not the failed rollback it caused
                while first.__context__ is not None:
                    first = first.__context__  # type: ignore[assignment]
                lost = f"connection lost while writing sessions: {first}"
                raise DisconnectionError(lost) from exc
            raise
