"""One [[capture]] of `serve`: source -> decode in a reader thread, then the flow table on the loop.

The reader thread owns the source (a LiveProcessSource, which captures and decodes in a child
process, or a ReplaySource for a file, decoded here) and hands decoded batches to the event loop
through a hand-off bounded in packets. The loop side owns
the FlowTable: it sessionizes batches, and once a second (the ticker) expires idle sessions by
the wall clock and, every `checkpoint` seconds, emits checkpoints of the sessions that changed.

A full hand-off is a decision: the reader waits, so the kernel ring (`ring_mib`) absorbs the
burst; what overflows the ring the kernel drops and counts (`kernel_drops`, read even while
waiting). It fills when the sessionizer falls behind: a burst above its rate, or the writer
pushing back because the store has stalled longer than `max_pending` allows; how full it is,
is `queued_packets` on the status file and /metrics. Only at shutdown does a full hand-off
drop a batch (counted as `queue_drops`): when the store stays stalled past `shutdown_timeout`,
or the sessionizer stopped on an error (what it left queued).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures.thread  # noqa: F401  asyncio.to_thread's executor: see below
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tunnelacct.capture.batch import RawBatch
from tunnelacct.capture.decode import (
    MAX_TS,
    DecodedBatch,
    decode,
    plausible_until,
)
from tunnelacct.capture.livechild import LiveProcessSource
from tunnelacct.capture.reasons import SKIPPED_REASONS
from tunnelacct.capture.replay import ReplaySource
from tunnelacct.config.model import CaptureConfig, Timeouts
from tunnelacct.enums import CloseReason
from tunnelacct.errors import CaptureError
from tunnelacct.ingest.status import CaptureStatus
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.sessions.flowtable import (
    CLOSE_PART_SESSIONS,
    AttributeFn,
    FlowObserver,
    FlowTable,
    IsClientFn,
)

log = logging.getLogger(__name__)

# concurrent.futures.thread, asyncio.to_thread's executor, is imported above rather than on the
# first to_thread: a process that has run out of descriptors (a connection flood) cannot open
# a module's file, and its capture must still hand batches to threads (issue 16).

TICK_S = 1.0
# Live packets reach the flow table up to a ring block timeout (0.1 s) plus a hand-off later
# than their capture time; expiring by the wall clock this far behind never beats them to it.
EXPIRY_LAG_S = 2.0
READ_TIMEOUT_S = 0.2
DRAIN_QUIET_S = 0.5  # after stop(): the ring has been read when it stays empty this long
RETRY_S = 5.0  # a missing interface is looked for again this often
STATS_EVERY_S = 1.0


class Source(Protocol):
    """What the reader thread needs of LiveSource and ReplaySource."""

    def read_batch(self, timeout_s: float) -> RawBatch | DecodedBatch | None: ...
    def stop(self) -> None: ...
    def stats(self) -> tuple[int, int]: ...
    def close(self) -> None: ...


class SessionSink(Protocol):
    """Where session events go (the SessionWriter)."""

    async def submit(self, events: list[SessionEvent]) -> None: ...


@dataclass(frozen=True, slots=True)
class _End:
    finished: bool  # the source ended by itself (a file without loop), not by stop()
    error: BaseException | None = None


class _Handoff:
    """Reader thread -> event loop, bounded in decoded packets.

    The batches wait in a deque both threads reach under one lock; the loop is woken through
    an asyncio.Event. `status.queued_packets` is what it holds plus the batch the reader waits
    to put, in packets read (as `packets` and `queue_drops` count them): how far the
    sessionizer is behind the reader, on the status file and /metrics. What it drops it counts
    in `status.queue_drops`, so every packet read is sessionized, queued or counted as dropped.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, max_packets: int, status: CaptureStatus
    ) -> None:
        self._loop = loop
        self._items: collections.deque[DecodedBatch | _End] = collections.deque()
        self._arrived = asyncio.Event()  # set (on the loop) after an item was appended
        self._max = max_packets
        self._queued = 0  # decoded packets in _items: what the bound counts
        self._status = status
        self._room = threading.Condition()
        self._closed = False  # the sessionizer has stopped: what is put is dropped

    def put(
        self, batch: DecodedBatch, *, abandon: threading.Event, waiting: Callable[[], None]
    ) -> bool:
        """Queue `batch` (thread side), waiting for room; False when `abandon` is set or the
        sessionizer has stopped (the batch is dropped, and counted).

        `waiting()` is called every 0.2 s of waiting (to keep reading the kernel's counters).
        """
        n = len(batch)
        read = batch.packets_in
        with self._room:
            self._status.queued_packets += read
            while not self._closed and self._full(n) and not abandon.is_set():
                if not self._room.wait(0.2):
                    waiting()
            if self._closed or self._full(n):  # stopped, or given up waiting for room
                self._status.queued_packets -= read
                self._status.queue_drops += read
                return False
            self._queued += n
            self._items.append(batch)
        self._loop.call_soon_threadsafe(self._arrived.set)
        return True

    def _full(self, adding: int) -> bool:
        """No room for `adding` more packets (one batch larger than the bound still goes when
        the queue is empty)."""
        return self._queued > 0 and self._queued + adding > self._max

    def end(self, end: _End) -> None:
        with self._room:
            self._items.append(end)
        self._loop.call_soon_threadsafe(self._arrived.set)

    async def get_all(self, timeout_s: float, limit: int = 64) -> list[DecodedBatch | _End]:
        """What is queued (waiting up to `timeout_s` for something), oldest first; [] if none."""
        if not self._items:
            self._arrived.clear()
            if not self._items:  # an append after this is followed by a set()
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._arrived.wait()
                except TimeoutError:
                    return []
        with self._room:
            count = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def done(self, batch: DecodedBatch) -> None:
        """The loop has sessionized `batch`: its packets no longer count against the bound."""
        with self._room:
            self._queued -= len(batch)
            self._status.queued_packets -= batch.packets_in
            self._room.notify_all()

    def empty(self) -> bool:
        return not self._items

    def close(self) -> None:
        """The sessionizer has stopped (at the reader's end, or early: an error, a shutdown out
        of time). What is still queued, and whatever the reader puts from now on, is dropped
        and counted."""
        with self._room:
            self._closed = True
            while self._items:
                item = self._items.popleft()
                if isinstance(item, DecodedBatch):
                    self._queued -= len(item)
                    self._status.queued_packets -= item.packets_in
                    self._status.queue_drops += item.packets_in
            self._room.notify_all()


