"""SessionWriter: session events -> batched, coalesced upserts into the sessions table.

The writer is the only code that writes session records. Producers `submit()` events into a
bounded pending map keyed by session id (a newer event for a pending session replaces the older
one in place), and `run()` flushes it in batches: one transaction per batch, one upsert of all of
the batch's rows. Rows come from `rows.py`; each engine writes a batch its own way
(`StoreBackend.batch_write`: `sqlite/write.py`, `postgres/write.py`), this module decides what
is written when, and what a failure means.

Sessions complete in one write may come as rows built by their producer instead
(`submit_complete`, store/complete.py): they wait beside the events, count against the same
`max_pending`, and are written oldest first like them, with the same retries.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.model import WriterConfig
from tunnelacct.enums import EventKind
from tunnelacct.errors import StoreError
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.store.complete import CompleteSessions
from tunnelacct.store.engine import backend_of
from tunnelacct.store.postgres.errors import sqlstate
from tunnelacct.store.reimport import FreshSession, Reimport, fresh_of_event, fresh_of_row
from tunnelacct.store.rows import driver_values, session_values
from tunnelacct.store.usage import UsageChanges

log = logging.getLogger(__name__)

# buckets of tunnelacct_store_write_seconds: a flush takes ms; a stalled store, seconds
WRITE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SLOW_FLUSH_S = 1.0  # a flush this long is logged: the store stalled the ingest path
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


class WriteTimeout(TimeoutError):
    """One batch's write outlived `[writer] write_timeout`: given up, and retried."""


# Errors that say "the store is not writable right now" (locked, restarting, network, pool
# exhausted, a write timed out): the flush is retried. Anything else is a bug or bad data and
# stops run() loudly.
RETRYABLE = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeoutError,
    WriteTimeout,
    OSError,
)

# PostgreSQL reports its transient failures as a plain DBAPIError (SQLAlchemy's asyncpg adapter
# maps every server error but integrity and syntax/access ones to its generic `Error`), so they
# are told apart by SQLSTATE (PostgreSQL manual, Appendix A). Measured against PostgreSQL 15
# (issue 7): a backend killed mid-flush arrives invalidated (08003), an idle pooled one killed
# as InterfaceError, a refused connect as OSError; lock and statement timeouts, deadlocks and
# serialization failures arrive with their SQLSTATE and a still valid connection.
RETRYABLE_SQLSTATE_CLASSES = (
    "08",  # connection exception: lost, refused, reset
    "53",  # insufficient resources: too many connections, disk full, out of memory
)
RETRYABLE_SQLSTATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby or read-only maintenance, until failover
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected (e.g. against a purge batch deleting the same rows)
        "55P03",  # lock_not_available: lock_timeout
        "57014",  # query_canceled: statement_timeout, pg_cancel_backend
        "57P01",  # admin_shutdown: fast shutdown/restart, pg_terminate_backend
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: the server is starting or shutting down
        "57P05",  # idle_session_timeout
    }
)

_CLOSED = EventKind.CLOSED


class _QueuedComplete:
    """Sessions complete in one write, waiting for their write (SessionWriter.submit_complete)."""

    __slots__ = ("complete", "since", "unsure")

    def __init__(self, complete: CompleteSessions, since: float) -> None:
        self.complete = complete
        self.since = since  # clock time it was submitted
        self.unsure = False  # a write of it failed, and may have committed all the same


