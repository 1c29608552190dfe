"""The writer child of `tunnelacct import` (store/writerchild.py): events cross the pipe
unchanged, the rows it writes are the events sent, and a dead child is an error, not a hang."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.stores import assert_months_sum_their_days, session_totals, usage_totals
from tests.helpers.waiting import WAIT_S
from tunnelacct.config.model import Config, DatabaseConfig, OrgConfig, WriterConfig
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.errors import StoreError
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.sessions.flowkey import SessionIds
from tunnelacct.store.migrate import migrate
from tunnelacct.store.writerchild import (
    PENDING_BATCHES,
    WriterProcess,
    WriterSettings,
    child_writer_config,
    pack,
    unpack,
)

T0 = 1_790_000_000.25


def closed_event(ids: SessionIds, index: int, **changes: object) -> SessionEvent:
    """A closed TCP session, its counters derived from `index`."""
    event = SessionEvent(
        kind=EventKind.CLOSED,
        session_id=uuid.UUID(int=ids.new(T0 + index)),
        proto=IpProto.TCP,
        family=4,
        src_addr=f"100.64.{index // 250}.{index % 250 + 1}",
        src_port=40000 + index % 20000,
        dst_addr="10.99.0.5",
        dst_port=443,
        started_ts=T0 + index,
        last_ts=T0 + index + 0.5,
        ended_ts=T0 + index + 0.5,
        bytes_tx=100 + index,
        bytes_rx=1000 + index,
        packets_tx=2 + index % 7,
        packets_rx=3 + index % 5,
        payload_bytes_tx=60 + index,
        payload_bytes_rx=900 + index,
        close_reason=CloseReason.FIN,
        midstream=False,
        community_id="1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=",
        attribution=Attribution("acme", "c1", "laptop", "alice", "r1", "web"),
        interface="wg0",
    )
    return dataclasses.replace(event, **changes)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"kind": EventKind.CHECKPOINT, "ended_ts": None, "close_reason": None},
        {"kind": EventKind.OPENED, "ended_ts": None, "close_reason": None, "midstream": True},
        {
            "close_reason": CloseReason.EXPORTER_FORCED,
            "proto": IpProto.UDP,
            "family": 6,
            "src_addr": "fd00:64::2",
            "dst_addr": "fd00:99::5",
        },
        {
            "payload_bytes_tx": None,
            "payload_bytes_rx": None,
            "estimated": True,
            "incomplete": True,
            "gateway": "branch-fw",
            "interface": "flow:192.0.2.10/7",
        },
        {"day_marks": ((20_500, 10, 20, 1, 2), (20_501, 30, 40, 3, 4))},
        {"attribution": Attribution("globex")},
    ],
)
def test_an_event_crosses_the_pipe_unchanged(changes: dict[str, object]) -> None:
    event = closed_event(SessionIds(), 3, **changes)
    back = unpack(pack(event))
    # field by field, with their types: an enum must come back an enum, the id a UUID
    for field in dataclasses.fields(SessionEvent):
        sent = getattr(event, field.name)
        received = getattr(back, field.name)
        assert received == sent, field.name
        assert type(received) is type(sent), field.name


def settings_for(db: Path, batch_size: int = 500) -> WriterSettings:
    config = Config(
        database=DatabaseConfig(f"sqlite:///{db}"),
        writer=WriterConfig(batch_size=batch_size),
        gateway="gw-test",
    )
    return WriterSettings(config=config, reimport=True, log_level="WARNING")


def test_the_child_holds_a_few_batches_pending_or_fewer_when_max_pending_says_so() -> None:
    """The parent waits at the pipe: the child's writer needs only a few batches pending, not
    [writer] max_pending's 100,000 events (about 80 MiB); a lower max_pending still holds."""
    configured = WriterConfig(batch_size=5000, max_pending=100_000)
    assert child_writer_config(configured) == dataclasses.replace(
        configured, max_pending=PENDING_BATCHES * 5000
    )
    few = WriterConfig(batch_size=5000, max_pending=300)
    assert child_writer_config(few) == few


def test_the_child_writes_every_event_it_was_sent(tmp_path: Path) -> None:
    """With batches of 500, the child holds 2,000 events at most: the parent's submit() waits
    at the pipe, and every event still arrives."""
    db = tmp_path / "store.db"
    migrate(f"sqlite:///{db}")
    ids = SessionIds()
    events = [closed_event(ids, index) for index in range(3000)]

    async def run() -> WriterProcess:
        writer = WriterProcess(settings_for(db), ids)
        for first in range(0, len(events), 700):
            await writer.submit(events[first : first + 700])
        await writer.close()
        return writer

    writer = asyncio.run(run())
    assert writer.rows_written == len(events)
    with sqlite3.connect(db) as conn:
        stored = {
            row[0]: row[1:]
            for row in conn.execute(
                "SELECT id, src_addr, src_port, bytes_tx, bytes_rx, packets_tx, packets_rx, "
                "payload_bytes_tx, status, close_reason, gateway FROM sessions"
            )
        }
    expected = {
        e.session_id.hex: (
            e.src_addr,
            e.src_port,
            e.bytes_tx,
            e.bytes_rx,
            e.packets_tx,
            e.packets_rx,
            e.payload_bytes_tx,
            "completed",
            "fin",
            "gw-test",
        )
        for e in events
    }
    assert stored == expected


