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

    GET /docs, /redoc                          the OpenAPI description, browsable (no CDN)

Every /api route needs `Authorization: Bearer tat_…` (401 without a valid one). An org the
token may not read answers 404, exactly like an org that does not exist. Admin-only routes
answer 403 to an auditor token, whatever the org. The config file owns the retention of the
orgs it defines (a PATCH of one is a 409); the API sets it for the others.

Every error is one JSON shape, `{"error": CODE, "detail": TEXT}`; a bad parameter (query,
body, filter or cursor) is a 400 with `"error": "bad_parameter"` and `parameter` naming it
(a filter adds its `token` and `expected`), never FastAPI's 422.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and
# the dependency aliases (Who, OrgId) are local to create_app.
import base64
import binascii
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunnelacct import __version__
from tunnelacct.config.model import DEFAULT_ORG, MAX_RETENTION_DAYS, OrgConfig
from tunnelacct.errors import FilterError, StoreError, TunnelacctError
from tunnelacct.metrics.collectors import service_registry
from tunnelacct.query.export import ExportWorkers, csv_pages
from tunnelacct.query.filters import parse_filter
from tunnelacct.query.pages import capped_count, page
from tunnelacct.query.records import json_value, record_fields
from tunnelacct.store.models import Client, Org, PurgeRun, Resource, SessionRecord, table_of
from tunnelacct.web.auth import Principal, Role, authenticate
from tunnelacct.web.guards import STALLED_SEND_S, HttpGuards
from tunnelacct.web.limits import ClientGone, QueryLimits, QueryTimeout, TooBusy

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
    # The config's [attribution] default_org: the file sets its retention with or without an
    # [[orgs]] entry (without one, the [[orgs]] default), so a 409 for it says so (issue 15).
    default_org: str = DEFAULT_ORG
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))  # for updated_at
    # time limit, client disconnect and per-token concurrency of the reads (issue 16)
    limits: QueryLimits = field(default_factory=QueryLimits)
    # a response whose client reads nothing for this long is cut (a stalled CSV reader)
    stalled_send_s: float = STALLED_SEND_S


class BadParameter(TunnelacctError):
    """A request parameter the API cannot take (query, body or cursor): names it and says why."""

    def __init__(self, parameter: str, detail: str) -> None:
        self.parameter, self.detail = parameter, detail
        super().__init__(detail)


BAD_PARAMETER = "bad_parameter"  # the `error` of every 400
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client went away
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what went wrong, e.g. not_found"},
        "detail": {"type": "string", "description": "the same, for a person"},
    },
    "required": ["error", "detail"],
}
_BAD_PARAMETER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "enum": [BAD_PARAMETER]},
        "parameter": {"type": "string", "description": "the bad one, e.g. limit, q or cursor"},
        "detail": {"type": "string", "description": "its value and what it should be"},
        "token": {"type": "string", "description": "q only: the bad filter term as written"},
        "expected": {"type": "string", "description": "q only: what the term should be"},
    },
    "required": ["error", "parameter", "detail"],
}


