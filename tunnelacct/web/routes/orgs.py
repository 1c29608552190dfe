"""The orgs a token may read, their inventory, and their retention.

    GET /api/v1/orgs                           the orgs this token may read
    GET /api/v1/orgs/{org}                     one org, and whether the config or the API owns it
    PATCH /api/v1/orgs/{org}                   {"retention_days": N | "forever"} (admin only)
    GET /api/v1/orgs/{org}/clients|resources   their inventory

The config file owns the retention of the orgs it defines (a PATCH of one is a 409); the API
sets it for the others.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.config.model import MAX_RETENTION_DAYS, OrgConfig
from tunnelacct.store.models import Client, Org, Resource, table_of
from tunnelacct.web.context import Admin, ApiContext, OrgId, Who
from tunnelacct.web.errors import (
    ADMIN_ERRORS,
    ORG_ERRORS,
    UNAUTHORIZED,
    BadParameter,
    bad_doc,
    error_doc,
    shown,
)

FOREVER = "forever"  # retention_days of an org whose sessions are never purged (NULL in the store)
# "off" is logging = false, never retention_days = 0 (as in the config file)
RETENTION_WHY = (
    f'expected days 1-{MAX_RETENTION_DAYS} or "forever" '
    "(to store none of an org's sessions, set logging = false in its [[orgs]] entry)"
)
_RETENTION_BODY = '{"retention_days": N or "forever"}'
_PATCH_ORG_ERRORS = {
    **ADMIN_ERRORS,
    404: ORG_ERRORS[404],
    400: bad_doc(f"a body other than {_RETENTION_BODY} (`parameter`: retention_days or body)"),
    409: error_doc("the config file defines the org and sets its retention: edit it there"),
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


def _retention_days(body: bytes) -> int | None:
    """The retention_days of a PATCH body: days, or None for "forever"; else a BadParameter."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise BadParameter("body", f"the body is not JSON: send {_RETENTION_BODY}") from e
    if not isinstance(doc, dict):
        raise BadParameter("body", f"body {shown(doc)}: send {_RETENTION_BODY}")
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
        raise BadParameter("retention_days", f"retention_days {shown(value)}: {RETENTION_WHY}")
    if not 1 <= value <= MAX_RETENTION_DAYS:
        raise BadParameter("retention_days", f"retention_days {value}: {RETENTION_WHY}")
    return value


def _set_in_config(org: str, default_org: str) -> str:
    """The 409 of a PATCH of an org the config file defines: where the file sets its retention."""
    if org == default_org:
        # the default org needs no [[orgs]] entry: without one the file writes it with the
        # [[orgs]] defaults (config.orgs.configured_orgs), so "its entry" may not exist (issue 15)
        kept = OrgConfig(id=org, name=org).retention_days
        kept_for = FOREVER if kept is None else f"{kept} days"
        return (
            f"org {org!r} is the config file's default org ([attribution] default_org), and "
            f"the file sets its retention: set retention_days in an [[orgs]] entry with id = "
            f"{json.dumps(org)} there (without one, it is kept {kept_for})"
        )
    return (
        f"org {org!r} is defined in the config file, which sets its retention: "
        "edit retention_days in its [[orgs]] entry there"
    )


async def set_retention_days(ctx: ApiContext, org: str, days: int | None) -> Org:
    """Keep `org`'s sessions `days` days (None: forever), as an admin asked through the API or
    the UI; 409 for an org the config file defines (it sets the retention there)."""
    if org in ctx.config_orgs:
        raise HTTPException(409, _set_in_config(org, ctx.default_org))
    async with AsyncSession(ctx.engine, expire_on_commit=False) as db:
        row = await db.get(Org, org)
        if row is None:  # deleted since it was looked up
            raise HTTPException(404, f"no org {org!r}")
        row.retention_days = days
        row.updated_at = ctx.clock()
        await db.commit()
    return row


def org_routes(ctx: ApiContext) -> APIRouter:
    """The organisations a caller may see, an org's retention (set by an admin), and its
    clients and resources."""
    router = APIRouter()

    def org_fields(o: Org) -> dict[str, Any]:
        return {
            "id": o.id,
            "name": o.name,
            "retention_days": FOREVER if o.retention_days is None else o.retention_days,
            "logging": o.logging,
            "source": "config" if o.id in ctx.config_orgs else "api",
        }

    @router.get("/api/v1/orgs", responses=UNAUTHORIZED)
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

    @router.get("/api/v1/orgs/{org}", responses=ORG_ERRORS)
    async def org_detail(org: OrgId) -> dict[str, Any]:
        async with AsyncSession(ctx.engine) as db:
            row = await db.get(Org, org)
        if row is None:  # deleted since visible_org looked
            raise HTTPException(404, f"no org {org!r}")
        return org_fields(row)

    @router.patch(
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
        row = await set_retention_days(ctx, org, days)
        return org_fields(row)

    @router.get("/api/v1/orgs/{org}/clients", responses=ORG_ERRORS)
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

    @router.get("/api/v1/orgs/{org}/resources", responses=ORG_ERRORS)
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

    return router
