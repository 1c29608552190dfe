"""SQLite's purge lock: the lease row of `purge_locks` is the lock (store/purgelock.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.store.purgelock import acquire_lease, release_lease


class LeaseLock:
    """The purge lock of one purge run on SQLite: the lease row, renewed by every batch."""

    def __init__(self, engine: AsyncEngine, holder: str) -> None:
        self._engine = engine
        self._holder = holder
        self._held = False

    async def acquire(self, now: datetime) -> str | None:
        """Take the lease; None when taken, else who holds it."""
        other = await acquire_lease(self._engine, self._holder, now)
        self._held = other is None
        return other

    async def release(self) -> None:
        """Free the lease taken by `acquire()`; a failure is logged (the lease expires)."""
        if not self._held:
            return
        self._held = False
        await release_lease(self._engine, self._holder)