def _error(description: str, schema: dict[str, Any] = _ERROR_SCHEMA) -> dict[str, Any]:
    """An OpenAPI response: the API's JSON error shape."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _bad(description: str) -> dict[str, Any]:
    """An OpenAPI 400 response: a bad parameter, named."""
    return _error(f"a bad parameter, named by `parameter`: {description}", _BAD_PARAMETER_SCHEMA)


def _error_response(
    status: int,
    error: str,
    detail: str,
    *,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
    **more: str,
) -> JSONResponse:
    """The one shape of every error answer: `error`, `parameter` (a 400's), `detail`, `more`."""
    named = {"parameter": parameter} if parameter is not None else {}
    body = {"error": error, **named, "detail": detail, **more}
    return JSONResponse(body, status, headers=headers)


def _invalid(exc: RequestValidationError) -> BadParameter:
    """FastAPI's validation error as a BadParameter naming the (first) parameter at fault."""
    errors = exc.errors()
    first: Mapping[str, Any] = errors[0] if errors else {}
    place = [str(part) for part in first.get("loc", ())]
    parameter = ".".join(place[1:]) or ".".join(place) or "request"  # loc: ("query", "limit")
    why = str(first.get("msg", "invalid"))
    if "input" not in first:
        return BadParameter(parameter, f"{parameter}: {why}")
    return BadParameter(parameter, f"{parameter} {_shown(first['input'])}: {why}")


async def _render_error(_request: Request, exc: Exception) -> Response:
    """The app's one error handler: core and API errors to HTTP, in the one JSON shape."""
    if isinstance(exc, RequestValidationError):
        exc = _invalid(exc)
    if isinstance(exc, BadParameter):
        return _error_response(400, BAD_PARAMETER, exc.detail, parameter=exc.parameter)
    if isinstance(exc, FilterError):
        return _error_response(
            400, BAD_PARAMETER, str(exc), parameter="q", token=exc.token, expected=exc.expected
        )
    if isinstance(exc, StoreError):
        return _error_response(503, "store_unavailable", str(exc))
    if isinstance(exc, QueryTimeout):
        return _error_response(503, "query_timeout", str(exc))
    if isinstance(exc, TooBusy):
        retry = {"Retry-After": str(exc.retry_after_s)}
        return _error_response(429, "too_many_requests", str(exc), headers=retry)
    if isinstance(exc, ClientGone):
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it
    if isinstance(exc, StarletteHTTPException):
        # 401, 403, 404, 409 of the routes, and Starlette's own 404 and 405
        error = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        return _error_response(exc.status_code, error, str(exc.detail), headers=exc.headers)
    raise exc  # not registered for anything else


_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: _error("no bearer token, or a bad, revoked or malformed one")
}
_ORG_ERRORS = {**_UNAUTHORIZED, 404: _error("no such org, or one the token may not read")}
_ADMIN_ERRORS = {**_UNAUTHORIZED, 403: _error("an auditor token: the route is for admin tokens")}
_PATCH_ORG_ERRORS = {
    **_ADMIN_ERRORS,
    404: _ORG_ERRORS[404],
    400: _bad(f"a body other than {_RETENTION_BODY} (`parameter`: retention_days or body)"),
    409: _error("the config file defines the org and sets its retention: edit it there"),
}
_PURGE_RUNS_ERRORS = {**_ADMIN_ERRORS, 400: _bad("limit")}
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
    400: _bad("limit, cursor, or a filter q (with the `token` at fault and the `expected`)"),
    429: _error("the token already runs its most queries and exports at once: see Retry-After"),
    503: _error("the query ran over its time limit (`query_timeout`), or the store is down"),
}
_CSV_ERRORS = {
    **_ORG_ERRORS,
    400: _bad("a filter q (with the `token` at fault and `expected`)"),
    429: _error("as many exports stream already (all tokens, or this one's): see Retry-After"),
}


class _Api(FastAPI):
    """FastAPI whose OpenAPI description documents no 422: a bad parameter is a 400 here."""

    def openapi(self) -> dict[str, Any]:
        """The description FastAPI builds, less the 422 it adds to routes with parameters."""
        schema = super().openapi()  # built once, then cached: dropping again changes nothing
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        return schema


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


def _shown(value: object) -> str:
    """`value` as JSON, cut short: how a bad value is named in a 400."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _retention_days(body: bytes) -> int | None:
    """The retention_days of a PATCH body: days, or None for "forever"; else a BadParameter."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise BadParameter("body", f"the body is not JSON: send {_RETENTION_BODY}") from e
    if not isinstance(doc, dict):
        raise BadParameter("body", f"body {_shown(doc)}: send {_RETENTION_BODY}")
    if set(doc) != {"retention_days"}:
        others = sorted(set(doc) - {"retention_days"})
        why = f"unknown keys {others}" if others else "no retention_days"
        raise BadParameter("body", f"{why}: send {_RETENTION_BODY}, nothing else")
    value = doc["retention_days"]
    if value == FOREVER:
        return None
    # a JSON true is not 1; 30.0 is 30, as the schema's "integer" says (JSON Schema counts
    # a number without a fractional part as an integer, and so do clients that send it)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadParameter("retention_days", f"retention_days {_shown(value)}: {_RETENTION_WHY}")
    if not 1 <= value <= MAX_RETENTION_DAYS:
        raise BadParameter("retention_days", f"retention_days {value}: {_RETENTION_WHY}")
    return value


