"""The retention page (admins): each org's logging, how long its sessions are kept, and its last
and next purge; the retention of an org the API owns can be changed here.

    GET  /retention              every org
    POST /retention/{org}        retention_days = N or "forever" (CSRF-checked)

An org the config file defines keeps the retention the file sets (shown, not editable), as the
API's PATCH answers 409 for it: the one rule lives in `set_retention_days`.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
from dataclasses import dataclass
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.config.model import MAX_RETENTION_DAYS
from tunnelacct.store.models import Org, PurgeRun, table_of
from tunnelacct.web.context import ApiContext
from tunnelacct.web.errors import BadParameter
from tunnelacct.web.routes.orgs import FOREVER, RETENTION_WHY, set_retention_days
from tunnelacct.web.ui.render import Pages, link
from tunnelacct.web.ui.viewers import AdminViewer, PostedForm, ViewerOrg


@dataclass(frozen=True, slots=True)
class OrgRetention:
    """One org's row of the page."""

    org: Org
    from_config: bool
    last_purge: PurgeRun | None
    next_purge_at: datetime | None


def retention_days_of(text: str) -> int | None:
    """A form's retention: whole days 1..MAX_RETENTION_DAYS, or "forever" (None)."""
    value = text.strip().lower()
    if value == FOREVER:
        return None
    if not value.isdigit() or not 1 <= int(value) <= MAX_RETENTION_DAYS:
        raise BadParameter("retention_days", f"retention_days {text!r}: {RETENTION_WHY}")
    return int(value)


def retention_page_routes(ctx: ApiContext, pages: Pages) -> APIRouter:
    """The retention page and its form (see the module docstring)."""
    router = APIRouter()

    async def org_rows() -> list[OrgRetention]:
        runs = table_of(PurgeRun)
        async with AsyncSession(ctx.engine) as db:
            orgs = (await db.scalars(select(Org).order_by(table_of(Org).c.id))).all()
            rows = []
            for org in orgs:
                newest = (
                    select(PurgeRun)
                    .where(runs.c.org_id == org.id, runs.c.dry_run.is_(False))
                    .order_by(runs.c.started_at.desc())
                    .limit(1)
                )
                last = (await db.scalars(newest)).first()
                next_at = None
                if last is not None and ctx.purge_interval_s is not None:
                    next_at = last.started_at + timedelta(seconds=ctx.purge_interval_s)
                rows.append(
                    OrgRetention(
                        org=org,
                        from_config=org.id in ctx.config_orgs,
                        last_purge=last,
                        next_purge_at=next_at,
                    )
                )
        return rows

    async def page(
        request: Request, viewer: AdminViewer, *, error: str = "", error_org: str = ""
    ) -> Response:
        return pages.render(
            request,
            "retention.html",
            viewer=viewer,
            org=None,
            rows=await org_rows(),
            purge_interval_s=ctx.purge_interval_s,
            max_days=MAX_RETENTION_DAYS,
            error=error,
            error_org=error_org,
            saved=request.query_params.get("saved", ""),
        )

    @router.get("/retention")
    async def retention(request: Request, viewer: AdminViewer) -> Response:
        return await page(request, viewer)

    @router.post("/retention/{org}")
    async def set_retention(
        request: Request, viewer: AdminViewer, org: ViewerOrg, form: PostedForm
    ) -> Response:
        try:
            days = retention_days_of(form.get("retention_days", ""))
        except BadParameter as e:
            return await page(request, viewer, error=e.detail, error_org=org)
        await set_retention_days(ctx, org, days)  # 409 (a page) for an org of the config
        return RedirectResponse(link(request, "/retention", {"saved": org}), 303)

    return router
