"""REST API: `create_app(ctx)` -> FastAPI; thin routes over query, export and auth.

    GET /healthz                               liveness (no token, no data)
    GET /readyz                                store reachable, captures running (no token)
    GET /metrics                               Prometheus text (no token, no session data)
    GET /api/v1/orgs                           the orgs this token may read
    GET /api/v1/orgs/{org}/clients|resources   their inventory
    GET /api/v1/orgs/{org}/sessions?q=&limit=&cursor=   a keyset page + capped count
    GET /api/v1/orgs/{org}/sessions.csv?q=     every matching session, streamed

Every /api route needs `Authorization: Bearer tat_…` (401 without a valid one). An org the
token may not read answers 404, exactly like an org that does not exist.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and
# the dependency aliases (Who, OrgId) are local to create_app.
import base64
import binascii
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import func, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct import __version__
from tunnelacct.auth import Principal, authenticate
from tunnelacct.errors import FilterError, StoreError
from tunnelacct.export import ExportWorkers, csv_pages, record_fields
from tunnelacct.metrics import service_registry
from tunnelacct.models import Client, Org, Resource, SessionRecord
from tunnelacct.query import filter_clause, parse_filter
from tunnelacct.store import table_of

COUNT_CAP = 10_000  # counting stops here, so a page stays fast on a huge table
MAX_LIMIT = 1000


def _build_info_only() -> CollectorRegistry:
    return service_registry(lambda: (), lambda: None)


@dataclass
class ApiContext:
    """What the app needs: the store, and (from serve) why captures are not ready and the
    service's metrics."""

    engine: AsyncEngine
    not_ready: Callable[[], list[str]] = field(default=lambda: [])
    metrics: CollectorRegistry = field(default_factory=_build_info_only)
    export_workers: ExportWorkers | None = None  # None: CSV is quoted in this process


