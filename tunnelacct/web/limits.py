"""Bounds of the API's reads (issue 16, item 4): a time limit, the client still being there, and
a few reads at a time per token.

Eight `/17` address terms with negations took 7-8 s on 180k rows, and four such requests from
clients that had already gone kept 1.3 cores busy for 26 s. So each read runs as a task that
ends when the first of these happens:

- it is done;
- `timeout_s` passes: QueryTimeout (503 `query_timeout`);
- the client disconnects: ClientGone (nothing is sent).

Ending it stops the database too: SQLite's `interrupt()` ends the statement in the driver's
thread, and on PostgreSQL cancelling the task makes asyncpg cancel the statement on the server,
which also applies `statement_timeout` (SET LOCAL, the same limit) should the cancel be lost.
A token runs at most `per_token` reads at once; one more is TooBusy (429 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.errors import TunnelacctError
from tunnelacct.store.engine import backend_of

log = logging.getLogger(__name__)

T = TypeVar("T")

QUERY_TIMEOUT_S = 30.0
QUERIES_PER_TOKEN = 4
EXPORTS = 4  # CSV exports streaming at once, all tokens together
RETRY_AFTER_S = 1
STOP_WAIT_S = 10.0  # how long a stopped read may take to give its connection back


class QueryTimeout(TunnelacctError):
    """A read ran over its time limit and was stopped."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            f"the query ran over {timeout_s:g} s and was stopped: narrow the filter or the "
            "time range (a started: term), or export the sessions as CSV"
        )


class TooBusy(TunnelacctError):
    """A token already runs as many reads as it may, or the service as many exports."""

    def __init__(
        self, limit: int, retry_after_s: int = RETRY_AFTER_S, *, exports: bool = False
    ) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        if exports:
            why = f"{limit} CSV exports are streaming already: try again shortly"
        else:
            why = f"this token already runs {limit} queries or exports: wait for one"
        super().__init__(why)


class ClientGone(Exception):
    """The client disconnected while its read ran: nothing is left to answer."""


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class QueryLimits:
    """The bounds of the API's reads; `running` counts reads whose database work goes on,
    `stopped` those ended by a timeout or a gone client (read by tests and status)."""

    def __init__(
        self,
        timeout_s: float = QUERY_TIMEOUT_S,
        per_token: int = QUERIES_PER_TOKEN,
        exports: int = EXPORTS,
    ) -> None:
        self.timeout_s = timeout_s
        self.per_token = per_token
        self.exports = exports
        self.exporting = 0
        self._busy: dict[str, int] = {}
        self.running = 0
        self.stopped = 0

    @contextlib.asynccontextmanager
    async def slot(self, token_id: str) -> AsyncIterator[None]:
        """Hold one of the token's read slots; TooBusy when it has none left."""
        held = self._busy.get(token_id, 0)
        if held >= self.per_token:
            raise TooBusy(self.per_token)
        self._busy[token_id] = held + 1
        try:
            yield
        finally:
            left = self._busy[token_id] - 1
            if left:
                self._busy[token_id] = left
            else:
                del self._busy[token_id]

    def reserve_export(self, token_id: str) -> Callable[[], None]:
        """Take an export slot and one of the token's read slots for a CSV about to stream;
        returns their release (idempotent), which the response calls when it ends, however
        it ends. TooBusy when either is taken, before the answer starts (a 429).

        Streaming memory is bounded by their number: twenty concurrent exports took serve
        from 124 to 570 MB (issue 16).
        """
        if self.exporting >= self.exports:
            raise TooBusy(self.exports, exports=True)
        held = self._busy.get(token_id, 0)
        if held >= self.per_token:
            raise TooBusy(self.per_token)
        self._busy[token_id] = held + 1
        self.exporting += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.exporting -= 1
            left = self._busy[token_id] - 1
            if left:
                self._busy[token_id] = left
            else:
                del self._busy[token_id]

        return release

    async def run(
        self,
        engine: AsyncEngine,
        receive: Receive,
        work: Callable[[AsyncSession], Awaitable[T]],
    ) -> T:
        """`await work(db)` on a session of `engine`, bounded as the module docstring says;
        `receive` is the request's ASGI receive (it reports the client's disconnect)."""
        stoppers: list[Callable[[], None]] = []  # this read's way to stop its statement
        task = asyncio.create_task(self._work(engine, work, stoppers))
        watcher = asyncio.create_task(_disconnect(receive))
        try:
            done, _pending = await asyncio.wait(
                {task, watcher}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            await self._stop(task, stoppers)
            raise
        finally:
            watcher.cancel()
        if task in done:
            return task.result()
        await self._stop(task, stoppers)
        if watcher in done and not watcher.cancelled() and watcher.exception() is None:
            raise ClientGone
        raise QueryTimeout(self.timeout_s)

    async def _work(
        self,
        engine: AsyncEngine,
        work: Callable[[AsyncSession], Awaitable[T]],
        stoppers: list[Callable[[], None]],
    ) -> T:
        self.running += 1
        try:
            async with AsyncSession(engine) as db:
                conn = await db.connection()
                interrupt = await backend_of(conn).statement_interrupter(conn, self.timeout_s)
                if interrupt is not None:
                    stoppers.append(interrupt)
                return await work(db)
        finally:
            self.running -= 1

    async def _stop(self, task: asyncio.Task[Any], stoppers: list[Callable[[], None]]) -> None:
        """End a read's database work and wait for it (the driver returns at once)."""
        self.stopped += 1
        for stop in stoppers:
            stop()
        task.cancel()
        done, _pending = await asyncio.wait({task}, timeout=STOP_WAIT_S)
        if not done:  # the answer goes out; the task ends when the driver lets it
            log.warning("a stopped query still runs %.0f s later", STOP_WAIT_S)
            task.add_done_callback(_consume)
        elif not task.cancelled():
            task.exception()  # retrieved: an interrupted statement's error is expected


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _disconnect(receive: Receive) -> None:
    """Return when the client disconnects (the request has no body left to read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
