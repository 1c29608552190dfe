"""Retention purges: delete each org's completed sessions older than its retention, safely.

A completed session is purged once its end is more than `retention_days` days before `now`;
ongoing sessions (no end) never are; orgs kept forever (`retention_days` NULL) are skipped.

One purge at a time per store: the purge lock (store/purgelock.py), a lease row on SQLite, an
advisory lock on PostgreSQL, renewed in every transaction that deletes. A real run first lets
the store engine drop or empty whole partitions of expired days (`StoreBackend.drop_expired`:
on PostgreSQL each day partition whose rows have all expired, on SQLite each org's span of days
mostly expired), counting their rows per org first, so every figure (`OrgPurge.deleted`,
`purge_runs`, `on_deleted`) is what batched deletes of the same rows would give. Then it
deletes the rest in batches of `batch_size` rows by the (org_id, started_at, id) index
(`StoreBackend.expired_batches`, one table or partition after the other), each its own short
transaction, yielding to the event loop between batches, so the writer is never blocked for
long. Every org's part of a run is recorded in `purge_runs`.

The usage rollup (issue 18) has its own retention, `usage_retention_days`, never shorter than
the sessions': in the same run and under the same lock, an org's usage_days rows of the days
before its first day kept are deleted, a day per transaction. Purging sessions never touches
the rollup.

The access log (issue 19: who read an org's sessions or usage) is kept as long as the org's
sessions: in the same run, an org's access_log rows from before its cutoff are deleted in one
indexed DELETE (a few rows a read, never millions); a dry run counts them. `purge_runs` has no
column for them: the log line and `OrgPurge.access_deleted` report them.

Read side: `PurgeRunTally` sums `purge_runs` for the metrics, so that every purge shows, whoever
ran it (serve, cron, a systemd timer, another host).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.errors import StoreError
from tunnelacct.store.engine import backend_of
from tunnelacct.store.models import (
    AccessRecord,
    Org,
    PurgeRun,
    SessionRecord,
    UsageDay,
    table_of,
)
from tunnelacct.store.purgework import PurgeWork, WriteLock, expired_conditions, renew_or_stop
from tunnelacct.store.usagemonths import take_day_from_months

log = logging.getLogger(__name__)

BATCH_SIZE = 5000
PURGE_RUNS_POLL_S = 30.0  # how often serve reads purge_runs for its metrics
STOPPING = "cancelled (stopping)"  # the error of a run cut short by serve stopping


@dataclass(frozen=True, slots=True)
class OrgPurge:
    """What a purge did (or, dry, would do) for one org."""

    org_id: str
    cutoff: datetime
    deleted: int  # rows deleted, or rows a real run would delete (dry run)
    usage_cutoff_day: date | None = None  # the first day of usage kept; None: kept forever
    usage_deleted: int = 0  # usage_days rows deleted (or that would be)
    access_deleted: int = 0  # access_log rows from before `cutoff` deleted (or that would be)


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
    write_lock: WriteLock | None = None,
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
    backend = backend_of(engine)
    purge_lock = backend.purge_lock(engine, holder)
    try:
        other = await purge_lock.acquire(clock())
    except SQLAlchemyError as exc:
        raise StoreError(f"purge: cannot take the purge lock: {exc}") from exc
    if other is not None:
        log.info("purge: another purge is running (%s); nothing to do", other)
        return PurgeResult(run_id, dry_run, locked_by=other)
    done: list[OrgPurge] = []
    lock: WriteLock = write_lock or asyncio.Lock()
    batch_lock: WriteLock = lock if backend.purge_batches_take_write_lock else asyncio.Lock()
    try:
        retentions = await _retentions(engine, org_id)
        cutoffs = {org: now - timedelta(days=days) for org, days, _usage_days in retentions}
        # the first day of usage kept (the usage rollup outlives the sessions: config/load.py)
        usage_cutoffs = {
            org: (now - timedelta(days=usage_days)).date()
            for org, _days, usage_days in retentions
            if usage_days is not None
        }
        work = PurgeWork(engine, holder, clock, lock, cutoffs, on_deleted)
        dropped = work.dropped  # rows of dropped or emptied partitions, per org
        if not dry_run and cutoffs:
            try:
                await backend.drop_expired(work)
            except (SQLAlchemyError, StoreError) as exc:
                # the batched deletes below delete what the drops did not
                log.warning("purge: dropping expired partitions stopped: %s", exc)
            except asyncio.CancelledError:
                await _unreported(work, run_id, STOPPING)
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
            usage_cutoff_day = usage_cutoffs.get(org)
            record.usage_cutoff_day = None if usage_cutoff_day is None else str(usage_cutoff_day)
            run_pk = await _record(engine, record)
            deleted = dropped.pop(org, 0)
            usage = _UsagePart(usage_cutoff_day)
            access_deleted = 0
            try:
                if dry_run:
                    deleted = await _count_expired(engine, org, cutoff)
                    usage.deleted = await _count_expired_usage(engine, org, usage_cutoff_day)
                    access_deleted = await _count_expired_access(engine, org, cutoff)
                else:
                    batches = _delete_expired(work, org, cutoff, batch_size, batch_lock)
                    async for n in batches:
                        deleted += n
                        if on_deleted is not None:
                            on_deleted(org, n)
                    async for n in _delete_expired_usage(work, org, usage_cutoff_day, batch_lock):
                        usage.deleted += n
                    access_deleted = await _delete_expired_access(work, org, cutoff, batch_lock)
            except (SQLAlchemyError, StoreError) as exc:
                await _finish(engine, run_pk, clock(), "failed", deleted, str(exc), usage)
                await _unreported(work, run_id, str(exc))  # orgs not reached
                raise StoreError(f"purge of org {org!r} failed: {exc}") from exc
            except asyncio.CancelledError:
                # the batches done so far are committed: say so, then stop
                await _finish(engine, run_pk, clock(), "failed", deleted, STOPPING, usage)
                await _unreported(work, run_id, STOPPING)  # orgs not reached
                raise
            await _finish(engine, run_pk, clock(), "ok", deleted, None, usage)
            verb = "would delete" if dry_run else "deleted"
            log.info(
                "purge: org %s: %s %d sessions that ended before %s",
                org,
                verb,
                deleted,
                cutoff.isoformat(),
            )
            if usage_cutoff_day is not None:
                log.info(
                    "purge: org %s: %s %d usage rows of days before %s",
                    org,
                    verb,
                    usage.deleted,
                    usage_cutoff_day,
                )
            log.info(
                "purge: org %s: %s %d access log rows from before %s",
                org,
                verb,
                access_deleted,
                cutoff.isoformat(),
            )
            done.append(
                OrgPurge(org, cutoff, deleted, usage_cutoff_day, usage.deleted, access_deleted)
            )
    finally:
        await purge_lock.release()
    return PurgeResult(run_id, dry_run, tuple(done))


async def _unreported(work: PurgeWork, run_id: str, error: str) -> None:
    """Record, as a failed run each, the rows that dropped partitions took of the orgs whose
    own part the run did not reach, when it stopped (`error`)."""
    for org, deleted in work.dropped.items():
        now = work.clock()
        record = PurgeRun(
            run_id=run_id,
            org_id=org,
            host=work.holder,
            started_at=now,
            ended_at=now,
            cutoff=work.cutoffs[org],
            dry_run=False,
            deleted=deleted,
            outcome="failed",
            error=error,
        )
        await _record(work.engine, record)


async def _retentions(engine: AsyncEngine, org_id: str | None) -> list[tuple[str, int, int | None]]:
    """(org, days, usage days or None for forever) of the orgs to purge: those with a
    retention, in id order (an org whose sessions are kept forever keeps its usage too)."""
    t = table_of(Org)
    stmt = select(t.c.id, t.c.retention_days, t.c.usage_retention_days)
    stmt = stmt.where(t.c.retention_days.is_not(None))
    if org_id is not None:
        stmt = stmt.where(t.c.id == org_id)
    async with engine.connect() as conn:
        rows = await conn.execute(stmt.order_by(t.c.id))
        return [
            (org, int(days), None if usage_days is None else int(usage_days))
            for org, days, usage_days in rows
        ]


@dataclass(slots=True)
class _UsagePart:
    """An org's usage rollup part of a purge run: the first day kept, the rows deleted."""

    cutoff_day: date | None
    deleted: int = 0


