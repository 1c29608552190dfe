"""The writer child: the store side of `tunnelacct import`, in a spawned process of its own.

An import of many short sessions spends about as long writing them as making them: building
each row, the usage rollup and binding the row for SQLite are Python, and in one process they
share one GIL with the flow table (issue 21). Here the flow table keeps the importer's process
and the store gets its own: the child migrates the store, writes the config's orgs, clients and
resources, and runs a SessionWriter with its own engine, on the other core. The importer's
process never imports SQLAlchemy or Alembic (0.5 s), so it starts on the capture at once.

On SQLite, the parent (`WriterProcess`) sends most sessions as rows: a CLOSED event of a
session that no earlier event named is complete in one write, and the parent builds its row and
its share of the usage rollup (store/complete.py), which leaves the child only their write (the
flow table has time to spare while the writer writes). Any other event, and every event on
PostgreSQL, it packs into a tuple of plain values (pickling a dataclass with enums and a UUID
costs several times more); the child unpacks them and hands them to a SessionWriter, which
batches, coalesces, retries and replaces the sessions of an earlier capture exactly as in one
process, the complete sessions with them.
Back-pressure is the pipe: the child reads the next message only once the writer took the last
one, so a slow store stops the parent when the pipe is full, with a bounded amount of sessions
in between.

Messages, parent to child: ("events", issuer tags or None, packed events, CompleteSessions or
None), then ("end",).
Child to parent, once: ("done", rows written, rows replaced) or ("failed", what).
The child dies with its parent (PR_SET_PDEATHSIG) and leaves SIGINT to it: an interrupted
import ends its events and then its writer in order, as in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import pickle
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from tunnelacct.config.database_url import engine_name
from tunnelacct.config.model import Config, WriterConfig
from tunnelacct.config.orgs import unlogged_orgs
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.errors import StoreError
from tunnelacct.heap import fewer_collections
from tunnelacct.log import setup_logging
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.sessions.flowkey import SessionIds, id_tag, uuid_of_int
from tunnelacct.store.complete import CompleteSessions
from tunnelacct.store.rows import DriverValues, driver_values

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5  # how often a waiting parent checks that the child still runs
CLOSE_GRACE_S = 5.0  # after its result: how long the child may take to exit
# The child's writer holds at most this many batches ([writer] batch_size) of events, when
# [writer] max_pending allows no fewer: enough for a flush of PostgreSQL's two flights while
# the next gather, and the parent waits at the pipe meanwhile. Holding max_pending's 100,000,
# the child peaked at 247 MiB in the session-heavy import (SQLite; 162-171 with 10,000-20,000)
# and at 191 MiB with PostgreSQL (116 with 20,000), and wrote no faster (issue 21).
PENDING_BATCHES = 4

_CLOSED = EventKind.CLOSED
_KINDS = {kind.value: kind for kind in EventKind}
_REASONS: dict[str | None, CloseReason | None] = {reason.value: reason for reason in CloseReason}
_REASONS[None] = None
_PROTOS = {int(proto): proto for proto in IpProto}

# A packed event: the SessionEvent fields in declaration order, with the enums as their values
# and the id as its int. The Attribution stays an object: events of one batch share a few, and
# pickle writes each shared object once.
PackedEvent = tuple[Any, ...]


def pack(event: SessionEvent) -> PackedEvent:
    """`event` as a tuple of plain values, for the pipe."""
    return (
        event.kind.value,
        event.session_id.int,
        int(event.proto),
        event.family,
        event.src_addr,
        event.src_port,
        event.dst_addr,
        event.dst_port,
        event.started_ts,
        event.last_ts,
        event.ended_ts,
        event.bytes_tx,
        event.bytes_rx,
        event.packets_tx,
        event.packets_rx,
        event.payload_bytes_tx,
        event.payload_bytes_rx,
        None if event.close_reason is None else event.close_reason.value,
        event.midstream,
        event.community_id,
        event.attribution,
        event.interface,
        event.day_marks,
        event.estimated,
        event.incomplete,
        event.gateway,
    )


def unpack(packed: PackedEvent) -> SessionEvent:
    """The SessionEvent that `pack()` made `packed` of (positionally: 1.5 µs an event against
    2.3 µs by keyword, in the child's share of a session-heavy import)."""
    return SessionEvent(
        _KINDS[packed[0]],
        uuid_of_int(packed[1]),
        _PROTOS[packed[2]],
        packed[3],  # family
        packed[4],  # src_addr
        packed[5],
        packed[6],
        packed[7],
        packed[8],  # started_ts
        packed[9],
        packed[10],
        packed[11],  # bytes_tx
        packed[12],
        packed[13],
        packed[14],
        packed[15],  # payload_bytes_tx
        packed[16],
        _REASONS[packed[17]],
        packed[18],  # midstream
        packed[19],
        packed[20],  # attribution
        packed[21],
        packed[22],  # day_marks
        packed[23],
        packed[24],
        packed[25],  # gateway
    )


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """What the child needs (pickled to it): the import's config, whose [database], [writer],
    [gateway], orgs, clients and resources it uses, and its log level."""

    config: Config
    reimport: bool  # replace the stored sessions of an earlier capture (store/reimport.py)
    log_level: str


class WriterProcess:
    """A SessionWriter in the writer child; `submit()` events, then `await close()` once.

    `rows_written` and `replaced_rows` are the writer's, known once close() returned.
    """

    def __init__(self, settings: WriterSettings, ids: SessionIds) -> None:
        self.ids = ids  # its tags tell the child which stored rows are this import's own
        self._tags_sent: frozenset[int] = frozenset()
        config = settings.config
        self._gateway = config.gateway
        # How rows hold values; None: events only. SQLite's rows are text and numbers, cheap to
        # pickle; PostgreSQL's hold a UUID and datetimes, and sending them as rows cost this
        # process 2.4-3.2 s more CPU in the session-heavy import, made it 14-22% slower, and
        # saved its child nothing (docs/performance-sessions.md "Rows built where the sessions
        # end").
        self._driver: DriverValues | None = None
        if engine_name(config.database.url) == "sqlite":
            self._driver = driver_values("sqlite")
        self._unlogged = unlogged_orgs(config)  # their events go as events: the child drops them
        self._sent_open: set[int] = set()  # ids of sessions sent as events, not yet closed
        ctx = mp.get_context("spawn")  # never fork a process that runs threads and an event loop
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_run_in_child,
            args=(settings, child_conn, os.getpid()),
            name="tunnelacct-writer",
            daemon=True,
        )
        try:
            self._proc.start()
        finally:
            child_conn.close()  # the child holds the other end: its exit ends the pipe
        self._closed = False
        self.rows_written = 0
        self.replaced_rows = 0

    async def submit(self, events: Sequence[SessionEvent]) -> None:
        """Send `events` to the child; waits while the pipe is full (the store is slower).

        Raises StoreError when the child failed, or after close().
        """
        if self._closed:
            raise StoreError("session writer is closed")
        if self._conn.poll(0):  # the child's one message, before the end: it failed
            raise self._failure()
        if not events:
            return
        tags = frozenset(self.ids.tags)
        new_tags = None if tags == self._tags_sent else tags
        self._tags_sent = tags
        packed, complete = self._split(events)
        message = ("events", new_tags, packed, complete if complete.rows else None)
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            await asyncio.to_thread(self._conn.send_bytes, payload)
        except OSError:  # the child closed its end: it failed, and said why
            raise self._failure() from None

    def _split(self, events: Sequence[SessionEvent]) -> tuple[list[PackedEvent], CompleteSessions]:
        """`events` as the child takes them: the sessions complete in one write as rows, the
        other events packed."""
        packed: list[PackedEvent] = []
        complete = CompleteSessions()
        driver = self._driver
        if driver is None:  # events only: nothing to tell apart
            return [pack(event) for event in events], complete
        sent_open = self._sent_open
        for event in events:
            if event.kind is not _CLOSED:
                sent_open.add(event.session_id.int)
                packed.append(pack(event))
            elif sent_open and event.session_id.int in sent_open:
                sent_open.discard(event.session_id.int)
                packed.append(pack(event))  # the writer knows what it wrote of it before
            elif event.attribution.org_id in self._unlogged:
                packed.append(pack(event))
            else:
                complete.add(event, self._gateway, driver)
        return packed, complete

    async def close(self) -> None:
        """Tell the child the events ended, wait for it to write them all; idempotent.

        Raises StoreError with the child's reason when it could not write them.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._conn.send_bytes(pickle.dumps(("end",)))
        except OSError:
            raise self._failure() from None
        result = await asyncio.to_thread(self._result)
        self._stop()
        if result[0] != "done":
            raise StoreError(result[1])
        self.rows_written = result[1]
        self.replaced_rows = result[2]

    def _result(self) -> tuple[Any, ...]:
        """The child's one message, waiting as long as it runs."""
        while not self._conn.poll(POLL_S):
            if not self._proc.is_alive() and not self._conn.poll(0):
                return ("failed", self._ended_why())
        try:
            result: tuple[Any, ...] = self._conn.recv()
        except (EOFError, OSError):
            return ("failed", self._ended_why())
        return result

    def _failure(self) -> StoreError:
        self._closed = True
        result = self._result()
        self._stop()
        why = result[1] if result[0] == "failed" else "the writer process stopped reading"
        return StoreError(why)

    def _ended_why(self) -> str:
        self._proc.join(timeout=CLOSE_GRACE_S)
        return f"the writer process ended unexpectedly (exit code {self._proc.exitcode})"

    def _stop(self) -> None:
        self._conn.close()
        self._proc.join(timeout=CLOSE_GRACE_S)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._proc.pid

    def kill(self) -> None:
        """End the child now, whatever it holds (the import failed before its writer)."""
        self._closed = True
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join(timeout=5)
        self._conn.close()


