"""serve's writer child: the SessionWriter of `tunnelacct serve`, in a spawned process of its own.

The captures' flow tables, the collector's decoding and the API share serve's GIL; a writer
in the same process got what was left of one core, about 13,000 rows/s while the collector
decoded 50,000 records/s (docs/collector.md, issue 20). Here the writer, with its own engine,
runs in a child on the other core, as the import's does (writerchild.py); `ServeWriter` is what
serve holds in its place: the same submit/room/seed/run/close and the same figures.

Two pipes join them:

- data (parent to child, in order): ("seed", packed events), ("events", packed events). The
  child reads the next message only once the writer took the last one, so a slow store fills
  the pipe and `submit()` waits, as it waits for `[writer] max_pending` in one process.
- control (both ways, small messages, never behind the data): parent to child ("hold", n) and
  ("release", n), the purge's turn at the writer's write lock (`ChildWriteLock`: on SQLite a
  flush and a purge batch take turns, first come first served); ("end", data messages sent,
  timeout) at shutdown. Child to parent: ("figures", WriterCounters) whenever they change (at
  most every FIGURES_EVERY_S), ("held", n), and once at the end ("closed", counters) or
  ("failed", why, counters).

At "end" the child reads the data messages sent before it (at most `timeout` s), then closes
the writer with what is left of `timeout`: what it could not write is named in the failure,
the events still unread in the pipe included. The child dies with serve (PR_SET_PDEATHSIG) and
ignores SIGINT and SIGTERM: serve decides when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

from tunnelacct.config.model import Config
from tunnelacct.config.orgs import unlogged_orgs
from tunnelacct.errors import StoreError
from tunnelacct.heap import fewer_collections
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.store.writerchild import become_child, pack, unpack

log = logging.getLogger(__name__)

FIGURES_EVERY_S = 0.02  # the child reports its counters this often when they changed
END_GRACE_S = 10.0  # past the close timeout: how long serve waits for the child's answer
EXIT_GRACE_S = 5.0  # after its answer: how long the child may take to exit
DISPOSE_TIMEOUT_S = 2.0  # after its answer: how long the child lets its engine close


@dataclass(slots=True)
class WriterCounters:
    """The child's SessionWriter figures, as serve's metrics and status file read them."""

    pending: int = 0
    oldest_pending_since: float | None = None  # time.monotonic(): one clock for the machine
    rows_written: int = 0
    flushes: int = 0
    failed_flushes: int = 0
    timed_out_flushes: int = 0
    write_seconds_total: float = 0.0
    write_seconds_max: float = 0.0
    write_seconds_counts: list[int] = field(default_factory=list)
    last_flush_at: datetime | None = None
    dropped_events: int = 0
    stale_events: int = 0
    unlogged_events: int = 0
    events_taken: int = 0  # of the "events" messages, the events its writer took


class ServeWriter:
    """serve's SessionWriter, in the writer child. `start()` it, `seed()` and `submit()`
    events, run `run()` as a task, then `await close()` once.

    The figures (`pending`, `rows_written`, ...) are the child's, at most FIGURES_EVERY_S old;
    after close() they are final. A child that fails or dies is a StoreError naming why, from
    `run()`, `submit()` or `close()`.
    """

    def __init__(self, config: Config, *, log_level: str) -> None:
        self._config = config
        self._log_level = log_level
        self.counters = WriterCounters()
        self._max_pending = config.writer.max_pending
        self._proc: Any = None
        self._data: Any = None
        self._control: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._send_lock = asyncio.Lock()  # one data message at a time, in order
        self._data_sent = 0  # data messages sent (the child reads up to this many at "end")
        self._events_sent = 0  # events submitted: being packed, sent, or in the child
        self._changed = asyncio.Event()  # new figures, a failure or the end arrived
        self._ended: asyncio.Future[WriterCounters] | None = None  # "closed" or "failed"
        self._failure: str | None = None  # why the child failed or ended
        self._end_sent = False
        self._closed = False
        self._holds: dict[int, asyncio.Future[None]] = {}
        self._next_hold = 0

    # -- the child --------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the child (on serve's event loop); it builds its engine and writer at once."""
        self._loop = asyncio.get_running_loop()
        self._ended = self._loop.create_future()
        ctx = mp.get_context("spawn")  # never fork a process that runs threads and a loop
        child_data, parent_data = ctx.Pipe(duplex=False)  # (receiving end, sending end)
        self._data = parent_data
        self._control, child_control = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_run_in_child,
            args=(self._config, self._log_level, child_data, child_control, os.getpid()),
            name="tunnelacct-writer",
            daemon=True,
        )
        try:
            self._proc.start()
        finally:
            child_data.close()  # the child holds the other ends: its exit ends the pipes
            child_control.close()
        threading.Thread(target=self._read_control, name="writer-child-reader", daemon=True).start()

    @property
    def pid(self) -> int | None:
        """The child's process id (None before start())."""
        return None if self._proc is None else self._proc.pid

    def _read_control(self) -> None:
        """Thread: every message of the child, handed to the event loop; EOF when it ends."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                message = self._control.recv()
            except (EOFError, OSError):
                with contextlib.suppress(RuntimeError):  # the loop is closed: serve is gone
                    loop.call_soon_threadsafe(self._on_child_gone)
                return
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_message, message)

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "figures":
            self.counters = message[1]
        elif kind == "held":
            hold = self._holds.get(message[1])
            if hold is not None and not hold.done():
                hold.set_result(None)
        elif kind == "closed":
            self.counters = message[1]
            self._end(None)
        elif kind == "failed":
            self.counters = message[2]
            self._end(message[1])
        self._notify()

    def _on_child_gone(self) -> None:
        if self._ended is not None and not self._ended.done():
            self._proc.join(timeout=1.0)  # it closed its pipe: it is exiting
            self._end(f"the writer process ended unexpectedly (exit code {self._proc.exitcode})")
        self._notify()

    def _end(self, failure: str | None) -> None:
        assert self._ended is not None
        if self._ended.done():
            return
        self._failure = failure
        self._ended.set_result(self.counters)
        for hold in self._holds.values():
            if not hold.done():
                hold.set_exception(StoreError(self._why()))

    def _notify(self) -> None:
        self._changed.set()

    def _why(self) -> str:
        return self._failure or "the writer process has ended"

    def _check(self) -> None:
        if self._closed:
            raise StoreError("session writer is closed")
        if self._ended_now():
            raise StoreError(self._why())

    # -- what serve's sources call ------------------------------------------------------------

    async def seed(self, stored: Sequence[SessionEvent]) -> None:
        """Sessions resumed from their stored rows (SessionWriter.seed), before their events."""
        await self._send(("seed", [pack(event) for event in stored]))

    async def submit(self, events: Sequence[SessionEvent]) -> None:
        """Send `events` to the child; waits while the pipe is full (the store is slower).

        Raises StoreError when the child failed, or after close() began."""
        if events:
            self._events_sent += len(events)  # in flight from here: packing takes a while
            await self._send(("events", [pack(event) for event in events]))

    async def room(self) -> None:
        """Wait while the child's writer holds `[writer] max_pending` sessions."""
        self._check()
        while self.counters.pending >= self._max_pending:
            self._changed.clear()
            await self._changed.wait()
            self._check()

    async def _send(self, message: tuple[Any, ...]) -> None:
        self._check()
        if self._end_sent:
            raise StoreError("session writer is closed")
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        async with self._send_lock:
            self._check()
            if self._end_sent:
                raise StoreError("session writer is closed")
            # counted before it is sent: an "end" sent meanwhile makes the child read it too
            self._data_sent += 1
            try:
                await asyncio.to_thread(self._data.send_bytes, payload)
            except OSError:  # the child closed its end: it failed, and says why
                await self._wait_ended(END_GRACE_S)
                raise StoreError(self._why()) from None

    async def _wait_ended(self, timeout_s: float) -> bool:
        assert self._ended is not None
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._ended)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Wait for the child to end: returns once close() made it end, raises StoreError when
        it failed or died before."""
        assert self._ended is not None
        await asyncio.shield(self._ended)
        if self._failure is not None and not self._end_sent:
            raise StoreError(self._failure)

    async def close(self, timeout_s: float = 30.0) -> None:
        """Tell the child that the events ended, wait while it writes them (`timeout_s`, as
        SessionWriter.close) and for it to exit; idempotent.

        Raises StoreError naming what stays unwritten when the store stayed unavailable, or
        why the child failed."""
        if self._closed:
            return
        self._closed = True
        assert self._ended is not None
        if not self._ended.done():
            self._end_sent = True
            with contextlib.suppress(OSError):  # the child is gone: _ended says why
                self._control.send(("end", self._data_sent, timeout_s))
            if not await self._wait_ended(timeout_s + END_GRACE_S):
                log.error("the writer process did not answer within %.0f s", timeout_s)
                self._proc.kill()
                await self._wait_ended(END_GRACE_S)
        await asyncio.to_thread(self._stop_child)
        if self._failure is not None:
            raise StoreError(self._failure)

    def kill(self) -> None:
        """End the child now if it still runs (serve failed before its writer's close)."""
        if self._proc is None:
            return
        if self._proc.is_alive():
            self._proc.kill()
        self._stop_child()

    def _stop_child(self) -> None:
        self._proc.join(timeout=EXIT_GRACE_S)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=EXIT_GRACE_S)
        self._data.close()
        self._control.close()

    # -- the write lock, for the purge ---------------------------------------------------------

    def write_lock(self) -> ChildWriteLock:
        """The writer's write lock as the purge takes it (`async with`)."""
        return ChildWriteLock(self)

    async def _hold(self) -> int | None:
        """Take the child's write lock; None when no child writes (not started, or ended):
        then nothing needs the turn."""
        if self._loop is None or self._ended_now():
            return None
        self._next_hold += 1
        number = self._next_hold
        granted = self._loop.create_future()
        self._holds[number] = granted
        try:
            self._control.send(("hold", number))
            await granted
        except BaseException:
            self._release(number)  # the child may grant it later: give it straight back
            raise
        return number

    def _release(self, number: int | None) -> None:
        if number is None:
            return
        self._holds.pop(number, None)
        with contextlib.suppress(OSError):  # the child is gone, and its lock with it
            self._control.send(("release", number))

    def _ended_now(self) -> bool:
        return self._ended is not None and self._ended.done()

    # -- figures, as SessionWriter names them -----------------------------------------------

    @property
    def pending(self) -> int:
        """Sessions the child's writer holds, and events on their way to it (`in_flight`):
        everything submitted and not yet written."""
        return self.counters.pending + self.in_flight

    @property
    def in_flight(self) -> int:
        """Events submitted that the child's writer has not taken yet: being packed, in the
        pipe, or waiting in the child for room. At shutdown serve hands over every open
        session at once: for a while the child holds none of them, and all are here. At most
        FIGURES_EVERY_S old (it errs high: the child's figure lags)."""
        return max(0, self._events_sent - self.counters.events_taken)

    @property
    def oldest_pending_since(self) -> float | None:
        return self.counters.oldest_pending_since

    @property
    def rows_written(self) -> int:
        return self.counters.rows_written

    @property
    def flushes(self) -> int:
        return self.counters.flushes

    @property
    def failed_flushes(self) -> int:
        return self.counters.failed_flushes

    @property
    def timed_out_flushes(self) -> int:
        return self.counters.timed_out_flushes

    @property
    def write_seconds_total(self) -> float:
        return self.counters.write_seconds_total

    @property
    def write_seconds_max(self) -> float:
        return self.counters.write_seconds_max

    @property
    def write_seconds_counts(self) -> list[int]:
        return self.counters.write_seconds_counts

    @property
    def last_flush_at(self) -> datetime | None:
        return self.counters.last_flush_at

    @property
    def dropped_events(self) -> int:
        return self.counters.dropped_events