class CapturePipeline:
    """Packets of one [[capture]] -> session events; `start()`, then run `run(sink)` as a task."""

    def __init__(
        self,
        capture: CaptureConfig,
        timeouts: Timeouts,
        *,
        attribute: AttributeFn,
        is_client: IsClientFn,
        queue_packets: int,
        max_sessions: int = 262_144,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        observer: FlowObserver | None = None,
    ) -> None:
        self.capture = capture
        self.live = capture.interface is not None
        self.status = CaptureStatus(capture.name, "interface" if self.live else "pcap")
        self.table = FlowTable(
            timeouts,
            attribute=attribute,
            is_client=is_client,
            emit_opened=True,
            observer=observer,
            max_sessions=max_sessions,
        )
        self._timeouts = timeouts
        self._queue_packets = queue_packets
        self._clock = clock
        self._monotonic = monotonic
        # a paced source stamps packets with the wall clock, so the ticker may expire by it
        self.realtime = self.live or capture.speed > 0
        self._stop = threading.Event()
        self._abandon = threading.Event()  # shutdown ran out of time: stop waiting for room
        self._thread: threading.Thread | None = None
        self._handoff: _Handoff | None = None
        self._first: Source | None = None
        # monotonic times of the latest checkpoints (the start counts as one: opened events
        # are written at once), for checkpoint_lag_s()
        self._checkpoints: collections.deque[float] = collections.deque(maxlen=64)

    def start(self) -> None:
        """Open the source and start the reader thread; must run on the event loop.

        A live capture that cannot start for a lasting reason (no privileges, bad settings)
        raises CaptureError here; a missing interface is logged and retried by the thread.
        """
        try:
            self._first = self._open()
        except CaptureError as e:
            if not e.transient:
                raise
            self._waiting(e)
        self._handoff = _Handoff(asyncio.get_running_loop(), self._queue_packets, self.status)
        self._checkpoints.append(self._monotonic())
        self._thread = threading.Thread(
            target=self._read, name=f"capture {self.capture.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the reader to stop: it stops the source, reads what is left and ends `run()`."""
        self._stop.set()

    def abandon(self) -> None:
        """Shutdown ran out of time: the reader drops (and counts) what it cannot hand off."""
        self._stop.set()
        self._abandon.set()

    def join(self, timeout_s: float) -> bool:
        """Wait for the reader thread to end (thread side of shutdown); True when it has."""
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True

    # -- reader thread -------------------------------------------------------------------------

    def _open(self) -> Source:
        c = self.capture
        if c.interface is not None:
            return LiveProcessSource(c.interface, snaplen=c.snaplen, block_count=c.ring_mib)
        assert c.pcap is not None
        t = self._timeouts
        gap_s = max(t.tcp_idle_s, t.udp_idle_s) + t.tcp_linger_s + 1.0
        return ReplaySource(c.pcap, speed=c.speed, loop=c.loop, loop_gap_s=gap_s)

    def _waiting(self, e: CaptureError) -> None:
        if self.status.state != "waiting":
            log.error("%s; retrying every %.0f s", e, RETRY_S)
        self.status.state = "waiting"

    def _read(self) -> None:
        assert self._handoff is not None
        end = _End(finished=False)
        try:
            while not self._stop.is_set():
                source, self._first = self._first, None
                if source is None:
                    try:
                        source = self._open()
                    except CaptureError as e:
                        if not e.transient:
                            raise
                        self._waiting(e)
                        self._stop.wait(RETRY_S)
                        continue
                    log.info("capture on %s: interface is back", self.capture.name)
                keep = False
                try:
                    if self._pump(source):
                        end = _End(finished=True)
                        break
                except CaptureError as e:
                    if not self.live and e.transient:
                        # a replay out of descriptors (a connection flood): the same source
                        # starts its pass again once it can (issue 16)
                        self._waiting(e)
                        self._stop.wait(RETRY_S)
                        self._first, keep = source, True
                        continue
                    if not self.live:
                        # a damaged file: what came before the damage counts, as in import
                        log.error("%s (packets before it were accounted)", e)
                        self.status.error = str(e)
                        self.status.state = "finished"
                        end = _End(finished=True)
                        break
                    if not e.transient:
                        raise
                    self._waiting(e)
                finally:
                    if not keep:
                        source.close()
        except BaseException as e:  # handed to run(), which raises it on the loop
            end = _End(finished=False, error=e)
        finally:
            if self.status.state != "finished":
                self.status.state = "stopped"
            self._handoff.end(end)

    def _not_after_ts(self) -> float:
        """The latest packet time to accept: a day past the wall clock when packet times come
        from a clock (live, paced replay); any storable time for a replay at recorded times,
        whose loop shifts each pass after the last, into the future by design."""
        return plausible_until(time.time()) if self.realtime else MAX_TS

    def _pump(self, source: Source) -> bool:
        """Read and hand off until stopped (False) or the file ended (True)."""
        handoff, status, stop = self._handoff, self.status, self._stop
        assert handoff is not None
        status.state = "capturing"
        kernel_base = (status.kernel_packets, status.kernel_drops)  # earlier sockets' totals
        next_stats = 0.0
        stopping = False
        try:
            while True:
                if stop.is_set() and not stopping:
                    source.stop()  # no new packets; what the kernel counted is in the ring
                    stopping = True
                raw = source.read_batch(DRAIN_QUIET_S if stopping else READ_TIMEOUT_S)
                if raw is None:
                    if stopping:
                        return False
                    if isinstance(source, ReplaySource) and source.finished:
                        status.state = "finished"
                        return True
                else:
                    # a live source decodes in its own process; a replay is decoded here
                    batch = (
                        decode(raw, not_after_ts=self._not_after_ts())
                        if isinstance(raw, RawBatch)
                        else raw
                    )
                    status.packets += batch.packets_in
                    read_stats = functools.partial(self._read_stats, source, kernel_base)
                    handoff.put(batch, abandon=self._abandon, waiting=read_stats)
                if self._monotonic() >= next_stats:
                    next_stats = self._monotonic() + STATS_EVERY_S
                    self._read_stats(source, kernel_base)
        finally:
            self._read_stats(source, kernel_base)

    def _read_stats(self, source: Source, base: tuple[int, int]) -> None:
        if self.live:
            packets, drops = source.stats()
            self.status.kernel_packets, self.status.kernel_drops = (
                base[0] + packets,
                base[1] + drops,
            )

    # -- event loop ----------------------------------------------------------------------------

    async def run(self, sink: SessionSink) -> None:
        """Sessionize until the reader ends; then checkpoint (stopped) or close all (file ended).

        Raises what stopped the reader, after the open sessions were checkpointed. Whatever
        ends it, the packets left queued are counted as `queue_drops` (none when the reader
        ended: they were all sessionized).
        """
        handoff = self._handoff
        assert handoff is not None, "start() first"
        try:
            await self._sessionize(handoff, sink)
        finally:
            handoff.close()

    async def _sessionize(self, handoff: _Handoff, sink: SessionSink) -> None:
        table = self.table
        status = self.status
        checkpoint_s = self._timeouts.checkpoint_s
        next_tick = self._monotonic() + TICK_S
        next_checkpoint = self._monotonic() + checkpoint_s
        while True:
            items = await handoff.get_all(max(0.0, next_tick - self._monotonic()))
            batches = [i for i in items if isinstance(i, DecodedBatch)]
            if batches:
                for batch in batches:
                    for reason, n in batch.failures.items():
                        bucket = (
                            status.skipped if reason in SKIPPED_REASONS else status.decode_errors
                        )
                        bucket[reason] += n
                # one thread hop for everything queued: a hop back to the loop costs ms under load
                events = await asyncio.to_thread(_process_all, table, batches)
                for batch in batches:
                    handoff.done(batch)
                if events:
                    await sink.submit(events)
            item = items[-1] if items else None
            if isinstance(item, _End):  # the reader's last word
                if item.finished:
                    await self._close_all(sink)
                else:
                    await sink.submit(await asyncio.to_thread(table.suspend))
                self._publish()
                if item.error is not None:
                    status.error = str(item.error)
                    raise item.error
                log.info(
                    "capture on %s %s: %d packets, %d sessions (%d still open, checkpointed)",
                    self.capture.name,
                    status.state,
                    status.packets,
                    table.stats.sessions_opened,
                    len(table) if not item.finished else 0,
                )
                return
            if self._monotonic() >= next_tick:
                next_tick = self._monotonic() + TICK_S
                # Expire by the wall clock only once caught up: queued packets may be older.
                if self.realtime and handoff.empty():
                    now = self._clock() - EXPIRY_LAG_S
                    events = await asyncio.to_thread(table.advance, now)
                    if events:
                        await sink.submit(events)
                if self._monotonic() >= next_checkpoint:
                    taken = self._monotonic()
                    next_checkpoint = taken + checkpoint_s
                    events = await asyncio.to_thread(table.checkpoint)
                    if events:
                        await sink.submit(events)
                    self._checkpoints.append(taken)
                self._publish()

    async def _close_all(self, sink: SessionSink) -> None:
        """Close every open session (the replay ended), handing them to `sink` in parts: the
        writer starts on the first part while the table closes the next. At once, 248,746
        sessions took serve 5 s to close and hand over, its writer idle (issue 21)."""
        parts = self.table.close_all_in_parts(CloseReason.END_OF_CAPTURE, CLOSE_PART_SESSIONS)
        while (events := await asyncio.to_thread(next, parts, None)) is not None:
            if events:
                await sink.submit(events)

    def checkpoint_lag_s(self, written_before: float | None) -> float:
        """How many seconds of open sessions' counters a crash now would lose, at most.

        `written_before`: the store holds every event submitted before this monotonic time
        (the writer's oldest pending one), None when it holds all. The answer is the age of
        the newest checkpoint older than that; 0 while no session is open.
        """
        now = self._monotonic()
        if not len(self.table) or not self._checkpoints:
            return 0.0
        done = [t for t in self._checkpoints if written_before is None or t < written_before]
        return now - (done[-1] if done else self._checkpoints[0])

    def _publish(self) -> None:
        st = self.table.stats
        self.status.open_sessions = len(self.table)
        self.status.sessions_opened = st.sessions_opened
        self.status.closed = Counter(st.closed)
        self.status.late_packets = st.late_packets


def _process_all(table: FlowTable, batches: list[DecodedBatch]) -> list[SessionEvent]:
    """Sessionize batches in order; their events in order."""
    events: list[SessionEvent] = []
    for batch in batches:
        events += table.process(batch)
    return events
