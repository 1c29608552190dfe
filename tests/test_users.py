"""Users of the web UI (issue 19, first part): `tunnelacct user create`, scrypt hashes, password
checks, on both engines. The oracle of a hash is hashlib.scrypt run here on the parameters and
salt the stored text names."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.pg import read_rows
from tunnelacct.store.engine import make_engine
from tunnelacct.web.auth import Role
from tunnelacct.web.users import (
    UserError,
    check_password,
    create_user,
    hash_password,
    password_matches,
)

CONFIG = Path(__file__).parent / "data" / "wg-small.toml"
PASSWORD = "correct horse battery staple"


def _cli(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`tunnelacct user ...` on the store at `url`, `stdin` as its input (none: /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "tunnelacct", "user", *args, "--config", str(CONFIG)],
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        env={**os.environ, "TUNNELACCT_DATABASE_URL": url},
        timeout=120,
    )


def test_a_hash_is_scrypt_of_the_password_with_its_own_salt() -> None:
    stored = hash_password(PASSWORD)
    scheme, n, r, p, salt, key = stored.split("$")
    assert scheme == "scrypt"
    expected = hashlib.scrypt(
        PASSWORD.encode(),
        salt=base64.urlsafe_b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=256 * 2**20,
        dklen=len(base64.urlsafe_b64decode(key)),
    )
    assert base64.urlsafe_b64decode(key) == expected
    assert PASSWORD not in stored
    assert hash_password(PASSWORD).split("$")[4] != salt, "a fresh salt each time"
    assert password_matches(stored, PASSWORD)
    assert not password_matches(stored, PASSWORD + " ")
    assert not password_matches("sha256$not-a-scrypt-hash", PASSWORD)


async def test_a_user_logs_in_with_the_password_and_no_other(store_url: str) -> None:
    engine = make_engine(store_url)
    try:
        await create_user(engine, "alice", Role.AUDITOR, org_id="acme", password=PASSWORD)
        who = await check_password(engine, "alice", PASSWORD)
        assert who is not None
        assert (who.name, who.role, who.org_id) == ("alice", Role.AUDITOR, "acme")
        assert await check_password(engine, "alice", "wrong password here") is None
        assert await check_password(engine, "nobody", PASSWORD) is None
        with pytest.raises(UserError, match="exists already"):
            await create_user(engine, "alice", Role.ADMIN, org_id=None, password=PASSWORD)
        with pytest.raises(UserError, match="at least 12"):
            await create_user(engine, "bob", Role.ADMIN, org_id=None, password="short")
        with pytest.raises(UserError, match="give --org"):
            await create_user(engine, "bob", Role.AUDITOR, org_id=None, password=PASSWORD)
        with pytest.raises(UserError, match="user name"):
            await create_user(engine, "bob\tx", Role.ADMIN, org_id=None, password=PASSWORD)
    finally:
        await engine.dispose()
    (stored,) = read_rows(store_url, "SELECT password_scrypt FROM users WHERE name = 'alice'")[0]
    assert password_matches(str(stored), PASSWORD)


async def test_user_create_reads_stdin_or_generates_a_password_shown_once(
    store_url: str,
) -> None:
    made = _cli(store_url, "create", "carol", "--org", "acme", "--password-stdin", stdin=PASSWORD)
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout + made.stderr
    generated = _cli(store_url, "create", "dave", "--role", "admin")
    assert generated.returncode == 0, generated.stderr
    password = generated.stdout.strip()
    assert len(password) >= 12 and "\n" not in password
    taken = _cli(store_url, "create", "dave", "--role", "admin")
    assert taken.returncode != 0
    assert "'dave' exists already" in taken.stderr
    unknown_org = _cli(store_url, "create", "erin", "--org", "no-such-org")
    assert unknown_org.returncode != 0
    assert "no-such-org" in unknown_org.stderr
    engine = make_engine(store_url)
    try:
        carol = await check_password(engine, "carol", PASSWORD)
        dave = await check_password(engine, "dave", password)
    finally:
        await engine.dispose()
    assert carol is not None and carol.org_id == "acme"
    assert dave is not None and dave.role is Role.ADMIN
