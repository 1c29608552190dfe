"""SQLite's part of a retention purge (retention.py) over its partitioned layout
(sqliteparts.py): empty the expired partitions at once, drop the empty ones, and name the
tables left to batched deletes.

A purge calls `empty_expired()` first, then deletes in batches from `batch_tables()`, under
its lease and the write lock it shares with the writer, each transaction short.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import column, literal, select, table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import TableClause

from tunnelacct.enums import SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.store.models import SessionRecord, table_of
from tunnelacct.store.purgelock import renew_lease
from tunnelacct.store.sqlite.layout import (
    DEFAULT_TABLE,
    Partition,
    begin_write,
    partitions,
    rebuild_view,
)

log = logging.getLogger("tunnelacct.retention.purge")  # one logger for the whole purge

# a partition whose expired rows are emptied at once keeps at most this many rows (copied)
KEEP_MAX = 2000
KEEP_TABLE = "tunnelacct_purge_keep"  # a temporary table


async def batch_tables(
    engine: AsyncEngine, org_id: str, cutoff: datetime, emptied: set[str]
) -> list[str]:
    """The tables that may hold expired rows of `org_id` for batched deletes:
    sessions_default and the org's partitions that start before `cutoff`, but those `emptied`."""
    async with engine.connect() as conn:
        parts = await conn.run_sync(partitions)
    naive = naive_utc(cutoff)
    mine = [p.name for p in parts if p.org_id == org_id and p.begins < naive]
    return [DEFAULT_TABLE, *(name for name in mine if name not in emptied)]


def shaped_like_sessions(name: str) -> TableClause:
    return table(name, *(column(c.name, c.type) for c in table_of(SessionRecord).columns))


def naive_utc(at: datetime) -> datetime:
    """`at` as sessions times are stored on SQLite: naive UTC."""
    return at.astimezone(UTC).replace(tzinfo=None)


async def empty_expired(
    engine: AsyncEngine,
    cutoffs: dict[str, datetime],
    dropped: dict[str, int],
    emptied: set[str],
    holder: str,
    clock: Callable[[], datetime],
    write_lock: asyncio.Lock,
    on_deleted: Callable[[str, int], None] | None,
    *,
    budget_s: float,
) -> None:
    """SQLite: empty each partition (one org's span of UTC days, sqliteparts.py) whose rows have
    expired but for a few (`_empty()`), adding its expired rows to `dropped` and its
    name to `emptied` once committed; then drop the expired days' empty partitions.

    A transaction (under `write_lock`, like a batch) looks at partitions until `budget_s`
    has passed. Emptying changes no schema; dropping does, and each schema change costs every
    connection a new parse of the schema (~20 ms at 360 partitions) and the view a rebuild
    (~30 ms), so the drops come last, many to a transaction.
    """
    async with engine.connect() as conn:
        parts = await conn.run_sync(partitions)
    old = [p for p in parts if p.org_id in cutoffs and p.begins < naive_utc(cutoffs[p.org_id])]
    todo = list(old)
    while todo:
        done: list[tuple[Partition, int]] = []
        async with write_lock, engine.begin() as conn:
            await conn.run_sync(begin_write)
            started, looked = time.monotonic(), 0
            while todo and (not looked or time.monotonic() - started < budget_s):
                part, looked = todo.pop(0), looked + 1
                rows = await _empty(conn, part, cutoffs[part.org_id])
                if rows is not None:
                    done.append((part, rows))
            if done and not await renew_lease(conn, holder, clock()):
                raise StoreError("the purge lock was lost (lease expired); stopping")
        for part, n in done:
            log.info("purge: emptied partition %s (%d sessions)", part.name, n)
            emptied.add(part.name)
            dropped[part.org_id] = dropped.get(part.org_id, 0) + n
            if on_deleted is not None:
                on_deleted(part.org_id, n)
        await asyncio.sleep(0)  # let the writer and the API run between transactions
    while old:
        async with write_lock, engine.begin() as conn:
            await conn.run_sync(begin_write)  # the drops and the new view commit together
            started, gone = time.monotonic(), list[str]()
            while old and (not gone or time.monotonic() - started < budget_s):
                part = old.pop(0)
                t = shaped_like_sessions(part.name)
                if (await conn.execute(select(literal(1)).select_from(t).limit(1))).first():
                    continue
                quoted = conn.dialect.identifier_preparer.quote(part.name)
                await conn.exec_driver_sql(f"DROP TABLE {quoted}")
                gone.append(part.name)
            if gone:
                await conn.run_sync(rebuild_view)
        if gone:
            log.info("purge: dropped %d empty partitions of expired days", len(gone))
        await asyncio.sleep(0)


