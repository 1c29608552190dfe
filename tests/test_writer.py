"""SessionWriter: upserts, coalescing, closed-is-final, back-pressure, outages, drain.

On SQLite and PostgreSQL (`store_engine`), except the tests that hold SQLite's write lock and
the PostgreSQL outage tests (`pg_url`: killed backends, lock and statement timeouts, deadlocks,
serialization failures)."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import delete, insert, select
from sqlalchemy import event as event_api
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from tests.helpers.faults import ext4_filesystem
from tests.helpers.pg import fresh_database, read_rows
from tests.helpers.pgproxy import CommitCutter
from tests.helpers.sqlite import raw_query
from tests.helpers.stores import assert_months_sum_their_days, session_totals, usage_totals
from tests.helpers.waiting import WAIT_S
from tunnelacct.config.model import WriterConfig
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.errors import StoreError
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.store.codec import upsert_sql
from tunnelacct.store.complete import CompleteSessions
from tunnelacct.store.engine import async_url, backend_of, make_engine
from tunnelacct.store.migrate import migrate
from tunnelacct.store.models import SessionRecord, UtcDateTime, table_of
from tunnelacct.store.postgres.errors import sqlstate
from tunnelacct.store.postgres.partitions import ensure_partitions
from tunnelacct.store.postgres.write import PG_FLIGHTS
from tunnelacct.store.rows import ROW_COLUMNS, driver_values, event_row, sqlite_time_text
from tunnelacct.store.writer import SessionWriter, transient_store_error

T0 = 1_795_430_445.123456  # 2026-11-23T10:40:45.123456Z


def row_count(url: str) -> int:
    return int(str(read_rows(url, "SELECT count(*) FROM sessions")[0][0]))


def event(
    kind: EventKind = EventKind.OPENED,
    session_id: uuid.UUID | None = None,
    *,
    n: int = 1,
    last_ts: float = T0,
) -> SessionEvent:
    """A TCP session event whose counters are derived from `n` (tx bytes = 100 * n, ...)."""
    closed = kind is EventKind.CLOSED
    return SessionEvent(
        kind=kind,
        session_id=session_id or uuid.uuid4(),
        proto=IpProto.TCP,
        family=4,
        src_addr="100.64.0.2",
        src_port=40000,
        dst_addr="10.1.0.5",
        dst_port=443,
        started_ts=T0,
        last_ts=last_ts,
        ended_ts=last_ts if closed else None,
        bytes_tx=100 * n,
        bytes_rx=1000 * n,
        packets_tx=n,
        packets_rx=2 * n,
        payload_bytes_tx=60 * n,
        payload_bytes_rx=960 * n,
        close_reason=CloseReason.FIN if closed else None,
        midstream=False,
        community_id="1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=",
        attribution=Attribution("acme", "c1", "laptop", "alice", "r1", "web"),
        interface="wg0",
    )


@asynccontextmanager
async def running(writer: SessionWriter) -> AsyncIterator[asyncio.Task[None]]:
    """Run the writer as a task; close it (drain) on the way out."""
    task = asyncio.create_task(writer.run())
    try:
        yield task
        await writer.close(timeout_s=30)
        await asyncio.wait_for(task, WAIT_S)
    finally:
        if not task.done():  # the test failed: stop the writer before the engine goes
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def wait_until(predicate: object, timeout_s: float = WAIT_S) -> None:
    """Poll `predicate()` on the event loop until it is true; TimeoutError after timeout_s."""
    assert callable(predicate)
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def writer_for(
    engine: AsyncEngine,
    *,
    batch_size: int = 5000,
    flush_interval_s: float = 1.0,
    max_pending: int = 100_000,
    write_timeout_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> SessionWriter:
    config = WriterConfig(
        batch_size=batch_size,
        flush_interval_s=flush_interval_s,
        max_pending=max_pending,
        write_timeout_s=write_timeout_s,
    )
    return SessionWriter(engine, config, gateway="gw-test", clock=clock)


async def test_open_checkpoint_close_yields_one_completed_row_with_final_counters(
    store_engine: AsyncEngine, store_url: str
) -> None:
    sid = uuid.uuid4()
    writer = writer_for(store_engine, flush_interval_s=0.01)
    async with running(writer):
        await writer.submit([event(EventKind.OPENED, sid, n=1, last_ts=T0)])
        await wait_until(lambda: writer.flushes == 1)
        assert read_rows(store_url, "SELECT status, ended_at FROM sessions") == [("ongoing", None)]
        await writer.submit([event(EventKind.CHECKPOINT, sid, n=5, last_ts=T0 + 30)])
        await wait_until(lambda: writer.flushes == 2)
        await writer.submit([event(EventKind.CLOSED, sid, n=7, last_ts=T0 + 42.5)])
    rows = read_rows(
        store_url,
        "SELECT id, status, close_reason, bytes_tx, bytes_rx, packets_tx, packets_rx,"
        " payload_bytes_tx, payload_bytes_rx, started_at, ended_at, last_seen_at, duration_s,"
        " protocol, ip_version, client_name, gateway, interface FROM sessions",
    )
    assert rows == [
        (
            sid.hex,
            "completed",
            "fin",
            700,
            7000,
            7,
            14,
            420,
            6720,
            "2026-11-23 10:40:45.123456",
            "2026-11-23 10:41:27.623456",
            "2026-11-23 10:41:27.623456",
            pytest.approx(42.5),
            "tcp",
            4,
            "laptop",
            "gw-test",
            "wg0",
        )
    ]
    assert writer.rows_written == 3 and writer.flushes == 3
    assert writer.last_flush_at is not None and writer.last_flush_at.tzinfo is UTC


async def test_events_of_one_session_coalesce_into_one_row_in_one_flush(
    store_engine: AsyncEngine, store_url: str
) -> None:
    sid = uuid.uuid4()
    writer = writer_for(store_engine)
    events = [event(EventKind.CHECKPOINT, sid, n=i) for i in range(1, 101)]
    await writer.submit([event(EventKind.OPENED, sid), *events])
    assert writer.pending == 1
    await writer.close()
    assert (writer.flushes, writer.rows_written) == (1, 1)
    assert read_rows(store_url, "SELECT bytes_tx, packets_rx, status FROM sessions") == [
        (10_000, 200, "ongoing")
    ]


async def test_late_checkpoint_in_the_store_does_not_reopen_a_closed_session(
    store_engine: AsyncEngine, store_url: str
) -> None:
    sid = uuid.uuid4()
    writer = writer_for(store_engine, flush_interval_s=0.01)
    async with running(writer):
        await writer.submit([event(EventKind.CLOSED, sid, n=3, last_ts=T0 + 3)])
        await wait_until(lambda: writer.flushes == 1)
        await writer.submit([event(EventKind.CHECKPOINT, sid, n=2, last_ts=T0 + 2)])
        await wait_until(lambda: writer.flushes == 2)
    assert read_rows(store_url, "SELECT status, close_reason, bytes_tx FROM sessions") == [
        ("completed", "fin", 300)
    ]


async def test_late_checkpoint_while_pending_does_not_replace_the_closed_event(
    store_engine: AsyncEngine, store_url: str
) -> None:
    sid = uuid.uuid4()
    writer = writer_for(store_engine)
    await writer.submit([event(EventKind.CLOSED, sid, n=3), event(EventKind.CHECKPOINT, sid, n=2)])
    assert writer.stale_events == 1
    await writer.close()
    assert read_rows(store_url, "SELECT status, bytes_tx FROM sessions") == [("completed", 300)]


async def test_submit_waits_when_max_pending_is_reached_and_loses_nothing(
    store_engine: AsyncEngine, store_url: str
) -> None:
    writer = writer_for(store_engine, max_pending=10, batch_size=4, flush_interval_s=60)
    producer = asyncio.create_task(writer.submit([event() for _ in range(11)]))
    await wait_until(lambda: writer.pending >= 10)  # the producer has filled every place
    assert not producer.done()  # no run() yet: the 11th session has no room
    assert writer.pending == 10
    seen: list[int] = []
    async with running(writer):
        await producer
        for _ in range(20):
            await writer.submit([event() for _ in range(25)])
            seen.append(writer.pending)
    assert max(seen) <= 10
    assert row_count(store_url) == 11 + 20 * 25 == writer.rows_written


async def test_room_waits_while_max_pending_sessions_are_pending(
    store_engine: AsyncEngine, store_url: str
) -> None:
    """A bulk source (the flow collector) asks for room before taking more input: room() waits
    while the writer holds max_pending sessions, and returns once a flush has freed some."""
    writer = writer_for(store_engine, max_pending=10, batch_size=4, flush_interval_s=60)
    await writer.submit([event() for _ in range(10)])
    waiting = asyncio.create_task(writer.room())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()  # no run() yet: nothing frees a place
    async with running(writer):
        await asyncio.wait_for(waiting, WAIT_S)
        assert writer.pending < 10
    assert row_count(store_url) == 10


# SQLite only, the next three: they test SQLite's own locking (another connection's BEGIN
# EXCLUSIVE on the file, "database is locked", the busy handler). PostgreSQL's counterparts,
# lock and statement timeouts, deadlocks and lost connections, are the outage tests below.
async def test_locked_database_delays_writes_but_loses_nothing(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A short busy timeout makes the lock surface as "database is locked" errors, so the
    # retry path runs rather than SQLite's own busy wait.
    engine = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=50)
    locker = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer = writer_for(engine, flush_interval_s=0.01)
        with caplog.at_level(logging.WARNING, logger="tunnelacct.store.writer"):
            async with running(writer):
                locker.execute("BEGIN EXCLUSIVE")
                await writer.submit([event() for _ in range(500)])
                await wait_until(lambda: writer.failed_flushes >= 2)  # retried, still locked
                assert writer.pending == 500
                locker.execute("COMMIT")
                await wait_until(lambda: writer.pending == 0)
        assert row_count(f"sqlite:///{db_path}") == 500
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # one line per failure streak
        assert "database is locked" in warnings[0].getMessage()
    finally:
        locker.close()
        await engine.dispose()


async def test_a_write_stuck_in_the_driver_is_given_up_after_write_timeout_one_at_a_time(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite's busy wait (60 s here) holds aiosqlite's thread as a frozen filesystem would: a
    # cancelled write goes on until the lock is freed. The writer gives up on it after
    # write_timeout, counts it, and waits for it rather than opening another connection.
    engine = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=60_000)
    locker = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer = writer_for(engine, flush_interval_s=0.01, write_timeout_s=0.2)
        with caplog.at_level(logging.WARNING, logger="tunnelacct.store.writer"):
            async with running(writer):
                await writer.submit([event()])  # the pool's connection, and its thread
                await wait_until(lambda: writer.pending == 0)
                threads_before = threading.active_count()
                locker.execute("BEGIN EXCLUSIVE")
                await writer.submit([event() for _ in range(300)])
                await wait_until(lambda: writer.timed_out_flushes >= 3)
                assert writer.failed_flushes >= 3
                assert writer.pending == 300 and writer.rows_written == 1
                assert threading.active_count() <= threads_before + 1  # no pile of writes
                locker.execute("COMMIT")
                await wait_until(lambda: writer.pending == 0)
        assert row_count(f"sqlite:///{db_path}") == 301
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("did not finish within 0.2 s" in w for w in warnings), warnings
    finally:
        locker.close()
        await engine.dispose()


async def test_a_write_given_up_is_retried_with_each_session_once_in_the_rollup(
    tmp_path: Path,
) -> None:
    # A frozen filesystem holds SQLite's write in aiosqlite's thread (its BEGIN IMMEDIATE, on
    # the -shm file): the writer gives it up after write_timeout, not knowing whether it will
    # commit, and its retry reads back what the store holds of each session (the first 100
    # have a stored checkpoint) rather than what it last wrote. Each session counts once: the
    # session rows are the rollup's oracle. (The PostgreSQL test below makes the commit land.)
    ids = [uuid.uuid4() for _ in range(200)]
    with ext4_filesystem(tmp_path / "fs.img", tmp_path / "ext4") as ext4:
        url = f"sqlite:///{ext4 / 'store.db'}"
        migrate(url)
        engine = make_engine(url)
        try:
            writer = writer_for(engine, flush_interval_s=0.01, write_timeout_s=0.2)
            async with running(writer):
                await writer.submit([event(EventKind.OPENED, sid) for sid in ids[:100]])
                await wait_until(lambda: writer.pending == 0)
                subprocess.run(["fsfreeze", "-f", str(ext4)], check=True)
                try:
                    closes = [event(EventKind.CLOSED, sid, n=i) for i, sid in enumerate(ids, 1)]
                    await writer.submit(closes)
                    await wait_until(lambda: writer.timed_out_flushes >= 1)
                finally:
                    subprocess.run(["fsfreeze", "-u", str(ext4)], check=True)
                await wait_until(lambda: writer.pending == 0)
        finally:
            await engine.dispose()
        every_n = sum(range(1, len(ids) + 1))
        expected = (100 * every_n, 1000 * every_n, every_n, 2 * every_n, len(ids), len(ids))
        assert row_count(url) == len(ids)
        assert session_totals(url) == {"acme": expected}
        assert usage_totals(url) == {"acme": expected}
        assert_months_sum_their_days(url)


async def test_a_write_blocked_on_postgresql_is_cancelled_after_write_timeout_and_retried(
    pg_url: str,
) -> None:
    engine = pg_engine(pg_url)
    admin = await asyncpg.connect(pg_url)
    observer = await asyncpg.connect(pg_url)  # outside admin's transaction and its stats snapshot
    try:
        writer = writer_for(engine, flush_interval_s=0.01, write_timeout_s=0.3)
        async with running(writer):
            lock = admin.transaction()
            await lock.start()
            await admin.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            await writer.submit([event(EventKind.CLOSED) for _ in range(500)])
            # Each given-up write is cancelled in the server, so the statement waiting on the
            # lock is a new one per retry (pid, start), and never more than one at a time.
            statements: set[tuple[int, datetime]] = set()
            async with asyncio.timeout(WAIT_S):
                while len(statements) < 3:
                    waiting = await observer.fetch(
                        "SELECT pid, query_start FROM pg_stat_activity"
                        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                    assert len(waiting) <= 1
                    statements.update((row["pid"], row["query_start"]) for row in waiting)
                    await asyncio.sleep(0.02)
            assert writer.timed_out_flushes >= 2
            assert writer.pending == 500 and writer.rows_written == 0
            await lock.rollback()
            await wait_until(lambda: writer.pending == 0)
        assert row_count(pg_url) == 500 == writer.rows_written
    finally:
        await observer.close()
        await admin.close()
        await engine.dispose()


async def test_close_times_out_with_a_store_error_naming_unwritten_sessions(
    db_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{db_path}", busy_timeout_ms=10)
    locker = sqlite3.connect(db_path, isolation_level=None)
    try:
        writer = writer_for(engine)
        task = asyncio.create_task(writer.run())
        locker.execute("BEGIN EXCLUSIVE")
        await writer.submit([event() for _ in range(3)])
        with pytest.raises(StoreError, match="could not write 3 pending sessions"):
            await writer.close(timeout_s=0.5)
        await asyncio.wait_for(task, WAIT_S)  # run() ends instead of retrying forever
        with pytest.raises(StoreError, match="could not write 3 pending sessions"):
            await writer.close(timeout_s=0.1)  # closing again never pretends success
        locker.execute("ROLLBACK")
    finally:
        locker.close()
        await engine.dispose()


async def test_event_replacing_one_in_flight_is_written_by_the_next_flush(
    engine: AsyncEngine, db_path: Path
) -> None:
    sid = uuid.uuid4()
    locker = sqlite3.connect(db_path, isolation_level=None)
    statements: list[str] = []  # what the engine began to execute: only the writer uses it

    def executing(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event_api.listen(engine.sync_engine, "before_cursor_execute", executing)
    try:
        writer = writer_for(engine, flush_interval_s=0.01)
        async with running(writer):
            locker.execute("BEGIN EXCLUSIVE")
            await writer.submit([event(EventKind.OPENED, sid, n=1)])
            # a flush takes its events before its first statement, which waits for the lock
            await wait_until(lambda: statements)
            assert writer.flushes == 0
            await writer.submit([event(EventKind.CHECKPOINT, sid, n=2)])
            locker.execute("COMMIT")
            await wait_until(lambda: writer.pending == 0)
        assert writer.flushes == 2
        assert raw_query(db_path, "SELECT bytes_tx FROM sessions") == [(200,)]
    finally:
        event_api.remove(engine.sync_engine, "before_cursor_execute", executing)
        locker.close()


async def test_close_admits_producers_already_waiting_for_room(
    store_engine: AsyncEngine, store_url: str
) -> None:
    writer = writer_for(store_engine, max_pending=5, batch_size=3)
    producer = asyncio.create_task(writer.submit([event() for _ in range(20)]))
    await wait_until(lambda: writer.pending >= 5)  # the producer has filled every place
    assert writer.pending == 5 and not producer.done()
    await writer.close()  # no run() task: close() drains, letting the producer finish
    await asyncio.wait_for(producer, WAIT_S)
    assert row_count(store_url) == 20


async def test_close_drains_is_idempotent_and_refuses_later_events(
    store_engine: AsyncEngine, store_url: str
) -> None:
    writer = writer_for(store_engine, flush_interval_s=60)
    task = asyncio.create_task(writer.run())
    await writer.submit([event(EventKind.CLOSED) for _ in range(50)])
    await writer.close()
    await asyncio.wait_for(task, WAIT_S)
    assert row_count(store_url) == 50
    await writer.close()
    with pytest.raises(StoreError, match="closed"):
        await writer.submit([event()])


async def test_close_without_a_run_task_still_drains(
    store_engine: AsyncEngine, store_url: str
) -> None:
    writer = writer_for(store_engine, batch_size=7)
    await writer.submit([event() for _ in range(30)])
    await writer.close()
    assert row_count(store_url) == 30
    assert writer.flushes == 5  # ceil(30 / 7)


async def test_flush_interval_bounds_how_long_an_event_waits(
    store_engine: AsyncEngine, store_url: str
) -> None:
    now = [T0]  # the writer's clock, moved by the test alone
    asked: list[float] = []  # when the writer read it

    def clock() -> float:
        asked.append(now[0])
        return now[0]

    writer = writer_for(store_engine, flush_interval_s=0.05, clock=clock)
    async with running(writer):
        await writer.submit([event()])
        asked.clear()
        # the writer looks at its clock again and again (every 0.05 s), and while the
        # interval has not passed on it, the event waits
        await wait_until(lambda: len(asked) >= 6)
        assert (writer.flushes, row_count(store_url)) == (0, 0)
        now[0] += 0.06
        await wait_until(lambda: writer.pending == 0)  # the interval has passed: written
        assert row_count(store_url) == 1
        assert writer.flushes == 1  # one event, far below batch_size: the interval flushed it


@pytest.mark.slow
async def test_ten_thousand_sessions_are_all_present_with_exact_counters(
    store_engine: AsyncEngine, store_url: str
) -> None:
    ids = [uuid.uuid4() for _ in range(10_000)]
    writer = writer_for(store_engine, flush_interval_s=0.05)
    async with running(writer):
        await writer.submit([event(EventKind.OPENED, sid) for sid in ids])
        closes = [event(EventKind.CLOSED, sid, n=i + 1) for i, sid in enumerate(ids)]
        for start in range(0, len(closes), 1000):
            await writer.submit(closes[start : start + 1000])
    assert read_rows(
        store_url, "SELECT count(*), sum(bytes_tx), sum(packets_tx), min(status) FROM sessions"
    ) == [(10_000, 100 * sum(range(1, 10_001)), sum(range(1, 10_001)), "completed")]
    stored = {uuid.UUID(str(h)) for (h,) in read_rows(store_url, "SELECT id FROM sessions")}
    assert stored == set(ids)


async def test_writer_config_must_be_positive(store_engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="invalid writer config"):
        SessionWriter(store_engine, replace(WriterConfig(), batch_size=0), gateway="gw")


def test_event_times_become_aware_utc_datetimes_with_microseconds() -> None:
    row = event_row(event(EventKind.CLOSED, n=1, last_ts=T0 + 1.5), "gw")
    assert row["started_at"] == datetime(2026, 11, 23, 10, 40, 45, 123456, tzinfo=UTC)
    assert (
        row["ended_at"]
        == row["last_seen_at"]
        == datetime(2026, 11, 23, 10, 40, 46, 623456, tzinfo=UTC)
    )
    assert row["duration_s"] == pytest.approx(1.5)
    assert (row["protocol"], row["status"], row["gateway"]) == ("tcp", "completed", "gw")


# Session events covering every kind of value a row holds: IPv6 and IPv4, UDP and TCP, counters
# beyond 32 bits, closed at the last packet and later, unattributed, a time on a whole second and
# one whose microseconds round up into the next second.
V6_ID = uuid.UUID("8f14e45f-ceea-467f-a9c1-5e0d6d3c1a2b")
V4_ID = uuid.UUID("00000000-0000-5000-8000-00000000000a")
IDLE_ID = uuid.UUID("ffffffff-ffff-5fff-bfff-ffffffffffff")
BIG = 2**40 + 3


def varied_events() -> list[SessionEvent]:
    closed_v6 = replace(
        event(EventKind.CLOSED, V6_ID, last_ts=T0 + 42.5),
        proto=IpProto.UDP,
        family=6,
        src_addr="fd7a:115c:a1e0:ab12:4843:cd96:6258:b240",
        src_port=51820,
        dst_addr="2001:db8::5",
        dst_port=53,
        bytes_tx=BIG,
        bytes_rx=BIG + 1,
        packets_tx=BIG + 2,
        packets_rx=BIG + 3,
        payload_bytes_tx=BIG + 4,
        payload_bytes_rx=BIG + 5,
        close_reason=CloseReason.RST,
        midstream=True,
        interface="wg1",
    )
    checkpoint_v4 = replace(
        event(EventKind.CHECKPOINT, V4_ID, n=3),
        started_ts=1_795_430_400.0,  # 2026-11-23T10:40:00Z exactly
        last_ts=1_795_430_459.9999996,  # .9999996 s rounds up to 10:41:00.000000
        attribution=Attribution("globex"),
    )
    idle_closed = replace(
        event(EventKind.CLOSED, IDLE_ID, n=2, last_ts=T0 + 10),
        ended_ts=T0 + 130,  # idle close: ended after the idle timeout, not at the last packet
        close_reason=CloseReason.IDLE,
    )
    return [closed_v6, checkpoint_v4, idle_closed]


def at_utc(
    year: int, month: int, day: int, hour: int, minute: int, second: int, us: int
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


async def test_fast_path_rows_read_back_through_the_model_equal_the_events(
    store_engine: AsyncEngine,
) -> None:
    writer = writer_for(store_engine)
    await writer.submit(varied_events())
    await writer.close()
    async with AsyncSession(store_engine) as db:
        records = {r.id: r for r in (await db.scalars(select(SessionRecord))).all()}
    assert set(records) == {V6_ID, V4_ID, IDLE_ID}

    v6 = records[V6_ID]
    assert (v6.org_id, v6.client_id, v6.client_name, v6.user_id, v6.resource_id) == (
        "acme",
        "c1",
        "laptop",
        "alice",
        "r1",
    )
    assert (v6.resource_name, v6.protocol, v6.ip_version) == ("web", "udp", 6)
    assert (v6.src_addr, v6.src_port) == ("fd7a:115c:a1e0:ab12:4843:cd96:6258:b240", 51820)
    assert (v6.dst_addr, v6.dst_port) == ("2001:db8::5", 53)
    assert v6.started_at == at_utc(2026, 11, 23, 10, 40, 45, 123456)
    assert v6.started_at.tzinfo is UTC
    assert v6.ended_at == v6.last_seen_at == at_utc(2026, 11, 23, 10, 41, 27, 623456)
    assert v6.duration_s == pytest.approx(42.5)
    assert (v6.bytes_tx, v6.bytes_rx, v6.packets_tx, v6.packets_rx) == (
        BIG,
        BIG + 1,
        BIG + 2,
        BIG + 3,
    )
    assert (v6.payload_bytes_tx, v6.payload_bytes_rx) == (BIG + 4, BIG + 5)
    assert (v6.status, v6.close_reason, v6.midstream) == ("completed", "rst", True)
    assert (v6.community_id, v6.gateway, v6.interface) == (
        "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=",
        "gw-test",
        "wg1",
    )

    v4 = records[V4_ID]
    assert (v4.org_id, v4.client_id, v4.client_name, v4.user_id) == ("globex", None, None, None)
    assert (v4.resource_id, v4.resource_name) == (None, None)
    assert (v4.protocol, v4.ip_version, v4.src_addr, v4.dst_addr) == (
        "tcp",
        4,
        "100.64.0.2",
        "10.1.0.5",
    )
    assert v4.started_at == at_utc(2026, 11, 23, 10, 40, 0, 0)
    assert v4.last_seen_at == at_utc(2026, 11, 23, 10, 41, 0, 0)
    assert v4.last_seen_at.tzinfo is UTC
    assert (v4.ended_at, v4.status, v4.close_reason, v4.midstream) == (None, "ongoing", None, False)
    assert (v4.bytes_tx, v4.bytes_rx, v4.packets_tx, v4.packets_rx) == (300, 3000, 3, 6)
    assert (v4.payload_bytes_tx, v4.payload_bytes_rx, v4.interface) == (180, 2880, "wg0")

    idle = records[IDLE_ID]
    assert idle.last_seen_at == at_utc(2026, 11, 23, 10, 40, 55, 123456)
    assert idle.ended_at == at_utc(2026, 11, 23, 10, 42, 55, 123456)
    assert (idle.status, idle.close_reason) == ("completed", "idle")


def select_all_with_types(url: str) -> list[tuple[object, ...]]:
    """Every row, each value followed by its type as the engine states it."""
    typeof = "pg_typeof({})::text" if url.startswith("postgresql") else "typeof({})"
    types = ", ".join(typeof.format(c) for c in ROW_COLUMNS)
    return read_rows(url, f"SELECT *, {types} FROM sessions ORDER BY id")


async def test_fast_path_stores_exactly_what_a_sqlalchemy_insert_stores(
    store_engine: AsyncEngine, store_url: str
) -> None:
    events = varied_events()
    rows = [event_row(e, "gw-test") for e in events]
    await ensure_partitions(store_engine, {row["started_at"].date() for row in rows})
    async with store_engine.begin() as conn:
        await conn.execute(insert(table_of(SessionRecord)), rows)
    by_sqlalchemy = select_all_with_types(store_url)
    async with store_engine.begin() as conn:
        await conn.execute(delete(table_of(SessionRecord)))
    assert row_count(store_url) == 0
    writer = writer_for(store_engine)
    await writer.submit(events)
    await writer.close()
    by_writer = select_all_with_types(store_url)
    assert len(by_writer) == 3
    assert by_writer == by_sqlalchemy


def sqlalchemy_sqlite_text() -> Callable[[float], object]:
    """What SQLAlchemy stores on SQLite for the aware datetime of `ts` (the old write path)."""
    dialect = sqlite.dialect()
    process = UtcDateTime().dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    return lambda ts: process(datetime.fromtimestamp(ts, UTC))


def test_sqlite_time_text_matches_sqlalchemy_for_random_and_rounding_edge_times() -> None:
    rng = random.Random(20261123)
    seconds = [rng.randrange(-(10**8), 4 * 10**9) for _ in range(2000)]
    times = [rng.uniform(0, 4e9) for _ in range(50_000)]
    times += [rng.uniform(-1e8, 0) for _ in range(2000)]  # negative fractions round the other way
    for s in seconds:
        # .9999995 and its neighbours round up into the next second or stay; fractions near
        # half a microsecond; whole seconds keep ".000000".
        edge = s + 0.9999995
        times += [edge, math.nextafter(edge, -math.inf), math.nextafter(edge, math.inf)]
        times += [s + (rng.randrange(10**6) + 0.5) / 1e6, float(s), s + 1e-7, s + 5e-7]
    expected = list(map(sqlalchemy_sqlite_text(), times))
    for text in (sqlite_time_text(), sqlite_time_text(cache_size=3)):  # and cache eviction
        wrong = [
            (ts, got, want)
            for ts, want in zip(times, expected, strict=True)
            if (got := text(ts)) != want
        ]
        assert wrong == []
    assert sqlite_time_text()(1_795_430_459.9999996) == "2026-11-23 10:41:00.000000"
    assert sqlite_time_text()(T0) == "2026-11-23 10:40:45.123456"


async def test_a_sqlite_writer_registers_the_none_adapter_and_none_is_still_stored_as_null(
    tmp_path: Path,
) -> None:
    registry_key = (type(None), sqlite3.PrepareProtocol)
    sqlite3.adapters.pop(registry_key, None)  # as in a new process
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        writer_for(engine)  # its SQLite batch write registers the adapter
        assert registry_key in sqlite3.adapters
        # the stdlib module, as SQLite's own oracle: the adapter still binds NULL
        with sqlite3.connect(":memory:") as db:
            stored = db.execute("SELECT typeof(?), ? IS NULL", (None, None)).fetchone()
        assert stored == ("null", 1)
    finally:
        await engine.dispose()


def test_postgresql_upsert_binds_every_column_as_a_numbered_parameter() -> None:
    sql = upsert_sql(PGDialect_asyncpg())  # type: ignore[no-untyped-call]
    placeholders = ", ".join(f"${i}" for i in range(1, len(ROW_COLUMNS) + 1))
    # the primary key of the partitioned table (migration 0004)
    assert f"VALUES ({placeholders}) ON CONFLICT (id, started_at) DO UPDATE" in sql
    assert "?" not in sql


async def test_ongoing_sessions_reads_back_this_gateways_ongoing_rows_as_written(
    store_engine: AsyncEngine,
) -> None:
    from tunnelacct.store.ongoing import ongoing_sessions

    ongoing = [event(EventKind.CHECKPOINT, n=n, last_ts=T0 + n) for n in (1, 2)]
    closed = event(EventKind.CLOSED, n=3, last_ts=T0 + 3)
    here, elsewhere = (
        writer_for(store_engine),
        SessionWriter(store_engine, WriterConfig(), gateway="another-gateway"),
    )
    await here.submit([*ongoing, closed])
    await here.close()
    await elsewhere.submit([event(EventKind.CHECKPOINT)])
    await elsewhere.close()

    got = await ongoing_sessions(store_engine, "gw-test")
    assert sorted(e.session_id for e in got) == sorted(e.session_id for e in ongoing)
    for e in got:
        (want,) = [w for w in ongoing if w.session_id == e.session_id]
        # times come back at the store's microsecond resolution
        assert e.last_ts == pytest.approx(want.last_ts, abs=1e-6)
        assert e.started_ts == pytest.approx(want.started_ts, abs=1e-6)
        # with the gateway of its row (the writer's own: the event carried none)
        assert replace(e, last_ts=0.0, started_ts=0.0) == replace(
            want, last_ts=0.0, started_ts=0.0, gateway="gw-test"
        )


# PostgreSQL outages (issue 7): each test makes the server fail the writer's flush the way a real
# outage does, from another connection, and checks that every session arrives exactly once.


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh migrated PostgreSQL database (dropped afterwards)."""
    with fresh_database() as url:
        migrate(url)
        yield url


