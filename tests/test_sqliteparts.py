"""SQLite's sessions layout (tunnelacct/store/sqlite/layout.py, migration 0006): a few tables
per org, each of a span of UTC days, behind the sessions view. serve creates them ahead, the
writer routes rows into them (or into sessions_default), a purge empties or drops the expired
ones and deletes the rest in batches, and the view reads like a table. SQLite only: PostgreSQL
partitions sessions itself (tests/test_retention.py)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import sqlite3
import uuid
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.helpers.accuracy import run_cli
from tests.helpers.retention import NOW, session
from tests.helpers.sqlite import raw_query
from tests.helpers.stores import alembic_to
from tests.helpers.waiting import WAIT_S
from tunnelacct.config.model import Config, DatabaseConfig, OrgConfig, WriterConfig
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.query.export import _Range, _read_range, export_org_csv
from tunnelacct.query.filters import parse_filter
from tunnelacct.query.pages import in_range, page, page_before
from tunnelacct.retention.purge import purge
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.store.engine import backend_of, keep_partitions_ahead, sync_url
from tunnelacct.store.inventory import sync_inventory
from tunnelacct.store.migrate import migrate
from tunnelacct.store.models import SessionRecord
from tunnelacct.store.sqlite import layout as sqliteparts
from tunnelacct.store.sqlite import purge as sqlitepurge
from tunnelacct.store.sqlite.layout import (
    DEFAULT_TABLE,
    Partition,
    move_default_rows,
    partition_name,
)
from tunnelacct.store.writer import SessionWriter

ORGS = (
    OrgConfig("weekly", "Weekly", retention_days=7),
    OrgConfig("monthly", "Monthly", retention_days=30),
    OrgConfig("quarterly", "Quarterly", retention_days=90),  # tables of 3 days
    OrgConfig("keeper", "Keeper", retention_days=None),  # no tables: never purged
)
DAYS = {"weekly": 7, "monthly": 30, "quarterly": 90}


@pytest.fixture
async def store(engine: AsyncEngine, db_path: Path) -> AsyncEngine:
    """conftest's engine, on a store holding ORGS."""
    await sync_inventory(engine, Config(database=DatabaseConfig(str(db_path)), orgs=ORGS))
    return engine


def tables(db: Path) -> set[str]:
    rows = raw_query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")
    return {str(name) for (name,) in rows}


def partition_tables(db: Path) -> set[str]:
    return {name for name in tables(db) if name.startswith("sessions_p")}


def parts(db: Path) -> list[Partition]:
    return sorted(p for n in partition_tables(db) if (p := sqliteparts.parse_partition(n)))


def ids(db: Path, table: str = "sessions") -> set[str]:
    return {str(h) for (h,) in raw_query(db, f'SELECT id FROM "{table}"')}


def event(
    kind: EventKind, org: str, start: datetime, n: int, sid: uuid.UUID | None = None
) -> SessionEvent:
    """A session event of `org`, for a session that started `n` seconds after `start`."""
    ts = start.timestamp() + n
    done = kind is EventKind.CLOSED
    return SessionEvent(
        kind=kind,
        session_id=sid or uuid.uuid4(),
        proto=IpProto.TCP,
        family=4,
        src_addr="100.64.0.2",
        src_port=40000 + n,
        dst_addr="10.99.0.5",
        dst_port=443,
        started_ts=ts,
        last_ts=ts + 1,
        ended_ts=ts + 1 if done else None,
        bytes_tx=100,
        bytes_rx=1000,
        packets_tx=1,
        packets_rx=2,
        payload_bytes_tx=60,
        payload_bytes_rx=960,
        close_reason=CloseReason.FIN if done else None,
        midstream=False,
        community_id="1:x",
        attribution=Attribution(org),
        interface="wg0",
    )


def closed(org: str, start: datetime, n: int) -> SessionEvent:
    return event(EventKind.CLOSED, org, start, n)


