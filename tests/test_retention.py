"""Retention purges on a real store: exactly the right rows go, ongoing ones and orgs kept
forever stay, dry runs count what real runs delete, one purge at a time, every run recorded.

The purge tests run on SQLite and PostgreSQL (`db` is the store's URL), a few on PostgreSQL
alone (its advisory lock and day partitions); purges by the real CLI and serve are in
tests/test_retention_cli.py."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, pool
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.helpers.pg import fresh_database, read_rows
from tests.helpers.retention import NOW, access_record, session
from tests.helpers.stores import REFUSED, execute, refuse_writes
from tests.helpers.waiting import WAIT_S
from tunnelacct.config.model import Config, DatabaseConfig, OrgConfig
from tunnelacct.errors import StoreError
from tunnelacct.retention.purge import STOPPING, PurgeRunTally, purge
from tunnelacct.store.engine import make_engine, sync_url
from tunnelacct.store.inventory import sync_inventory
from tunnelacct.store.migrate import migrate
from tunnelacct.store.models import AccessRecord, PurgeRun, SessionRecord
from tunnelacct.store.postgres.lock import ADVISORY_LOCK_KEY
from tunnelacct.store.postgres.partitions import ensure_partitions
from tunnelacct.store.purgelock import LEASE_S, acquire_lease

ORGS = (
    OrgConfig("weekly", "Weekly", retention_days=7),
    OrgConfig("monthly", "Monthly", retention_days=30),
    OrgConfig("keeper", "Keeper", retention_days=None),
    OrgConfig("quiet", "Quiet", logging=False),
)
DAYS = {"weekly": 7, "monthly": 30}


@pytest.fixture
def db(store_url: str) -> str:
    """The URL of a migrated store (SQLite file or PostgreSQL database)."""
    return store_url


@pytest.fixture
async def engine(db: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db)
    await sync_inventory(engine, Config(database=DatabaseConfig(db), orgs=ORGS))
    yield engine
    await engine.dispose()


Oracle = dict[str, tuple[str, datetime | None]]  # stored id -> (org, ended_at)


async def store(engine: AsyncEngine, rows: list[SessionRecord]) -> Oracle:
    """Store `rows`; return what the oracle needs to know of them."""
    oracle = {row.id.hex: (row.org_id, row.ended_at) for row in rows}
    # PostgreSQL: the day partitions of the rows (the writer creates those of what it writes)
    await ensure_partitions(engine, {row.started_at.astimezone(UTC).date() for row in rows})
    async with AsyncSession(engine) as db:
        db.add_all(rows)
        await db.commit()
    return oracle


def spread(orgs: tuple[str, ...]) -> list[SessionRecord]:
    """Per org: one session ending every 12 hours over 120 days, plus ongoing ones that
    started 119 days ago, plus sessions ending just inside and just outside each cutoff."""
    rows = []
    for org in orgs:
        rows += [session(org, k / 2) for k in range(240)]
        rows += [session(org, None, started_at=NOW - timedelta(days=119)) for _ in range(3)]
        if org in DAYS:
            edge = DAYS[org]
            rows += [session(org, edge - 1e-6), session(org, edge + 1e-6)]
    return rows


def remaining(url: str) -> set[str]:
    return {str(h) for (h,) in read_rows(url, "SELECT id FROM sessions")}


def expected_left(oracle: Oracle) -> set[str]:
    """A completed session goes once its end is more than N days before NOW; others stay."""
    return {
        sid
        for sid, (org, ended) in oracle.items()
        if ended is None or org not in DAYS or NOW - ended <= timedelta(days=DAYS[org])
    }


async def test_purge_keeps_exactly_what_each_org_allows(engine: AsyncEngine, db: str) -> None:
    oracle = await store(engine, spread(("weekly", "monthly", "keeper")))
    result = await purge(engine, now=NOW, batch_size=97)
    left = remaining(db)
    assert left == expected_left(oracle)
    gone = {
        org: sum(1 for sid, (o, _) in oracle.items() if o == org and sid not in left)
        for org in ("weekly", "monthly")
    }
    # orgs with a retention, in id order; "keeper" (forever) is not purged at all
    assert {p.org_id: p.deleted for p in result.orgs} == {**gone, "quiet": 0, "unattributed": 0}
    assert [p.org_id for p in result.orgs] == ["monthly", "quiet", "unattributed", "weekly"]
    assert {p.org_id: p.cutoff for p in result.orgs}["weekly"] == NOW - timedelta(days=7)
    assert all(sid in left for sid, (_, ended) in oracle.items() if ended is None)


async def test_dry_run_deletes_nothing_and_counts_what_a_real_run_deletes(
    engine: AsyncEngine, db: str
) -> None:
    await store(engine, spread(("weekly", "monthly", "keeper")))
    before = remaining(db)
    dry = await purge(engine, now=NOW, dry_run=True)
    assert remaining(db) == before
    real = await purge(engine, now=NOW)
    assert [(p.org_id, p.deleted) for p in dry.orgs] == [(p.org_id, p.deleted) for p in real.orgs]
    assert real.deleted == len(before) - len(remaining(db)) > 0


async def store_reads(engine: AsyncEngine, reads: list[AccessRecord]) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as db:
        db.add_all(reads)
        await db.commit()


async def test_the_access_log_goes_with_each_orgs_retention_and_a_dry_run_counts_it(
    engine: AsyncEngine, db: str
) -> None:
    """Per org: a read every 12 hours over 60 days, and reads at its cutoff and a microsecond
    either side of it; a read goes once it is older than the cutoff (issue 19)."""
    reads = [access_record(org, NOW - timedelta(hours=12 * k)) for org in DAYS for k in range(120)]
    reads += [access_record("keeper", NOW - timedelta(days=400))]  # kept forever
    for org, days in DAYS.items():
        cutoff = NOW - timedelta(days=days)
        reads += [access_record(org, cutoff + timedelta(microseconds=d)) for d in (-1, 0, 1)]
    await store_reads(engine, reads)
    doomed = {org: 0 for org in DAYS}
    for read in reads:
        if read.org_id in DAYS and read.at < NOW - timedelta(days=DAYS[read.org_id]):
            doomed[read.org_id] += 1
    assert all(count > 1 for count in doomed.values())

    def stored() -> list[tuple[object, ...]]:
        return read_rows(db, "SELECT org_id, filter_text FROM access_log ORDER BY id")

    before = stored()
    dry = await purge(engine, now=NOW, dry_run=True)
    assert stored() == before
    assert {p.org_id: p.access_deleted for p in dry.orgs if p.org_id in DAYS} == doomed
    real = await purge(engine, now=NOW)
    assert {p.org_id: p.access_deleted for p in real.orgs if p.org_id in DAYS} == doomed
    kept = [
        (read.org_id, read.filter_text)
        for read in reads
        if read.org_id not in DAYS or read.at >= NOW - timedelta(days=DAYS[read.org_id])
    ]
    assert stored() == kept


async def test_every_run_is_recorded_with_cutoff_count_and_outcome(
    engine: AsyncEngine, db: str
) -> None:
    await store(engine, spread(("weekly",)))
    result = await purge(engine, now=NOW, dry_run=True)
    await purge(engine, now=NOW)
    runs = read_rows(
        db,
        "SELECT run_id, cutoff, dry_run, deleted, outcome, ended_at"
        " FROM purge_runs WHERE org_id = 'weekly' ORDER BY id",
    )
    assert [(r[2], r[4]) for r in runs] == [(1, "ok"), (0, "ok")]
    assert runs[0][0] == result.run_id and runs[0][1] == "2026-11-18 12:00:00.000000"
    assert runs[0][3] == runs[1][3] > 0 and all(r[5] is not None for r in runs)
    assert len(read_rows(db, "SELECT 1 FROM purge_runs")) == 2 * 4  # every org with a retention


async def test_a_second_purge_while_one_runs_reports_it_and_deletes_nothing(
    engine: AsyncEngine, db: str
) -> None:
    oracle = await store(engine, spread(("weekly", "monthly")))
    deleting = asyncio.Event()
    first = asyncio.create_task(
        purge(
            engine,
            now=NOW,
            batch_size=3,
            holder="gw-a/1",
            on_deleted=lambda _org, _n: deleting.set(),
        )
    )
    # the first holds the lock and has deleted a batch (or dropped a day) of many to come
    await asyncio.wait_for(deleting.wait(), WAIT_S)
    second = await purge(engine, now=NOW, holder="gw-b/2")
    done = await first
    assert second.locked_by == "gw-a/1" and second.orgs == ()
    assert remaining(db) == expected_left(oracle)  # the totals are right: one did the work
    assert done.deleted == len(oracle) - len(remaining(db))


async def test_an_expired_lease_of_a_crashed_purge_is_taken_over(
    engine: AsyncEngine, db: str
) -> None:
    await store(engine, spread(("weekly",)))
    long_ago = datetime.now(UTC) - timedelta(seconds=2 * LEASE_S)
    assert await acquire_lease(engine, "crashed/1", long_ago) is None  # held, never released
    result = await purge(engine, now=NOW, holder="gw-b/2")
    assert result.locked_by is None and result.deleted > 0


async def test_a_cancelled_purge_is_recorded_with_what_it_deleted_and_frees_the_lock(
    engine: AsyncEngine, db: str
) -> None:
    """serve stopping mid-purge: committed batches stay deleted and are counted, live."""
    oracle = await store(engine, spread(("weekly",)))
    seen: list[tuple[str, int]] = []

    def on_deleted(org: str, n: int) -> None:
        seen.append((org, n))
        if len(seen) == 2:
            task.cancel()

    only = purge(engine, org_id="weekly", now=NOW, batch_size=5, on_deleted=on_deleted)
    task = asyncio.create_task(only)
    with pytest.raises(asyncio.CancelledError):
        await task
    gone = len(oracle) - len(remaining(db))
    # SQLite: two batches; PostgreSQL: two expired day partitions, dropped whole
    assert {org for org, _ in seen} == {"weekly"} and sum(n for _, n in seen) == gone > 0
    if not db.startswith("postgresql"):
        assert seen == [("weekly", 5), ("weekly", 5)]
    runs = read_rows(db, "SELECT org_id, outcome, deleted, error, ended_at FROM purge_runs")
    assert [r[:3] for r in runs] == [("weekly", "failed", gone)]
    assert runs[0][3] == "cancelled (stopping)" and runs[0][4] is not None
    rest = await purge(engine, now=NOW)  # the lock was released: the next run goes ahead
    assert rest.locked_by is None and remaining(db) == expected_left(oracle)


async def test_the_purge_run_tally_counts_each_part_once_whoever_ran_it_and_never_less(
    engine: AsyncEngine, db: str
) -> None:
    """The read side of purge_runs behind serve's retention metrics (issue 15, item 9): purges
    on another engine (another process), a cancelled one that deleted some rows, a dry run, a
    part read while running, and rows of purge_runs deleted by hand, which take nothing back."""
    tally = PurgeRunTally(org.id for org in ORGS)
    await tally.refresh(engine)
    assert tally.deleted_by_org == {"weekly": 0, "monthly": 0, "keeper": 0, "quiet": 0}
    oracle = await store(engine, spread(("weekly", "monthly")))
    other = make_engine(db)
    try:
        cancelled = asyncio.create_task(
            purge(
                other,
                org_id="weekly",
                now=NOW,
                batch_size=5,
                on_deleted=lambda _org, _n: cancelled.cancel(),
            )
        )
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        cut = len(oracle) - len(remaining(db))
        await tally.refresh(engine)
        # what the failed run deleted counts; it is no success
        assert tally.deleted_by_org["weekly"] == cut > 0 and tally.last_success_by_org == {}
        started = datetime.now(UTC)
        await purge(other, now=NOW, dry_run=True)
        await purge(other, now=NOW)
        ended = datetime.now(UTC)
    finally:
        await other.dispose()
    await tally.refresh(engine)
    await tally.refresh(engine)  # nothing new: nothing counted again
    left = remaining(db)
    gone = {
        org: sum(1 for sid, (o, _) in oracle.items() if o == org and sid not in left)
        for org in DAYS
    }
    assert {org: tally.deleted_by_org[org] for org in DAYS} == gone  # the dry run added nothing
    assert tally.deleted_by_org["keeper"] == 0
    assert set(tally.last_success_by_org) == {"weekly", "monthly", "quiet", "unattributed"}
    assert all(started <= at <= ended for at in tally.last_success_by_org.values())

    # an admin empties purge_runs: nothing is taken back, and the next runs count (on SQLite
    # they get the ids of the deleted rows again)
    execute(db, "DELETE FROM purge_runs")
    await tally.refresh(engine)
    assert {org: tally.deleted_by_org[org] for org in DAYS} == gone
    await store(engine, [session("weekly", 10) for _ in range(3)])
    await purge(engine, org_id="weekly", now=NOW)
    await tally.refresh(engine)
    assert tally.deleted_by_org["weekly"] == gone["weekly"] + 3

    # a part still running when read counts once it has ended, once
    running = PurgeRun(
        run_id="f" * 32,
        org_id="monthly",
        host="cron-host/1",
        started_at=datetime.now(UTC),
        cutoff=NOW,
        dry_run=False,
        deleted=0,
        outcome="running",
    )
    async with AsyncSession(engine, expire_on_commit=False) as s:
        s.add(running)
        await s.commit()
    part = running.id
    await tally.refresh(engine)
    assert tally.deleted_by_org["monthly"] == gone["monthly"]
    finished = datetime.now(UTC) + timedelta(seconds=1)
    execute(
        db,
        "UPDATE purge_runs SET outcome = 'ok', deleted = 4, ended_at = ? WHERE id = ?",
        finished,
        part,
    )
    await tally.refresh(engine)
    await tally.refresh(engine)
    assert tally.deleted_by_org["monthly"] == gone["monthly"] + 4
    assert tally.last_success_by_org["monthly"] == finished


async def test_the_purge_run_tally_counts_each_failed_part_once_but_not_a_stop_of_serve(
    engine: AsyncEngine, db: str
) -> None:
    """The source of tunnelacct_retention_purge_failures_total (issue 22): a store that refuses
    the purge's delete fails its org's part, each such part counts once for that org, and a
    part cut short by serve stopping is no failure. The oracle is purge_runs read as SQL."""
    tally = PurgeRunTally(org.id for org in ORGS)
    await tally.refresh(engine)
    assert tally.failures_by_org == {"weekly": 0, "monthly": 0, "keeper": 0, "quiet": 0}
    await store_reads(engine, [access_record("weekly", NOW - timedelta(days=8))])  # expired
    refuse_writes(db, "access_log", "DELETE")
    for _ in range(2):
        with pytest.raises(StoreError, match=f"purge of org 'weekly' failed: .*{REFUSED}"):
            await purge(engine, now=NOW)
    await store(engine, spread(("monthly",)))  # rows for a purge to be stopped in
    cancelled = asyncio.create_task(
        purge(
            engine,
            org_id="monthly",
            now=NOW,
            batch_size=5,
            on_deleted=lambda _org, _n: cancelled.cancel(),
        )
    )
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await tally.refresh(engine)
    await tally.refresh(engine)  # nothing new: nothing counted again
    parts = read_rows(db, "SELECT org_id, outcome, error FROM purge_runs WHERE NOT dry_run")
    failed = [org for org, outcome, error in parts if outcome == "failed" and error != STOPPING]
    assert failed == ["weekly", "weekly"]
    assert ("monthly", "failed", STOPPING) in parts  # the stop: recorded, not counted
    assert tally.failures_by_org == {
        "weekly": 2,
        "monthly": 0,
        "keeper": 0,
        "quiet": 0,
        "unattributed": 0,  # purged ok, twice: no failure, but a figure all the same
    }
    assert "weekly" not in tally.last_success_by_org


async def test_the_purge_run_tally_reports_an_unreachable_store_as_a_store_error() -> None:
    """serve's poll logs a StoreError and goes on; anything else would stop the service."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: connects are refused
    unreachable = make_engine(f"postgresql://postgres@127.0.0.1:{port}/tunnelacct")
    tally = PurgeRunTally(["weekly"])
    try:
        with pytest.raises(StoreError, match="reading purge_runs"):
            await tally.refresh(unreachable)
    finally:
        await unreachable.dispose()
    assert tally.deleted_by_org == {"weekly": 0} and tally.last_success_by_org == {}


