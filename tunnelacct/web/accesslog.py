"""The access log (issue 19): who read or exported which org's sessions or usage, when, through
the API or the UI, with what filter and how many rows.

Each read is a row of `access_log` (purged with the org's sessions: retention/purge.py) and one
line of the logger "tunnelacct.access", as `key=value` pairs (a value with a space, a quote or a
control character as a JSON string), for a log collector::

    await record_access(engine, api_access(who, "acme", AccessTarget.SESSIONS, "protocol:udp",
                                           rows=12, at=now))
    # tunnelacct.access: at=2026-12-05T10:40:45.123456+00:00 org=acme actor=token:0123456789abcdef
    #     role=auditor via=api what=sessions filter="protocol:udp" rows=12 status=200

Only reads that got past the token and the org's scoping are logged: a 401 or a 404 reads
nothing. Neither a failed insert nor anything else here fails the read it records.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from http import HTTPStatus

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.store.models import AccessRecord, table_of
from tunnelacct.web.auth import Principal

log = logging.getLogger(__name__)
# the access lines under a name of their own, so that a deployment can route them apart
access_log = logging.getLogger("tunnelacct.access")

OK = HTTPStatus.OK.value
_PLAIN = re.compile(r"[A-Za-z0-9_.:@/+-]+")  # logged as is; anything else as a JSON string


class AccessVia(StrEnum):
    """Where a read came in: the REST API or the web UI."""

    API = "api"
    UI = "ui"


class AccessTarget(StrEnum):
    """What a read answered with."""

    SESSIONS = "sessions"  # a page of sessions
    SESSIONS_CSV = "sessions.csv"  # the CSV export
    SESSION = "session"  # one session's detail
    USAGE = "usage"  # a usage report
    USAGE_CSV = "usage.csv"  # a usage report as CSV


@dataclass(frozen=True, slots=True)
class Access:
    """One read of an org's data: `at` (aware UTC), who (`actor` "token:<id>" or
    "user:<name>", and `role`), `via`, `what`, the filter as given ("" for none), the rows
    answered (None when unknown) and the HTTP status (a CSV cut short: rows so far, and
    499 when the client left, 500 when the store failed)."""

    at: datetime
    org_id: str
    actor: str
    role: str
    via: AccessVia
    what: AccessTarget
    filter_text: str
    rows: int | None
    status: int = OK


def token_actor(token_id: str) -> str:
    """The access log's actor of an API token."""
    return f"token:{token_id}"


def api_access(
    who: Principal,
    org_id: str,
    what: AccessTarget,
    filter_text: str,
    *,
    rows: int | None,
    at: datetime,
    status: int = OK,
) -> Access:
    """A read through the API by the token `who`."""
    return Access(
        at=at,
        org_id=org_id,
        actor=token_actor(who.token_id),
        role=who.role.value,
        via=AccessVia.API,
        what=what,
        filter_text=filter_text,
        rows=rows,
        status=status,
    )


def _logged(value: object) -> str:
    """`value` for a key=value line: as is when plain, else a JSON string (a filter's spaces,
    quotes and line breaks can forge no pair and no line)."""
    text = "-" if value is None else str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


async def record_access(engine: AsyncEngine, access: Access) -> None:
    """Store `access` in `access_log` and write its line to the "tunnelacct.access" logger; a
    store that fails is logged as a warning, and the line is written all the same."""
    row = AccessRecord(
        at=access.at,
        org_id=access.org_id,
        actor=access.actor,
        role=access.role,
        via=access.via.value,
        what=access.what.value,
        filter_text=access.filter_text,
        rows=access.rows,
        status=access.status,
    )
    try:
        async with AsyncSession(engine) as db:
            db.add(row)
            await db.commit()
    except (SQLAlchemyError, OSError) as exc:  # OSError: a refused connect (asyncpg)
        log.warning(
            "cannot store the access of %s to org %s's %s: %s",
            access.actor,
            access.org_id,
            access.what.value,
            exc,
        )
    access_log.info(
        "at=%s org=%s actor=%s role=%s via=%s what=%s filter=%s rows=%s status=%d",
        access.at.isoformat(),
        _logged(access.org_id),
        _logged(access.actor),
        _logged(access.role),
        access.via.value,
        access.what.value,
        _logged(access.filter_text),
        _logged(access.rows),
        access.status,
    )


async def recent_access(
    engine: AsyncEngine, *, org_id: str | None, limit: int, before_id: int | None
) -> list[AccessRecord]:
    """The newest `limit` rows of the access log (of `org_id`, or of every org for None),
    newest first; the next page passes the last one's id as `before_id`."""
    t = table_of(AccessRecord)
    stmt = select(AccessRecord)
    if org_id is not None:
        stmt = stmt.where(t.c.org_id == org_id)
    if before_id is not None:
        stmt = stmt.where(t.c.id < before_id)
    stmt = stmt.order_by(t.c.id.desc()).limit(limit)
    async with AsyncSession(engine, expire_on_commit=False) as db:
        return list((await db.scalars(stmt)).all())
