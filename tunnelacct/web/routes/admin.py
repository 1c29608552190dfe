"""Admin routes: what retention purges did.

GET /api/v1/purge-runs?limit=              the newest retention purge runs (admin only)
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.query.records import json_value
from tunnelacct.store.models import PurgeRun, table_of
from tunnelacct.web.context import MAX_LIMIT, Admin, ApiContext
from tunnelacct.web.errors import ADMIN_ERRORS, bad_doc

_PURGE_RUNS_ERRORS = {**ADMIN_ERRORS, 400: bad_doc("limit")}


def admin_routes(ctx: ApiContext) -> APIRouter:
    """What only an admin reads: the purge runs, newest first."""
    router = APIRouter()

    @router.get("/api/v1/purge-runs", responses=_PURGE_RUNS_ERRORS)
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

    return router