def _expired_usage(org_id: str, first_kept: date) -> list[ColumnElement[bool]]:
    t = table_of(UsageDay)
    return [t.c.org_id == org_id, t.c.day < first_kept.isoformat()]


async def _count_expired_usage(engine: AsyncEngine, org_id: str, first_kept: date | None) -> int:
    if first_kept is None:
        return 0
    t = table_of(UsageDay)
    stmt = select(func.count()).select_from(t).where(*_expired_usage(org_id, first_kept))
    async with engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def _delete_expired_usage(
    work: PurgeWork, org_id: str, first_kept: date | None, write_lock: WriteLock
) -> AsyncIterator[int]:
    """Delete `org_id`'s usage rows of the days before `first_kept`, a day per short
    transaction under `write_lock`, renewing the lease; yield each day's row count."""
    if first_kept is None:
        return
    t = table_of(UsageDay)
    engine = work.engine
    days_stmt = select(t.c.day).where(*_expired_usage(org_id, first_kept)).distinct()
    async with engine.connect() as conn:
        days = sorted(str(day) for day in (await conn.execute(days_stmt)).scalars())
    backend = backend_of(engine)
    for day in days:
        async with write_lock, engine.begin() as conn:
            await backend.lock_usage(conn)  # the writer's month rows wait for this day's
            await take_day_from_months(conn, org_id, day)
            stmt = delete(t).where(t.c.org_id == org_id, t.c.day == day)
            deleted = (await conn.execute(stmt)).rowcount
            await renew_or_stop(conn, work)
        yield deleted
        await asyncio.sleep(0)  # let the writer and the API run between days