class _IssuedTags:
    """The parent's issuer tags as the child knows them: what Reimport asks of SessionIds."""

    def __init__(self) -> None:
        self.tags: set[int] = set()

    def issued(self, ident: uuid.UUID) -> bool:
        return id_tag(ident) in self.tags


def become_child(parent_pid: int, log_level: str) -> None:
    """What a writer child does first: die with its parent (PR_SET_PDEATHSIG), leave SIGINT
    to it (a terminal's Ctrl-C reaches the whole group), and log as it does."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    setup_logging(log_level)


def _run_in_child(settings: WriterSettings, conn: Any, parent_pid: int) -> None:
    become_child(parent_pid, settings.log_level)
    try:
        # imported here: the importer's own process never imports SQLAlchemy or Alembic
        from tunnelacct.store.schema import upgrade_to_head

        upgrade_to_head(settings.config.database.url)
        with fewer_collections():  # up to [writer] max_pending events are held at once
            result: tuple[Any, ...] = asyncio.run(_write_all(settings, conn))
    except BaseException as e:  # told to the parent, which raises it as a StoreError
        log.debug("writer process failed", exc_info=True)
        while isinstance(e, BaseExceptionGroup):  # the TaskGroup's: its first error says why
            e = e.exceptions[0]
        result = ("failed", str(e) if isinstance(e, StoreError) else f"{type(e).__name__}: {e}")
    with contextlib.suppress(OSError):  # the parent is gone
        conn.send(result)
    conn.close()
    # Everything is committed and the engine disposed: skip the interpreter's teardown (a
    # few hundred ms of freeing modules), which the parent would wait for.
    logging.shutdown()
    os._exit(0)


def child_writer_config(writer_config: WriterConfig) -> WriterConfig:
    """[writer] as the child's writer runs it: at most PENDING_BATCHES batches pending."""
    bound = PENDING_BATCHES * writer_config.batch_size
    return replace(writer_config, max_pending=min(writer_config.max_pending, bound))


