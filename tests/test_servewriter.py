"""serve's writer child (store/servewriter.py): every event sent is a row, its figures reach
serve, the purge's turn at the write lock holds its flushes back, a stuck store at close is an
error naming what stays unwritten, and a dead child is an error, not a hang."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers.waiting import WAIT_S
from tests.test_writerchild import closed_event
from tunnelacct.config.model import Config, DatabaseConfig, WriterConfig
from tunnelacct.enums import EventKind
from tunnelacct.errors import StoreError
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.sessions.flowkey import SessionIds
from tunnelacct.store.migrate import migrate
from tunnelacct.store.servewriter import ServeWriter

FLUSH_INTERVAL_S = 0.01
# A full writer child waiting for a locked store used 0.02 s of CPU in 2 s; when its loop spun
# on the waiting pipe, 2.0 s. The window is what the CPU is measured over, not a wait.
IDLE_WINDOW_S = 2.0
IDLE_CPU_BOUND_S = 0.5


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer_for(db: Path, **writer: float) -> ServeWriter:
    config = Config(
        database=DatabaseConfig(f"sqlite:///{db}"),
        writer=WriterConfig(flush_interval_s=FLUSH_INTERVAL_S, **writer),  # type: ignore[arg-type]
        gateway="gw-test",
    )
    return ServeWriter(config, log_level="WARNING")


def stored_rows(db: Path) -> dict[str, tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT id, status, bytes_tx, bytes_rx, packets_tx, packets_rx FROM sessions"
        ).fetchall()
    conn.close()
    return {row[0]: row[1:] for row in rows}


def as_rows(events: list[SessionEvent]) -> dict[str, tuple[object, ...]]:
    return {
        e.session_id.hex: (
            "completed" if e.kind is EventKind.CLOSED else "ongoing",
            e.bytes_tx,
            e.bytes_rx,
            e.packets_tx,
            e.packets_rx,
        )
        for e in events
    }


async def until(condition: object, what: str) -> None:
    """Wait on the event loop (the figures arrive on it) until `condition()` holds."""
    deadline = time.monotonic() + WAIT_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {WAIT_S:g} s")
        await asyncio.sleep(0.01)


def test_every_event_sent_is_a_row_and_the_figures_reach_serve(tmp_path: Path) -> None:
    """Checkpoints then closes of the same sessions: the rows hold the last event of each,
    and the parent's figures say what the child's writer did."""
    db = tmp_path / "store.db"
    migrate(f"sqlite:///{db}")
    ids = SessionIds()
    closes = [closed_event(ids, index) for index in range(2000)]
    checkpoints = [
        dataclasses.replace(
            e, kind=EventKind.CHECKPOINT, ended_ts=None, close_reason=None, bytes_tx=1
        )
        for e in closes[:500]
    ]

    async def run() -> ServeWriter:
        writer = writer_for(db)
        writer.start()
        running = asyncio.create_task(writer.run())
        await writer.submit(checkpoints)
        await until(lambda: writer.rows_written >= len(checkpoints), "checkpoints written")
        assert stored_rows(db) == as_rows(checkpoints)
        for first in range(0, len(closes), 300):
            await writer.room()
            await writer.submit(closes[first : first + 300])
        await until(
            lambda: writer.pending == 0 and writer.rows_written == len(checkpoints) + len(closes),
            "every close written",
        )
        assert writer.flushes >= 2
        assert writer.oldest_pending_since is None
        assert sum(writer.write_seconds_counts) == writer.flushes + writer.failed_flushes
        await writer.close()
        await running
        return writer

    writer = asyncio.run(run())
    assert stored_rows(db) == as_rows(closes)
    assert writer.dropped_events == 0


def test_a_purges_turn_at_the_write_lock_holds_the_childs_flushes(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    migrate(f"sqlite:///{db}")
    ids = SessionIds()
    events = [closed_event(ids, index) for index in range(100)]

    async def run() -> None:
        writer = writer_for(db)
        writer.start()
        running = asyncio.create_task(writer.run())
        lock = writer.write_lock()
        async with lock:
            await writer.submit(events)
            await until(lambda: writer.pending == len(events), "events in the child")
            # 50 flush intervals: a flush not held back would have written them
            await asyncio.sleep(50 * FLUSH_INTERVAL_S)
            assert stored_rows(db) == {}
            assert writer.flushes == 0
        await until(lambda: writer.rows_written == len(events), "the held-back flush")
        assert stored_rows(db) == as_rows(events)
        async with lock:  # a second turn: the first was given back
            pass
        await writer.close()
        await running

    asyncio.run(run())


def test_a_store_stuck_at_close_is_an_error_naming_the_unwritten_sessions(
    tmp_path: Path,
) -> None:
    """Another process holds the SQLite file's write lock past the close timeout: close()
    says how many sessions stay unwritten, and dropped_events counts them."""
    db = tmp_path / "store.db"
    migrate(f"sqlite:///{db}")
    ids = SessionIds()
    events = [closed_event(ids, index) for index in range(40)]
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")

    async def run() -> ServeWriter:
        writer = writer_for(db, write_timeout_s=0.5)
        writer.start()
        running = asyncio.create_task(writer.run())
        await writer.submit(events)
        await until(lambda: writer.failed_flushes >= 1, "a failed flush")
        with pytest.raises(StoreError, match=f"could not write {len(events)} pending sessions"):
            await writer.close(timeout_s=1.0)
        await running  # ended by close(): not a failure of its own
        return writer

    try:
        writer = asyncio.run(run())
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert writer.dropped_events == len(events)
    assert stored_rows(db) == {}


def test_pending_counts_the_events_on_their_way_to_a_full_child(tmp_path: Path) -> None:
    """The store is locked and the child's writer holds its max_pending: the events sent
    after those wait in the pipe or in the child, which waits without spinning. Every
    session submitted is in `pending` (the child's sessions plus `in_flight`), not only the
    child's; once the store is free, all are written and both figures fall to 0."""
    db = tmp_path / "store.db"
    migrate(f"sqlite:///{db}")
    ids = SessionIds()
    events = [closed_event(ids, index) for index in range(600)]
    max_pending = 50
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")

    async def run() -> None:
        writer = writer_for(db, max_pending=max_pending, batch_size=max_pending)
        writer.start()
        running = asyncio.create_task(writer.run())
        sending = [
            asyncio.create_task(writer.submit(events[first : first + 200]))
            for first in range(0, len(events), 200)
        ]
        try:
            await until(lambda: writer.counters.pending == max_pending, "a full child writer")
            await until(lambda: writer.pending == len(events), "every session in pending")
            assert writer.rows_written == 0
            # full, with a message waiting in the pipe: the child waits, it does not spin
            assert writer.pid is not None
            cpu_before = process_cpu_s(writer.pid)
            await asyncio.sleep(IDLE_WINDOW_S)
            assert process_cpu_s(writer.pid) - cpu_before < IDLE_CPU_BOUND_S
            assert writer.in_flight == len(events) - max_pending
        finally:
            blocker.execute("ROLLBACK")
        await asyncio.gather(*sending)
        await until(lambda: writer.rows_written == len(events), "every session written")
        await until(lambda: writer.pending == 0, "nothing pending")
        assert writer.in_flight == 0
        await writer.close()
        await running

    try:
        asyncio.run(run())
    finally:
        blocker.close()
    assert stored_rows(db) == as_rows(events)


def test_a_killed_child_is_a_store_error_not_a_hang(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    migrate(f"sqlite:///{db}")
    ids = SessionIds()

    async def run() -> None:
        writer = writer_for(db)
        writer.start()
        running = asyncio.create_task(writer.run())
        await writer.submit([closed_event(ids, 1)])
        assert writer.pid is not None
        os.kill(writer.pid, signal.SIGKILL)
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(StoreError, match=r"ended unexpectedly \(exit code -9\)"):
                await running
            with pytest.raises(StoreError, match="ended unexpectedly"):
                await writer.submit([closed_event(ids, 2)])
            async with writer.write_lock():  # no writer left to take turns with
                pass
            with pytest.raises(StoreError, match="ended unexpectedly"):
                await writer.close()

    asyncio.run(run())