def test_a_session_sent_before_its_close_closes_as_an_event_and_counts_once(
    tmp_path: Path,
) -> None:
    """The parent sends a session as a row built on its side only when nothing of it was sent
    before: one written open and then closed is closed by the child's writer, which knows what
    the rollup holds of it; one of an org that logs nothing is dropped by the child. The
    session rows are the rollup's oracle."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    migrate(url)
    ids = SessionIds()
    opened_first = [closed_event(ids, index) for index in range(100)]
    openings = [
        dataclasses.replace(
            e, kind=EventKind.OPENED, ended_ts=None, close_reason=None, bytes_tx=1, packets_tx=1
        )
        for e in opened_first
    ]
    closed_only = [closed_event(ids, index) for index in range(100, 200)]
    unlogged = [
        closed_event(ids, index, attribution=Attribution("quiet")) for index in range(200, 210)
    ]
    settings = settings_for(db)
    config = dataclasses.replace(
        settings.config,
        orgs=(OrgConfig("acme", "Acme"), OrgConfig("quiet", "Quiet", logging=False)),
        writer=WriterConfig(batch_size=500, flush_interval_s=0.01),
    )

    def ongoing_rows() -> int:
        with sqlite3.connect(db) as conn:
            found = conn.execute("SELECT count(*) FROM sessions WHERE status = 'ongoing'")
            return int(found.fetchone()[0])

    async def run() -> WriterProcess:
        writer = WriterProcess(dataclasses.replace(settings, config=config), ids)
        await writer.submit(openings)
        await wait_for_rows(ongoing_rows, len(openings))
        await writer.submit([*opened_first, *closed_only, *unlogged])
        await writer.close()
        return writer

    writer = asyncio.run(run())
    assert writer.rows_written == len(openings) + len(opened_first) + len(closed_only)
    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute("SELECT id, status || ' ' || bytes_tx FROM sessions"))
    expected = {e.session_id.hex: f"completed {e.bytes_tx}" for e in opened_first + closed_only}
    assert stored == expected
    assert usage_totals(url) == session_totals(url)
    assert_months_sum_their_days(url)


async def wait_for_rows(count_rows: Callable[[], int], wanted: int) -> None:
    """Wait until `count_rows()` says `wanted`; TimeoutError after WAIT_S."""
    async with asyncio.timeout(WAIT_S):
        while count_rows() != wanted:
            await asyncio.sleep(0.01)


def test_a_killed_child_is_a_store_error_not_a_hang(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    migrate(f"sqlite:///{db}")
    ids = SessionIds()

    async def run() -> None:
        writer = WriterProcess(settings_for(db), ids)
        await writer.submit([closed_event(ids, 1)])
        pid = writer.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        # the pipe may still take a few messages; the error comes at the latest at close()
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(StoreError, match="writer process ended unexpectedly"):
                for index in range(2, 10_000):
                    await writer.submit([closed_event(ids, index)])
                await writer.close()

    asyncio.run(run())


def test_ids_of_the_import_are_told_from_others_in_the_child(tmp_path: Path) -> None:
    """The child replaces a stored session of an earlier capture, never one of this import:
    it learns this import's issuer tags with its events. The second import holds two captures
    of the same sessions, written in separate transactions: the second copy must not replace
    the first, which the child only knows as its own by the tags."""
    db = tmp_path / "store.db"
    migrate(f"sqlite:///{db}")
    earlier_ids = SessionIds()
    earlier = [closed_event(earlier_ids, index) for index in range(50)]

    async def write(ids: SessionIds, *parts: list[SessionEvent]) -> WriterProcess:
        writer = WriterProcess(settings_for(db, batch_size=len(earlier)), ids)
        for part in parts:
            await writer.submit(part)
        await writer.close()
        return writer

    asyncio.run(write(earlier_ids, earlier))
    again_ids = SessionIds()

    def captured_again(shift_s: float) -> list[SessionEvent]:
        return [
            dataclasses.replace(
                e,
                started_ts=e.started_ts + shift_s,
                session_id=uuid.UUID(int=again_ids.new(e.started_ts + shift_s)),
            )
            for e in earlier
        ]

    first_copy = captured_again(1e-6)
    second_copy = captured_again(2e-6)
    second = asyncio.run(write(again_ids, first_copy, second_copy))
    assert second.replaced_rows == len(earlier)
    with sqlite3.connect(db) as conn:
        stored = {uuid.UUID(hex=row[0]) for row in conn.execute("SELECT id FROM sessions")}
    assert stored == {e.session_id for e in first_copy + second_copy}


def test_a_store_the_child_cannot_migrate_is_a_store_error_naming_why(tmp_path: Path) -> None:
    """The child migrates the store before it writes: a path that is a directory cannot be
    a SQLite file, and the import is told so, with SQLite's reason."""
    ids = SessionIds()

    async def run() -> None:
        writer = WriterProcess(settings_for(tmp_path), ids)  # a directory, not a file
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(StoreError, match="migration failed: .*unable to open"):
                await writer.submit([closed_event(ids, 1)])
                await writer.close()

    asyncio.run(run())
