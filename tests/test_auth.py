"""API tokens on a real migrated store (SQLite and PostgreSQL), and the `tunnelacct token`
commands."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers.accuracy import run_cli
from tests.helpers.stores import ENGINES, REFUSED, empty_store, refuse_writes
from tests.helpers.stores import query as raw_query
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import (
    LAST_USED_RESOLUTION_S,
    Role,
    TokenError,
    TokenLifetimeError,
    authenticate,
    create_token,
    revoke_token,
    token_expiry,
)

CONFIG = Path(__file__).parent / "data" / "wg-small.toml"


@pytest.fixture
def engine(store_engine: AsyncEngine) -> AsyncEngine:
    """conftest's `store_engine`: a migrated store of each engine, SQLite and PostgreSQL."""
    return store_engine


async def test_an_auditor_token_speaks_for_its_org_only(engine: AsyncEngine) -> None:
    text, row = await create_token(engine, Role.AUDITOR, org_id="acme", name="audit")
    principal = await authenticate(engine, text)
    assert principal is not None
    assert (principal.token_id, principal.role, principal.org_id) == (row.id, Role.AUDITOR, "acme")
    assert principal.may_see("acme") and not principal.may_see("globex")


# Ids that are prefixes of each other's, and near misses: an auditor sees its own org only.
PREFIXED = ("acm", "acme", "acme2", "acme-2", "Acme", "acme ", "")


@pytest.mark.parametrize("org", ["acm", "acme", "acme2"])
async def test_an_auditor_sees_no_org_whose_id_starts_like_its_own(
    engine: AsyncEngine, org: str
) -> None:
    text, _ = await create_token(engine, Role.AUDITOR, org_id=org)
    principal = await authenticate(engine, text)
    assert principal is not None
    assert [other for other in PREFIXED if principal.may_see(other)] == [org]


async def test_an_admin_token_sees_every_org(engine: AsyncEngine) -> None:
    text, _ = await create_token(engine, Role.ADMIN)
    principal = await authenticate(engine, text)
    assert principal is not None and principal.org_id is None
    assert principal.may_see("acme") and principal.may_see("anything")


async def test_only_the_secrets_hash_is_stored(engine: AsyncEngine, store_url: str) -> None:
    text, row = await create_token(engine, Role.AUDITOR, org_id="acme")
    secret = text.split("_", 2)[2]  # tat_<id>_<secret>; the secret may hold "_" itself
    ((stored,),) = raw_query(store_url, "select secret_sha256 from api_tokens where id = ?", row.id)
    assert stored == hashlib.sha256(secret.encode()).hexdigest()
    dump = "\n".join(map(str, raw_query(store_url, "select * from api_tokens")))
    assert secret not in dump


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # wrong secret
        lambda t: "tat_" + "0" * 16 + t[20:],  # unknown id, right shape
        lambda t: t[:-3],  # malformed
        lambda t: "",
        lambda t: "Bearer " + t,
        lambda t: t.upper(),
    ],
)
async def test_a_wrong_or_malformed_token_is_refused(engine: AsyncEngine, mangle: object) -> None:
    text, _ = await create_token(engine, Role.ADMIN)
    assert callable(mangle)
    assert await authenticate(engine, mangle(text)) is None
    assert await authenticate(engine, None) is None
    assert await authenticate(engine, text) is not None  # the real one still works


async def test_a_revoked_token_stops_working_and_cannot_be_revoked_twice(
    engine: AsyncEngine,
) -> None:
    text, row = await create_token(engine, Role.AUDITOR, org_id="acme")
    await revoke_token(engine, row.id)
    assert await authenticate(engine, text) is None
    with pytest.raises(TokenError, match="no active token"):
        await revoke_token(engine, row.id)
    with pytest.raises(TokenError, match="no active token"):
        await revoke_token(engine, "0123456789abcdef")


async def test_roles_and_orgs_must_agree(engine: AsyncEngine) -> None:
    with pytest.raises(TokenError, match="needs --org"):
        await create_token(engine, Role.AUDITOR)
    with pytest.raises(TokenError, match="every org"):
        await create_token(engine, Role.ADMIN, org_id="acme")


