"""REST API: `create_app(ctx)` -> FastAPI; thin routes over query, export and auth.

    GET /healthz                               liveness (no token, no data)
    GET /readyz                                store reachable, captures running (no token)
    GET /metrics                               Prometheus text (no token, no session data)
    GET /api/v1/orgs                           the orgs this token may read
    GET /api/v1/orgs/{org}/clients|resources   their inventory
    GET /api/v1/orgs/{org}/sessions?q=&limit=&cursor=   a keyset page + capped count
    GET /api/v1/orgs/{org}/sessions.csv?q=     every matching session, streamed
    GET /api/v1/orgs/{org}                     one org, and whether the config or the API owns it
    PATCH /api/v1/orgs/{org}                   {"retention_days": N | "forever"} (admin only)
    GET /api/v1/purge-runs?limit=              the newest retention purge runs (admin only)

Every /api route needs `Authorization: Bearer tat_…` (401 without a valid one). An org the
token may not read answers 404, exactly like an org that does not exist. Admin-only routes
answer 403 to an auditor token, whatever the org. The config file owns the retention of the
orgs it defines (a PATCH of one is a 409); the API sets it for the others.
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
from tunnelacct.auth import Principal, Role, authenticate
from tunnelacct.config import MAX_RETENTION_DAYS
from tunnelacct.errors import FilterError, StoreError
from tunnelacct.export import ExportWorkers, csv_pages, json_value, record_fields
from tunnelacct.metrics import service_registry
from tunnelacct.models import Client, Org, PurgeRun, Resource, SessionRecord
from tunnelacct.query import filter_clause, parse_filter
from tunnelacct.store import table_of

COUNT_CAP = 10_000  # counting stops here, so a page stays fast on a huge table
MAX_LIMIT = 1000
FOREVER = "forever"  # retention_days of an org whose sessions are never purged (NULL in the store)
# "off" is logging = false, never retention_days = 0 (as in the config file)
_RETENTION_WHY = (
    f'expected days 1-{MAX_RETENTION_DAYS} or "forever" '
    "(to store none of an org's sessions, set logging = false in its [[orgs]] entry)"
)
_RETENTION_BODY = '{"retention_days": N or "forever"}'


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
    # Ids of the orgs the config file defines: the file owns their retention, the API does not.
    config_orgs: frozenset[str] = frozenset()
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # for updated_at


def _error(description: str, **extra: dict[str, str]) -> dict[str, Any]:
    """An OpenAPI response: JSON with `detail` (and `extra` properties)."""
    properties = {"detail": {"type": "string"}, **extra}
    schema = {"type": "object", "properties": properties, "required": ["detail"]}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: _error("no bearer token, or a bad, revoked or malformed one")
}
_ORG_ERRORS = {**_UNAUTHORIZED, 404: _error("no such org, or one the token may not read")}
_ADMIN_ERRORS = {**_UNAUTHORIZED, 403: _error("an auditor token: the route is for admin tokens")}
_PATCH_ORG_ERRORS = {
    **_ADMIN_ERRORS,
    404: _ORG_ERRORS[404],
    400: _error(f"a body other than {_RETENTION_BODY}; `detail` names the bad value"),
    409: _error("the config file defines the org and sets its retention: edit it there"),
}
_RETENTION_SCHEMA = {
    "type": "object",
    "properties": {
        "retention_days": {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_RETENTION_DAYS},
                {"type": "string", "enum": [FOREVER]},
            ],
            "description": "days a completed session is kept after its end, or forever",
        }
    },
    "required": ["retention_days"],
    "additionalProperties": False,
}
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


def _shown(value: object) -> str:
    """`value` as JSON, cut short: how a bad body value is named in a 400."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _retention_days(body: bytes) -> int | None:
    """The retention_days of a PATCH body: days, or None for "forever"; else a 400 saying why."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise HTTPException(400, f"the body is not JSON: send {_RETENTION_BODY}") from e
    if not isinstance(doc, dict):
        raise HTTPException(400, f"body {_shown(doc)}: send {_RETENTION_BODY}")
    if set(doc) != {"retention_days"}:
        others = sorted(set(doc) - {"retention_days"})
        why = f"unknown keys {others}" if others else "no retention_days"
        raise HTTPException(400, f"{why}: send {_RETENTION_BODY}, nothing else")
    value = doc["retention_days"]
    if value == FOREVER:
        return None
    # a JSON true is not 1 and 30.0 is not 30 (a float is a typo more often than not)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPException(400, f"retention_days {_shown(value)}: {_RETENTION_WHY}")
    if not 1 <= value <= MAX_RETENTION_DAYS:
        raise HTTPException(400, f"retention_days {value}: {_RETENTION_WHY}")
    return value


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

    async def admin(who: Who) -> Principal:
        """`who` when it is an admin token; 403 for an auditor's (before any org is looked up)."""
        if who.role is not Role.ADMIN:
            raise HTTPException(
                403,
                f"this needs an admin token; this one is an auditor token of org {who.org_id!r}",
            )
        return who

    Admin = Annotated[Principal, Depends(admin)]

    def org_fields(o: Org) -> dict[str, Any]:
        return {
            "id": o.id,
            "name": o.name,
            "retention_days": FOREVER if o.retention_days is None else o.retention_days,
            "logging": o.logging,
            "source": "config" if o.id in ctx.config_orgs else "api",
        }

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
                "retention_days": FOREVER if o.retention_days is None else o.retention_days,
                "logging": o.logging,
            }
            for o in rows
            if who.may_see(o.id)
        ]

    @app.get("/api/v1/orgs/{org}", responses=_ORG_ERRORS)
    async def org_detail(org: OrgId) -> dict[str, Any]:
        async with AsyncSession(ctx.engine) as db:
            row = await db.get(Org, org)
        if row is None:  # deleted since visible_org looked
            raise HTTPException(404, f"no org {org!r}")
        return org_fields(row)

    @app.patch(
        "/api/v1/orgs/{org}",
        responses=_PATCH_ORG_ERRORS,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _RETENTION_SCHEMA}},
            }
        },
    )
    async def set_retention(_admin: Admin, org: OrgId, request: Request) -> dict[str, Any]:
        # Admin before OrgId: an auditor gets its 403 whatever the org, and learns nothing.
        # The body is parsed here, not by FastAPI, so that every bad one is a 400 naming it.
        days = _retention_days(await request.body())
        if org in ctx.config_orgs:
            raise HTTPException(
                409,
                f"org {org!r} is defined in the config file, which sets its retention: "
                "edit retention_days in its [[orgs]] entry there",
            )
        async with AsyncSession(ctx.engine, expire_on_commit=False) as db:
            row = await db.get(Org, org)
            if row is None:  # deleted since visible_org looked
                raise HTTPException(404, f"no org {org!r}")
            row.retention_days = days
            row.updated_at = ctx.clock()
            await db.commit()
        return org_fields(row)

    @app.get("/api/v1/purge-runs", responses=_ADMIN_ERRORS)
    async def purge_runs(
        _admin: Admin, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100
    ) -> list[dict[str, Any]]:
        t = table_of(PurgeRun)
        async with AsyncSession(ctx.engine) as db:
            stmt = select(PurgeRun).order_by(t.c.id.desc()).limit(limit)
            rows = (await db.scalars(stmt)).all()
        names = ("id", "run_id", "org_id", "host", "started_at", "ended_at", "cutoff",
                 "dry_run", "deleted", "outcome", "error")  # fmt: skip
        return [{name: json_value(getattr(r, name)) for name in names} for r in rows]

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