async def _empty(conn: AsyncConnection, part: Partition, cutoff: datetime) -> int | None:
    """Empty SQLite partition `part` of its expired rows (completed, of its org, ended before
    `cutoff`) at once, if they are most of it and at most KEEP_MAX rows are not; returns how
    many expired, or None when the partition is left to batched deletes.

    `DELETE FROM` a table without WHERE (nor triggers) is SQLite's truncate optimization: it
    frees the table's and indexes' pages as DROP TABLE does, with no schema change. The rows
    to keep (an ongoing session that started that day and is still open, or a stray one that
    never closed; sessions that ended after the cutoff) are copied out first and back after:
    copying a few rows costs a fraction of deleting the rest one by one. The counts are index
    lookups; the first rules out the day that the cutoff falls in at once.
    """
    quote = conn.dialect.identifier_preparer.quote
    name, held = quote(part.name), f"temp.{quote(KEEP_TABLE)}"
    cols = ", ".join(quote(c.name) for c in table_of(SessionRecord).columns)
    at = naive_utc(cutoff).isoformat(" ", "microseconds")  # as UtcDateTime stores it
    org, ongoing = part.org_id, SessionStatus.ONGOING.value

    async def count(where: str, *args: object) -> int:
        sql = f"SELECT count(*) FROM {name}" + (f" WHERE {where}" if where else "")
        return int((await conn.exec_driver_sql(sql, args)).scalar_one())

    # Each by an index: (org_id, ended_at), or with `+` kept off it, the partial index of
    # ongoing sessions (the planner took the former and read every row's status: 30-60 ms).
    null_end, late = "org_id = ? AND ended_at IS NULL", "org_id = ? AND ended_at >= ?"
    if await count(null_end, org) + await count(late, org, at) > KEEP_MAX:
        return None  # the day the cutoff falls in, or later
    if await count("org_id < ? OR org_id > ?", org, org):
        return None  # another org's row: not made by the writer
    # expired: of this org, ended before the cutoff, less those not completed (ongoing)
    gone = await count("org_id = ? AND ended_at < ?", org, at)
    gone -= await count("status = ? AND +org_id = ? AND +ended_at < ?", ongoing, org, at)
    keep = await count("") - gone
    if not gone or keep > KEEP_MAX or keep > gone:
        return None
    if keep:
        shape = f"AS SELECT * FROM {name} WHERE 0"
        await conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {quote(KEEP_TABLE)} {shape}")
        await conn.exec_driver_sql(f"DELETE FROM {held}")
        copied = 0
        for where, args in (
            ("status = ?", (ongoing,)),
            (f"{null_end} AND +status != ?", (org, ongoing)),
            (f"{late} AND +status != ?", (org, at, ongoing)),
        ):
            put = f"INSERT INTO {held} ({cols}) SELECT {cols} FROM {name} WHERE {where}"
            copied += (await conn.exec_driver_sql(put, args)).rowcount
        if copied != keep:  # undoes this transaction; the batched deletes do it all
            raise StoreError(f"partition {part.name}: {copied} rows to keep, expected {keep}")
    emptied = (await conn.exec_driver_sql(f"DELETE FROM {name}")).rowcount
    if emptied != gone + keep:
        raise StoreError(f"partition {part.name}: emptied {emptied} rows, expected {gone + keep}")
    if keep:
        await conn.exec_driver_sql(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {held}")
        await conn.exec_driver_sql(f"DELETE FROM {held}")
    return gone
