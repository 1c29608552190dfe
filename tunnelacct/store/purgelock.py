"""The purge lock: one retention purge at a time per store (retention.py).

On SQLite a lease row in `purge_locks`, taken by an UPDATE that only succeeds when the lease
is free or expired and renewed between batches (a crashed holder's lease expires). On
PostgreSQL a session-level advisory lock on a connection held for the purge, which the server
frees when that connection ends; the holder is still written to the `purge_locks` row, so a
purge that finds the lock taken can say who has it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.errors import StoreError
from tunnelacct.store.models import PurgeLock as PurgeLockRow
from tunnelacct.store.models import table_of

log = logging.getLogger(__name__)

LOCK_NAME = "retention"
# The PostgreSQL advisory lock's key: "tunnelac" in ASCII, a fixed bigint (per database).
ADVISORY_LOCK_KEY = 0x74756E6E656C6163
LEASE_S = 120.0  # a holder renews it every batch; a crashed one's lease expires after this


class PurgeLock:
    """The purge lock of one purge run: the lease row (SQLite) or an advisory lock held on a
    connection of its own (PostgreSQL)."""

    def __init__(self, engine: AsyncEngine, holder: str) -> None:
        self._engine = engine
        self._holder = holder
        self._conn: AsyncConnection | None = None  # PostgreSQL: holds the advisory lock
        self._held = False

    async def acquire(self, now: datetime) -> str | None:
        """Take the lock; None when taken, else who holds it."""
        if self._engine.dialect.name != "postgresql":
            other = await acquire_lease(self._engine, self._holder, now)
            self._held = other is None
            return other
        conn = await self._engine.connect()
        try:
            other = await _acquire_advisory(conn, self._holder, now)
        except BaseException:
            await conn.close()
            raise
        if other is not None:
            await conn.close()
            return other
        self._conn, self._held = conn, True
        return None

    async def release(self) -> None:
        """Free the lock taken by `acquire()`; failures are logged (the lease expires, and a
        connection that could not unlock is discarded, which frees the advisory lock)."""
        if not self._held:
            return
        self._held = False
        conn, self._conn = self._conn, None
        if conn is None:
            await release_lease(self._engine, self._holder)
            return
        try:
            await release_lease(self._engine, self._holder)  # the reporting row
            await conn.execute(select(func.pg_advisory_unlock(ADVISORY_LOCK_KEY)))
            await conn.commit()
        except SQLAlchemyError as exc:
            log.warning("purge: could not release the purge lock: %s", exc)
            # never hand a connection that may still hold the lock back to the pool
            await conn.invalidate()
        finally:
            await conn.close()


async def _acquire_advisory(conn: AsyncConnection, holder: str, now: datetime) -> str | None:
    """Take the advisory lock on `conn` and name `holder` in the lock row; None when taken,
    else who holds it (as its row says)."""
    got = (await conn.execute(select(func.pg_try_advisory_lock(ADVISORY_LOCK_KEY)))).scalar_one()
    # Session-level: the lock outlives this transaction. Ending it now keeps the held connection
    # idle rather than idle in a transaction, which would hold back VACUUM during the purge.
    await conn.commit()
    t = table_of(PurgeLockRow)
    if not got:
        row = (await conn.execute(select(t.c.holder).where(t.c.name == LOCK_NAME))).first()
        await conn.commit()
        # The holder writes its name just after taking the lock: it may not be there yet.
        return str(row[0]) if row is not None and row[0] is not None else "a purge starting now"
    expires_at = now + timedelta(seconds=LEASE_S)
    stmt = update(t).where(t.c.name == LOCK_NAME).values(holder=holder, expires_at=expires_at)
    if (await conn.execute(stmt)).rowcount != 1:
        await conn.rollback()
        await conn.execute(select(func.pg_advisory_unlock(ADVISORY_LOCK_KEY)))
        await conn.commit()
        raise StoreError("purge: no purge lock row; run `tunnelacct db upgrade`")
    await conn.commit()
    return None


async def acquire_lease(engine: AsyncEngine, holder: str, now: datetime) -> str | None:
    """Take the lease row; None when taken, else who holds it."""
    t = table_of(PurgeLockRow)
    free = (t.c.holder.is_(None)) | (t.c.expires_at < now)
    stmt = (
        update(t)
        .where(t.c.name == LOCK_NAME, free)
        .values(holder=holder, expires_at=now + timedelta(seconds=LEASE_S))
    )
    async with engine.begin() as conn:
        if (await conn.execute(stmt)).rowcount == 1:
            return None
        row = (await conn.execute(select(t.c.holder).where(t.c.name == LOCK_NAME))).first()
    if row is None:
        raise StoreError("purge: no purge lock row; run `tunnelacct db upgrade`")
    return str(row[0])


async def renew_lease(conn: AsyncConnection, holder: str, now: datetime) -> bool:
    t = table_of(PurgeLockRow)
    stmt = (
        update(t)
        .where(t.c.name == LOCK_NAME, t.c.holder == holder)
        .values(expires_at=now + timedelta(seconds=LEASE_S))
    )
    return (await conn.execute(stmt)).rowcount == 1


async def release_lease(engine: AsyncEngine, holder: str) -> None:
    t = table_of(PurgeLockRow)
    stmt = update(t).where(t.c.name == LOCK_NAME, t.c.holder == holder)
    try:
        async with engine.begin() as conn:
            await conn.execute(stmt.values(holder=None, expires_at=None))
    except SQLAlchemyError as exc:  # the lease expires by itself
        log.warning("purge: could not release the purge lock: %s", exc)
