"""SQLite's part of a retention purge (retention/purge.py) over its partitioned layout
(layout.py): empty the expired partitions at once, drop the empty ones, and delete the rest in
batches.

A purge calls `drop_expired()` first, then runs the `expired_batches()`, under its lease and
the write lock it shares with the writer, each transaction short.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import Integer, column, delete, literal, literal_column, select, table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable, TableClause

from tunnelacct.enums import SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.store.models import SessionRecord, table_of
from tunnelacct.store.purgework import PurgeWork, expired_conditions, in_budgeted_transactions
from tunnelacct.store.sqlite.layout import (
    DEFAULT_TABLE,
    Partition,
    begin_write,
    outliving_condition,
    partitions,
    rebuild_view,
)

log = logging.getLogger("tunnelacct.retention.purge")  # one logger for the whole purge

# a partition whose expired rows are emptied at once keeps at most this many rows (copied)
KEEP_MAX = 2000
KEEP_TABLE = "tunnelacct_purge_keep"  # a temporary table
ONGOING = SessionStatus.ONGOING.value


async def expired_batches(
    engine: AsyncEngine, org_id: str, cutoff: datetime, batch_size: int, emptied: set[str]
) -> list[Executable]:
    """One batch delete of `org_id`'s expired rows per table that may still hold some:
    sessions_default and the org's partitions that start before `cutoff`, but those `emptied`.
    Each deletes at most `batch_size` rows; the purge runs it until it deletes fewer."""
    async with engine.connect() as conn:
        parts = await conn.run_sync(partitions)
    naive = naive_utc(cutoff)
    mine = [p.name for p in parts if p.org_id == org_id and p.begins < naive]
    names = [DEFAULT_TABLE, *(name for name in mine if name not in emptied)]
    return [_batch_delete(name, org_id, cutoff, batch_size) for name in names]


def _batch_delete(name: str, org_id: str, cutoff: datetime, batch_size: int) -> Executable:
    """One batch of expired rows deleted from table `name` (sessions_default or a partition),
    by rowid: the table's own key, so no primary-key index lookup per row (+10%). The rows
    come oldest first through the (org_id, started_at, id) index, in its order (no sort)."""
    t = shaped_like_sessions(name)
    rowid = literal_column("rowid", Integer)
    batch = select(rowid).select_from(t).where(*expired_conditions(org_id, cutoff, t))
    batch = batch.order_by(t.c.org_id, t.c.started_at).limit(batch_size)
    return delete(t).where(rowid.in_(batch.scalar_subquery()))


def shaped_like_sessions(name: str) -> TableClause:
    return table(name, *(column(c.name, c.type) for c in table_of(SessionRecord).columns))


def naive_utc(at: datetime) -> datetime:
    """`at` as sessions times are stored on SQLite: naive UTC."""
    return at.astimezone(UTC).replace(tzinfo=None)


async def drop_expired(work: PurgeWork) -> None:
    """Empty each partition (one org's span of UTC days, layout.py) whose rows have expired
    but for a few (`_empty()`), counting its expired rows gone and its name in `work.emptied`
    once committed; then drop the expired days' empty partitions.

    Transactions are budgeted (store/purgework.py) and take the write lock, like a batch.
    Emptying changes no schema; dropping does, and each schema change costs every connection a
    new parse of the schema (~20 ms at 360 partitions) and the view a rebuild (~30 ms), so the
    drops come last, many to a transaction.
    """
    async with work.engine.connect() as conn:
        parts = await conn.run_sync(partitions)
    cutoffs = work.cutoffs
    old = [p for p in parts if p.org_id in cutoffs and p.begins < naive_utc(cutoffs[p.org_id])]

    async def begin(conn: AsyncConnection) -> None:
        await conn.run_sync(begin_write)

    async def empty(conn: AsyncConnection, part: Partition) -> int | None:
        return await _empty(conn, part, cutoffs[part.org_id])

    def emptied(done: list[tuple[Partition, int]]) -> None:
        for part, rows in done:
            log.info("purge: emptied partition %s (%d sessions)", part.name, rows)
            work.emptied.add(part.name)
            work.count_gone(part.org_id, rows)

    await in_budgeted_transactions(work, list(old), empty, begin=begin, committed=emptied)

    async def drop_if_empty(conn: AsyncConnection, part: Partition) -> bool | None:
        t = shaped_like_sessions(part.name)
        if (await conn.execute(select(literal(1)).select_from(t).limit(1))).first():
            return None
        quoted = conn.dialect.identifier_preparer.quote(part.name)
        await conn.exec_driver_sql(f"DROP TABLE {quoted}")
        return True

    async def new_view(conn: AsyncConnection) -> None:
        await conn.run_sync(rebuild_view)  # the drops and the new view commit together

    def dropped(done: list[tuple[Partition, bool]]) -> None:
        if done:
            log.info("purge: dropped %d empty partitions of expired days", len(done))

    await in_budgeted_transactions(
        work, old, drop_if_empty, begin=begin, committed=dropped, before_commit=new_view
    )


async def _empty(conn: AsyncConnection, part: Partition, cutoff: datetime) -> int | None:
    """Empty SQLite partition `part` of its expired rows (completed, of its org, ended before
    `cutoff`: `expired_conditions()`) at once, if every day of it is before the cutoff, the
    expired rows are most of it and at most KEEP_MAX rows are not; returns how many expired,
    or None when the partition is left to batched deletes.

    `DELETE FROM` a table without WHERE (nor triggers) is SQLite's truncate optimization: it
    frees the table's and indexes' pages as DROP TABLE does, with no schema change. The rows
    to keep (ongoing sessions, or stray ones that never closed; sessions that ended after the
    cutoff) are copied out first and back after: copying a few rows costs a fraction of
    deleting the rest one by one.

    Every count is an index lookup, so the write lock this runs under is held briefly: the
    partition's other orgs by (org_id, started_at, id); its ongoing sessions by their partial
    index (a partition's status is ongoing or completed, its CHECK says, and a completed
    session has an end); those that ended after the cutoff by the partial index of the
    sessions that outlived the partition (`outliving_condition()`), which holds all of them
    since the cutoff is past the partition's end; the partition's rows by its smallest index.
    """
    if part.end > naive_utc(cutoff):
        return None  # the day the cutoff falls in, or later: batched deletes
    quote = conn.dialect.identifier_preparer.quote
    name = quote(part.name)
    held = f"temp.{quote(KEEP_TABLE)}"
    cols = ", ".join(quote(c.name) for c in table_of(SessionRecord).columns)
    at = naive_utc(cutoff).isoformat(" ", "microseconds")  # as UtcDateTime stores it
    org = part.org_id
    # the conditions of the partial indexes, word for word as they are, for the planner
    ongoing_rows = f"status = '{ONGOING}' AND org_id = ?"
    late_rows = (
        f"{outliving_condition(part)} AND org_id = ? AND ended_at >= ? AND +status != '{ONGOING}'"
    )

    async def count(where: str, *args: object) -> int:
        sql = f"SELECT count(*) FROM {name}" + (f" WHERE {where}" if where else "")
        return int((await conn.exec_driver_sql(sql, args)).scalar_one())

    if await count("org_id < ? OR org_id > ?", org, org):
        return None  # another org's row: not made by the writer
    ongoing = await count(ongoing_rows, org)
    if ongoing > KEEP_MAX:
        return None  # more sessions still open than a copy keeps
    keep = ongoing + await count(late_rows, org, at)
    rows = await count("")
    gone = rows - keep
    if not gone or keep > KEEP_MAX or keep > gone:
        return None
    if keep:
        shape = f"AS SELECT * FROM {name} WHERE 0"
        await conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {quote(KEEP_TABLE)} {shape}")
        await conn.exec_driver_sql(f"DELETE FROM {held}")
        copied = 0
        for where, args in ((ongoing_rows, (org,)), (late_rows, (org, at))):
            put = f"INSERT INTO {held} ({cols}) SELECT {cols} FROM {name} WHERE {where}"
            copied += (await conn.exec_driver_sql(put, args)).rowcount
        if copied != keep:  # undoes this transaction; the batched deletes do it all
            raise StoreError(f"partition {part.name}: {copied} rows to keep, expected {keep}")
    emptied = (await conn.exec_driver_sql(f"DELETE FROM {name}")).rowcount
    if emptied != rows:
        raise StoreError(f"partition {part.name}: emptied {emptied} rows, expected {rows}")
    if keep:
        await conn.exec_driver_sql(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {held}")
        await conn.exec_driver_sql(f"DELETE FROM {held}")
    return gone
