"""Retention purges: delete each org's completed sessions older than its retention, safely.

One purge at a time per store. On SQLite: a lease row in `purge_locks`, taken by an UPDATE that
only succeeds when the lease is free or expired, renewed between batches (a crashed holder's
lease expires). On PostgreSQL (issue 7): a session-level advisory lock (`pg_try_advisory_lock`)
on a connection held for the purge, which the server frees when that connection ends, however
the holder died; the holder is still written to the `purge_locks` row, so that a purge that
finds the lock taken can say who has it, and renewed there as on SQLite.

Deletes go in batches of `batch_size` rows by the (org_id, ended_at) index (on PostgreSQL, one
partition after the other), each its own short transaction, yielding to the event loop between
batches, so the writer is never blocked for long. Every org's part of a run is recorded in
`purge_runs`.

A completed session is purged once its end is more than `retention_days` days before `now`;
ongoing sessions (no end) never are; orgs kept forever (`retention_days` NULL) are skipped.

On PostgreSQL, sessions is partitioned by UTC day of started_at (migration 0004). Before the
batched deletes, a real run drops each day partition whose day ended before the newest cutoff of
the run and whose rows have all expired, each for its own org (completed, ended before that
org's cutoff; a row of an org kept forever, or of an org this run does not purge, keeps the
partition). Its rows are counted per org first, so every figure (`OrgPurge.deleted`,
`purge_runs`, `on_deleted`) is what batched deletes of the same rows would give. A drop waits
at most PARTITION_LOCK_TIMEOUT_MS for its locks; a partition it cannot lock in time is left to
the batched deletes.

Read side: `PurgeRunTally` sums `purge_runs` for the metrics, so that every purge shows, whoever
ran it (serve, cron, a systemd timer, another host).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    bindparam,
    case,
    column,
    delete,
    func,
    literal,
    literal_column,
    select,
    table,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.expression import Executable, TableClause

from tunnelacct.enums import SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.store.models import Org, PurgeRun, SessionRecord, UtcDateTime, table_of
from tunnelacct.store.postgres.errors import sqlstate
from tunnelacct.store.postgres.partitions import attached_partitions, partition_day
from tunnelacct.store.purgelock import PurgeLock, renew_lease
from tunnelacct.store.sqlite.purge import batch_tables, empty_expired, shaped_like_sessions

log = logging.getLogger(__name__)

BATCH_SIZE = 5000
PURGE_RUNS_POLL_S = 30.0  # how often serve reads purge_runs for its metrics
STOPPING = "cancelled (stopping)"  # the error of a run cut short by serve stopping
# PostgreSQL: how long a partition drop may wait for its locks (DROP locks all of sessions
# briefly, so it queues behind a running export, and everything else behind it).
PARTITION_LOCK_TIMEOUT_MS = 500
DROP_BUDGET_S = 0.05  # partitions looked at per transaction, at least one
# lock_not_available (lock_timeout) and deadlock_detected: that partition is left to the deletes
_LOCK_SQLSTATES = frozenset({"55P03", "40P01"})


@dataclass(frozen=True, slots=True)
class OrgPurge:
    """What a purge did (or, dry, would do) for one org."""

    org_id: str
    cutoff: datetime
    deleted: int  # rows deleted, or rows a real run would delete (dry run)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """One purge run: per-org figures, or `locked_by` when another purge held the lock."""

    run_id: str
    dry_run: bool
    orgs: tuple[OrgPurge, ...] = ()
    locked_by: str | None = None

    @property
    def deleted(self) -> int:
        """Rows deleted (or counted, dry) over all orgs."""
        return sum(o.deleted for o in self.orgs)


def default_holder() -> str:
    """This process as a lock holder: host name and a random part (unique per run)."""
    return f"{socket.gethostname()}/{uuid.uuid4().hex[:8]}"


async def purge(
    engine: AsyncEngine,
    *,
    org_id: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    holder: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    write_lock: asyncio.Lock | None = None,
    on_deleted: Callable[[str, int], None] | None = None,
) -> PurgeResult:
    """Purge every org with a retention (or only `org_id`) as of `now`; see the module doc.

    `write_lock` is the writer's (serve): on SQLite each batch takes it, so a flush waits for
    at most one batch (PostgreSQL locks rows: only partition drops take it);
    `on_deleted(org, n)` is called after each committed batch (live metrics).
    Returns `locked_by` set, deleting nothing, when another purge holds the lock. Raises
    StoreError when the store fails; the runs done so far stay recorded, a failed or cancelled
    one with outcome "failed" and the rows its committed batches deleted.
    """
    now = now or clock()
    holder = holder or default_holder()
    run_id = uuid.uuid4().hex
    purge_lock = PurgeLock(engine, holder)
    try:
        other = await purge_lock.acquire(clock())
    except SQLAlchemyError as exc:
        raise StoreError(f"purge: cannot take the purge lock: {exc}") from exc
    if other is not None:
        log.info("purge: another purge is running (%s); nothing to do", other)
        return PurgeResult(run_id, dry_run, locked_by=other)
    done: list[OrgPurge] = []
    lock = write_lock or asyncio.Lock()
    # PostgreSQL's batches lock only their rows: waiting for every writer flush between them
    # made a purge beside a busy writer take minutes (one wait per partition and org).
    batch_lock = asyncio.Lock() if engine.dialect.name == "postgresql" else lock
    try:
        cutoffs = {
            org: now - timedelta(days=days) for org, days in await _retentions(engine, org_id)
        }
        dropped: dict[str, int] = {}  # rows of dropped partitions, per org
        emptied: set[str] = set()  # SQLite: partitions left with no expired row
        if not dry_run and cutoffs:
            try:
                if engine.dialect.name == "postgresql":
                    await _drop_expired_partitions(
                        engine, cutoffs, dropped, holder, clock, lock, on_deleted
                    )
                else:
                    await empty_expired(
                        engine,
                        cutoffs,
                        dropped,
                        emptied,
                        holder,
                        clock,
                        lock,
                        on_deleted,
                        budget_s=DROP_BUDGET_S,
                    )
            except (SQLAlchemyError, StoreError) as exc:
                # the batched deletes below delete what the drops did not
                log.warning("purge: dropping expired partitions stopped: %s", exc)
            except asyncio.CancelledError:
                for org, n in dropped.items():
                    await _unreported(
                        engine, run_id, org, holder, cutoffs[org], clock(), n, STOPPING
                    )
                raise
        for org, cutoff in cutoffs.items():
            record = PurgeRun(
                run_id=run_id,
                org_id=org,
                host=holder,
                started_at=clock(),
                cutoff=cutoff,
                dry_run=dry_run,
                deleted=0,
                outcome="running",
            )
            run_pk = await _record(engine, record)
            deleted = dropped.pop(org, 0)
            try:
                if dry_run:
                    deleted = await _count_expired(engine, org, cutoff)
                else:
                    batches = _delete_expired(
                        engine, org, cutoff, batch_size, holder, clock, batch_lock, emptied
                    )
                    async for n in batches:
                        deleted += n
                        if on_deleted is not None:
                            on_deleted(org, n)
            except (SQLAlchemyError, StoreError) as exc:
                await _finish(engine, run_pk, clock(), "failed", deleted, str(exc))
                for other, n in dropped.items():  # orgs not reached: their dropped rows
                    at = clock()
                    await _unreported(
                        engine, run_id, other, holder, cutoffs[other], at, n, str(exc)
                    )
                raise StoreError(f"purge of org {org!r} failed: {exc}") from exc
            except asyncio.CancelledError:
                # the batches done so far are committed: say so, then stop
                await _finish(engine, run_pk, clock(), "failed", deleted, STOPPING)
                for other, n in dropped.items():
                    at = clock()
                    await _unreported(
                        engine, run_id, other, holder, cutoffs[other], at, n, STOPPING
                    )
                raise
            await _finish(engine, run_pk, clock(), "ok", deleted, None)
            log.info(
                "purge: org %s: %s %d sessions that ended before %s",
                org,
                "would delete" if dry_run else "deleted",
                deleted,
                cutoff.isoformat(),
            )
            done.append(OrgPurge(org, cutoff, deleted))
    finally:
        await purge_lock.release()
    return PurgeResult(run_id, dry_run, tuple(done))


async def _unreported(
    engine: AsyncEngine,
    run_id: str,
    org: str,
    holder: str,
    cutoff: datetime,
    now: datetime,
    deleted: int,
    error: str,
) -> None:
    """Record, as a failed run, the rows of `org` that dropped partitions took, when the run
    stopped (`error`) before the org's own part."""
    record = PurgeRun(
        run_id=run_id,
        org_id=org,
        host=holder,
        started_at=now,
        ended_at=now,
        cutoff=cutoff,
        dry_run=False,
        deleted=deleted,
        outcome="failed",
        error=error,
    )
    await _record(engine, record)


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


