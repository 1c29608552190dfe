"""PostgreSQL's purge lock (issue 7): a session-level advisory lock on a connection held for
the purge, which the server frees when that connection ends, however the holder died. The
holder is still written to the `purge_locks` row (store/purgelock.py), so that a purge that
finds the lock taken can say who has it, and its lease renewed there as on SQLite.
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
from tunnelacct.store.purgelock import LEASE_S, LOCK_NAME, release_lease

log = logging.getLogger("tunnelacct.store.purgelock")  # one logger for the purge lock

# The advisory lock's key: "tunnelac" in ASCII, a fixed bigint (per database).
ADVISORY_LOCK_KEY = 0x74756E6E656C6163


class AdvisoryLock:
    """The purge lock of one purge run on PostgreSQL: an advisory lock held on a connection of
    its own, and the holder's name in the lock row."""

    def __init__(self, engine: AsyncEngine, holder: str) -> None:
        self._engine = engine
        self._holder = holder
        self._conn: AsyncConnection | None = None  # holds the advisory lock

    async def acquire(self, now: datetime) -> str | None:
        """Take the lock; None when taken, else who holds it."""
        conn = await self._engine.connect()
        try:
            other = await _acquire_advisory(conn, self._holder, now)
        except BaseException:
            await conn.close()
            raise
        if other is not None:
            await conn.close()
            return other
        self._conn = conn
        return None

    async def release(self) -> None:
        """Free the lock taken by `acquire()`; failures are logged (the lease expires, and a
        connection that could not unlock is discarded, which frees the advisory lock)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
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