def cover(db: Path, keys: set[tuple[str, date]]) -> list[str]:
    """What serve does ahead of time: partitions for `keys`, from another connection."""
    sync = create_engine(sync_url(f"sqlite:///{db}"), poolclass=pool.NullPool)
    try:
        with sync.begin() as conn:
            periods = sqliteparts.org_periods(conn)
            return sqliteparts.cover_days(conn, keys, periods)[0]
    finally:
        sync.dispose()


async def store_into_partitions(engine: AsyncEngine, db: Path, rows: list[SessionRecord]) -> None:
    """Insert `rows` through the view (they land in sessions_default), then move them: all but
    the rows of orgs kept forever."""
    async with AsyncSession(engine, expire_on_commit=False) as s:
        s.add_all(rows)
        await s.commit()
    assert ids(db, DEFAULT_TABLE) == {r.id.hex for r in rows}
    sync = create_engine(f"sqlite:///{db}", poolclass=pool.NullPool)
    try:
        kept = {r.id.hex for r in rows if r.org_id not in DAYS}
        assert move_default_rows(sync) == len(rows) - len(kept)
    finally:
        sync.dispose()
    assert ids(db, DEFAULT_TABLE) == kept


def home(db: Path, org: str, started: datetime) -> str:
    """The table a session of `org` that started at `started` is in."""
    day = started.astimezone(UTC).date()
    found = [p.name for p in parts(db) if p.org_id == org and p.covers(day)]
    assert len(found) <= 1
    return found[0] if found else DEFAULT_TABLE


def test_partition_names_carry_org_and_span_and_parse_back() -> None:
    for org in ("acme", "ünïcode org", "a_b-c.d", "x" * 80):
        for days in (1, 13):
            name = partition_name(org, date(2026, 11, 25), days)
            assert name.isascii() and name.startswith(f"sessions_p20261125_{days}d_")
            part = sqliteparts.parse_partition(name)
            assert part is not None
            assert (part.org_id, part.start, part.days) == (org, date(2026, 11, 25), days)
    assert sqliteparts.parse_partition("sessions_p20261125") is None  # PostgreSQL's
    assert sqliteparts.parse_partition("sessions_p20261399_1d_61") is None  # no such day
    assert sqliteparts.parse_partition("sessions_p20261125_1d_6") is None  # half a byte
    assert sqliteparts.parse_partition("sessions_p20261125_0d_61") is None  # no day


def test_a_table_spans_a_day_up_to_30_days_of_retention_and_more_beyond() -> None:
    spans = {n: sqliteparts.period_days(n) for n in (1, 7, 30, 31, 90, 365, 3650)}
    assert spans == {1: 1, 7: 1, 30: 1, 31: 2, 90: 3, 365: 13, 3650: 122}
    assert sqliteparts.period_days(None) is None  # kept forever: no tables


async def test_the_writer_routes_rows_to_the_covering_table_or_the_default(
    store: AsyncEngine, db_path: Path
) -> None:
    """Rows go to the table covering their org and start day; without one (a day serve made
    none for, an org kept forever) to sessions_default. The writer creates no table."""
    day0 = datetime(2026, 11, 20, 23, 59, 58, tzinfo=UTC)
    made = cover(db_path, {("weekly", day0.date()), ("quarterly", day0.date())})
    assert len(made) == 2
    events = [closed(org, day0, n) for org in ("weekly", "quarterly", "keeper") for n in range(4)]
    await write(store, events)
    assert len(partition_tables(db_path)) == 2  # no table more
    expected: dict[str, set[str]] = {}
    for e in events:
        where = home(db_path, e.attribution.org_id, datetime.fromtimestamp(e.started_ts, UTC))
        expected.setdefault(where, set()).add(e.session_id.hex)
    # weekly's first day has its table, its next day not; quarterly's 3-day table holds both
    assert {len(v) for k, v in expected.items() if k != DEFAULT_TABLE} == {2, 4}
    assert len(expected[DEFAULT_TABLE]) == 2 + 4
    for name, want in expected.items():
        assert ids(db_path, name) == want
    assert ids(db_path) == {e.session_id.hex for e in events}  # the view: all of them


async def write(engine: AsyncEngine, events: list[SessionEvent]) -> None:
    writer = SessionWriter(engine, WriterConfig(flush_interval_s=0), gateway="gw1")
    await writer.submit(events)
    await writer.close()