def pg_engine(url: str, **server_settings: str) -> AsyncEngine:
    """An engine whose connections start with `server_settings` (lock_timeout=..., ...)."""
    return create_async_engine(async_url(url), connect_args={"server_settings": server_settings})


async def wait_for_blocked_backend(admin: asyncpg.Connection, timeout_s: float = WAIT_S) -> int:
    """The pid of the one backend of this database waiting for a lock held by `admin`."""
    async with asyncio.timeout(timeout_s):
        while True:
            pids = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
            if pids:
                return int(pids[0]["pid"])
            await asyncio.sleep(0.02)


def pg_sessions(url: str) -> dict[str, tuple[object, ...]]:
    """id hex -> (bytes_tx, packets_tx, status) of every row."""
    rows = read_rows(url, "SELECT id, bytes_tx, packets_tx, status FROM sessions")
    assert len(rows) == len({r[0] for r in rows})
    return {str(r[0]): r[1:] for r in rows}


async def test_backend_terminated_mid_flush_is_retried_and_loses_nothing(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = pg_engine(pg_url)
    admin = await asyncpg.connect(pg_url)
    try:
        writer = writer_for(engine, flush_interval_s=0.01)
        ids = [uuid.uuid4() for _ in range(300)]
        with caplog.at_level(logging.WARNING, logger="tunnelacct.store.writer"):
            async with running(writer):
                await writer.submit([event(EventKind.OPENED, sid) for sid in ids[:100]])
                await wait_until(lambda: writer.pending == 0)
                # The flush blocks on the lock; killing its backend is what a server restart
                # (fast shutdown) or a failover does to a statement in flight.
                lock = admin.transaction()
                await lock.start()
                await admin.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
                closes = [event(EventKind.CLOSED, sid, n=i) for i, sid in enumerate(ids, 1)]
                await writer.submit(closes)
                victim = await wait_for_blocked_backend(admin)
                await admin.execute("SELECT pg_terminate_backend($1)", victim)
                await wait_until(lambda: writer.failed_flushes >= 1)
                await lock.rollback()
                await wait_until(lambda: writer.pending == 0)
        assert pg_sessions(pg_url) == {
            sid.hex: (100 * i, i, "completed") for i, sid in enumerate(ids, 1)
        }
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert "terminating connection due to administrator command" in warning.getMessage()
    finally:
        await admin.close()
        await engine.dispose()


@asynccontextmanager
async def through_commit_cutter(pg_url: str) -> AsyncIterator[tuple[CommitCutter, AsyncEngine]]:
    """An engine on `pg_url` whose connections pass a CommitCutter (tests/helpers/pgproxy.py),
    and the cutter; the engine is disposed on the way out."""
    server = make_url(pg_url)
    async with CommitCutter(server.host or "127.0.0.1", server.port or 5432) as cutter:
        through_cutter = server.set(host="127.0.0.1", port=cutter.port)
        engine = create_async_engine(
            async_url(through_cutter.render_as_string(hide_password=False)),
            connect_args={"ssl": False},  # the relay reads the protocol: no TLS
        )
        try:
            yield cutter, engine
        finally:
            await engine.dispose()


async def test_a_commit_whose_answer_is_lost_counts_each_session_once_in_the_rollup(
    pg_url: str,
) -> None:
    # The connection is lost after the server committed a write and before the writer heard
    # it: the writer must retry, and its retry must neither write a session twice nor add its
    # usage twice (session rows are the rollup's oracle: each holds one share of it).
    ids = [uuid.uuid4() for _ in range(200)]
    async with through_commit_cutter(pg_url) as (cutter, engine):
        writer = writer_for(engine, flush_interval_s=0.01)
        async with running(writer):
            # first writes: rows the cut write updates (its first 100) beside new ones
            await writer.submit([event(EventKind.OPENED, sid) for sid in ids[:100]])
            await wait_until(lambda: writer.pending == 0)
            cutter.arm()
            closes = [event(EventKind.CLOSED, sid, n=i) for i, sid in enumerate(ids, 1)]
            await writer.submit(closes)
            await asyncio.wait_for(cutter.cut.wait(), WAIT_S)
            await wait_until(lambda: writer.pending == 0)
        assert writer.failed_flushes == 1
    assert pg_sessions(pg_url) == {
        sid.hex: (100 * i, i, "completed") for i, sid in enumerate(ids, 1)
    }
    every_n = sum(range(1, len(ids) + 1))
    expected = (100 * every_n, 1000 * every_n, every_n, 2 * every_n, len(ids), len(ids))
    assert session_totals(pg_url) == {"acme": expected}
    assert usage_totals(pg_url) == {"acme": expected}
    assert_months_sum_their_days(pg_url)


async def test_idle_pooled_connection_killed_between_flushes_is_retried(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    admin = await asyncpg.connect(pg_url)
    try:
        writer = writer_for(engine, flush_interval_s=0.01)
        async with running(writer):
            await writer.submit([event() for _ in range(10)])
            await wait_until(lambda: writer.pending == 0)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await writer.submit([event() for _ in range(10)])
            await wait_until(lambda: writer.pending == 0)
        assert writer.failed_flushes == 1  # "connection is closed", then a fresh connection
        assert row_count(pg_url) == 20
    finally:
        await admin.close()
        await engine.dispose()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lock_timeout", "canceling statement due to lock timeout"),
        ("statement_timeout", "canceling statement due to statement timeout"),
    ],
)
async def test_lock_and_statement_timeouts_delay_writes_but_lose_nothing(
    pg_url: str, setting: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = pg_engine(pg_url, **{setting: "100"})  # ms
    admin = await asyncpg.connect(pg_url)
    try:
        writer = writer_for(engine, flush_interval_s=0.01)
        with caplog.at_level(logging.WARNING, logger="tunnelacct.store.writer"):
            async with running(writer):
                lock = admin.transaction()
                await lock.start()
                await admin.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
                await writer.submit([event(EventKind.CLOSED) for _ in range(500)])
                await wait_until(lambda: writer.failed_flushes >= 2)
                assert writer.pending == 500
                await lock.rollback()
                await wait_until(lambda: writer.pending == 0)
        assert row_count(pg_url) == 500 == writer.rows_written
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert message in warning.getMessage()
    finally:
        await admin.close()
        await engine.dispose()


async def test_deadlock_victim_flush_is_retried_with_the_newest_counters(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = pg_engine(pg_url)
    admin = await asyncpg.connect(pg_url)
    a, b = uuid.uuid4(), uuid.uuid4()
    try:
        writer = writer_for(engine, flush_interval_s=0.01)
        with caplog.at_level(logging.WARNING, logger="tunnelacct.store.writer"):
            async with running(writer):
                await writer.submit([event(EventKind.OPENED, a), event(EventKind.OPENED, b)])
                await wait_until(lambda: writer.pending == 0)
                other = admin.transaction()
                await other.start()
                # The other transaction gives the writer's backend the first deadlock check.
                await admin.execute("SET LOCAL deadlock_timeout = '30s'")
                await admin.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", a)
                # Pending order b, a: the upsert locks b, then waits for a.
                await writer.submit(
                    [event(EventKind.CLOSED, b, n=2), event(EventKind.CLOSED, a, n=3)]
                )
                await wait_for_blocked_backend(admin)
                # Now the other transaction waits for b: a cycle, and the writer is the victim.
                await admin.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", b)
                await wait_until(lambda: writer.failed_flushes == 1)
                await other.commit()
                await wait_until(lambda: writer.pending == 0)
        assert pg_sessions(pg_url) == {a.hex: (300, 3, "completed"), b.hex: (200, 2, "completed")}
        # one retry, said once (a slow-flush warning may come too: the flush waited ~1 s)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum("deadlock detected" in w for w in warnings) == 1, warnings
    finally:
        await admin.close()
        await engine.dispose()


async def test_serialization_failure_under_repeatable_read_is_retried(pg_url: str) -> None:
    engine = pg_engine(pg_url, default_transaction_isolation="repeatable read")
    admin = await asyncpg.connect(pg_url)
    sid = uuid.uuid4()
    try:
        writer = writer_for(engine, flush_interval_s=0.01)
        async with running(writer):
            await writer.submit([event(EventKind.OPENED, sid)])
            await wait_until(lambda: writer.pending == 0)
            other = admin.transaction()
            await other.start()
            await admin.execute("UPDATE sessions SET user_id = 'bob' WHERE id = $1", sid)
            await writer.submit([event(EventKind.CLOSED, sid, n=4)])
            await wait_for_blocked_backend(admin)
            await other.commit()  # the waiting upsert finds the row changed since its snapshot
            await wait_until(lambda: writer.pending == 0)
        assert writer.failed_flushes == 1
        assert read_rows(pg_url, "SELECT user_id, bytes_tx, status FROM sessions") == [
            ("bob", 400, "completed")
        ]
    finally:
        await admin.close()
        await engine.dispose()


async def test_a_failed_batch_in_flight_beside_a_written_one_is_retried_alone(
    pg_url: str,
) -> None:
    # On PostgreSQL two batches are written at once, each in its own transaction.
    assert PG_FLIGHTS == 2
    engine = pg_engine(pg_url, lock_timeout="100")
    admin = await asyncpg.connect(pg_url)
    ids = [uuid.uuid4() for _ in range(200)]
    try:
        writer = writer_for(engine, batch_size=100, flush_interval_s=0.01)
        async with running(writer):
            await writer.submit([event(EventKind.OPENED, sid) for sid in ids])
            await wait_until(lambda: writer.pending == 0)
            assert writer.flushes == 2
            lock = admin.transaction()
            await lock.start()
            await admin.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", ids[150])
            await writer.submit([event(EventKind.CLOSED, sid, n=i) for i, sid in enumerate(ids, 1)])
            await wait_until(lambda: writer.failed_flushes >= 1 and writer.pending == 100)
            # the first batch is written while the second waits for the lock
            assert {
                r[0]
                for r in read_rows(pg_url, "SELECT id FROM sessions WHERE status = 'completed'")
            } == {sid.hex for sid in ids[:100]}
            await lock.rollback()
            await wait_until(lambda: writer.pending == 0)
        assert pg_sessions(pg_url) == {
            sid.hex: (100 * i, i, "completed") for i, sid in enumerate(ids, 1)
        }
    finally:
        await admin.close()
        await engine.dispose()


# SQLSTATEs the server raises itself (a DO block), as the writer receives them through
# SQLAlchemy and asyncpg: transient failures retry, bugs and bad data do not.
TRANSIENT_SQLSTATES = [
    "08006",
    "25006",
    "40001",
    "40P01",
    "53100",
    "53300",
    "55P03",
    "57014",
    "57P01",
    "57P03",
]
FATAL_SQLSTATES = ["22001", "23502", "23505", "3D000", "42501", "42P01", "XX000"]


async def raised_by_server(engine: AsyncEngine, code: str) -> BaseException:
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$"
            )
    except Exception as exc:
        return exc
    raise AssertionError(f"SQLSTATE {code} was not raised")


async def test_transient_sqlstates_are_retried_and_others_raise(pg_url: str) -> None:
    engine = pg_engine(pg_url)
    try:
        for code in TRANSIENT_SQLSTATES + FATAL_SQLSTATES:
            exc = await raised_by_server(engine, code)
            assert sqlstate(exc) == code
            assert transient_store_error(exc) == (code in TRANSIENT_SQLSTATES), code
    finally:
        await engine.dispose()


async def test_constraint_violation_from_bad_data_raises_and_keeps_the_sessions_pending(
    store_engine: AsyncEngine, store_url: str
) -> None:
    bad = replace(event(), attribution=Attribution(None))  # type: ignore[arg-type]
    writer = writer_for(store_engine)
    await writer.submit([event(), bad])
    # SQLite's through SQLAlchemy; PostgreSQL's from asyncpg directly (the COPY path)
    with pytest.raises((IntegrityError, asyncpg.IntegrityConstraintViolationError), match="org_id"):
        await writer.close()
    assert writer.failed_flushes == 0 and writer.pending == 2
    assert row_count(store_url) == 0


async def test_postgresql_writer_creates_each_days_partition_and_again_after_a_drop() -> None:
    """Sessions is partitioned by UTC day on PostgreSQL, without a default partition: the writer
    creates the days of what it writes (two here), and when a day it has seen loses its
    partition (retention dropped it) and a late row of that day follows, creates it again."""
    day_s = 86_400.0
    midnight = T0 - T0 % day_s  # 2026-11-23 00:00 UTC
    with fresh_database() as url:
        migrate(url)
        engine = make_engine(url)
        try:
            writer = writer_for(engine, flush_interval_s=0.0)
            task = asyncio.create_task(writer.run())
            first = [
                replace(event(EventKind.CLOSED), started_ts=midnight - 0.5),
                replace(event(EventKind.CLOSED), started_ts=midnight + 0.5),
            ]
            await writer.submit(first)
            await wait_until(lambda: writer.pending == 0)
            days = {"sessions_p20261122", "sessions_p20261123"}
            partitions = (
                "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'sessions_p%'"
            )
            assert {str(n) for (n,) in read_rows(url, partitions)} == days
            async with engine.begin() as conn:
                await conn.exec_driver_sql("DROP TABLE sessions_p20261123")
            late = replace(event(EventKind.CLOSED), started_ts=midnight + 60)
            await writer.submit([late])
            await writer.close()
            await task
            assert writer.failed_flushes == 0
            assert {str(n) for (n,) in read_rows(url, partitions)} == days
            stored = read_rows(url, "SELECT id FROM sessions")
            assert {str(i) for (i,) in stored} == {first[0].session_id.hex, late.session_id.hex}
        finally:
            await engine.dispose()


# Sessions complete in one write (store/complete.py): rows built by their producer, written
# beside the events with the same rollup, back-pressure and retries.


def complete_sessions(engine: AsyncEngine, events: list[SessionEvent]) -> CompleteSessions:
    """`events` (CLOSED, each of a new session) as an import's process sends them."""
    complete = CompleteSessions()
    driver = driver_values(backend_of(engine).name)
    for closed in events:
        complete.add(closed, "gw-test", driver)
    return complete


def closed_events() -> list[SessionEvent]:
    """Closed sessions of two orgs: varied columns, and one that ran across midnight."""
    midnight = (int(T0) // 86_400 + 1) * 86_400
    across_midnight = replace(
        event(EventKind.CLOSED, n=7, last_ts=midnight + 30.25),
        started_ts=midnight - 20.5,
        day_marks=((int(T0) // 86_400, 300, 3000, 3, 6),),
    )
    varied = [e for e in varied_events() if e.kind is EventKind.CLOSED]
    plain = [event(EventKind.CLOSED, n=n, last_ts=T0 + n) for n in range(1, 40)]
    globex = [
        replace(e, session_id=uuid.uuid4(), attribution=Attribution("globex", "c9"))
        for e in plain[::3]
    ]
    return [*varied, across_midnight, *plain, *globex]


def usage_rows(url: str) -> list[tuple[object, ...]]:
    return read_rows(url, "SELECT * FROM usage_days ORDER BY 1, 2, 3, 4, 5, 6, 7")


async def test_complete_rows_store_and_roll_up_what_their_events_would(
    store_engine: AsyncEngine, store_url: str
) -> None:
    sessions = closed_events()
    days = {datetime.fromtimestamp(e.started_ts, UTC).date() for e in sessions}
    await ensure_partitions(store_engine, days)
    writer = writer_for(store_engine)
    async with running(writer):
        await writer.submit(sessions)
    by_events = select_all_with_types(store_url)
    usage_by_events = usage_rows(store_url)
    async with store_engine.begin() as conn:
        for table in ("sessions", "usage_days", "usage_months"):
            await conn.exec_driver_sql(f"DELETE FROM {table}")
    assert row_count(store_url) == 0
    writer = writer_for(store_engine)
    async with running(writer):
        await writer.submit_complete(complete_sessions(store_engine, sessions))
    assert writer.rows_written == len(sessions)
    assert select_all_with_types(store_url) == by_events
    assert usage_rows(store_url) == usage_by_events
    # the session rows, each once, are the rollup's oracle
    assert usage_totals(store_url) == session_totals(store_url)
    assert_months_sum_their_days(store_url)


async def test_complete_rows_wait_for_room_beside_events_and_count_as_pending(
    store_engine: AsyncEngine, store_url: str
) -> None:
    writer = writer_for(store_engine, max_pending=10, batch_size=4, flush_interval_s=60)
    await writer.submit([event() for _ in range(6)])
    await writer.submit_complete(complete_sessions(store_engine, closed_events()[:5]))
    assert writer.pending == 11  # room was left when it came, and it is taken whole
    complete_waits = asyncio.create_task(
        writer.submit_complete(complete_sessions(store_engine, closed_events()[5:8]))
    )
    events_wait = asyncio.create_task(writer.submit([event()]))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not complete_waits.done() and not events_wait.done()  # no run(): no room
    assert writer.pending == 11
    async with running(writer):
        await asyncio.wait_for(asyncio.gather(complete_waits, events_wait), WAIT_S)
    assert writer.pending == 0
    assert row_count(store_url) == writer.rows_written == 6 + 5 + 3 + 1


async def test_complete_rows_are_drained_by_close_and_refused_after_it(
    store_engine: AsyncEngine, store_url: str
) -> None:
    writer = writer_for(store_engine, flush_interval_s=3600)  # only close() flushes
    await writer.submit_complete(complete_sessions(store_engine, closed_events()))
    assert writer.oldest_pending_since is not None
    await writer.close(timeout_s=WAIT_S)
    assert row_count(store_url) == len(closed_events())
    assert writer.pending == 0 and writer.oldest_pending_since is None
    with pytest.raises(StoreError, match="closed"):
        await writer.submit_complete(complete_sessions(store_engine, closed_events()[:1]))


async def test_a_lost_commit_of_complete_rows_counts_each_session_once_in_the_rollup(
    pg_url: str,
) -> None:
    # As for events above: the server committed the write and the writer never heard it, so
    # it retries, and the retry's rollup adds each session's whole share less that of the row
    # the store holds of it by then.
    sessions = [event(EventKind.CLOSED, n=i) for i in range(1, 201)]
    async with through_commit_cutter(pg_url) as (cutter, engine):
        writer = writer_for(engine, flush_interval_s=0.01)
        async with running(writer):
            await writer.submit([event(EventKind.OPENED)])  # the pool's connection
            await wait_until(lambda: writer.pending == 0)
            cutter.arm()
            await writer.submit_complete(complete_sessions(engine, sessions))
            await asyncio.wait_for(cutter.cut.wait(), WAIT_S)
            await wait_until(lambda: writer.pending == 0)
        assert writer.failed_flushes == 1
    assert row_count(pg_url) == len(sessions) + 1
    every_n = sum(range(1, len(sessions) + 1))
    closed_totals = (100 * every_n, 1000 * every_n, every_n, 2 * every_n)
    assert usage_totals(pg_url) == session_totals(pg_url)
    assert session_totals(pg_url) == {
        "acme": (closed_totals[0] + 100, closed_totals[1] + 1000, every_n + 1, every_n * 2 + 2)
        + (len(sessions) + 1, len(sessions))
    }
    assert_months_sum_their_days(pg_url)