async def test_on_postgresql_the_lock_is_the_holders_connection_not_the_lease() -> None:
    """Another process holds the advisory lock: the purge reports it by the name in the lock
    row. Once that process's connection ends (a crash), the lock is free at once, although
    the row still names it with a lease that has not expired."""
    with fresh_database() as url:
        migrate(url)
        other = create_engine(sync_url(url), poolclass=pool.NullPool)
        engine = make_engine(url)
        try:
            await sync_inventory(engine, Config(database=DatabaseConfig(url), orgs=ORGS))
            oracle = await store(engine, spread(("weekly",)))
            with other.connect() as conn:
                conn.execute(sql_text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                conn.execute(
                    sql_text(
                        "UPDATE purge_locks SET holder = 'other-host/1', "
                        "expires_at = now() + interval '1 hour'"
                    )
                )
                conn.commit()
                locked = await purge(engine, now=NOW, holder="gw-b/2")
                assert locked.locked_by == "other-host/1" and locked.orgs == ()
                assert remaining(url) == set(oracle)
            # the connection is closed: its backend ends and frees the advisory lock (the
            # client does not wait for that, so neither can the test)
            free = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
            deadline = time.monotonic() + WAIT_S
            while read_rows(url, free) != [(0,)]:
                assert time.monotonic() < deadline, "the advisory lock outlived its connection"
                await asyncio.sleep(0.05)
            done = await purge(engine, now=NOW, holder="gw-b/2")
            assert done.locked_by is None and remaining(url) == expected_left(oracle)
            assert read_rows(url, "SELECT holder FROM purge_locks") == [(None,)]
        finally:
            other.dispose()
            await engine.dispose()


PARTITIONS_SQL = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = CAST('sessions' AS regclass)"
)


