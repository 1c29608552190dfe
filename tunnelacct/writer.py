"""SessionWriter: session events -> batched, coalesced upserts into the sessions table.

The writer is the only code that writes session records. Producers `submit()` events into a
bounded pending map keyed by session id (a newer event for a pending session replaces the older
one in place), and `run()` flushes it in batches: one transaction per flush, running one
compiled upsert over all of the batch's rows (DBAPI executemany). A multi-row VALUES statement
was ~10x slower here (SQLAlchemy recompiles it per batch) and needs chunking under the bound
parameter limits (SQLite 32766, PostgreSQL 32767); executemany binds one row at a time.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Executable, or_
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config import WriterConfig
from tunnelacct.enums import EventKind, SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.events import SessionEvent
from tunnelacct.models import SessionRecord
from tunnelacct.store import insert_for, table_of

log = logging.getLogger(__name__)

# Columns a newer snapshot of an existing session may change; attribution, addresses and
# started_at are fixed when the session opens.
UPDATED_COLUMNS = (
    "last_seen_at",
    "ended_at",
    "duration_s",
    "bytes_tx",
    "bytes_rx",
    "packets_tx",
    "packets_rx",
    "payload_bytes_tx",
    "payload_bytes_rx",
    "status",
    "close_reason",
)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0

# Errors that say "the store is not writable right now" (locked, restarting, network, pool
# exhausted): the flush is retried. Anything else is a bug or bad data and stops run() loudly.
RETRYABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError, OSError)


@functools.cache
def upsert_statement(dialect_name: str) -> Executable:
    """INSERT ... ON CONFLICT (id) DO UPDATE for session rows, executed with many rows at once.

    A completed row stays completed: only a CLOSED event may update it, so a late checkpoint
    never reopens a session.
    """
    table = table_of(SessionRecord)
    stmt = insert_for(dialect_name, table)
    excluded = stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={name: excluded[name] for name in UPDATED_COLUMNS},
        where=or_(
            table.c.status != SessionStatus.COMPLETED.value,
            excluded.status == SessionStatus.COMPLETED.value,
        ),
    )


def _at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def event_row(event: SessionEvent, gateway: str) -> dict[str, Any]:
    """The sessions row for one event (times as aware UTC datetimes, status from its kind)."""
    who = event.attribution
    closed = event.kind is EventKind.CLOSED
    return {
        "id": event.session_id,
        "org_id": who.org_id,
        "client_id": who.client_id,
        "client_name": who.client_name,
        "user_id": who.user_id,
        "resource_id": who.resource_id,
        "resource_name": who.resource_name,
        "protocol": event.proto.label,
        "ip_version": event.family,
        "src_addr": event.src_addr,
        "dst_addr": event.dst_addr,
        "src_port": event.src_port,
        "dst_port": event.dst_port,
        "started_at": _at(event.started_ts),
        "ended_at": _at(event.ended_ts) if event.ended_ts is not None else None,
        "last_seen_at": _at(event.last_ts),
        "duration_s": event.last_ts - event.started_ts,
        "bytes_tx": event.bytes_tx,
        "bytes_rx": event.bytes_rx,
        "packets_tx": event.packets_tx,
        "packets_rx": event.packets_rx,
        "payload_bytes_tx": event.payload_bytes_tx,
        "payload_bytes_rx": event.payload_bytes_rx,
        "status": SessionStatus.COMPLETED.value if closed else SessionStatus.ONGOING.value,
        "close_reason": event.close_reason.value if event.close_reason is not None else None,
        "midstream": event.midstream,
        "community_id": event.community_id,
        "gateway": gateway,
        "interface": event.interface,
    }


class SessionWriter:
    """Batches session events into upserts; bounded, coalescing, retrying, drained on close.

    Usage: start `run()` as a task, `submit()` events, then `await close()` at shutdown.
    Stats: `rows_written`, `flushes`, `failed_flushes`, `write_seconds_total`, `last_flush_at`,
    `stale_events` (late non-closing events for an already closed pending session) and `pending`.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        config: WriterConfig,
        *,
        gateway: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if config.batch_size < 1 or config.max_pending < 1 or config.flush_interval_s < 0:
            raise ValueError(f"invalid writer config {config!r}")
        self._engine = engine
        self._config = config
        self._gateway = gateway
        self._clock = clock
        # session id -> (newest event, clock time it first became pending); dict order is
        # arrival order, and replacing a value keeps its position, so the oldest comes first.
        self._pending: dict[uuid.UUID, tuple[SessionEvent, float]] = {}
        self._wake = asyncio.Event()  # run(): something to do (batch full, new work, closing)
        self._space = asyncio.Condition()  # submit(): a flush freed room
        self._abandon = asyncio.Event()  # close() timed out: stop retrying
        self._loop_lock = asyncio.Lock()
        self._waiting = 0  # submit() calls blocked on back-pressure
        self._closing = False
        self.rows_written = 0
        self.flushes = 0
        self.failed_flushes = 0
        self.stale_events = 0
        self.write_seconds_total = 0.0
        self.last_flush_at: datetime | None = None

    @property
    def pending(self) -> int:
        """Sessions waiting to be written (including those of a flush in progress)."""
        return len(self._pending)

    async def submit(self, events: Sequence[SessionEvent]) -> None:
        """Queue events for writing; waits while `max_pending` sessions are pending.

        Raises StoreError after `close()` has begun.
        """
        if self._closing:
            raise StoreError("session writer is closed")
        limit = self._config.max_pending
        for event in events:
            key = event.session_id
            # Only a new session needs room. Look again after waiting: another producer may
            # have queued the same session meanwhile.
            while (current := self._pending.get(key)) is None and len(self._pending) >= limit:
                await self._wait_for_space(limit)
            if current is not None:
                if current[0].kind is EventKind.CLOSED and event.kind is not EventKind.CLOSED:
                    self.stale_events += 1  # the closed snapshot is final
                else:
                    self._pending[key] = (event, current[1])
                continue
            self._pending[key] = (event, self._clock())
            if len(self._pending) == 1 or len(self._pending) >= self._config.batch_size:
                self._wake.set()

    async def _wait_for_space(self, limit: int) -> None:
        self._waiting += 1
        self._wake.set()  # a full map is a full batch: make sure run() flushes now
        try:
            async with self._space:
                await self._space.wait_for(
                    lambda: len(self._pending) < limit or self._abandon.is_set()
                )
        finally:
            self._waiting -= 1
        if self._abandon.is_set():
            raise StoreError("session writer gave up: the store stayed unavailable")

    def _due(self) -> bool:
        if not self._pending:
            return False
        if self._closing or self._waiting or len(self._pending) >= self._config.batch_size:
            return True
        oldest = next(iter(self._pending.values()))[1]
        return self._clock() - oldest >= self._config.flush_interval_s

    def _next_deadline_s(self) -> float | None:
        if not self._pending:
            return None
        oldest = next(iter(self._pending.values()))[1]
        return max(0.0, oldest + self._config.flush_interval_s - self._clock())

    async def run(self) -> None:
        """Flush pending events until `close()`; retries store outages with backoff.

        Returns once closed and drained. Errors other than store outages propagate.
        """
        async with self._loop_lock:  # one flush loop at a time (run() task or close())
            await self._flush_loop()

    async def _flush_loop(self) -> None:
        failures = 0
        streak_started = 0.0
        while not self._abandon.is_set():
            self._wake.clear()
            if self._closing and not self._pending and not self._waiting:
                return
            if not self._due():
                try:
                    async with asyncio.timeout(self._next_deadline_s()):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            try:
                await self._flush()
            except Exception as exc:
                if not self._retryable(exc):
                    raise
                failures += 1
                self.failed_flushes += 1
                if failures == 1:
                    streak_started = self._clock()
                    log.warning(
                        "store not writable, keeping %d sessions pending and retrying: %s",
                        len(self._pending),
                        exc,
                    )
                backoff_s = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (failures - 1))
                try:
                    async with asyncio.timeout(backoff_s):
                        await self._abandon.wait()
                except TimeoutError:
                    pass
                continue
            if failures:
                log.info(
                    "store writable again after %d failed flushes (%.1f s)",
                    failures,
                    self._clock() - streak_started,
                )
                failures = 0

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        # A DBAPIError whose connection was invalidated is an outage whatever its class.
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        return isinstance(exc, RETRYABLE)

    async def _flush(self) -> None:
        """Write the oldest `batch_size` pending sessions in one transaction."""
        batch = list(itertools.islice(self._pending.items(), self._config.batch_size))
        rows = [event_row(event, self._gateway) for _, (event, _since) in batch]
        started = time.perf_counter()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(upsert_statement(conn.dialect.name), rows)
        finally:
            self.write_seconds_total += time.perf_counter() - started  # failed attempts too
        self.flushes += 1
        self.rows_written += len(rows)
        self.last_flush_at = datetime.now(UTC)
        # Drop only what was written: an event that replaced one in flight stays pending.
        for key, entry in batch:
            if self._pending.get(key) is entry:
                del self._pending[key]
        async with self._space:
            self._space.notify_all()

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop accepting events, write everything pending and end `run()`; idempotent.

        Works with or without a running `run()` task. Raises StoreError naming how many
        sessions are still unwritten when the store stays unavailable for `timeout_s`.
        """
        self._closing = True
        self._wake.set()
        try:
            async with asyncio.timeout(timeout_s):
                # Waits for a running run() to drain and return, or drains here without one.
                await self.run()
        except TimeoutError:
            self._abandon.set()  # run() stops retrying; blocked submit() calls raise
            async with self._space:
                self._space.notify_all()
        if self._pending:
            raise StoreError(
                f"session writer could not write {len(self._pending)} pending sessions "
                f"within {timeout_s:g} s: the store stayed unavailable"
            )
        log.info(
            "session writer closed: %d rows in %d flushes (%.2f s writing)",
            self.rows_written,
            self.flushes,
            self.write_seconds_total,
        )
