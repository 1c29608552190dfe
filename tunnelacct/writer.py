"""SessionWriter: session events -> batched, coalesced upserts into the sessions table.

The writer is the only code that writes session records. Producers `submit()` events into a
bounded pending map keyed by session id (a newer event for a pending session replaces the older
one in place), and `run()` flushes it in batches: one transaction per flush, running one
upsert over all of the batch's rows (DBAPI executemany). A multi-row VALUES statement was slower
(~10x through SQLAlchemy, which recompiles it per batch; ~10% as plain SQL on SQLite) and needs
chunking under the bound parameter limits (SQLite 32766, PostgreSQL 32767); executemany binds
one row at a time.

The flush runs on the event loop beside the flow table, so rows skip SQLAlchemy's per-row work
(parameter dicts, type processors: ~26 µs a row of event-loop time, now ~4 µs with submit()
included; tests/benchmarks/bench_writer.py): the upsert is plain SQL in the driver's paramstyle,
and each row is a tuple of the values the driver takes, built straight from the event. On SQLite
those are exactly what SQLAlchemy's types would store (`driver_values()`).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import functools
import itertools
import logging
import math
import operator
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config import WriterConfig
from tunnelacct.enums import CloseReason, EventKind, IpProto, SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.events import SessionEvent
from tunnelacct.models import SessionRecord
from tunnelacct.store import table_of

log = logging.getLogger(__name__)

T = TypeVar("T")

# The sessions columns in the order session_values() returns them.
ROW_COLUMNS = (
    "id",
    "org_id",
    "client_id",
    "client_name",
    "user_id",
    "resource_id",
    "resource_name",
    "protocol",
    "ip_version",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "started_at",
    "ended_at",
    "last_seen_at",
    "duration_s",
    "bytes_tx",
    "bytes_rx",
    "packets_tx",
    "packets_rx",
    "payload_bytes_tx",
    "payload_bytes_rx",
    "status",
    "close_reason",
    "midstream",
    "community_id",
    "gateway",
    "interface",
)

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

# buckets of tunnelacct_store_write_seconds: a flush takes ms; a stalled store, seconds
WRITE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0

# Errors that say "the store is not writable right now" (locked, restarting, network, pool
# exhausted): the flush is retried. Anything else is a bug or bad data and stops run() loudly.
RETRYABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError, OSError)

# Placeholder for the i-th (1-based) parameter, by DBAPI paramstyle: aiosqlite takes qmark,
# asyncpg (through SQLAlchemy's adapter) numeric_dollar.
_PLACEHOLDERS: dict[str, Callable[[int], str]] = {
    "qmark": lambda i: "?",
    "numeric_dollar": lambda i: f"${i}",
}

# Plain values of the enums, looked up per row (Enum.value and IpProto.label are slow properties).
_CLOSED = EventKind.CLOSED
_COMPLETED = SessionStatus.COMPLETED.value
_ONGOING = SessionStatus.ONGOING.value
_PROTOCOL_LABELS = {p: p.label for p in IpProto}
_REASON_VALUES: dict[CloseReason | None, str | None] = {r: r.value for r in CloseReason}
_REASON_VALUES[None] = None


def upsert_sql(dialect: Dialect) -> str:
    """INSERT ... ON CONFLICT (id) DO UPDATE of one session row, as driver SQL for `dialect`.

    Parameters are the ROW_COLUMNS values in order. A completed row stays completed: only a
    CLOSED event may update it, so a late checkpoint never reopens a session.
    """
    table = table_of(SessionRecord)
    if set(table.columns.keys()) != set(ROW_COLUMNS):
        raise TypeError(f"ROW_COLUMNS {ROW_COLUMNS} do not match the columns of {table.name}")
    placeholder = _PLACEHOLDERS.get(dialect.paramstyle)
    if placeholder is None:
        raise StoreError(f"unsupported DBAPI paramstyle {dialect.paramstyle!r} ({dialect.name})")
    quote = dialect.identifier_preparer.quote
    name = quote(table.name)
    columns = ", ".join(quote(c) for c in ROW_COLUMNS)
    values = ", ".join(placeholder(i) for i in range(1, len(ROW_COLUMNS) + 1))
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in UPDATED_COLUMNS)
    status = quote("status")
    # The status literal is our own constant, not data: inlined, it costs no bound parameter.
    return (
        f"INSERT INTO {name} ({columns}) VALUES ({values}) "
        f"ON CONFLICT ({quote('id')}) DO UPDATE SET {updates} "
        f"WHERE {name}.{status} != '{_COMPLETED}' OR excluded.{status} = '{_COMPLETED}'"
    )


def sqlite_time_text(cache_size: int = 4096) -> Callable[[float], str]:
    """A converter of epoch seconds to the text SQLAlchemy stores for a UTC time on SQLite.

    `text(1795430445.123456) == "2026-11-23 10:40:45.123456"`: equal to formatting
    `datetime.fromtimestamp(ts, UTC)`, whose rounding to the microsecond (half to even, on
    the fraction alone) it repeats, at a third of the cost: the date and time up to the second
    come from a cache of the last `cache_size` seconds seen.
    """
    prefixes: dict[float, str] = {}
    modf = math.modf
    fromtimestamp = datetime.fromtimestamp

    def text(ts: float) -> str:
        # CPython's _PyTime_DoubleToDenominator, which datetime.fromtimestamp uses.
        frac, whole = modf(ts)
        us = round(frac * 1e6)
        if us >= 1_000_000:
            us -= 1_000_000
            whole += 1.0
        elif us < 0:
            us += 1_000_000
            whole -= 1.0
        prefix = prefixes.get(whole)
        if prefix is None:
            if len(prefixes) >= cache_size:
                prefixes.clear()
            # isoformat, not strftime: %Y does not zero-pad years before 1000 on glibc.
            prefix = fromtimestamp(whole, UTC).isoformat(" ")[:19] + "."
            prefixes[whole] = prefix
        return prefix + str(us).zfill(6)

    return text


@dataclass(frozen=True, slots=True)
class DriverValues:
    """How a driver takes the values SQLAlchemy's column types would convert.

    `ident` converts the session id, `at` epoch seconds, `flag` a bool.
    """

    ident: Callable[[uuid.UUID], Any]
    at: Callable[[float], Any]
    flag: Callable[[bool], Any]


def _same(value: T) -> T:
    return value


# The values as the model types hold them (and asyncpg takes them): UUID, aware UTC datetime.
MODEL_VALUES = DriverValues(_same, functools.partial(datetime.fromtimestamp, tz=UTC), _same)


def driver_values(dialect_name: str) -> DriverValues:
    """The value conversions for the driver of `dialect_name` (the only dialect-specific code).

    SQLite gets exactly what SQLAlchemy's types store there: `Uuid` as 32 lower-case hex
    digits, `UtcDateTime` as naive UTC text with microseconds, `Boolean` as 0 or 1 (an int
    also binds ~0.3 µs faster than a bool). PostgreSQL (asyncpg) gets the model values.
    """
    if dialect_name == "sqlite":
        return DriverValues(operator.attrgetter("hex"), sqlite_time_text(), int)
    if dialect_name == "postgresql":
        return MODEL_VALUES
    raise StoreError(f"unsupported database dialect {dialect_name!r}")


def session_values(event: SessionEvent, gateway: str, driver: DriverValues) -> tuple[Any, ...]:
    """The sessions row for one event as a ROW_COLUMNS tuple (status from its kind)."""
    who = event.attribution
    at = driver.at
    last_ts = event.last_ts
    ended_ts = event.ended_ts
    last_seen_at = at(last_ts)
    if ended_ts is None:
        ended_at = None
    elif ended_ts == last_ts:  # a closed session usually ends at its last packet
        ended_at = last_seen_at
    else:
        ended_at = at(ended_ts)
    return (
        driver.ident(event.session_id),
        who.org_id,
        who.client_id,
        who.client_name,
        who.user_id,
        who.resource_id,
        who.resource_name,
        _PROTOCOL_LABELS[event.proto],
        event.family,
        event.src_addr,
        event.dst_addr,
        event.src_port,
        event.dst_port,
        at(event.started_ts),
        ended_at,
        last_seen_at,
        last_ts - event.started_ts,
        event.bytes_tx,
        event.bytes_rx,
        event.packets_tx,
        event.packets_rx,
        event.payload_bytes_tx,
        event.payload_bytes_rx,
        _COMPLETED if event.kind is _CLOSED else _ONGOING,
        _REASON_VALUES[event.close_reason],
        driver.flag(event.midstream),
        event.community_id,
        gateway,
        event.interface,
    )


def event_row(event: SessionEvent, gateway: str) -> dict[str, Any]:
    """The sessions row for one event by column name, in model types (UUID, aware UTC times)."""
    return dict(zip(ROW_COLUMNS, session_values(event, gateway, MODEL_VALUES), strict=True))


class SessionWriter:
    """Batches session events into upserts; bounded, coalescing, retrying, drained on close.

    Usage: start `run()` as a task, `submit()` events, then `await close()` at shutdown.
    The engine must be SQLite or PostgreSQL (StoreError otherwise).
    Stats: `rows_written`, `flushes`, `failed_flushes`, `write_seconds_total`,
    `write_seconds_max`, `recent_write_seconds` (the last 4096 flushes) and
    `write_seconds_counts` (every flush, per WRITE_BUCKETS_S bucket, +Inf last), `last_flush_at`,
    `dropped_events` (events lost because close() ran out of time),
    `stale_events` (late non-closing events for an already closed pending session), `pending`
    and `unlogged_events` (events of `unlogged_orgs`, the orgs with logging = false: dropped).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        config: WriterConfig,
        *,
        gateway: str,
        clock: Callable[[], float] = time.monotonic,
        unlogged_orgs: frozenset[str] = frozenset(),
        write_lock: asyncio.Lock | None = None,
    ) -> None:
        if config.batch_size < 1 or config.max_pending < 1 or config.flush_interval_s < 0:
            raise ValueError(f"invalid writer config {config!r}")
        self._engine = engine
        self._config = config
        self._gateway = gateway
        self._sql = upsert_sql(engine.dialect)
        self._driver = driver_values(engine.dialect.name)
        self._clock = clock
        self._unlogged = unlogged_orgs  # orgs with logging = false: their events are not stored
        # Shared with the purge in the same process: asyncio.Lock is first come, first served,
        # so a flush waits for at most one purge batch (SQLite's own busy wait is not fair).
        self._write_lock = write_lock or asyncio.Lock()
        self.unlogged_events = 0
        # session id -> newest event, and -> clock time it first became pending. Both maps have
        # the same keys in arrival order (replacing a value keeps its position), so the oldest
        # comes first. Keys are the ids' ints: UUID.__hash__ is Python code, an int hashes in C.
        # Two maps rather than (event, time) tuples: fewer allocations, fewer GC passes.
        self._pending: dict[int, SessionEvent] = {}
        self._since: dict[int, float] = {}
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
        self.write_seconds_max = 0.0  # the longest flush: what a stall of the store costs
        self.recent_write_seconds: collections.deque[float] = collections.deque(maxlen=4096)
        self.write_seconds_counts = [0] * (len(WRITE_BUCKETS_S) + 1)
        self.dropped_events = 0
        self.last_flush_at: datetime | None = None

    @property
    def pending(self) -> int:
        """Sessions waiting to be written (including those of a flush in progress)."""
        return len(self._pending)

    @property
    def oldest_pending_since(self) -> float | None:
        """Clock time at which the oldest unwritten event arrived; None when all are written."""
        return next(iter(self._since.values()), None)

    async def submit(self, events: Sequence[SessionEvent]) -> None:
        """Queue events for writing; waits while `max_pending` sessions are pending.

        Raises StoreError after `close()` has begun.
        """
        if self._closing:
            raise StoreError("session writer is closed")
        limit = self._config.max_pending
        batch_size = self._config.batch_size
        pending, since = self._pending, self._since
        unlogged = self._unlogged
        for event in events:
            if unlogged and event.attribution.org_id in unlogged:
                self.unlogged_events += 1
                continue
            key = event.session_id.int
            # Only a new session needs room. Look again after waiting: another producer may
            # have queued the same session meanwhile.
            while (current := pending.get(key)) is None and len(pending) >= limit:
                await self._wait_for_space(limit)
            if current is not None:
                if current.kind is _CLOSED and event.kind is not _CLOSED:
                    self.stale_events += 1  # the closed snapshot is final
                else:
                    pending[key] = event
                continue
            pending[key] = event
            since[key] = self._clock()
            if len(pending) == 1 or len(pending) >= batch_size:
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
        oldest = next(iter(self._since.values()))
        return self._clock() - oldest >= self._config.flush_interval_s

    def _next_deadline_s(self) -> float | None:
        if not self._pending:
            return None
        oldest = next(iter(self._since.values()))
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
        pending, since = self._pending, self._since
        keys = list(itertools.islice(pending, self._config.batch_size))
        events = [pending[key] for key in keys]
        gateway, driver = self._gateway, self._driver
        rows = [session_values(event, gateway, driver) for event in events]
        started = time.perf_counter()
        try:
            async with self._write_lock, self._engine.begin() as conn:
                await conn.exec_driver_sql(self._sql, rows)
        finally:
            took = time.perf_counter() - started
            self.write_seconds_total += took  # failed attempts too
            self.write_seconds_max = max(self.write_seconds_max, took)
            self.recent_write_seconds.append(took)
            self.write_seconds_counts[bisect.bisect_left(WRITE_BUCKETS_S, took)] += 1
        self.flushes += 1
        self.rows_written += len(rows)
        self.last_flush_at = datetime.now(UTC)
        # Drop only what was written: an event that replaced one in flight stays pending.
        for key, event in zip(keys, events, strict=True):
            if pending.get(key) is event:
                del pending[key]
                del since[key]
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
            self.dropped_events = len(self._pending)  # close() may run again: not +=
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
