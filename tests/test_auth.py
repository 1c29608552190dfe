"""API tokens on a real migrated store (SQLite and PostgreSQL), and the `tunnelacct token`
commands."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers.accuracy import run_cli
from tests.helpers.stores import ENGINES, empty_store
from tests.helpers.stores import query as raw_query
from tunnelacct.web.auth import Role, TokenError, authenticate, create_token, revoke_token

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
