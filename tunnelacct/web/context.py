"""What every route needs: the app's context (`ApiContext`), and who asks, as dependencies:
`Who` (a valid bearer token's principal, else 401), `OrgId` (an org the token may read, else
404) and `Admin` (an admin token, else 403)."""

# No `from __future__ import annotations`: FastAPI reads the dependencies' signatures at runtime.
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.config.model import DEFAULT_ORG
from tunnelacct.metrics.collectors import service_registry
from tunnelacct.query.export import ExportWorkers
from tunnelacct.store.models import Org
from tunnelacct.store.probe import StoreProbe
from tunnelacct.web.auth import Principal, Role, authenticate
from tunnelacct.web.guards import STALLED_SEND_S
from tunnelacct.web.limits import QueryLimits
from tunnelacct.web.ui.logins import LoginExpiry

MAX_LIMIT = 1000  # rows of one page of any list


def _build_info_only() -> CollectorRegistry:
    return service_registry(lambda: (), lambda: None)


@dataclass
class ApiContext:
    """What the app needs: the store, and (from serve) why captures are not ready, the
    store's latest answer to a readiness probe and the service's metrics."""

    engine: AsyncEngine
    not_ready: Callable[[], list[str]] = field(default=lambda: [])
    # GET /readyz probes the store through it; serve's tunnelacct_ready reads its last answer
    store_probe: StoreProbe = field(default_factory=StoreProbe)
    metrics: CollectorRegistry = field(default_factory=_build_info_only)
    export_workers: ExportWorkers | None = None  # None: CSV is quoted in this process
    # Ids of the orgs the config file defines: the file owns their retention, the API does not.
    config_orgs: frozenset[str] = frozenset()
    # The config's [attribution] default_org: the file sets its retention with or without an
    # [[orgs]] entry (without one, the [[orgs]] default), so a 409 for it says so (issue 15).
    default_org: str = DEFAULT_ORG
    # now: for updated_at, the tokens' expiry and last use, and the access log's times
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # time limit, client disconnect and per-token concurrency of the reads (issue 16)
    limits: QueryLimits = field(default_factory=QueryLimits)
    # a response whose client reads nothing for this long is cut (a stalled CSV reader)
    stalled_send_s: float = STALLED_SEND_S
    # the web UI: how long a sign-in lasts, and how often serve purges (None: it does not)
    login_expiry: LoginExpiry = field(default_factory=LoginExpiry)
    purge_interval_s: float | None = None


def context_of(request: Request) -> ApiContext:
    """The context of the app serving `request` (create_app keeps it in the app's state)."""
    ctx: ApiContext = request.app.state.api_context
    return ctx


_bearer = HTTPBearer(
    auto_error=False, description="A token from `tunnelacct token create` (tat_...)"
)


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The principal of a valid bearer token; 401 otherwise."""
    ctx = context_of(request)
    who = None
    if credentials is not None:
        who = await authenticate(ctx.engine, credentials.credentials, now=ctx.clock())
    if who is None:
        raise HTTPException(
            401, "a valid bearer token is needed", headers={"WWW-Authenticate": "Bearer"}
        )
    return who


Who = Annotated[Principal, Depends(principal)]


async def org_visible(engine: AsyncEngine, who: Principal, org: str) -> bool:
    """Whether `who` may read `org` and it exists: the one org scoping of the API and the UI.

    No org id holds a NUL (the config refuses one), and PostgreSQL text cannot: such an id is
    not looked up (it was a 500 there, issue 16)."""
    if not who.may_see(org) or "\x00" in org:
        return False
    async with AsyncSession(engine) as db:
        return await db.get(Org, org) is not None


async def visible_org(request: Request, org: str, who: Who) -> str:
    """`org` when the token may read it and it exists; 404 either way otherwise, exactly like
    an org that does not exist."""
    if await org_visible(context_of(request).engine, who, org):
        return org
    raise HTTPException(404, f"no org {org!r}")


OrgId = Annotated[str, Depends(visible_org)]


async def admin(who: Who) -> Principal:
    """`who` when it is an admin token; 403 for an auditor's, whatever the org (before any org
    is looked up)."""
    if who.role is not Role.ADMIN:
        raise HTTPException(
            403,
            f"this needs an admin token; this one is an auditor token of org {who.org_id!r}",
        )
    return who


Admin = Annotated[Principal, Depends(admin)]