async def _write_all(settings: WriterSettings, conn: Any) -> tuple[Any, ...]:
    """Write what the parent sends until it says "end"; ("done", rows, replaced)."""
    from tunnelacct.store.engine import make_engine
    from tunnelacct.store.inventory import sync_inventory
    from tunnelacct.store.reimport import Reimport
    from tunnelacct.store.writer import SessionWriter

    config = settings.config
    engine = make_engine(config.database.url, synchronous=config.database.synchronous)
    issued = _IssuedTags()
    writer = SessionWriter(
        engine,
        child_writer_config(config.writer),
        gateway=config.gateway,
        unlogged_orgs=unlogged_orgs(config),
        reimport=Reimport(config.gateway, issued) if settings.reimport else None,
    )
    try:
        await sync_inventory(engine, config)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(writer.run())
            try:
                while True:
                    # waits in short polls, so no executor thread is left blocked in a read
                    # when the writer fails and this loop is cancelled
                    while not await asyncio.to_thread(conn.poll, POLL_S):
                        pass
                    message = conn.recv()
                    if message[0] == "end":
                        break
                    _kind, tags, packed, complete = message
                    if tags is not None:
                        issued.tags = set(tags)
                    if packed:
                        await writer.submit([unpack(event) for event in packed])
                    if complete is not None:
                        await writer.submit_complete(complete)
            finally:
                await writer.close()
    finally:
        await engine.dispose()
    return ("done", writer.rows_written, writer.replaced_rows)