async def test_the_writer_follows_tables_made_and_dropped_beside_it(
    store: AsyncEngine, db_path: Path
) -> None:
    """A session's rows stay in one place: a table made while it is open takes its row along
    (its close then updates it there, not a second row in sessions_default), and a purge
    dropping a table the writer routed to sends the next late row to sessions_default."""
    old = NOW - timedelta(days=20)
    writer = SessionWriter(store, WriterConfig(flush_interval_s=0), gateway="gw1")
    task = asyncio.create_task(writer.run())

    async def put(e: SessionEvent) -> None:
        await writer.submit([e])
        async with asyncio.timeout(WAIT_S):
            while writer.pending:
                await asyncio.sleep(0.01)

    sid = uuid.uuid4()
    await put(event(EventKind.OPENED, "weekly", old, 0, sid))
    assert ids(db_path, DEFAULT_TABLE) == {sid.hex}
    (name,) = cover(db_path, {("weekly", old.date())})
    assert ids(db_path, name) == {sid.hex} and ids(db_path, DEFAULT_TABLE) == set()
    await put(event(EventKind.CLOSED, "weekly", old, 0, sid))
    assert ids(db_path, name) == {sid.hex} and ids(db_path, DEFAULT_TABLE) == set()
    assert raw_query(db_path, "SELECT status FROM sessions") == [("completed",)]
    await purge(store, now=NOW)
    assert name not in partition_tables(db_path) and ids(db_path) == set()
    late = closed("weekly", old, 1)
    await put(late)
    await writer.close()
    await task
    assert writer.failed_flushes == 0
    assert ids(db_path, DEFAULT_TABLE) == {late.session_id.hex}


def spread(orgs: tuple[str, ...]) -> list[SessionRecord]:
    """Per org: a session ending every 12 hours over 60 days, ongoing ones that started 50
    days ago, and sessions ending just inside and just outside each cutoff."""
    rows = []
    for org in orgs:
        rows += [session(org, k / 2) for k in range(120)]
        rows += [session(org, None, started_at=NOW - timedelta(days=50)) for _ in range(2)]
        if org in DAYS:
            rows += [session(org, DAYS[org] - 1e-6), session(org, DAYS[org] + 1e-6)]
    return rows