def _expired_access(org_id: str, cutoff: datetime) -> list[ColumnElement[bool]]:
    t = table_of(AccessRecord)
    return [t.c.org_id == org_id, t.c.at < cutoff]


async def _count_expired_access(engine: AsyncEngine, org_id: str, cutoff: datetime) -> int:
    t = table_of(AccessRecord)
    stmt = select(func.count()).select_from(t).where(*_expired_access(org_id, cutoff))
    async with engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def _delete_expired_access(
    work: PurgeWork, org_id: str, cutoff: datetime, write_lock: WriteLock
) -> int:
    """Delete `org_id`'s access log rows from before `cutoff` in one transaction under
    `write_lock`, renewing the lease; return how many."""
    t = table_of(AccessRecord)
    async with write_lock, work.engine.begin() as conn:
        deleted = (await conn.execute(delete(t).where(*_expired_access(org_id, cutoff)))).rowcount
        await renew_or_stop(conn, work)
    return int(deleted)


async def _count_expired(engine: AsyncEngine, org_id: str, cutoff: datetime) -> int:
    t = table_of(SessionRecord)
    stmt = select(func.count()).select_from(t).where(*expired_conditions(org_id, cutoff))
    async with engine.connect() as conn:
        return int((await conn.execute(stmt)).scalar_one())


async def _delete_expired(
    work: PurgeWork, org_id: str, cutoff: datetime, batch_size: int, write_lock: WriteLock
) -> AsyncIterator[int]:
    """Delete `org_id`'s expired rows in batches (`StoreBackend.expired_batches`), one short
    transaction each under `write_lock`, renewing the lease; yield each batch's row count
    (when not 0) once it is committed."""
    engine = work.engine
    statements = await backend_of(engine).expired_batches(
        engine, org_id, cutoff, batch_size, work.emptied
    )
    for stmt in statements:
        while True:
            async with write_lock, engine.begin() as conn:
                deleted = (await conn.execute(stmt)).rowcount
                await renew_or_stop(conn, work)
            if deleted:
                yield deleted
            await asyncio.sleep(0)  # let the writer and the API run between batches
            if deleted < batch_size:
                break


async def _record(engine: AsyncEngine, run: PurgeRun) -> int:
    t = table_of(PurgeRun)
    values = {c.name: getattr(run, c.name) for c in t.columns if c.name != "id"}
    async with engine.begin() as conn:
        result = await conn.execute(t.insert().values(**values))
        return int(result.inserted_primary_key[0])  # type: ignore[index]


async def _finish(
    engine: AsyncEngine,
    pk: int,
    ended_at: datetime,
    outcome: str,
    deleted: int,
    error: str | None,
    usage: _UsagePart,
) -> None:
    t = table_of(PurgeRun)
    stmt = update(t).where(t.c.id == pk)
    stmt = stmt.values(
        ended_at=ended_at,
        outcome=outcome,
        deleted=deleted,
        error=error,
        usage_deleted=usage.deleted,
    )
    async with engine.begin() as conn:
        await conn.execute(stmt)


class PurgeRunTally:
    """Sessions deleted per org, each org's failed purges and its last successful one, summed
    from `purge_runs`: every run by any process or host, each org's part counted once, when it
    has ended (issue 15, item 9). The first `refresh()` counts every run the table holds.

    What a part deleted counts whatever its outcome (a failed part's committed batches are gone
    too); dry runs count nothing; only parts that ended "ok" are a success. A part that ended
    "failed" is a failure, unless serve's stop cut it short (error STOPPING: the next run goes
    on where it stopped, and a restart is no purge failing; issue 22). The figures never
    decrease, even when rows of `purge_runs` are deleted.

    A part is new when its id is above every id read before, or when it started after every
    part read before: SQLite gives the ids of deleted rows again to the next rows when they were
    the highest (no AUTOINCREMENT), and a part read before is never above both marks. Parts
    read while still running are read again, by id and run id, until they end.
    """

    def __init__(self, orgs: Iterable[str] = ()) -> None:
        known = list(orgs)
        self.deleted_by_org: dict[str, int] = dict.fromkeys(known, 0)
        self.failures_by_org: dict[str, int] = dict.fromkeys(known, 0)
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
            max_id = self._max_id
            newest_start = self._newest_start
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
                t.c.error,
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
                    self._count(row.org_id, int(row.deleted), row.outcome, row.error, row.ended_at)
            self._running = running  # parts deleted while running are forgotten

    def _count(
        self,
        org_id: str,
        deleted: int,
        outcome: str,
        error: str | None,
        ended_at: datetime | None,
    ) -> None:
        self.deleted_by_org[org_id] = self.deleted_by_org.get(org_id, 0) + deleted
        failures = self.failures_by_org.setdefault(org_id, 0)
        if outcome == "failed" and error != STOPPING:
            self.failures_by_org[org_id] = failures + 1
        last = self.last_success_by_org.get(org_id)
        if outcome == "ok" and ended_at is not None and (last is None or ended_at > last):
            self.last_success_by_org[org_id] = ended_at
