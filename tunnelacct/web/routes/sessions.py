"""Sessions: keyset pages with a capped count, and every matching session as CSV.

GET /api/v1/orgs/{org}/sessions?q=&limit=&cursor=   a keyset page + capped count
GET /api/v1/orgs/{org}/sessions.csv?q=     every matching session, streamed

Each read is written to the access log (web/accesslog.py): a page with its rows, an export
once its stream ends, with the rows it sent (a stream cut short: the rows so far).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.query.filters import parse_filter
from tunnelacct.query.pages import capped_count, page
from tunnelacct.query.records import record_fields
from tunnelacct.store.models import SessionRecord
from tunnelacct.web.accesslog import AccessTarget, api_access, record_access
from tunnelacct.web.context import MAX_LIMIT, ApiContext, OrgId, Who
from tunnelacct.web.cursors import decode_cursor, encode_cursor
from tunnelacct.web.errors import ORG_ERRORS, bad_doc, error_doc
from tunnelacct.web.streaming import ExportProgress, export_stream

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
        after = decode_cursor(cursor) if cursor else None
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
        access = api_access(who, org, AccessTarget.SESSIONS, q, rows=len(rows), at=ctx.clock())
        await record_access(ctx.engine, access)
        return {
            "sessions": [record_fields(r) for r in rows],
            "next_cursor": encode_cursor(rows[-1].started_at, rows[-1].id) if more else None,
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
        started_at = ctx.clock()

        async def ended(progress: ExportProgress) -> None:
            what = AccessTarget.SESSIONS_CSV
            access = api_access(
                who, org, what, q, rows=progress.rows, at=started_at, status=progress.status
            )
            await record_access(ctx.engine, access)

        filename = f"tunnelacct-{org}-sessions.csv"
        return export_stream(ctx, org, flt, filename, release=release, ended=ended)

    return router