@pytest.mark.parametrize("keep_max", [2000, 1])
async def test_a_purge_drops_expired_tables_and_deletes_the_rest(
    store: AsyncEngine,
    db_path: Path,
    keep_max: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tables whose rows have all expired are dropped; a day with 2 ongoing sessions of an org
    is emptied with those 2 copied back (KEEP_MAX 2000), or left to batched deletes (KEEP_MAX
    1); either way exactly the expired rows go, in tables and in sessions_default."""
    monkeypatch.setattr(sqlitepurge, "KEEP_MAX", keep_max)
    caplog.set_level(logging.INFO, logger="tunnelacct.retention.purge")
    rows = spread(("weekly", "monthly", "quarterly", "keeper"))
    await store_into_partitions(store, db_path, rows)
    # and some expired rows no table covers: a day before the first table of weekly
    strays = [session("weekly", 61 + k / 10) for k in range(5)]
    async with AsyncSession(store, expire_on_commit=False) as s:
        s.add_all(strays)
        await s.commit()
    rows += strays
    placed = {r.id.hex: home(db_path, r.org_id, r.started_at) for r in rows}
    assert {placed[r.id.hex] for r in strays} == {DEFAULT_TABLE}
    before = partition_tables(db_path)
    assert before == set(placed.values()) - {DEFAULT_TABLE}
    assert {p.days for p in parts(db_path)} == {1, 3}
    left = {
        r.id.hex
        for r in rows
        if r.ended_at is None
        or r.org_id not in DAYS
        or NOW - r.ended_at <= timedelta(days=DAYS[r.org_id])
    }
    droppable = before - {placed[h] for h in left}
    seen: dict[str, int] = {}

    def on_deleted(org: str, n: int) -> None:
        seen[org] = seen.get(org, 0) + n

    result = await purge(store, now=NOW, batch_size=7, on_deleted=on_deleted)
    assert ids(db_path) == left
    gone = {org: sum(1 for r in rows if r.org_id == org and r.id.hex not in left) for org in DAYS}
    assert {p.org_id: p.deleted for p in result.orgs} == {**gone, "unattributed": 0}
    assert seen == gone
    sql = "SELECT org_id, deleted FROM purge_runs WHERE org_id != 'unattributed'"
    runs = raw_query(db_path, sql)
    assert dict(runs) == gone
    # most old days went whole (weekly's 52 and monthly's 29 less the ongoing sessions' day)
    assert len(droppable) > 70
    assert partition_tables(db_path) == before - droppable
    # the days holding expired and ongoing sessions stay, with only those left
    ongoing = {r.id.hex for r in rows if r.ended_at is None and r.org_id in ("weekly", "monthly")}
    ongoing_days = {placed[h] for h in ongoing}
    assert len(ongoing_days) == 2 and ongoing_days <= partition_tables(db_path)
    assert set().union(*(ids(db_path, name) for name in ongoing_days)) == ongoing
    rewritten = {name for name in ongoing_days if f"emptied partition {name}" in caplog.text}
    assert rewritten == (ongoing_days if keep_max >= 2 else set())


async def test_a_dry_run_drops_nothing(store: AsyncEngine, db_path: Path) -> None:
    rows = spread(("weekly",))
    await store_into_partitions(store, db_path, rows)
    before = partition_tables(db_path)
    dry = await purge(store, now=NOW, dry_run=True)
    assert partition_tables(db_path) == before and len(ids(db_path)) == len(rows)
    real = await purge(store, now=NOW)
    assert [p.deleted for p in dry.orgs] == [p.deleted for p in real.orgs]
    assert partition_tables(db_path) < before


async def test_a_purge_batch_reads_the_start_index_oldest_first(
    store: AsyncEngine, db_path: Path
) -> None:
    """Each batch delete of a purge, in sessions_default and in every partition of the org,
    finds the expired rows through (org_id, started_at, id) bounded by the cutoff, in that
    index's order (no sort): no index holds the end since migration 0015, and a session that
    ended before the cutoff started before it. As SQLite's EXPLAIN QUERY PLAN says."""
    await store_into_partitions(store, db_path, spread(("monthly",)))
    cutoff = NOW - timedelta(days=DAYS["monthly"])
    batches = await sqlitepurge.expired_batches(store, "monthly", cutoff, 7, set())
    tables_read = {
        DEFAULT_TABLE,
        *(p.name for p in parts(db_path) if p.begins < cutoff.replace(tzinfo=None)),
    }
    assert len(batches) == len(tables_read) > 2
    searched = set()
    for batch in batches:
        sql = str(batch.compile(dialect=sqlite_dialect(), compile_kwargs={"literal_binds": True}))
        plan = [str(row[-1]) for row in raw_query(db_path, f"EXPLAIN QUERY PLAN {sql}")]
        by_start = [
            line
            for line in plan
            if line.startswith("SEARCH")
            and line.endswith("_org_id_started_at_id (org_id=? AND started_at<?)")
        ]
        assert len(by_start) == 1, plan
        searched.add(by_start[0].split()[1])
        assert not any("TEMP B-TREE" in line or line.startswith("SCAN") for line in plan), plan
    assert searched == tables_read


async def test_an_emptied_partition_keeps_the_sessions_that_ended_after_the_cutoff(
    store: AsyncEngine, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A partition of days before the cutoff is emptied at once, and what it keeps comes back:
    its ongoing sessions and a session that started there and ended after the cutoff, while
    one that ran past the partition's last day but ended before the cutoff goes. Every read
    of an emptied partition, under the write lock, is by an index (EXPLAIN QUERY PLAN): the
    counts read indexes alone, and the rows they keep are read by their partial indexes."""
    caplog.set_level(logging.INFO, logger="tunnelacct.retention.purge")
    days = DAYS["monthly"]
    outlived = session("monthly", days - 1, started_at=NOW - timedelta(days=days + 10))
    expired_later = session("monthly", days + 1, started_at=NOW - timedelta(days=days + 8))
    rows = [*spread(("monthly",)), outlived, expired_later]
    await store_into_partitions(store, db_path, rows)
    placed = {r.id.hex: home(db_path, r.org_id, r.started_at) for r in rows}
    outlived_home = placed[outlived.id.hex]
    assert outlived_home != placed[expired_later.id.hex]
    assert len(ids(db_path, outlived_home)) > 1  # emptying it keeps one row of several
    left = {r.id.hex for r in rows if r.ended_at is None or NOW - r.ended_at <= timedelta(days)}
    assert outlived.id.hex in left and expired_later.id.hex not in left
    before_purge = db_path.with_name("before_purge.db")  # the plans are of the tables it drops
    with closing(sqlite3.connect(db_path)) as db, closing(sqlite3.connect(before_purge)) as copy:
        db.backup(copy)

    statements: list[tuple[str, tuple[object, ...]]] = []

    def seen(conn: object, cursor: object, sql: str, params: object, *rest: object) -> None:
        if sql.startswith(("SELECT count(*) FROM", "INSERT INTO temp.")):
            statements.append((sql, tuple(params) if isinstance(params, (tuple, list)) else ()))

    sqlalchemy_event.listen(store.sync_engine, "before_cursor_execute", seen)
    try:
        await purge(store, now=NOW, batch_size=7)
    finally:
        sqlalchemy_event.remove(store.sync_engine, "before_cursor_execute", seen)
    assert ids(db_path) == left
    assert f"emptied partition {outlived_home}" in caplog.text
    assert ids(db_path, outlived_home) == {outlived.id.hex}
    copies = [sql for sql, _params in statements if sql.startswith("INSERT INTO temp.")]
    assert any(outlived_home in sql for sql in copies)
    keep_table = f"temp.{sqlitepurge.KEEP_TABLE}"
    with closing(sqlite3.connect(before_purge)) as copy:
        copy.execute(f"CREATE TABLE {keep_table} AS SELECT * FROM {DEFAULT_TABLE} WHERE 0")
        for sql, params in statements:
            plan = [str(row[-1]) for row in copy.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            reads = [line for line in plan if line.startswith(("SCAN", "SEARCH"))]
            assert reads, plan
            for line in reads:  # an index alone, or the rows of a partial index
                partial = line.split(" (")[0].endswith(("_ongoing", "_outliving"))
                assert "USING COVERING INDEX" in line or partial, (sql, plan)


async def test_the_view_reads_deletes_and_inserts_like_a_table(
    store: AsyncEngine, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past VIEW_CHUNK partitions the view unites chunk views (SQLite caps a compound SELECT
    at 500 terms); reads, DELETE by hand and INSERT into the view still work."""
    monkeypatch.setattr(sqliteparts, "VIEW_CHUNK", 3)
    rows = [session("weekly", d + 0.5) for d in range(8)]  # 8 days: 9 tables with the default
    await store_into_partitions(store, db_path, rows)
    db = db_path
    views = {str(n) for (n,) in raw_query(db, "SELECT name FROM sqlite_master WHERE type='view'")}
    assert views == {"sessions", "sessions_v0", "sessions_v1", "sessions_v2"}
    assert ids(db) == {r.id.hex for r in rows}
    conn = sqlite3.connect(db)
    try:
        victim = rows[3].id.hex
        conn.execute("DELETE FROM sessions WHERE id = ?", (victim,))
        conn.commit()
    finally:
        conn.close()
    assert ids(db) == {r.id.hex for r in rows} - {victim}
    assert ids(db, home(db, "weekly", rows[3].started_at)) == set()
    extra = session("keeper", 1.0)
    async with AsyncSession(store, expire_on_commit=False) as s:
        s.add(extra)
        await s.commit()
    assert extra.id.hex in ids(db, DEFAULT_TABLE) and extra.id.hex in ids(db)


async def store_through_view(engine: AsyncEngine, rows: list[SessionRecord]) -> None:
    """Insert `rows` through the view: they land in sessions_default whatever their day."""
    async with AsyncSession(engine, expire_on_commit=False) as s:
        s.add_all(rows)
        await s.commit()


def stored_order(db: Path, org: str) -> list[str]:
    """The ids of `org`'s sessions in key order, read from the view by the sqlite3 module."""
    read = "SELECT id FROM sessions WHERE org_id = ? ORDER BY started_at, id"
    return [str(uuid.UUID(str(h))) for (h,) in raw_query(db, read, org)]


async def late_and_partitioned(store: AsyncEngine, db_path: Path) -> list[SessionRecord]:
    """quarterly's sessions in its 3-day tables, and late ones in sessions_default on the same
    days (some starting at the same instant as a partitioned one: the id breaks the tie), beside
    weekly's; returns quarterly's."""
    rows = spread(("quarterly", "weekly"))
    await store_into_partitions(store, db_path, rows)
    late = [
        session("quarterly", k / 3, started_at=rows[k].started_at, dst_port=400 + k % 3)
        for k in range(0, 120, 7)
    ]
    await store_through_view(store, late)
    quarterly = [r for r in rows + late if r.org_id == "quarterly"]
    in_default = ids(db_path, DEFAULT_TABLE) & {r.id.hex for r in quarterly}
    holding = [p for p in parts(db_path) if p.org_id == "quarterly" and ids(db_path, p.name)]
    assert len(in_default) == len(late) and len(holding) >= 10  # rows in every kind of table
    return quarterly


async def test_the_export_merges_sessions_default_and_the_partitions_in_key_order(
    store: AsyncEngine, db_path: Path
) -> None:
    quarterly = await late_and_partitioned(store, db_path)
    expected = stored_order(db_path, "quarterly")
    assert len(expected) == len(quarterly)
    for flt in (None, parse_filter("dport:401")):
        out = io.BytesIO()
        count = await export_org_csv(store, "quarterly", out, page_size=7, flt=flt)
        lines = io.StringIO(out.getvalue().decode())
        exported = [row["session_id"] for row in csv.DictReader(lines)]
        wanted = {str(r.id) for r in quarterly if flt is None or r.dst_port == 401}
        assert exported == [sid for sid in expected if sid in wanted]
        assert count == len(wanted) > 0


async def test_a_range_over_more_tables_than_a_compound_select_holds_reads_the_view(
    store: AsyncEngine, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite caps a compound SELECT at 500 terms: a range over more tables (VIEW_CHUNK, 3
    here) reads the view, which unites views of VIEW_CHUNK tables, in the same order."""
    monkeypatch.setattr(sqliteparts, "VIEW_CHUNK", 3)
    quarterly = await late_and_partitioned(store, db_path)
    sync = create_engine(sync_url(f"sqlite:///{db_path}"), poolclass=pool.NullPool)
    one_day = quarterly[0].started_at
    try:
        with sync.connect() as conn:
            wide = backend_of(sync).range_tables(conn, "quarterly", NOW - timedelta(days=70), NOW)
        with sync.connect() as conn:
            narrow = backend_of(sync).range_tables(conn, "quarterly", one_day, one_day)
    finally:
        sync.dispose()
    assert wide is None
    assert narrow is not None and [t.name for t in narrow][0] == DEFAULT_TABLE and len(narrow) == 2
    expected = stored_order(db_path, "quarterly")
    for page_size in (7, 1000):  # ranges of one or two tables with the default, and wide ones
        out = io.BytesIO()
        assert await export_org_csv(store, "quarterly", out, page_size=page_size) == len(expected)
        lines = io.StringIO(out.getvalue().decode())
        assert [row["session_id"] for row in csv.DictReader(lines)] == expected


async def test_an_export_range_is_merged_from_its_tables_in_index_order_not_sorted(
    store: AsyncEngine, db_path: Path
) -> None:
    """SQLite sorts the view's rows again in a temporary B-tree when a read computes its
    columns, as the CSV lines are; a range read from the tables themselves is merged."""
    await late_and_partitioned(store, db_path)
    sync = create_engine(sync_url(f"sqlite:///{db_path}"), poolclass=pool.NullPool)
    reads: list[tuple[str, object]] = []

    def seen(conn: object, cursor: object, sql: str, params: object, *rest: object) -> None:
        if "UNION ALL" in sql:
            reads.append((sql, params))

    sqlalchemy_event.listen(sync, "before_cursor_execute", seen)
    try:
        first = (NOW - timedelta(days=40), uuid.UUID(int=0))
        last = (NOW, uuid.UUID(int=2**128 - 1))
        text, count = _read_range(sync, _Range("quarterly", None, first, None, last))
    finally:
        sync.dispose()
    assert count > 0 and len(reads) == 1
    sql, params = reads[0]
    plan = "\n".join(
        str(row[-1]) for row in raw_query(db_path, f"EXPLAIN QUERY PLAN {sql}", *params)
    )
    assert "MERGE (UNION ALL)" in plan and "TEMP B-TREE" not in plan, plan


@pytest.mark.parametrize(("term", "index"), [("client", "client_id"), ("resource", "resource_id")])
async def test_a_page_of_a_client_or_resource_reads_its_index_in_the_pages_order(
    store: AsyncEngine, db_path: Path, term: str, index: str
) -> None:
    """A page (the API's and the web UI's, first and next, oldest or newest first) of a
    client's or a resource's sessions reads, in every table, the index of (org_id, that
    column, started_at, id), which holds its rows in the page's order: no sort, and no walk
    through every session of the org in the range (migration 0014). As SQLite's EXPLAIN QUERY
    PLAN of the statement says."""
    quarterly = await late_and_partitioned(store, db_path)
    flt = parse_filter(f"{term}:x started_after:{(NOW - timedelta(days=40)).date()}")
    key = (quarterly[3].started_at, quarterly[3].id)
    statements = {
        "first page": page("quarterly", flt, None, 100),
        "next page": page("quarterly", flt, key, 100),
        "newest first": page_before("quarterly", flt, key, 100),
    }
    tables_read = {DEFAULT_TABLE, *(p.name for p in parts(db_path) if p.org_id == "quarterly")}
    for name, statement in statements.items():
        sql = str(
            statement.compile(dialect=sqlite_dialect(), compile_kwargs={"literal_binds": True})
        )
        plan = [str(row[-1]) for row in raw_query(db_path, f"EXPLAIN QUERY PLAN {sql}")]
        searches = [line for line in plan if line.startswith("SEARCH")]
        searched = {line.split()[1] for line in searches}
        assert tables_read <= searched, (name, plan)
        for line in searches:
            if line.split()[1] in tables_read:
                assert f"_org_id_{index}_started_at_id (" in line, (name, line)
        assert not any("TEMP B-TREE" in line for line in plan), (name, plan)


async def test_a_range_reads_the_tables_as_they_were_when_it_listed_them(
    store: AsyncEngine, db_path: Path
) -> None:
    """A partition made beside a range read, with sessions_default's rows of its days moved
    into it, changes nothing the read sees: the tables are listed in its transaction."""
    rows = [session("quarterly", 20 + k / 10) for k in range(30)]  # no partition of theirs yet
    await store_through_view(store, rows)
    sync = create_engine(sync_url(f"sqlite:///{db_path}"), poolclass=pool.NullPool)
    try:
        with sync.connect() as conn:
            first = (min(r.started_at for r in rows), uuid.UUID(int=0))
            last = (max(r.started_at for r in rows), uuid.UUID(int=2**128 - 1))
            tables = backend_of(sync).range_tables(conn, "quarterly", first[0], last[0])
            assert [t.name for t in tables or []] == [DEFAULT_TABLE]
            days = {("quarterly", r.started_at.date()) for r in rows}
            assert cover(db_path, days)  # another connection makes the partitions, moves rows
            assert ids(db_path, DEFAULT_TABLE) == set()
            read = in_range([], "quarterly", None, first, None, last, tables)
            seen = [row.id for row in conn.execute(read)]
    finally:
        sync.dispose()
    assert [str(sid) for sid in seen] == stored_order(db_path, "quarterly")
    assert len(seen) == len(rows)


def test_db_partition_moves_old_rows_and_downgrade_restores_one_table(tmp_path: Path) -> None:
    """A store from before 0006: its rows stay in sessions_default on upgrade, `tunnelacct db
    partition` moves them into day partitions, and a downgrade to 0005 brings every row back
    into one sessions table."""
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    alembic_to(url, "0005")
    rows = spread(("weekly", "keeper"))
    conn = sqlite3.connect(path)
    try:
        present = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
        model = SessionRecord.__table__.columns  # type: ignore[attr-defined]
        cols = [c.name for c in model if c.name in present]  # those of revision 0005
        values = []
        for r in rows:
            v = r.model_dump()
            v["id"] = r.id.hex
            for k in ("started_at", "ended_at", "last_seen_at"):
                v[k] = (
                    None if v[k] is None else v[k].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                )
            values.append(tuple(v[c] for c in cols))
        conn.executemany(
            f"INSERT INTO sessions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            values,
        )
        conn.commit()
    finally:
        conn.close()
    as_of_0005 = f"SELECT {', '.join(cols)} FROM sessions ORDER BY id"
    before = raw_query(path, as_of_0005)
    migrate(url)
    assert ids(path, DEFAULT_TABLE) == {r.id.hex for r in rows}
    config = tmp_path / "c.toml"
    orgs = ""
    for o in ORGS:
        days = DAYS.get(o.id, '"forever"')
        orgs += f'[[orgs]]\nid = "{o.id}"\nname = "{o.name}"\nretention_days = {days}\n'
    config.write_text(f'[database]\nurl = "{url}"\n{orgs}')
    out = run_cli("db", "partition", "--config", str(config))
    assert out.returncode == 0, out.stderr
    weekly = {r.id.hex for r in rows if r.org_id == "weekly"}
    assert f"moved {len(weekly)} sessions" in out.stdout
    assert ids(path, DEFAULT_TABLE) == {r.id.hex for r in rows} - weekly  # keeper's: forever
    # weekly's rows, in one table per day they started on
    days = {r.started_at.astimezone(UTC).date() for r in rows if r.org_id == "weekly"}
    assert {(p.org_id, p.start, p.days) for p in parts(path)} == {("weekly", d, 1) for d in days}
    assert all(
        ids(path, home(path, "weekly", r.started_at)) >= {r.id.hex}
        for r in rows
        if r.org_id == "weekly"
    )
    assert raw_query(path, as_of_0005) == before
    alembic_to(url, "0005", down=True)
    assert not partition_tables(path) and DEFAULT_TABLE not in tables(path)
    assert raw_query(path, "SELECT * FROM sessions ORDER BY id") == before


async def test_serve_creates_tomorrows_tables_and_the_next_days_for_orgs_that_purge(
    store: AsyncEngine, db_path: Path
) -> None:
    """Before any row needs them, each org with logging on and a retention has tables for the
    next 3 UTC days: 1-day tables, or for quarterly, 3-day tables on their grid (the first
    clipped to start tomorrow). None for today (its rows are in sessions_default already) nor
    for the org kept forever. The writer's flushes then never change the schema."""
    late_evening = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    tomorrow = date(2026, 12, 2)
    days = [tomorrow + timedelta(days=k) for k in range(3)]
    task = asyncio.create_task(
        keep_partitions_ahead(store, interval_s=3600, clock=lambda: late_evening)
    )
    orgs = {"weekly", "monthly", "quarterly", "unattributed"}  # the config's, and the default
    try:
        async with asyncio.timeout(WAIT_S):
            while {(p.org_id, d) for p in parts(db_path) for d in days if p.covers(d)} != {
                (org, d) for org in orgs for d in days
            }:
                assert not task.done()
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    made = parts(db_path)
    assert all(p.start >= tomorrow for p in made)
    assert {p.days for p in made if p.org_id != "quarterly"} == {1}
    quarterly = [p for p in made if p.org_id == "quarterly"]
    # 3-day slots from 0001-01-01: 2026-12-01..03 (clipped to 12-02..03), 12-04..06
    assert [(p.start, p.days) for p in quarterly] == [(tomorrow, 2), (date(2026, 12, 4), 3)]
    assert len(made) == 3 * 3 + 2
    assert ids(db_path) == set()  # nothing written, the view unites them