async def _drop_expired_partitions(
    engine: AsyncEngine,
    cutoffs: dict[str, datetime],
    dropped: dict[str, int],
    holder: str,
    clock: Callable[[], datetime],
    write_lock: asyncio.Lock,
    on_deleted: Callable[[str, int], None] | None,
) -> None:
    """Drop each partition whose rows have all expired (see the module doc), adding its rows
    per org to `dropped` once each drop is committed.

    One transaction looks at partitions until DROP_BUDGET_S has passed, so that the
    in-process writer, which waits (`write_lock`), waits once per batch of days rather than
    once per day (a store with a hundred empty days took a flush's wait for each).
    """
    newest = max(cutoffs.values())
    # a row in a later day may end after every cutoff
    names = [name for name, end in await _partitions(engine) if end is not None and end <= newest]
    while names:
        done: dict[str, dict[str, int]] = {}
        async with write_lock, engine.begin() as conn:
            await conn.exec_driver_sql(f"SET LOCAL lock_timeout = {int(PARTITION_LOCK_TIMEOUT_MS)}")
            started, looked = time.monotonic(), 0
            while names and (not looked or time.monotonic() - started < DROP_BUDGET_S):
                name, looked = names.pop(0), looked + 1
                try:
                    async with conn.begin_nested():  # a busy day undoes only its own part
                        rows = await _drop_if_expired(conn, name, cutoffs)
                except DBAPIError as exc:
                    if sqlstate(exc) not in _LOCK_SQLSTATES:
                        raise
                    log.info("purge: partition %s is busy; deleting its rows in batches", name)
                    continue
                if rows is not None:
                    done[name] = rows
            if done and not await renew_lease(conn, holder, clock()):
                raise StoreError("the purge lock was lost (lease expired); stopping")
        for name, rows in done.items():
            log.info("purge: dropped partition %s (%d sessions)", name, sum(rows.values()))
            for org, n in rows.items():
                dropped[org] = dropped.get(org, 0) + n
                if on_deleted is not None:
                    on_deleted(org, n)
        await asyncio.sleep(0)  # let the writer and the API run between transactions


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