def partitions(url: str) -> set[str]:
    """The partitions of sessions, from the catalog (pg_inherits)."""
    return {str(name) for (name,) in read_rows(url, PARTITIONS_SQL)}


def day_partition(at: datetime) -> str:
    return f"sessions_p{at.astimezone(UTC):%Y%m%d}"


async def pg_store(url: str) -> AsyncEngine:
    migrate(url)
    engine = make_engine(url)
    await sync_inventory(engine, Config(database=DatabaseConfig(url), orgs=ORGS))
    return engine


async def test_on_postgresql_expired_days_are_dropped_with_the_figures_of_batched_deletes() -> None:
    """Orgs with a retention only, so that old days hold nothing to keep: whole partitions go,
    and the rows left, the per-org counts, purge_runs and on_deleted are what the oracle says
    batched deletes leave and count."""
    with fresh_database() as url:
        engine = await pg_store(url)
        try:
            rows = spread(("weekly", "monthly"))
            day_of = {r.id.hex: day_partition(r.started_at) for r in rows}
            oracle = await store(engine, rows)
            before = partitions(url)
            # Oracle of the drops: the days (of started_at) whose every row is to go.
            left = expected_left(oracle)
            droppable = set(day_of.values()) - {day_of[sid] for sid in left}
            seen: dict[str, int] = {}

            def on_deleted(org: str, n: int) -> None:
                seen[org] = seen.get(org, 0) + n

            result = await purge(engine, now=NOW, batch_size=97, on_deleted=on_deleted)
            assert remaining(url) == left
            gone = {
                org: sum(1 for sid, (o, _) in oracle.items() if o == org and sid not in left)
                for org in ("weekly", "monthly")
            }
            figures = {**gone, "quiet": 0, "unattributed": 0}  # every org with a retention
            assert {p.org_id: p.deleted for p in result.orgs} == figures
            assert {org: n for org, n in seen.items() if n} == gone
            runs = read_rows(url, "SELECT org_id, deleted, outcome FROM purge_runs")
            assert {str(o): int(str(n)) for o, n, _ in runs} == figures
            assert {str(outcome) for _, _, outcome in runs} == {"ok"}
            # more than 80 old days went whole; the rest is what rows still need
            assert len(droppable) > 80 and droppable <= before
            assert partitions(url) == before - droppable
        finally:
            await engine.dispose()


