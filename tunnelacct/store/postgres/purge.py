"""PostgreSQL's part of a retention purge (retention/purge.py) over its day partitions
(partitions.py, migration 0004): drop the expired days whole, and delete the rest in batches.

A drop looks at each day partition whose day ended before the newest cutoff of the run, and
drops it when all its rows have expired, each for its own org (completed, ended before that
org's cutoff; a row of an org kept forever, or of an org this run does not purge, keeps the
partition). Its rows are counted per org first, so every figure is what batched deletes of the
same rows would give. A drop waits at most PARTITION_LOCK_TIMEOUT_MS for its locks; a partition
it cannot lock in time is left to the batched deletes.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import String, bindparam, case, column, func, literal, select, table, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause

from tunnelacct.enums import SessionStatus
from tunnelacct.store.models import UtcDateTime
from tunnelacct.store.postgres.errors import sqlstate
from tunnelacct.store.postgres.partitions import attached_partitions, partition_day
from tunnelacct.store.purgework import PurgeWork, in_budgeted_transactions

log = logging.getLogger("tunnelacct.retention.purge")  # one logger for the whole purge

# How long a partition drop may wait for its locks (DROP locks all of sessions briefly, so it
# queues behind a running export, and everything else behind it).
PARTITION_LOCK_TIMEOUT_MS = 500
# lock_not_available (lock_timeout) and deadlock_detected: that partition is left to the deletes
_LOCK_SQLSTATES = frozenset({"55P03", "40P01"})


async def _partitions(
    engine: AsyncEngine, *, named_only: bool = True
) -> list[tuple[str, datetime | None]]:
    """(name, end of its UTC day) of every day partition of sessions, oldest first; with
    `named_only` false, then (name, None) of every other partition (made by hand)."""
    async with engine.connect() as conn:
        names = await attached_partitions(conn)
    days = [(day, str(name)) for name in names if (day := partition_day(str(name))) is not None]
    parts: list[tuple[str, datetime | None]] = [
        (name, datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1))
        for day, name in sorted(days)
    ]
    if not named_only:
        parts += [(str(name), None) for name in sorted(names) if partition_day(str(name)) is None]
    return parts


async def drop_expired(work: PurgeWork) -> None:
    """Drop each partition whose rows have all expired (see the module doc), counting its rows
    gone per org once each drop is committed.

    Transactions are budgeted (store/purgework.py), so that the in-process writer, which waits
    (`write_lock`), waits once per batch of days rather than once per day (a store with a
    hundred empty days took a flush's wait for each).
    """
    cutoffs = work.cutoffs
    newest = max(cutoffs.values())
    # a row in a later day may end after every cutoff
    parts = await _partitions(work.engine)
    names = [name for name, end in parts if end is not None and end <= newest]

    async def begin(conn: AsyncConnection) -> None:
        await conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(PARTITION_LOCK_TIMEOUT_MS)}")

    async def drop(conn: AsyncConnection, name: str) -> dict[str, int] | None:
        try:
            async with conn.begin_nested():  # a busy day undoes only its own part
                return await _drop_if_expired(conn, name, cutoffs)
        except DBAPIError as exc:
            if sqlstate(exc) not in _LOCK_SQLSTATES:
                raise
            log.info("purge: partition %s is busy; deleting its rows in batches", name)
            return None

    def dropped(done: list[tuple[str, dict[str, int]]]) -> None:
        for name, rows in done:
            log.info("purge: dropped partition %s (%d sessions)", name, sum(rows.values()))
            for org, n in rows.items():
                work.count_gone(org, n)

    await in_budgeted_transactions(work, names, drop, begin=begin, committed=dropped)


async def _drop_if_expired(
    conn: AsyncConnection, name: str, cutoffs: dict[str, datetime]
) -> dict[str, int] | None:
    """Drop partition `name` when every row in it has expired for its org; return its rows
    per org, or None (nothing done) when a row is to stay.

    The partition is locked SHARE first (no write to that day can commit meanwhile; reads go
    on), then checked (stopping at the first row to keep), counted and dropped, in the
    caller's transaction.
    """
    part = table(
        name,
        column("org_id", String()),
        column("status", String()),
        column("ended_at", UtcDateTime()),
    )
    cutoff = case(
        *((part.c.org_id == org, literal(at, UtcDateTime())) for org, at in cutoffs.items())
    )  # NULL for an org this run does not purge
    # expired_conditions() (store/purgework.py) with each org's cutoff, less its bound on the
    # start: that serves an index, and a scan would only compute the cutoff twice per row (a
    # session ends no earlier than it starts, so it holds wherever the end's does)
    expired = (part.c.status == SessionStatus.COMPLETED.value) & (part.c.ended_at < cutoff)
    keep = select(literal(1)).select_from(part).where(expired.is_not(True)).limit(1)
    per_org = select(part.c.org_id, func.count()).select_from(part).group_by(part.c.org_id)
    quoted = conn.dialect.identifier_preparer.quote(name)
    await conn.exec_driver_sql(f"LOCK TABLE {quoted} IN SHARE MODE")
    if (await conn.execute(keep)).first() is not None:
        return None
    rows = {str(org): int(n) for org, n in await conn.execute(per_org)}
    await conn.exec_driver_sql(f"DROP TABLE {quoted}")
    return rows


async def expired_batches(
    engine: AsyncEngine, org_id: str, cutoff: datetime, batch_size: int, emptied: set[str]
) -> list[TextClause]:
    """One batch delete of `org_id`'s expired rows per partition that may hold some, oldest
    first, skipping the days that start after the cutoff (`emptied` is SQLite's: none here).

    Each batch deletes the rows its subquery found by their ctid (a TID scan). One DELETE of
    the partitioned table by id, or even by (id, started_at), is planned as a join against
    every partition, which scanned all of them for every batch (issue 7).
    """
    parts = await _partitions(engine, named_only=False)
    return [
        _partition_delete(engine, name, org_id, cutoff, batch_size)
        for name, day_end in parts
        if day_end is None or day_end - timedelta(days=1) < cutoff
    ]


def _partition_delete(
    engine: AsyncEngine, name: str, org_id: str, cutoff: datetime, batch_size: int
) -> TextClause:
    """One batch of expired rows deleted from partition `name` (a name from the catalog):
    `expired_conditions()` (store/purgework.py), found by the (org_id, started_at, id) index."""
    quoted = engine.dialect.identifier_preparer.quote(name)
    return text(
        f"DELETE FROM {quoted} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {quoted} WHERE org_id = :org AND started_at < :cutoff"
        " AND status = :status AND ended_at < :cutoff LIMIT :n))"
    ).bindparams(
        bindparam("org", org_id),
        bindparam("status", SessionStatus.COMPLETED.value),
        bindparam("cutoff", cutoff, type_=UtcDateTime()),
        bindparam("n", batch_size),
    )