async def _retentions(engine: AsyncEngine, org_id: str | None) -> list[tuple[str, int]]:
    """(org, days) of the orgs to purge: those with a retention, in id order."""
    t = table_of(Org)
    stmt = select(t.c.id, t.c.retention_days).where(t.c.retention_days.is_not(None))
    if org_id is not None:
        stmt = stmt.where(t.c.id == org_id)
    async with engine.connect() as conn:
        return [(org, int(days)) for org, days in (await conn.execute(stmt.order_by(t.c.id)))]


def _expired(
    org_id: str, cutoff: datetime, t: TableClause | None = None
) -> list[ColumnElement[bool]]:
    t = table_of(SessionRecord) if t is None else t
    return [
        t.c.org_id == org_id,
        t.c.status == SessionStatus.COMPLETED.value,
        t.c.ended_at < cutoff,
    ]


async def _count_expired(engine: AsyncEngine, org_id: str, cutoff: datetime) -> int:
    t = table_of(SessionRecord)
    stmt = select(func.count()).select_from(t).where(*_expired(org_id, cutoff))
    async with engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def _delete_expired(
    engine: AsyncEngine,
    org_id: str,
    cutoff: datetime,
    batch_size: int,
    holder: str,
    clock: Callable[[], datetime],
    write_lock: asyncio.Lock,
    emptied: set[str],
) -> AsyncIterator[int]:
    """Delete in batches by the (org_id, ended_at) index, one short transaction each; yield
    each batch's row count (when not 0) once it is committed.

    PostgreSQL: partition by partition, oldest first, skipping the days that start after the
    cutoff; each batch deletes the rows its subquery found by their ctid (a TID scan). One
    DELETE of the partitioned table by id, or even by (id, started_at), is planned as a join
    against every partition, which scanned all of them for every batch (issue 7).
    """
    if engine.dialect.name == "postgresql":
        parts = await _partitions(engine, named_only=False)
        statements: list[Executable] = [
            _partition_delete(engine, name, org_id, cutoff, batch_size)
            for name, day_end in parts
            if day_end is None or day_end - timedelta(days=1) < cutoff
        ]
    else:
        names = await batch_tables(engine, org_id, cutoff, emptied)
        statements = [_sqlite_delete(name, org_id, cutoff, batch_size) for name in names]
    for stmt in statements:
        while True:
            async with write_lock, engine.begin() as conn:
                n = (await conn.execute(stmt)).rowcount
                if not await renew_lease(conn, holder, clock()):
                    raise StoreError("the purge lock was lost (lease expired); stopping")
            if n:
                yield n
            await asyncio.sleep(0)  # let the writer and the API run between batches
            if n < batch_size:
                break


def _sqlite_delete(name: str, org_id: str, cutoff: datetime, batch_size: int) -> Executable:
    """One batch of `_delete_expired()` in SQLite table `name` (sessions_default or a
    partition), by rowid: the table's own key, so no primary-key index lookup per row (+10%)."""
    t = shaped_like_sessions(name)
    rowid = literal_column("rowid", Integer)
    batch = select(rowid).select_from(t).where(*_expired(org_id, cutoff, t))
    batch = batch.order_by(t.c.ended_at).limit(batch_size)
    return delete(t).where(rowid.in_(batch.scalar_subquery()))