@pytest.mark.parametrize("kind", ENGINES)
def test_token_commands_create_list_and_revoke(kind: str, tmp_path: Path) -> None:
    with empty_store(kind, tmp_path) as url:
        env = {"TUNNELACCT_DATABASE_URL": url}
        run_cli("db", "upgrade", env=env)  # token commands never create a store
        created = run_cli(
            "token",
            "create",
            "--config",
            str(CONFIG),
            "--org",
            "acme",
            "--name",
            "auditor 2026",
            env=env,
        )
        text = created.stdout.strip()
        assert text.startswith("tat_") and "not shown again" in created.stderr
        listed = run_cli("token", "list", "--config", str(CONFIG), env=env).stdout
        token_id = text.split("_")[1]
        assert f"{token_id}\tauditor\tacme\tauditor 2026\t" in listed and "\tactive" in listed
        assert text.split("_", 2)[2] not in listed
        run_cli("token", "revoke", "--config", str(CONFIG), token_id, env=env)
        assert "\tactive" not in run_cli("token", "list", "--config", str(CONFIG), env=env).stdout
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tunnelacct",
                "token",
                "create",
                "--config",
                str(CONFIG),
                "--org",
                "acm",
            ],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2 and "unknown org 'acm'" in done.stderr and done.stdout == ""


# --- expiry and last use (issue 19) -----------------------------------------------------------


def stored_text(when: datetime) -> str:
    """A time as the store holds it, read back without tunnelacct's types (pg.py `plain`)."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def stored_last_use(url: str, token_id: str) -> object:
    ((stored,),) = raw_query(url, "select last_used_at from api_tokens where id = ?", token_id)
    return stored


class Clock:
    """The app's clock, set by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_token_works_until_it_expires_and_never_after(engine: AsyncEngine) -> None:
    created_at = datetime.now(UTC)
    expires_at = created_at + timedelta(hours=12)
    text, _ = await create_token(engine, Role.AUDITOR, org_id="acme", expires_at=expires_at)
    assert await authenticate(engine, text, now=created_at) is not None
    assert await authenticate(engine, text, now=expires_at - timedelta(microseconds=1)) is not None
    assert await authenticate(engine, text, now=expires_at) is None
    assert await authenticate(engine, text, now=expires_at + timedelta(days=400)) is None


async def test_a_token_cannot_be_created_already_expired(engine: AsyncEngine) -> None:
    with pytest.raises(TokenError, match="would never work"):
        await create_token(engine, Role.ADMIN, expires_at=datetime.now(UTC) - timedelta(seconds=1))


async def test_through_the_api_an_expired_token_is_401_and_a_later_one_200(
    engine: AsyncEngine, store_url: str
) -> None:
    created_at = datetime.now(UTC)
    soon_at = created_at + timedelta(hours=12)
    soon, _ = await create_token(engine, Role.ADMIN, expires_at=soon_at)
    later, later_row = await create_token(
        engine, Role.ADMIN, expires_at=soon_at + timedelta(days=90)
    )
    clock = Clock(soon_at - timedelta(seconds=1))
    app = create_app(ApiContext(engine, clock=clock))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:

        async def status(token: str) -> int:
            answer = await client.get("/api/v1/orgs", headers={"Authorization": f"Bearer {token}"})
            return answer.status_code

        assert await status(soon) == 200 and await status(later) == 200
        # the request's time, from the app's clock, is the token's last use
        assert stored_last_use(store_url, later_row.id) == stored_text(clock.now)
        clock.now = soon_at
        assert await status(soon) == 401 and await status(later) == 200


async def test_the_last_use_is_rewritten_only_once_older_than_the_resolution(
    engine: AsyncEngine, store_url: str
) -> None:
    text, row = await create_token(engine, Role.ADMIN)
    assert stored_last_use(store_url, row.id) is None
    first_at = datetime(2026, 12, 5, 10, 0, 0, 250000, tzinfo=UTC)
    assert await authenticate(engine, text, now=first_at) is not None
    assert stored_last_use(store_url, row.id) == "2026-12-05 10:00:00.250000"
    resolution = timedelta(seconds=LAST_USED_RESOLUTION_S)
    # within the resolution (its end included) a request writes nothing
    for later in (timedelta(seconds=1), resolution):
        assert await authenticate(engine, text, now=first_at + later) is not None
        assert stored_last_use(store_url, row.id) == "2026-12-05 10:00:00.250000"
    past_at = first_at + resolution + timedelta(microseconds=1)
    assert await authenticate(engine, text, now=past_at) is not None
    assert stored_last_use(store_url, row.id) == stored_text(past_at)
    # a refused token is no use: its last use stays
    await revoke_token(engine, row.id)
    assert await authenticate(engine, text, now=past_at + 2 * resolution) is None
    assert stored_last_use(store_url, row.id) == stored_text(past_at)