class SessionWriter:
    """Batches session events into upserts; bounded, coalescing, retrying, drained on close.

    Usage: start `run()` as a task, `submit()` events, then `await close()` at shutdown.
    The engine must be SQLite or PostgreSQL (StoreError otherwise).
    Stats: `rows_written`, `flushes`, `failed_flushes`, `write_seconds_total`,
    `write_seconds_max`, `timed_out_flushes` (the failed flushes that outlived `write_timeout`),
    `recent_write_seconds` (the last 4096 flushes) and
    `write_seconds_counts` (every flush, per WRITE_BUCKETS_S bucket, +Inf last), `last_flush_at`,
    `dropped_events` (events lost because close() ran out of time), `replaced_rows` (rows of an
    earlier capture that an import's sessions replaced: `reimport`),
    `stale_events` (late non-closing events for an already closed pending session), `pending`,
    `unlogged_events` (events of `unlogged_orgs`, the orgs with logging = false: dropped) and
    `events_taken` (every event submit() has taken so far, into pending or counted: serve's
    writer child tells serve, which knows what it sent, how many are still on their way).
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
        reimport: Reimport | None = None,
    ) -> None:
        if config.batch_size < 1 or config.max_pending < 1 or config.flush_interval_s < 0:
            raise ValueError(f"invalid writer config {config!r}")
        self._engine = engine
        self._config = config
        self._gateway = gateway
        backend = backend_of(engine)
        self._batch_write = backend.batch_write(engine, reimport)  # the engine's own way
        self._flights = self._batch_write.flights
        self._driver = driver_values(backend.name)
        self._clock = clock
        self._unlogged = unlogged_orgs  # orgs with logging = false: their events are not stored
        # Shared with the purge in the same process: asyncio.Lock is first come, first served,
        # so a flush waits for at most one purge batch (SQLite's own busy wait is not fair).
        self._write_lock = write_lock or asyncio.Lock()
        self.unlogged_events = 0
        # An import: a session's first write replaces the row of an earlier capture of it.
        # First writes are those of sessions not in _written_open (written, not yet closed).
        self._reimport = reimport
        self._written_open: set[int] = set()
        self.replaced_rows = 0
        # session id -> the event last written of each session not yet closed: what the usage
        # rollup holds of it (store/usage.py); a resumed session's is its stored row (seed())
        self._last_written: dict[int, SessionEvent] = {}
        # the sessions of writes that failed, which may have committed all the same (a
        # connection lost during COMMIT): their next write reads what the store holds of them
        self._unsure: set[int] = set()
        # session id -> newest event, and -> clock time it first became pending. Both maps have
        # the same keys in arrival order (replacing a value keeps its position), so the oldest
        # comes first. Keys are the ids' ints: UUID.__hash__ is Python code, an int hashes in C.
        # Two maps rather than (event, time) tuples: fewer allocations, fewer GC passes.
        self._pending: dict[int, SessionEvent] = {}
        self._since: dict[int, float] = {}
        # sessions complete in one write, oldest first, and how many rows they hold
        self._complete: collections.deque[_QueuedComplete] = collections.deque()
        self._complete_rows = 0
        self._wake = asyncio.Event()  # run(): something to do (batch full, new work, closing)
        self._space = asyncio.Condition()  # submit(): a flush freed room
        self._abandon = asyncio.Event()  # close() timed out: stop retrying
        self._loop_lock = asyncio.Lock()
        self._given_up: asyncio.Task[None] | None = None  # a write that outlived write_timeout
        self._waiting = 0  # submit() calls blocked on back-pressure
        self._closing = False
        self.events_taken = 0
        self.rows_written = 0
        self.flushes = 0
        self.failed_flushes = 0
        self.timed_out_flushes = 0
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
        return len(self._pending) + self._complete_rows

    @property
    def oldest_pending_since(self) -> float | None:
        """Clock time at which the oldest unwritten event arrived; None when all are written."""
        oldest_event = next(iter(self._since.values()), None)
        if not self._complete:
            return oldest_event
        oldest_complete = self._complete[0].since
        return oldest_complete if oldest_event is None else min(oldest_event, oldest_complete)

    def seed(self, stored: Sequence[SessionEvent]) -> None:
        """Sessions resumed from their stored rows (after a restart): the rollup already holds
        their share, so their next write adds only what came since."""
        for event in stored:
            self._last_written[event.session_id.int] = event

    async def submit(self, events: Sequence[SessionEvent]) -> None:
        """Queue events for writing; waits while `max_pending` sessions are pending.

        Raises StoreError after `close()` has begun.
        """
        if self._closing:
            raise StoreError("session writer is closed")
        limit = self._config.max_pending
        batch_size = self._config.batch_size
        pending = self._pending
        since = self._since
        unlogged = self._unlogged
        counted = 0  # of `events`, those added to events_taken (other calls add theirs too)
        for index, event in enumerate(events):
            if unlogged and event.attribution.org_id in unlogged:
                self.unlogged_events += 1
                continue
            key = event.session_id.int
            # Only a new session needs room. Look again after waiting: another producer may
            # have queued the same session meanwhile.
            while (current := pending.get(key)) is None and (
                len(pending) + self._complete_rows >= limit
            ):
                self.events_taken += index - counted  # those before this one, while it waits
                counted = index
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
        self.events_taken += len(events) - counted

    async def submit_complete(self, complete: CompleteSessions) -> None:
        """Queue the rows of sessions complete in one write (store/complete.py); waits while
        `max_pending` sessions are pending, then takes them all.

        Each session must be new to this writer, and stay its only write: no event of it was
        submitted, and none will be. Raises StoreError after `close()` has begun.
        """
        if self._closing:
            raise StoreError("session writer is closed")
        if not complete.rows:
            return
        limit = self._config.max_pending
        while self.pending >= limit:
            await self._wait_for_space(limit)
        self._complete.append(_QueuedComplete(complete, self._clock()))
        self._complete_rows += len(complete.rows)
        self.events_taken += len(complete.rows)
        self._wake.set()  # the first wait starts the flush interval; a full batch flushes

    async def room(self) -> None:
        """Wait while `max_pending` sessions are pending (a source that makes events in bulk
        waits here before taking more input, so its input waits upstream, not in memory)."""
        if self._closing:
            raise StoreError("session writer is closed")
        limit = self._config.max_pending
        while self.pending >= limit:
            await self._wait_for_space(limit)

    async def _wait_for_space(self, limit: int) -> None:
        self._waiting += 1
        self._wake.set()  # a full map is a full batch: make sure run() flushes now
        try:
            async with self._space:
                await self._space.wait_for(lambda: self.pending < limit or self._abandon.is_set())
        finally:
            self._waiting -= 1
        if self._abandon.is_set():
            raise StoreError("session writer gave up: the store stayed unavailable")

    def _due(self) -> bool:
        oldest = self.oldest_pending_since
        if oldest is None:
            return False
        if self._closing or self._waiting or self.pending >= self._config.batch_size:
            return True
        return self._clock() - oldest >= self._config.flush_interval_s

    def _next_deadline_s(self) -> float | None:
        oldest = self.oldest_pending_since
        if oldest is None:
            return None
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
            if self._closing and not self.pending and not self._waiting:
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
                if not transient_store_error(exc):
                    raise
                failures += 1
                self.failed_flushes += 1
                if failures == 1:
                    streak_started = self._clock()
                    log.warning(
                        "store not writable, keeping %d sessions pending and retrying: %s",
                        self.pending,
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

    async def _flush(self) -> None:
        """Write the oldest pending sessions: `batch_size` of them in one transaction, or as many
        such batches at once as the engine writes (`BatchWrite.flights`; PostgreSQL's 2), each
        in its own transaction. Sessions complete in one write go in a batch of their own, of
        whole submissions up to `batch_size` rows or one submission, when they waited longest.

        The write is bounded by `[writer] write_timeout`: past it, it is cancelled and
        WriteTimeout raised (retried like any outage). A cancelled write may still be stuck
        (a frozen filesystem holds SQLite's thread until it thaws), so the next flush first
        waits for it, again at most `write_timeout`: one write at a time, never a pile of them.
        """
        timeout_s = self._config.write_timeout_s
        if self._given_up is not None:
            await self._wait_given_up(timeout_s)
        size = self._config.batch_size
        if self._complete_first():
            queued = self._take_complete()
            sessions = sum(len(q.complete.rows) for q in queued)
            write = asyncio.create_task(self._write_complete(queued))
        else:
            keys = list(itertools.islice(self._pending, size * self._flights))
            batches = [keys[start : start + size] for start in range(0, len(keys), size)]
            sessions = len(keys)
            write = asyncio.create_task(self._write_batches(batches))
        try:
            done, _ = await asyncio.wait({write}, timeout=timeout_s)
        except asyncio.CancelledError:  # close() ran out of time
            write.cancel()
            raise
        if write in done:
            write.result()  # raises its error
            return
        write.cancel()
        self._given_up = write
        self.timed_out_flushes += 1
        raise WriteTimeout(
            f"a write of {sessions} sessions did not finish within {timeout_s:g} s "
            "([writer] write_timeout)"
        )

    def _complete_first(self) -> bool:
        """Whether the next flush writes sessions complete in one write: some wait, and they
        waited longest."""
        if not self._complete:
            return False
        oldest_event = next(iter(self._since.values()), None)
        return oldest_event is None or self._complete[0].since <= oldest_event

    def _take_complete(self) -> list[_QueuedComplete]:
        """The oldest submissions of complete sessions, up to `batch_size` rows or one."""
        taken = [self._complete[0]]
        rows = len(taken[0].complete.rows)
        for queued in itertools.islice(self._complete, 1, None):
            rows += len(queued.complete.rows)
            if rows > self._config.batch_size:
                break
            taken.append(queued)
        return taken

    async def _wait_given_up(self, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) for the write a flush gave up on to end; raise WriteTimeout
        if it is still stuck, or its error if that is not an outage."""
        given_up = self._given_up
        assert given_up is not None
        done, _ = await asyncio.wait({given_up}, timeout=timeout_s)
        if not done:
            self.timed_out_flushes += 1
            raise WriteTimeout(
                f"the write given up on has not returned after another {timeout_s:g} s "
                "([writer] write_timeout): the store is still stuck"
            )
        self._given_up = None
        error = None if given_up.cancelled() else given_up.exception()
        if error is not None and not transient_store_error(error):
            raise error

    async def _write_batches(self, batches: list[list[int]]) -> None:
        """Write `batches` under the write lock, each in its own transaction; raise the first
        error that is not transient, else the first error."""
        async with self._write_lock:
            if len(batches) == 1:
                await self._write_batch(batches[0])
                return
            results = await asyncio.gather(
                *(self._write_batch(batch) for batch in batches), return_exceptions=True
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise next((e for e in errors if not transient_store_error(e)), errors[0])

    async def _write_batch(self, keys: list[int]) -> None:
        """Write the pending sessions `keys` in one transaction."""
        pending = self._pending
        since = self._since
        events = [pending[key] for key in keys]
        gateway = self._gateway
        driver = self._driver
        rows = [session_values(event, gateway, driver) for event in events]
        usage = UsageChanges()
        last_written = self._last_written
        unsure = self._unsure
        for key, event, row in zip(keys, events, rows, strict=True):
            if key in unsure:
                usage.add_rechecked(event, row, gateway)
            else:
                usage.add_event(event, last_written.get(key), gateway)
        fresh: list[FreshSession] = []
        if self._reimport is not None:
            written = self._written_open
            fresh = [fresh_of_event(e) for e in events if e.session_id.int not in written]
        try:
            await self._timed_write(rows, fresh, usage)
        except BaseException:
            unsure.update(keys)  # it may have committed all the same
            raise
        if self._reimport is not None:
            for event in events:
                if event.kind is _CLOSED:
                    self._written_open.discard(event.session_id.int)
                else:
                    self._written_open.add(event.session_id.int)
        for key, event in zip(keys, events, strict=True):
            if event.kind is _CLOSED:
                last_written.pop(key, None)
            else:
                last_written[key] = event
        if unsure:
            unsure.difference_update(keys)
        # Drop only what was written: an event that replaced one in flight stays pending.
        for key, event in zip(keys, events, strict=True):
            if pending.get(key) is event:
                del pending[key]
                del since[key]
        async with self._space:
            self._space.notify_all()

    async def _write_complete(self, queued: list[_QueuedComplete]) -> None:
        """Write the sessions complete in one write of `queued`, the oldest submissions, in one
        transaction with their share of the rollup; a submission whose write failed before
        adds its whole share less that of the rows the store holds of it then."""
        rows = [row for q in queued for row in q.complete.rows]
        usage = UsageChanges()
        for q in queued:
            usage.add_changes(q.complete.usage)
            if q.unsure:
                usage.recheck.extend(q.complete.rows)
        fresh: list[FreshSession] = []
        if self._reimport is not None:
            fresh = [
                fresh_of_row(started_ts, row)
                for q in queued
                for started_ts, row in zip(q.complete.starts, q.complete.rows, strict=True)
            ]
        async with self._write_lock:
            try:
                await self._timed_write(rows, fresh, usage)
            except BaseException:
                for q in queued:
                    q.unsure = True  # it may have committed all the same
                raise
        for _ in queued:
            self._complete.popleft()  # the oldest: only a flush takes them, one at a time
        self._complete_rows -= len(rows)
        async with self._space:
            self._space.notify_all()

    async def _timed_write(
        self, rows: list[tuple[object, ...]], fresh: list[FreshSession], usage: UsageChanges
    ) -> None:
        """One batch's write (BatchWrite.write), timed and counted, failed attempts too."""
        started = time.perf_counter()
        try:
            replaced = await self._batch_write.write(rows, fresh, usage)
        finally:
            took = time.perf_counter() - started
            if took >= SLOW_FLUSH_S:
                log.warning("a flush of %d sessions took %.2f s", len(rows), took)
            self.write_seconds_total += took  # failed attempts too
            self.write_seconds_max = max(self.write_seconds_max, took)
            self.recent_write_seconds.append(took)
            self.write_seconds_counts[bisect.bisect_left(WRITE_BUCKETS_S, took)] += 1
        self.flushes += 1
        self.rows_written += len(rows)
        self.replaced_rows += replaced
        self.last_flush_at = datetime.now(UTC)

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
        if self.pending:
            self.dropped_events = self.pending  # close() may run again: not +=
            raise StoreError(
                f"session writer could not write {self.pending} pending sessions "
                f"within {timeout_s:g} s: the store stayed unavailable"
            )
        log.info(
            "session writer closed: %d rows in %d flushes (%.2f s writing)",
            self.rows_written,
            self.flushes,
            self.write_seconds_total,
        )


def transient_store_error(exc: BaseException) -> bool:
    """Whether `exc` means the store is briefly not writable (retry) rather than a bug or bad
    data (raise). A retried flush rewrites the same rows by id, so a retry after a commit whose
    acknowledgement was lost changes nothing."""
    # A DBAPIError whose connection was invalidated is an outage whatever its class.
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, RETRYABLE):
        return True
    code = sqlstate(exc)
    if code is None:
        return False
    return code in RETRYABLE_SQLSTATES or code.startswith(RETRYABLE_SQLSTATE_CLASSES)