def _partition_delete(
    engine: AsyncEngine, name: str, org_id: str, cutoff: datetime, batch_size: int
) -> TextClause:
    """One batch of `_delete_expired()` in partition `name` (a name from the catalog)."""
    quoted = engine.dialect.identifier_preparer.quote(name)
    return text(
        f"DELETE FROM {quoted} WHERE ctid = ANY(ARRAY("
        f"SELECT ctid FROM {quoted} WHERE org_id = :org AND status = :status"
        " AND ended_at < :cutoff LIMIT :n))"
    ).bindparams(
        bindparam("org", org_id),
        bindparam("status", SessionStatus.COMPLETED.value),
        bindparam("cutoff", cutoff, type_=UtcDateTime()),
        bindparam("n", batch_size),
    )


async def _record(engine: AsyncEngine, run: PurgeRun) -> int:
    t = table_of(PurgeRun)
    values = {c.name: getattr(run, c.name) for c in t.columns if c.name != "id"}
    async with engine.begin() as conn:
        result = await conn.execute(t.insert().values(**values))
        return int(result.inserted_primary_key[0])  # type: ignore[index]


async def _finish(
    engine: AsyncEngine, pk: int, ended_at: datetime, outcome: str, deleted: int, error: str | None
) -> None:
    t = table_of(PurgeRun)
    stmt = update(t).where(t.c.id == pk)
    stmt = stmt.values(ended_at=ended_at, outcome=outcome, deleted=deleted, error=error)
    async with engine.begin() as conn:
        await conn.execute(stmt)


class PurgeRunTally:
    """Sessions deleted per org, and each org's last successful purge, summed from `purge_runs`:
    every run by any process or host, each org's part counted once, when it has ended (issue 15,
    item 9). The first `refresh()` counts every run the table holds.

    What a part deleted counts whatever its outcome (a failed part's committed batches are gone
    too); dry runs count nothing; only parts that ended "ok" are a success. The figures never
    decrease, even when rows of `purge_runs` are deleted.

    A part is new when its id is above every id read before, or when it started after every
    part read before: SQLite gives the ids of deleted rows again to the next rows when they were
    the highest (no AUTOINCREMENT), and a part read before is never above both marks. Parts
    read while still running are read again, by id and run id, until they end.
    """

    def __init__(self, orgs: Iterable[str] = ()) -> None:
        self.deleted_by_org: dict[str, int] = dict.fromkeys(orgs, 0)
        self.last_success_by_org: dict[str, datetime] = {}
        self._max_id = 0
        self._newest_start: datetime | None = None
        self._running: dict[int, str] = {}  # id -> run_id of parts read while running
        self._refreshing = asyncio.Lock()  # two overlapping refreshes would count a part twice

    async def refresh(self, engine: AsyncEngine) -> None:
        """Count the parts recorded or ended since the last refresh (one query); raises
        StoreError when the store fails, counting nothing."""
        t = table_of(PurgeRun)
        async with self._refreshing:
            max_id, newest_start = self._max_id, self._newest_start
            wanted = t.c.id > max_id
            if newest_start is not None:
                wanted = wanted | (t.c.started_at > newest_start)
            if self._running:
                wanted = wanted | t.c.id.in_(list(self._running))
            columns = (
                t.c.id,
                t.c.run_id,
                t.c.org_id,
                t.c.started_at,
                t.c.ended_at,
                t.c.dry_run,
                t.c.deleted,
                t.c.outcome,
            )
            stmt = select(*columns).where(wanted)
            try:
                async with engine.connect() as conn:
                    rows = (await conn.execute(stmt)).all()
            except (SQLAlchemyError, OSError) as exc:  # OSError: a refused connect (asyncpg)
                raise StoreError(f"reading purge_runs: {exc}") from exc
            # no await from here on: a scrape sees the figures before or after, never between
            running: dict[int, str] = {}
            for row in rows:
                new = row.id > max_id or newest_start is None or row.started_at > newest_start
                if not new and self._running.get(row.id) != row.run_id:
                    continue  # its id now names another part, which is not new
                self._max_id = max(self._max_id, row.id)
                if self._newest_start is None or row.started_at > self._newest_start:
                    self._newest_start = row.started_at
                if row.outcome == "running":
                    running[row.id] = row.run_id
                elif not row.dry_run:
                    self._count(row.org_id, int(row.deleted), row.outcome, row.ended_at)
            self._running = running  # parts deleted while running are forgotten

    def _count(self, org_id: str, deleted: int, outcome: str, ended_at: datetime | None) -> None:
        self.deleted_by_org[org_id] = self.deleted_by_org.get(org_id, 0) + deleted
        last = self.last_success_by_org.get(org_id)
        if outcome == "ok" and ended_at is not None and (last is None or ended_at > last):
            self.last_success_by_org[org_id] = ended_at