async def test_a_last_use_the_store_refuses_fails_no_authentication(
    engine: AsyncEngine, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    text, row = await create_token(engine, Role.ADMIN)
    refuse_writes(store_url, "api_tokens", "UPDATE")
    with caplog.at_level(logging.WARNING, logger="tunnelacct.web.auth"):
        principal = await authenticate(engine, text)
    assert principal is not None and principal.token_id == row.id
    assert stored_last_use(store_url, row.id) is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "tunnelacct.web.auth"]
    assert len(warnings) == 1 and row.id in warnings[0] and REFUSED in warnings[0]


NOON = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("lifetime", "expires_at"),
    [
        ("90d", datetime(2027, 3, 5, 12, 0, tzinfo=UTC)),
        ("1d", datetime(2026, 12, 6, 12, 0, tzinfo=UTC)),
        ("12h", datetime(2026, 12, 6, 0, 0, tzinfo=UTC)),
        ("36h", datetime(2026, 12, 7, 0, 0, tzinfo=UTC)),
        (" 7d ", datetime(2026, 12, 12, 12, 0, tzinfo=UTC)),
        ("never", None),
    ],
)
def test_a_lifetime_is_days_or_hours_from_now_or_never(
    lifetime: str, expires_at: datetime | None
) -> None:
    assert token_expiry(lifetime, NOON) == expires_at


@pytest.mark.parametrize(
    "lifetime",
    ["90x", "90", "d", "0d", "0h", "-1d", "1.5d", "90 d", "90D", "90m", "", "Never", "1234567d"],
)
def test_a_bad_lifetime_is_an_error_naming_the_option_and_the_value(lifetime: str) -> None:
    with pytest.raises(TokenLifetimeError) as caught:
        token_expiry(lifetime, NOON)
    assert str(caught.value).startswith(f"--expires {lifetime!r}: expected ")
    assert "90d" in str(caught.value) and "never" in str(caught.value)


@pytest.mark.parametrize("kind", ENGINES)
def test_token_create_expires_stores_when_and_token_list_shows_it(
    kind: str, tmp_path: Path
) -> None:
    with empty_store(kind, tmp_path) as url:
        env = {"TUNNELACCT_DATABASE_URL": url}
        run_cli("db", "upgrade", env=env)
        before = datetime.now(UTC)
        created = run_cli("token", "create", "--role", "admin", "--expires", "90d", env=env)
        after = datetime.now(UTC)
        token_id = created.stdout.strip().split("_")[1]
        ((stored,),) = raw_query(url, "select expires_at from api_tokens where id = ?", token_id)
        expires_at = datetime.fromisoformat(str(stored)).replace(tzinfo=UTC)
        assert before + timedelta(days=90) <= expires_at <= after + timedelta(days=90)
        assert f"it stops working at {expires_at.isoformat()}" in created.stderr
        run_cli("token", "create", "--role", "admin", env=env)  # --expires never, the default
        listed = [
            line.split("\t") for line in run_cli("token", "list", env=env).stdout.splitlines()
        ]
        # id, role, org, name, created, state, expires, last used
        shown = {fields[0]: fields[5:] for fields in listed}
        assert shown[token_id] == ["active", expires_at.isoformat(), "never"]
        assert [fields for key, fields in shown.items() if key != token_id] == [
            ["active", "never", "never"]
        ]
        bad = subprocess.run(
            [sys.executable, "-m", "tunnelacct", "token", "create", "--expires", "90x"],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
        )
        assert bad.returncode == 2 and bad.stdout == ""
        assert "error: --expires '90x': expected " in bad.stderr
        assert len(raw_query(url, "select id from api_tokens")) == 2
