"""Users of the web UI (issue 19): created by `tunnelacct user create`, passwords kept only as
scrypt hashes, checked in constant time.

A hash reads `scrypt$<n>$<r>$<p>$<salt>$<key>` (salt and key in URL-safe base64, 16 and 32
bytes), so that stronger parameters later leave the old hashes readable::

    user = await create_user(engine, "alice", Role.AUDITOR, org_id="acme", password="...")
    who = await check_password(engine, "alice", "...")   # None: unknown user or wrong password
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.errors import TunnelacctError
from tunnelacct.store.models import User
from tunnelacct.web.auth import Role

# scrypt cost: 2^15 x 8 x 1 takes 32 MiB and ~0.1 s here, as OWASP's password storage
# guidance for scrypt suggests (N=2^17 x 8 x 1 at 128 MiB at the most)
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
MIN_PASSWORD_CHARS = 12
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HASH = re.compile(r"scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9_=-]+)\$([A-Za-z0-9_=-]+)")


class UserError(TunnelacctError):
    """A user that cannot be created as asked: says why."""


@dataclass(frozen=True, slots=True)
class LoggedIn:
    """Who a right password speaks for."""

    name: str
    role: Role
    org_id: str | None  # None for an admin


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 2**20, dklen=KEY_BYTES
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def hash_password(password: str) -> str:
    """The stored form of `password`: scrypt with a fresh random salt, and its parameters."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def password_matches(stored: str, password: str) -> bool:
    """Whether `password` is the one `stored` (hash_password's form) was made from; the keys
    are compared in constant time. False for a stored text of another form."""
    match = _HASH.fullmatch(stored)
    if match is None:
        return False
    n = int(match.group(1))
    r = int(match.group(2))
    p = int(match.group(3))
    salt = base64.urlsafe_b64decode(match.group(4))
    key = base64.urlsafe_b64decode(match.group(5))
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), key)


def generated_password() -> str:
    """A password for a user who gets none: 24 URL-safe characters (144 random bits)."""
    return secrets.token_urlsafe(18)


@functools.cache
def _nobody_hash() -> str:
    """What an unknown name is checked against, so that timing does not tell which names
    exist (made once, at the first check: a hash costs ~0.1 s)."""
    return hash_password(secrets.token_urlsafe(18))


async def create_user(
    engine: AsyncEngine, name: str, role: Role, *, org_id: str | None, password: str
) -> User:
    """Store a new user; UserError naming what is wrong (name, org, password, a taken name)."""
    if not _NAME.fullmatch(name):
        raise UserError(
            f"user name {name!r}: 1 to 64 letters, digits and . _ @ -, starting with a letter "
            "or digit"
        )
    if role is Role.AUDITOR and org_id is None:
        raise UserError("an auditor sees one org: give --org")
    if role is Role.ADMIN and org_id is not None:
        raise UserError("an admin sees every org: give no --org")
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(
            f"the password has {len(password)} characters: at least {MIN_PASSWORD_CHARS}"
        )
    row = User(
        name=name,
        role=role.value,
        org_id=org_id,
        password_scrypt=hash_password(password),
        created_at=datetime.now(UTC),
    )
    try:
        async with AsyncSession(engine, expire_on_commit=False) as db:
            db.add(row)
            await db.commit()
    except IntegrityError:
        raise UserError(f"a user named {name!r} exists already") from None
    return row


async def check_password(engine: AsyncEngine, name: str, password: str) -> LoggedIn | None:
    """Who `name` is when `password` is theirs; None for an unknown name or a wrong password
    (an unknown name costs the same scrypt as a known one)."""
    async with AsyncSession(engine) as db:
        row = await db.get(User, name)
    stored = row.password_scrypt if row is not None else _nobody_hash()
    # ~0.1 s of scrypt in a thread: the service's event loop keeps recording meanwhile
    matches = await asyncio.to_thread(password_matches, stored, password)
    if row is None or not matches:
        return None
    return LoggedIn(name=row.name, role=Role(row.role), org_id=row.org_id)