async def test_on_postgresql_a_row_to_keep_keeps_its_old_day_partition() -> None:
    """Days 100, 101, 102 and 103 days ago hold expired weekly sessions, and day 100 nothing
    else; day 101 also a session of an org kept forever, day 102 an ongoing one, day 103 an
    expired one of monthly. Purging weekly alone drops day 100 only and deletes weekly's rows
    of the others; purging every org then drops day 103 as well."""
    with fresh_database() as url:
        engine = await pg_store(url)
        try:

            def on_day(days_ago: int, org: str, ended: bool = True) -> SessionRecord:
                started = NOW.replace(hour=6) - timedelta(days=days_ago)
                if not ended:
                    return session(org, None, started_at=started)
                ended_days = (NOW - started).total_seconds() / 86400 - 0.01
                return session(org, ended_days, started_at=started)

            weekly = [on_day(d, "weekly") for d in (100, 101, 102, 103) for _ in range(3)]
            keep = [on_day(101, "keeper"), on_day(102, "weekly", ended=False)]
            monthly = [on_day(103, "monthly")]
            kept, other = {r.id.hex for r in keep}, {r.id.hex for r in monthly}
            oracle = await store(engine, weekly + keep + monthly)
            days = {d: day_partition(NOW - timedelta(days=d)) for d in (100, 101, 102, 103)}
            assert set(days.values()) <= partitions(url)

            only = await purge(engine, org_id="weekly", now=NOW)
            assert [(p.org_id, p.deleted) for p in only.orgs] == [("weekly", 12)]
            assert remaining(url) == kept | other
            assert days[100] not in partitions(url)
            assert {days[101], days[102], days[103]} <= partitions(url)

            everyone = await purge(engine, now=NOW)
            assert {p.org_id: p.deleted for p in everyone.orgs}["monthly"] == 1
            assert remaining(url) == kept == expected_left(oracle)
            assert {days[101], days[102]} <= partitions(url)
            assert days[103] not in partitions(url)
        finally:
            await engine.dispose()
