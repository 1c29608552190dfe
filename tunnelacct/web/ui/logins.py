"""Signed-in browsers of the web UI: a login row per sign-in, found by its cookie.

The cookie reads `<id>.<secret>`: the id finds the row, the secret's SHA-256 is compared with
hmac.compare_digest. It is not merely signed: the row is the login, so logout, expiry and a
deleted user end it on the server, whatever the browser keeps::

    cookie, viewer = await start_login(engine, logged_in, now)   # a new id at every sign-in
    viewer = await find_login(engine, cookie, now, expiry)       # None: missing, wrong or expired
    await end_login(engine, viewer.login_id, now)                # logout

A login ends `idle_s` after its last request, or `max_age_s` after sign-in, whichever is first.
Its CSRF token (one per login) must come back with every POST (web/ui/forms.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.store.models import User, WebLogin, table_of
from tunnelacct.web.auth import Principal, Role
from tunnelacct.web.users import LoggedIn

LOGIN_COOKIE = "tunnelacct_login"
_COOKIE = re.compile(r"([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
_DUMMY_HASH = hashlib.sha256(b"no such login").hexdigest()
# last_seen_at is written at most this often: idle expiry is minutes, a write per page is waste
TOUCH_EVERY_S = 30.0


@dataclass(frozen=True, slots=True)
class LoginExpiry:
    """How long a login lasts: after its last request, and after its sign-in."""

    idle_s: float = 30 * 60.0
    max_age_s: float = 12 * 3600.0


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who a valid login cookie speaks for, and its login's CSRF token."""

    name: str
    role: Role
    org_id: str | None  # None for an admin
    login_id: str
    csrf_token: str

    @property
    def principal(self) -> Principal:
        """The viewer as the API's reads see a caller: scoping, and a per-user read slot."""
        return Principal(token_id=f"user:{self.name}", role=self.role, org_id=self.org_id)

    @property
    def is_admin(self) -> bool:
        """True for an admin, who sees every org."""
        return self.role is Role.ADMIN


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def start_login(engine: AsyncEngine, who: LoggedIn, now: datetime) -> tuple[str, Viewer]:
    """A new login for `who` (a fresh id and secret: a sign-in never reuses a cookie) and the
    cookie's value, which is shown to the browser only now."""
    login_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    row = WebLogin(
        id=login_id,
        secret_sha256=_hash(secret),
        user_name=who.name,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
    )
    async with AsyncSession(engine, expire_on_commit=False) as db:
        db.add(row)
        await db.commit()
    viewer = Viewer(
        name=who.name,
        role=who.role,
        org_id=who.org_id,
        login_id=login_id,
        csrf_token=row.csrf_token,
    )
    return f"{login_id}.{secret}", viewer


def _expired(row: WebLogin, now: datetime, expiry: LoginExpiry) -> bool:
    idle_s = (now - row.last_seen_at).total_seconds()
    age_s = (now - row.created_at).total_seconds()
    return row.ended_at is not None or idle_s >= expiry.idle_s or age_s >= expiry.max_age_s


async def find_login(
    engine: AsyncEngine, cookie: str | None, now: datetime, expiry: LoginExpiry
) -> Viewer | None:
    """The viewer of a login cookie; None when it is missing, malformed, wrong, logged out,
    expired, or its user is gone. A valid one's last request time moves to `now`."""
    match = _COOKIE.fullmatch(cookie or "")
    login_id = match.group(1) if match else ""
    secret = match.group(2) if match else ""
    row = None
    user = None
    if match:
        async with AsyncSession(engine, expire_on_commit=False) as db:
            row = await db.get(WebLogin, login_id)
            if row is not None:
                user = await db.get(User, row.user_name)
    stored = row.secret_sha256 if row is not None else _DUMMY_HASH
    # compared even without a row, so timing tells nothing about which ids exist
    same = hmac.compare_digest(stored, _hash(secret))
    if row is None or user is None or not same or _expired(row, now, expiry):
        return None
    if now - row.last_seen_at >= timedelta(seconds=TOUCH_EVERY_S):
        table = table_of(WebLogin)
        async with engine.begin() as conn:
            await conn.execute(update(table).where(table.c.id == login_id).values(last_seen_at=now))
    return Viewer(
        name=user.name,
        role=Role(user.role),
        org_id=user.org_id,
        login_id=row.id,
        csrf_token=row.csrf_token,
    )


async def end_login(engine: AsyncEngine, login_id: str, now: datetime) -> None:
    """Log out: the login's cookie is refused from now on."""
    table = table_of(WebLogin)
    async with engine.begin() as conn:
        await conn.execute(
            update(table)
            .where(table.c.id == login_id, table.c.ended_at.is_(None))
            .values(ended_at=now)
        )