def _error(description: str, **extra: dict[str, str]) -> dict[str, Any]:
    """An OpenAPI response: JSON with `detail` (and `extra` properties)."""
    properties = {"detail": {"type": "string"}, **extra}
    schema = {"type": "object", "properties": properties, "required": ["detail"]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: _error("no bearer token, or a bad, revoked or malformed one")
}
_ORG_ERRORS = {**_UNAUTHORIZED, 404: _error("no such org, or one the token may not read")}
_QUERY_ERRORS = {
    **_ORG_ERRORS,
    400: _error(
        "a bad filter (`token`: the term, `expected`: what it should be) or cursor",
        token={"type": "string"},
        expected={"type": "string"},
    ),
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
    except (ValueError, TypeError, OverflowError, binascii.Error) as e:
        raise HTTPException(400, f"bad cursor {cursor!r}: use next_cursor of a page") from e


def create_app(ctx: ApiContext) -> FastAPI:
    """The ASGI app for `ctx` (no globals: tests build their own)."""
    app = FastAPI(title="tunnelacct", version=__version__)
    sessions_table = table_of(SessionRecord)

    @app.exception_handler(FilterError)
    async def bad_filter(_request: Request, exc: FilterError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "token": exc.token, "expected": exc.expected}, status_code=400
        )

    @app.exception_handler(StoreError)
    async def store_down(_request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    bearer = HTTPBearer(
        auto_error=False, description="A token from `tunnelacct token create` (tat_...)"
    )

    async def principal(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        who = await authenticate(ctx.engine, credentials.credentials) if credentials else None
        if who is None:
            raise HTTPException(
                401, "a valid bearer token is needed", headers={"WWW-Authenticate": "Bearer"}
            )
        return who

    Who = Annotated[Principal, Depends(principal)]

    async def visible_org(org: str, who: Who) -> str:
        """`org` when the token may read it and it exists; 404 either way otherwise."""
        if who.may_see(org):
            async with AsyncSession(ctx.engine) as db:
                if await db.get(Org, org) is not None:
                    return org
        raise HTTPException(404, f"no org {org!r}")

    OrgId = Annotated[str, Depends(visible_org)]

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: _error("not ready: `reasons` says why")})
    async def readyz() -> JSONResponse:
        reasons = list(ctx.not_ready())
        try:
            async with ctx.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as e:  # noqa: BLE001 - any failure means "not ready", with its reason
            reasons.append(f"store unreachable: {e}")
        status = 200 if not reasons else 503
        return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=status)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        # Collected on the event loop: the collectors read in-memory counters only.
        return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/orgs", responses=_UNAUTHORIZED)
    async def orgs(who: Who) -> list[dict[str, Any]]:
        async with AsyncSession(ctx.engine) as db:
            rows = (await db.scalars(select(Org).order_by(table_of(Org).c.id))).all()
        return [
            {
                "id": o.id,
                "name": o.name,
                "retention_days": "forever" if o.retention_days is None else o.retention_days,
                "logging": o.logging,
            }
            for o in rows
            if who.may_see(o.id)
        ]

    @app.get("/api/v1/orgs/{org}/clients", responses=_ORG_ERRORS)
    async def clients(org: OrgId) -> list[dict[str, Any]]:
        t = table_of(Client)
        async with AsyncSession(ctx.engine) as db:
            rows = (
                await db.scalars(select(Client).where(t.c.org_id == org).order_by(t.c.id))
            ).all()
        return [
            {"id": c.id, "name": c.name, "user_id": c.user_id,
             "addresses": json.loads(c.addresses), "active": c.active}
            for c in rows
        ]  # fmt: skip

    @app.get("/api/v1/orgs/{org}/resources", responses=_ORG_ERRORS)
    async def resources(org: OrgId) -> list[dict[str, Any]]:
        t = table_of(Resource)
        async with AsyncSession(ctx.engine) as db:
            stmt = select(Resource).where(t.c.org_id == org).order_by(t.c.id)
            rows = (await db.scalars(stmt)).all()
        return [
            {"id": r.id, "name": r.name, "address": r.address, "ports": r.ports,
             "protocols": r.protocols.split(","), "active": r.active}
            for r in rows
        ]  # fmt: skip

    @app.get("/api/v1/orgs/{org}/sessions", responses=_QUERY_ERRORS)
    async def sessions(
        org: OrgId,
        q: Annotated[str, Query(description="filter, e.g. protocol:tcp dport:443")] = "",
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        t = sessions_table
        where = [t.c.org_id == org]
        if q.strip():
            where.append(filter_clause(parse_filter(q), t))
        page_where = list(where)
        if cursor:
            page_where.append(tuple_(t.c.started_at, t.c.id) > _decode_cursor(cursor))
        stmt = (
            select(SessionRecord)
            .where(*page_where)
            .order_by(t.c.started_at, t.c.id)
            .limit(limit + 1)
        )
        capped = select(func.count()).select_from(
            select(t.c.id).where(*where).limit(COUNT_CAP + 1).subquery()
        )
        async with AsyncSession(ctx.engine) as db:
            rows = (await db.scalars(stmt)).all()
            if cursor is None and len(rows) <= limit:
                count = len(rows)  # a first page that holds every match needs no count
            else:
                count = int((await db.execute(capped)).scalar_one())
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "sessions": [record_fields(r) for r in rows],
            "next_cursor": _encode_cursor(rows[-1].started_at, rows[-1].id) if more else None,
            "count": min(count, COUNT_CAP),
            "count_capped": count > COUNT_CAP,
        }

    @app.get(
        "/api/v1/orgs/{org}/sessions.csv",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "every matching session as CSV (RFC 4180, UTF-8)",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            **_QUERY_ERRORS,
        },
    )
    async def sessions_csv(org: OrgId, q: str = "") -> StreamingResponse:
        flt = parse_filter(q) if q.strip() else None

        async def body() -> AsyncIterator[bytes]:
            pages = csv_pages(ctx.engine, org, flt=flt, workers=ctx.export_workers)
            async for chunk, _rows in pages:
                yield chunk.encode()

        filename = f"tunnelacct-{org}-sessions.csv"
        return StreamingResponse(
            body(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    return app
