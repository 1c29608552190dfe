"""The purge lock: one retention purge at a time per store (retention/purge.py).

Every engine keeps the lock's row in `purge_locks`: its holder, and a lease renewed between
batches. On SQLite the row is the lock itself (`sqlite/lock.py`): taken by an UPDATE that only
succeeds when the lease is free or expired, so a crashed holder's lease expires. On PostgreSQL
the lock is a session-level advisory lock (`postgres/lock.py`) and the row only says who holds
it. This module has the row's lease functions, which both use, and the lock's protocol.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.errors import StoreError
from tunnelacct.store.models import PurgeLock as PurgeLockRow
from tunnelacct.store.models import table_of

log = logging.getLogger(__name__)

LOCK_NAME = "retention"
LEASE_S = 120.0  # a holder renews it every batch; a crashed one's lease expires after this


class PurgeLock(Protocol):
    """The purge lock of one purge run, as its store engine takes it."""

    async def acquire(self, now: datetime) -> str | None:
        """Take the lock; None when taken, else who holds it."""

    async def release(self) -> None:
        """Free the lock taken by `acquire()` (nothing when it was not); failures are logged."""


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
