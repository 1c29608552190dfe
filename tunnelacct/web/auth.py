"""API tokens: created once, stored as hashes, compared in constant time, scoped to an org.

A token reads `tat_<id>_<secret>`: the id finds the row, the secret's SHA-256 is compared with
hmac.compare_digest. Only the hash is stored, so a leaked database reveals no usable token::

    text, token = await create_token(engine, Role.AUDITOR, org_id="acme", name="audit 2026")
    principal = await authenticate(engine, text)   # None: missing, malformed, wrong or revoked
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.errors import TunnelacctError
from tunnelacct.store.models import ApiToken, table_of

TOKEN_PREFIX = "tat_"
_TOKEN = re.compile(r"tat_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()


class Role(StrEnum):
    """What a token may see: one org (auditor) or every org (admin)."""

    AUDITOR = "auditor"
    ADMIN = "admin"


class TokenError(TunnelacctError):
    """A token cannot be created or revoked as asked."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for."""

    token_id: str
    role: Role
    org_id: str | None  # None for an admin

    def may_see(self, org_id: str) -> bool:
        """True when this principal may read `org_id`'s data."""
        return self.role is Role.ADMIN or self.org_id == org_id


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_token(
    engine: AsyncEngine, role: Role, *, org_id: str | None = None, name: str | None = None
) -> tuple[str, ApiToken]:
    """Store a new token and return (its text, shown only now, and its row)."""
    if role is Role.AUDITOR and org_id is None:
        raise TokenError("an auditor token needs --org")
    if role is Role.ADMIN and org_id is not None:
        raise TokenError("an admin token sees every org: give no --org")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiToken(
        id=token_id,
        secret_sha256=_hash(secret),
        role=role.value,
        org_id=org_id,
        name=name,
        created_at=datetime.now(UTC),
    )
    async with AsyncSession(engine, expire_on_commit=False) as db:
        db.add(row)
        await db.commit()
    return f"{TOKEN_PREFIX}{token_id}_{secret}", row


async def list_tokens(engine: AsyncEngine) -> list[ApiToken]:
    """Every token row (hashes, never secrets), oldest first."""
    async with AsyncSession(engine, expire_on_commit=False) as db:
        rows = await db.scalars(select(ApiToken).order_by(table_of(ApiToken).c.created_at))
        return list(rows.all())


async def revoke_token(engine: AsyncEngine, token_id: str) -> None:
    """Revoke a token by id; TokenError when there is no such active token."""
    table = table_of(ApiToken)
    async with engine.begin() as conn:
        done = await conn.execute(
            update(table)
            .where(table.c.id == token_id, table.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
    if done.rowcount != 1:
        raise TokenError(f"no active token with id {token_id!r} (see `tunnelacct token list`)")


async def authenticate(engine: AsyncEngine, text: str | None) -> Principal | None:
    """The principal of a bearer token, or None when it is missing, malformed, wrong or revoked."""
    m = _TOKEN.fullmatch(text or "")
    token_id = m.group(1) if m else ""
    secret = m.group(2) if m else ""
    row = None
    if m:
        async with AsyncSession(engine) as db:
            row = await db.get(ApiToken, token_id)
    stored = row.secret_sha256 if row is not None else _DUMMY_HASH
    # compared even without a row, so timing tells nothing about which ids exist
    same = hmac.compare_digest(stored, _hash(secret))
    if row is None or not same or row.revoked_at is not None:
        return None
    return Principal(token_id=row.id, role=Role(row.role), org_id=row.org_id)
