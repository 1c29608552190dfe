"""What every store engine's part of a retention purge shares: the run's context, the rows
that have expired, and the one loop of budgeted transactions that partition work runs in.

A retention purge (retention/purge.py) first lets the engine drop or empty whole partitions of
expired days (`StoreBackend.drop_expired`), then deletes what is left in batches
(`StoreBackend.expired_batches`). Both hold the purge lock's lease and renew it in every
transaction that changes something, so a holder that lost its lease stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import TableClause

from tunnelacct.enums import SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.store.models import SessionRecord, table_of
from tunnelacct.store.purgelock import renew_lease

# the writer's write lock as a purge takes it: an asyncio.Lock in one process, serve's writer
# child's through its pipe (store/servewriter.py ChildWriteLock)
WriteLock = AbstractAsyncContextManager[Any]

# partitions looked at per transaction, at least one: the writer waits once per transaction
DROP_BUDGET_S = 0.05

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


@dataclass(slots=True)
class PurgeWork:
    """One purge run's context, as the engine's partition work sees it.

    `cutoffs`: each purged org's cutoff (a completed session that ended before it has
    expired). `write_lock`: the writer's, taken by every transaction (serve: a flush waits
    for at most one). `on_deleted(org, n)`: called once rows are committed gone (live
    metrics). What the partition work did is left in `dropped` (rows gone per org) and
    `emptied` (partitions with no expired row left, which the batched deletes skip).
    """

    engine: AsyncEngine
    holder: str
    clock: Callable[[], datetime]
    write_lock: WriteLock
    cutoffs: dict[str, datetime]
    on_deleted: Callable[[str, int], None] | None = None
    budget_s: float = DROP_BUDGET_S
    dropped: dict[str, int] = field(default_factory=dict)
    emptied: set[str] = field(default_factory=set)

    def count_gone(self, org_id: str, rows: int) -> None:
        """Add `rows` of `org_id`, committed gone by the partition work."""
        self.dropped[org_id] = self.dropped.get(org_id, 0) + rows
        if self.on_deleted is not None:
            self.on_deleted(org_id, rows)


async def renew_or_stop(conn: AsyncConnection, work: PurgeWork) -> None:
    """Renew the purge lease in the transaction of `conn`; raise StoreError (which undoes the
    transaction) when it was lost."""
    if not await renew_lease(conn, work.holder, work.clock()):
        raise StoreError("the purge lock was lost (lease expired); stopping")


async def in_budgeted_transactions(
    work: PurgeWork,
    todo: list[Item],
    step: Callable[[AsyncConnection, Item], Awaitable[Outcome | None]],
    *,
    begin: Callable[[AsyncConnection], Awaitable[None]],
    committed: Callable[[list[tuple[Item, Outcome]]], None],
    before_commit: Callable[[AsyncConnection], Awaitable[None]] | None = None,
) -> None:
    """Run `step` on each item of `todo`, in transactions that each take the write lock and
    look at items until `work.budget_s` has passed (at least one), yielding to the event loop
    between them.

    `begin(conn)` starts each transaction; `step` returns what it did, or None when it left the
    item alone. A transaction that did something runs `before_commit(conn)` and renews the
    lease before it commits; then `committed` gets each item it did and its outcome.
    """
    while todo:
        done: list[tuple[Item, Outcome]] = []
        async with work.write_lock, work.engine.begin() as conn:
            await begin(conn)
            started = time.monotonic()
            looked = 0
            while todo and (not looked or time.monotonic() - started < work.budget_s):
                item = todo.pop(0)
                looked += 1
                outcome = await step(conn, item)
                if outcome is not None:
                    done.append((item, outcome))
            if done:
                if before_commit is not None:
                    await before_commit(conn)
                await renew_or_stop(conn, work)
        committed(done)
        await asyncio.sleep(0)  # let the writer and the API run between transactions


def expired_conditions(
    org_id: str, cutoff: datetime, sessions: TableClause | None = None
) -> list[ColumnElement[bool]]:
    """The rows of `org_id` in `sessions` (default the sessions table) that have expired by
    `cutoff`: completed, ended before it.

    They are found by the (org_id, started_at, id) index: a session starts before it ends (the
    flow table's end is its latest packet, migration 0015), so one that ended before the cutoff
    started before it too, and the start bounds the index's range. (org_id, ended_at), which
    served only purges, cost every write 15-20% on SQLite and went in 0015.
    """
    t = table_of(SessionRecord) if sessions is None else sessions
    return [
        t.c.org_id == org_id,
        t.c.started_at < cutoff,
        t.c.status == SessionStatus.COMPLETED.value,
        t.c.ended_at < cutoff,
    ]