def _set_in_config(org: str, default_org: str) -> str:
    """The 409 of a PATCH of an org the config file defines: where the file sets its retention."""
    if org == default_org:
        # the default org needs no [[orgs]] entry: without one the file writes it with the
        # [[orgs]] defaults (config.orgs.configured_orgs), so "its entry" may not exist (issue 15)
        kept = OrgConfig(id=org, name=org).retention_days
        shown = FOREVER if kept is None else f"{kept} days"
        return (
            f"org {org!r} is the config file's default org ([attribution] default_org), and "
            f"the file sets its retention: set retention_days in an [[orgs]] entry with id = "
            f"{json.dumps(org)} there (without one, it is kept {shown})"
        )
    return (
        f"org {org!r} is defined in the config file, which sets its retention: "
        "edit retention_days in its [[orgs]] entry there"
    )


# Swagger UI and ReDoc from the fastapi-offline package's files, never from a CDN: a gateway
# may reach no other host (issue 15).
DOCS_ASSETS = "/docs/assets"
_ASSETS_PACKAGE = ("fastapi_offline", "static")


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, whose scripts, styles and icon this app serves."""
    app.mount(DOCS_ASSETS, StaticFiles(packages=[_ASSETS_PACKAGE]), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # no validator badge: it is an image from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


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


def create_app(ctx: ApiContext) -> FastAPI:
    """The ASGI app for `ctx` (no globals: tests build their own)."""
    app = _Api(title="tunnelacct", version=__version__, docs_url=None, redoc_url=None)
    # HEAD, relative redirects, a body cap, stalled readers cut (issue 16)
    app.add_middleware(HttpGuards, stalled_send_s=ctx.stalled_send_s)
    _add_docs(app)
    for error in (
        BadParameter,
        ClientGone,
        FilterError,
        QueryTimeout,
        RequestValidationError,
        StarletteHTTPException,
        StoreError,
        TooBusy,
    ):
        app.add_exception_handler(error, _render_error)

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
        """`org` when the token may read it and it exists; 404 either way otherwise.

        No org id holds a NUL (the config refuses one), and PostgreSQL text cannot: such an
        id is not looked up (it was a 500 there, issue 16)."""
        if who.may_see(org) and "\x00" not in org:
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
            raise HTTPException(409, _set_in_config(org, ctx.default_org))
        async with AsyncSession(ctx.engine, expire_on_commit=False) as db:
            row = await db.get(Org, org)
            if row is None:  # deleted since visible_org looked
                raise HTTPException(404, f"no org {org!r}")
            row.retention_days = days
            row.updated_at = ctx.clock()
            await db.commit()
        return org_fields(row)

    @app.get("/api/v1/purge-runs", responses=_PURGE_RUNS_ERRORS)
    async def purge_runs(
        _admin: Admin, limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100
    ) -> list[dict[str, Any]]:
        t = table_of(PurgeRun)
        async with AsyncSession(ctx.engine) as db:
            stmt = select(PurgeRun).order_by(t.c.id.desc()).limit(limit)
            rows = (await db.scalars(stmt)).all()
        names = (
            "id",
            "run_id",
            "org_id",
            "host",
            "started_at",
            "ended_at",
            "cutoff",
            "dry_run",
            "deleted",
            "outcome",
            "error",
        )
        return [{name: json_value(getattr(r, name)) for name in names} for r in rows]

    @app.get("/api/v1/orgs/{org}/clients", responses=_ORG_ERRORS)
    async def clients(org: OrgId) -> list[dict[str, Any]]:
        t = table_of(Client)
        async with AsyncSession(ctx.engine) as db:
            rows = (
                await db.scalars(select(Client).where(t.c.org_id == org).order_by(t.c.id))
            ).all()
        return [
            {
                "id": c.id,
                "name": c.name,
                "user_id": c.user_id,
                "addresses": json.loads(c.addresses),
                "active": c.active,
            }
            for c in rows
        ]

    @app.get("/api/v1/orgs/{org}/resources", responses=_ORG_ERRORS)
    async def resources(org: OrgId) -> list[dict[str, Any]]:
        t = table_of(Resource)
        async with AsyncSession(ctx.engine) as db:
            stmt = select(Resource).where(t.c.org_id == org).order_by(t.c.id)
            rows = (await db.scalars(stmt)).all()
        return [
            {
                "id": r.id,
                "name": r.name,
                "address": r.address,
                "ports": r.ports,
                "protocols": r.protocols.split(","),
                "active": r.active,
            }
            for r in rows
        ]

    @app.get("/api/v1/orgs/{org}/sessions", responses=_QUERY_ERRORS)
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

    @app.get(
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

    return app
