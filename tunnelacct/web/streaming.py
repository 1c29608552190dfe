"""The sessions CSV as an HTTP answer, for the API and the web UI alike: streamed page by page
from the export's generator, its rows counted as the client takes them, and whatever it holds
(the export slot, the database connection) let go however the answer ends; then the caller's
`ended` hears how far it got (the access log's rows and status).

    return export_stream(ctx, org, flt, filename, ended=record)   # record(progress) awaited
"""

# No `from __future__ import annotations`: kept like the routes that use it.
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi.responses import StreamingResponse

from tunnelacct.query.export import csv_pages
from tunnelacct.query.filters import Filter
from tunnelacct.web.context import ApiContext
from tunnelacct.web.errors import CLIENT_CLOSED_REQUEST


@dataclass(slots=True)
class ExportProgress:
    """How far an export's stream got: the sessions sent, and whether it sent them all or
    failed (neither: the client left or stopped reading)."""

    rows: int = 0
    finished: bool = False
    failed: bool = False

    @property
    def status(self) -> int:
        """The access log's status: 200 sent whole, 500 failed, 499 cut by the client."""
        if self.finished:
            return HTTPStatus.OK.value
        return HTTPStatus.INTERNAL_SERVER_ERROR.value if self.failed else CLIENT_CLOSED_REQUEST


class ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its body iterator, then awaits `on_close`, however the
    response ends.

    A stream cut short (the client left, or stopped reading) left its generator suspended
    until garbage collection, with its export slots and database connection (issue 16).
    """

    def __init__(self, *args: Any, on_close: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                close = getattr(self.body_iterator, "aclose", None)
                if close is not None:
                    await close()
            finally:
                await self._on_close()


def export_stream(
    ctx: ApiContext,
    org_id: str,
    flt: Filter | None,
    filename: str,
    *,
    release: Callable[[], None],
    ended: Callable[[ExportProgress], Awaitable[None]],
) -> ClosingStream:
    """Every session of `org_id` matching `flt` as a CSV attachment named `filename`; when the
    answer ends, `release` (the export slot), then `ended` with how far it got."""
    progress = ExportProgress()

    async def body() -> AsyncIterator[bytes]:
        pages = csv_pages(ctx.engine, org_id, flt=flt, workers=ctx.export_workers)
        try:
            async with contextlib.aclosing(pages):
                async for chunk, rows in pages:
                    yield chunk  # UTF-8 already
                    progress.rows += rows  # sent: the client took the chunk
        except Exception:
            progress.failed = True
            raise
        progress.finished = True

    async def close() -> None:
        release()
        await ended(progress)

    return ClosingStream(
        body(),
        on_close=close,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