class ChildWriteLock:
    """The writer child's write lock, taken from serve: `async with` holds it (a purge batch
    on SQLite), so the child's flushes wait for the batch, and the batch for a flush."""

    def __init__(self, writer: ServeWriter) -> None:
        self._writer = writer
        self._held: list[int | None] = []

    async def __aenter__(self) -> None:
        self._held.append(await self._writer._hold())

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._writer._release(self._held.pop())


# -- the child's side ---------------------------------------------------------------------------


def _run_in_child(config: Config, log_level: str, data: Any, control: Any, parent_pid: int) -> None:
    become_child(parent_pid, log_level)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # serve stops us in order, or dies (SIGKILL)
    child = _Child(config, data, control)
    try:
        with fewer_collections():  # up to [writer] max_pending events are held at once
            asyncio.run(child.main())
    except BaseException as e:  # noqa: BLE001 - told to serve, which raises it as a StoreError
        child.tell_outcome(e)
    control.close()
    data.close()
    logging.shutdown()
    os._exit(0)  # everything is committed: skip the interpreter's teardown


class _Child:
    """The writer, the data reader, the control reader and the figures, in the child."""

    def __init__(self, config: Config, data: Any, control: Any) -> None:
        self._config = config
        self._data = data
        self._control = control
        self._send_lock = threading.Lock()  # the loop and the reader thread both answer
        self._writer: Any = None
        self._write_lock = asyncio.Lock()
        self._holds: dict[int, asyncio.Task[None]] = {}
        self._data_read = 0
        self._end_request: tuple[int, float] | None = None
        self._ending = asyncio.Event()
        self._data_reached = asyncio.Event()
        self.unread_events = 0
        self._told = False

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._control.send(message)

    def tell_outcome(self, error: BaseException | None) -> None:
        """Tell serve, once, that the writer closed, or why it failed."""
        if self._told:
            return
        self._told = True
        if error is None:
            result: tuple[Any, ...] = ("closed", self.counters())
        else:
            log.debug("writer process failed", exc_info=error)
            while isinstance(error, BaseExceptionGroup):  # the TaskGroup's: its first says why
                error = error.exceptions[0]
            if isinstance(error, StoreError):
                why = str(error)
            else:
                why = f"{type(error).__name__}: {error}"
            if self.unread_events:
                why += f"; {self.unread_events} events still in the pipe were not read"
            result = ("failed", why, self.counters())
        with contextlib.suppress(OSError):  # serve is gone
            self.send(result)

    def counters(self) -> WriterCounters:
        w = self._writer
        if w is None:
            return WriterCounters()
        return WriterCounters(
            pending=w.pending,
            oldest_pending_since=w.oldest_pending_since,
            rows_written=w.rows_written,
            flushes=w.flushes,
            failed_flushes=w.failed_flushes,
            timed_out_flushes=w.timed_out_flushes,
            write_seconds_total=w.write_seconds_total,
            write_seconds_max=w.write_seconds_max,
            write_seconds_counts=list(w.write_seconds_counts),
            last_flush_at=w.last_flush_at,
            dropped_events=w.dropped_events,
            stale_events=w.stale_events,
            unlogged_events=w.unlogged_events,
            events_taken=w.events_taken,
        )

    async def main(self) -> None:
        from tunnelacct.store.engine import make_engine
        from tunnelacct.store.writer import SessionWriter

        config = self._config
        engine = make_engine(config.database.url, synchronous=config.database.synchronous)
        self._writer = SessionWriter(
            engine,
            config.writer,
            gateway=config.gateway,
            unlogged_orgs=unlogged_orgs(config),
            write_lock=self._write_lock,
        )
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._read_control, args=(loop,), name="control-reader", daemon=True
        ).start()
        try:
            async with asyncio.TaskGroup() as tasks:
                writing = tasks.create_task(self._writer.run())
                reading = tasks.create_task(self._read_data())
                figures = tasks.create_task(self._report_figures())
                await self._ending.wait()
                await self._end(reading)
                await writing
                figures.cancel()
        except BaseException as e:  # noqa: BLE001 - told to serve before the engine is let go
            self.tell_outcome(e)
        else:
            self.tell_outcome(None)
        # A store stuck at close holds a connection in SQLite's busy wait: serve has its
        # answer, and the process's exit closes what this does not.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DISPOSE_TIMEOUT_S):
                await engine.dispose()

    async def _end(self, reading: asyncio.Task[None]) -> None:
        """Read the data messages sent before "end" (within its timeout), then close the
        writer with what is left of it."""
        assert self._end_request is not None
        sent, timeout_s = self._end_request
        deadline = time.monotonic() + timeout_s
        read_all = True
        try:
            async with asyncio.timeout(timeout_s):
                while self._data_read < sent:
                    self._data_reached.clear()
                    await self._data_reached.wait()
        except TimeoutError:
            read_all = False  # the writer stayed full: the store is stuck
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        if not read_all:
            self.unread_events = self._count_unread(sent)
        await self._writer.close(timeout_s=max(0.0, deadline - time.monotonic()))

    def _count_unread(self, sent: int) -> int:
        """The events of the data messages sent but not read (the store stayed stuck)."""
        unread = 0
        while self._data_read < sent and self._data.poll(0):
            message = pickle.loads(self._data.recv_bytes())
            self._data_read += 1
            unread += len(message[1])
        return unread

    async def _read_data(self) -> None:
        """Hand each data message to the writer, waiting for the pipe on the event loop (no
        thread: one blocked in a read would hold up the child's exit)."""
        writer = self._writer
        data = self._data
        while True:
            if not data.poll(0):
                await self._readable()
            try:
                message = pickle.loads(data.recv_bytes())
            except EOFError:
                await asyncio.Event().wait()  # serve closed its end: "end" or death follows
            events = [unpack(packed) for packed in message[1]]
            if message[0] == "seed":
                writer.seed(events)
            else:
                await writer.submit(events)
            self._data_read += 1
            self._data_reached.set()

    async def _readable(self) -> None:
        """Wait until the data pipe can be read (or serve closed it).

        The loop watches the pipe only while this waits. Watched all along, a pipe holding
        the next message while the writer was full woke the loop at once, again and again
        (epoll is level-triggered): the loop thread spun, taking the GIL from SQLite's
        thread, which needs it back for every row. At a replay's end, sent in parts, they
        passed it 320,000-350,000 times, and the child spent twice the CPU a row (issue 21)."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(self._data.fileno(), readable.set)
        try:
            await readable.wait()
        finally:
            loop.remove_reader(self._data.fileno())

    async def _report_figures(self) -> None:
        reported = None
        while True:
            counters = self.counters()
            if counters != reported:
                await asyncio.to_thread(self.send, ("figures", counters))
                reported = counters
            await asyncio.sleep(FIGURES_EVERY_S)

    def _read_control(self, loop: asyncio.AbstractEventLoop) -> None:
        """Thread: serve's control messages, handed to the loop; serve gone ends the child."""
        while True:
            try:
                message = self._control.recv()
            except (EOFError, OSError):
                os._exit(1)  # serve is gone without an "end": nothing left to tell
            loop.call_soon_threadsafe(self._on_control, message)

    def _on_control(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "hold":
            self._holds[message[1]] = asyncio.create_task(self._grant(message[1]))
        elif kind == "release":
            self._give_back(message[1])
        elif kind == "end":
            self._end_request = (message[1], message[2])
            self._ending.set()

    async def _grant(self, number: int) -> None:
        await self._write_lock.acquire()
        try:
            await asyncio.to_thread(self.send, ("held", number))
        except BaseException:
            self._write_lock.release()
            raise

    def _give_back(self, number: int) -> None:
        grant = self._holds.pop(number, None)
        if grant is None:
            return
        if grant.done() and not grant.cancelled() and grant.exception() is None:
            self._write_lock.release()
        else:
            grant.cancel()
