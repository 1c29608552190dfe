"""API tokens: created once, stored as hashes, compared in constant time, scoped to an org.

A token reads `tat_<id>_<secret>`: the id finds the row, the secret's SHA-256 is compared with
hmac.compare_digest. Only the hash is stored, so a leaked database reveals no usable token::

    expires_at = token_expiry("90d", now)           # None for "never"
    text, token = await create_token(engine, Role.AUDITOR, org_id="acme", expires_at=expires_at)
    principal = await authenticate(engine, text)   # None: missing, malformed, wrong, revoked
                                                   # or expired

A token's last use is stored to within LAST_USED_RESOLUTION_S: a request writes it only when
the stored time is older than that, so a busy token costs a write a minute, not one a request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.errors import TunnelacctError
from tunnelacct.store.models import ApiToken, table_of

TOKEN_PREFIX = "tat_"
_TOKEN = re.compile(r"tat_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_DUMMY_HASH = hashlib.sha256(b"no such token").hexdigest()
# a token's last use is written when the stored one is older than this, never per request
LAST_USED_RESOLUTION_S = 60.0
NEVER = "never"  # the lifetime of a token that does not expire
# a lifetime: a number of days or hours (6 digits: 999999 days end in year 4764)
_LIFETIME = re.compile(r"([0-9]{1,6})([dh])")
_LIFETIME_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1)}

log = logging.getLogger(__name__)


class Role(StrEnum):
    """What a token may see: one org (auditor) or every org (admin)."""

    AUDITOR = "auditor"
    ADMIN = "admin"


class TokenError(TunnelacctError):
    """A token cannot be created or revoked as asked."""


class TokenLifetimeError(TokenError):
    """A token lifetime (`--expires`) that cannot be read: names the value and what it should
    be."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.expected = f'a number of days or hours above 0, like 90d or 12h, or "{NEVER}"'
        super().__init__(f"--expires {value!r}: expected {self.expected}")


class TokenState(StrEnum):
    """Whether a token works: active, or refused since it was revoked or expired."""

    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"


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


def token_expiry(lifetime: str, now: datetime) -> datetime | None:
    """When a token created at `now` with `lifetime` expires: "90d" is 90 days later, "12h"
    12 hours later, "never" (None) never; TokenLifetimeError for anything else."""
    text = lifetime.strip()
    if text == NEVER:
        return None
    match = _LIFETIME.fullmatch(text)
    if match is None or int(match.group(1)) == 0:
        raise TokenLifetimeError(lifetime)
    return now + int(match.group(1)) * _LIFETIME_UNITS[match.group(2)]


def token_state(token: ApiToken, now: datetime) -> TokenState:
    """Whether `token` works at `now`: revoked wins over expired."""
    if token.revoked_at is not None:
        return TokenState.REVOKED
    if token.expires_at is not None and token.expires_at <= now:
        return TokenState.EXPIRED
    return TokenState.ACTIVE


async def create_token(
    engine: AsyncEngine,
    role: Role,
    *,
    org_id: str | None = None,
    name: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, ApiToken]:
    """Store a new token, refused from `expires_at` on (None: never), and return (its text,
    shown only now, and its row)."""
    if role is Role.AUDITOR and org_id is None:
        raise TokenError("an auditor token needs --org")
    if role is Role.ADMIN and org_id is not None:
        raise TokenError("an admin token sees every org: give no --org")
    created_at = datetime.now(UTC)
    if expires_at is not None and expires_at <= created_at:
        raise TokenError(f"a token expiring at {expires_at.isoformat()} would never work")
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = ApiToken(
        id=token_id,
        secret_sha256=_hash(secret),
        role=role.value,
        org_id=org_id,
        name=name,
        created_at=created_at,
        expires_at=expires_at,
    )
    async with AsyncSession(engine, expire_on_commit=False) as db:
        db.add(row)
        await db.commit()
    return f"{TOKEN_PREFIX}{token_id}_{secret}", row


async def list_tokens(engine: AsyncEngine) -> list[ApiToken]:
    """Every token row (hashes, never secrets; with its expiry and last use), oldest first;
    `token_state` says which still work."""
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


async def authenticate(
    engine: AsyncEngine, text: str | None, *, now: datetime | None = None
) -> Principal | None:
    """The principal of a bearer token at `now` (default: the wall clock), or None when it is
    missing, malformed, wrong, revoked or expired. Notes the token's use (see the module doc);
    a failed note is logged and fails nothing."""
    if now is None:
        now = datetime.now(UTC)
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
    if row is None or not same or token_state(row, now) is not TokenState.ACTIVE:
        return None
    resolution = timedelta(seconds=LAST_USED_RESOLUTION_S)
    if row.last_used_at is None or now - row.last_used_at > resolution:
        await _note_use(engine, row.id, now, resolution)
    return Principal(token_id=row.id, role=Role(row.role), org_id=row.org_id)


async def _note_use(
    engine: AsyncEngine, token_id: str, now: datetime, resolution: timedelta
) -> None:
    """Set the token's last use to `now` unless another request set it within `resolution`
    (the condition makes concurrent requests write once); log a failure, raise nothing."""
    table = table_of(ApiToken)
    stale = table.c.last_used_at.is_(None) | (table.c.last_used_at < now - resolution)
    stmt = update(table).where(table.c.id == token_id, stale).values(last_used_at=now)
    try:
        async with engine.begin() as conn:
            await conn.execute(stmt)
    except (SQLAlchemyError, OSError) as exc:  # OSError: a refused connect (asyncpg)
        log.warning("cannot note the use of token %s: %s", token_id, exc)
