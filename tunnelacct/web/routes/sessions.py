"""Sessions: keyset pages with a capped count, and every matching session as CSV.

GET /api/v1/orgs/{org}/sessions?q=&limit=&cursor=   a keyset page + capped count
GET /api/v1/orgs/{org}/sessions.csv?q=     every matching session, streamed
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
import base64
import binascii
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.query.export import csv_pages
from tunnelacct.query.filters import parse_filter
from tunnelacct.query.pages import capped_count, page
from tunnelacct.query.records import record_fields
from tunnelacct.store.models import SessionRecord
from tunnelacct.web.context import MAX_LIMIT, ApiContext, OrgId, Who
from tunnelacct.web.errors import ORG_ERRORS, BadParameter, bad_doc, error_doc

COUNT_CAP = 10_000  # counting stops here, so a page stays fast on a huge table
_QUERY_ERRORS = {
    **ORG_ERRORS,
    400: bad_doc("limit, cursor, or a filter q (with the `token` at fault and the `expected`)"),
    429: error_doc("the token already runs its most queries and exports at once: see Retry-After"),
    503: error_doc("the query ran over its time limit (`query_timeout`), or the store is down"),
}
_CSV_ERRORS = {
    **ORG_ERRORS,
    400: bad_doc("a filter q (with the `token` at fault and `expected`)"),
    429: error_doc("as many exports stream already (all tokens, or this one's): see Retry-After"),
}


def _encode_cursor(started_at: datetime, ident: uuid.UUID) -> str:
    raw = json.dumps([started_at.isoformat(), ident.hex]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        when, ident = json.loads(raw)
        if not isinstance(when, str) or not isinstance(ident, str):
            raise TypeError("a cursor is [started_at, id], both strings")
        started_at = datetime.fromisoformat(when)
        if started_at.tzinfo is None:
            raise ValueError("a cursor's started_at has an offset")
        return started_at.astimezone(UTC), uuid.UUID(hex=ident)
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error) as e:
        raise BadParameter("cursor", f"bad cursor {cursor!r}: use next_cursor of a page") from e


class _ClosingStream(StreamingResponse):
    """A StreamingResponse that closes its body iterator, then calls `on_close`, however the
    response ends.

    A stream cut short (the client left, or stopped reading) left its generator suspended
    until garbage collection, with its export slots and database connection (issue 16).
    """

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
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
                self._on_close()


def session_routes(ctx: ApiContext) -> APIRouter:
    """An org's sessions: a filtered page (cursor-paged, oldest first) and the CSV export
    of every match, both with the one filter language."""
    router = APIRouter()

    @router.get("/api/v1/orgs/{org}/sessions", responses=_QUERY_ERRORS)
    async def sessions(
        request: Request,
        who: Who,
        org: OrgId,
        q: Annotated[str, Query(description="filter, e.g. protocol:tcp dport:443")] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        flt = parse_filter(q) if q.strip() else None
        after = _decode_cursor(cursor) if cursor else None
        stmt = page(org, flt, after, limit)
        capped = capped_count(org, flt, COUNT_CAP)

        async def read(db: AsyncSession) -> tuple[list[SessionRecord], int]:
            rows = list((await db.scalars(stmt)).all())
            if cursor is None and len(rows) <= limit:
                return rows, len(rows)  # a first page that holds every match needs no count
            return rows, int((await db.execute(capped)).scalar_one())

        async with ctx.limits.slot(who.token_id):
            rows, count = await ctx.limits.run(ctx.engine, request.receive, read)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "sessions": [record_fields(r) for r in rows],
            "next_cursor": _encode_cursor(rows[-1].started_at, rows[-1].id) if more else None,
            "count": min(count, COUNT_CAP),
            "count_capped": count > COUNT_CAP,
        }

    @router.get(
        "/api/v1/orgs/{org}/sessions.csv",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "every matching session as CSV (RFC 4180, UTF-8)",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            **_CSV_ERRORS,
        },
    )
    async def sessions_csv(who: Who, org: OrgId, q: str = "") -> StreamingResponse:
        flt = parse_filter(q) if q.strip() else None
        release = ctx.limits.reserve_export(who.token_id)  # a 429 before any 200

        async def body() -> AsyncIterator[bytes]:
            pages = csv_pages(ctx.engine, org, flt=flt, workers=ctx.export_workers)
            async with contextlib.aclosing(pages):
                async for chunk, _rows in pages:
                    yield chunk.encode()

        filename = f"tunnelacct-{org}-sessions.csv"
        return _ClosingStream(
            body(),
            on_close=release,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    return router
