"""Test databases on PostgreSQL (one fresh database per test, dropped afterwards) and an
engine-neutral way to read a store back.

The server is TUNNELACCT_TEST_PG_URL, by default `postgresql://postgres@127.0.0.1:5432/postgres`
(the local server with trust auth). When it is unreachable, PostgreSQL tests skip with the reason,
unless CI is set: then they fail, so that CI never passes without them (tests/helpers/needs.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError

from tests.helpers.needs import require
from tunnelacct.store.engine import make_engine, sync_url
from tunnelacct.store.postgres.partitions import ensure_partitions

ADMIN_URL = os.environ.get(
    "TUNNELACCT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PREFIX = "tunnelacct_t_"


def _admin_engine() -> Engine:
    # CREATE/DROP DATABASE cannot run in a transaction: autocommit.
    return create_engine(
        sync_url(ADMIN_URL),
        poolclass=pool.NullPool,
        isolation_level="AUTOCOMMIT",
        connect_args={"connect_timeout": 3},
    )


@cache
def unreachable_reason() -> str | None:
    """Why the PostgreSQL test server cannot be used, or None when it can (asked once)."""
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"PostgreSQL at {make_url(ADMIN_URL).render_as_string()} unreachable: {first}"
    finally:
        engine.dispose()
    return None


def require_postgresql() -> None:
    """Skip the calling test loudly when PostgreSQL is unreachable; fail instead under CI."""
    require(unreachable_reason(), "PostgreSQL tests", hint="set TUNNELACCT_TEST_PG_URL")


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database `tunnelacct_t_<random>`, yield its URL, drop it afterwards."""
    require_postgresql()
    name = PREFIX + uuid.uuid4().hex[:12]
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                # FORCE: a test that failed may have left connections open.
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        engine.dispose()


@contextmanager
def connections_refused(url: str) -> Iterator[None]:
    """The PostgreSQL database at `url` refuses connections, those open ended, until the block
    ends: a store that went away (ALLOW_CONNECTIONS false, pg_terminate_backend) and comes
    back."""
    name = make_url(url).database
    engine = _admin_engine()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
        try:
            yield
        finally:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    finally:
        engine.dispose()


def add_partitions(url: str, times: Iterable[datetime]) -> None:
    """Create the sessions partitions of the UTC days of `times` on a PostgreSQL store (nothing
    on SQLite), as the writer does for what it writes: for tests that insert rows directly.
    Blocking."""
    if make_url(url).get_backend_name() != "postgresql":
        return
    days = {t.astimezone(UTC).date() for t in times}

    async def run() -> None:
        engine = make_engine(url)
        try:
            await ensure_partitions(engine, days)
        finally:
            await engine.dispose()

    # in a thread of its own: the caller may be running an event loop (an async test)
    with ThreadPoolExecutor(1) as pool_:
        pool_.submit(asyncio.run, run()).result()


def plain(value: object) -> object:
    """A read-back value as SQLite stores it, so one expected value fits both engines: a UUID
    as 32 hex digits, a time as naive UTC text with microseconds, a bool as 0 or 1, an inet
    (psycopg gives ipaddress objects) as inet_ntop's text, the writer's (not str(): Python 3.11
    writes ::ffff:1.2.3.4 as ::ffff:102:304)."""
    if isinstance(value, uuid.UUID):
        return value.hex
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        family = socket.AF_INET if value.version == 4 else socket.AF_INET6
        return socket.inet_ntop(family, value.packed)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(" ", "microseconds")
    if isinstance(value, bool):
        return int(value)
    return value


def read_rows(
    url: str, sql: str, params: Mapping[str, object] | None = None
) -> list[tuple[object, ...]]:
    """All rows of `sql` (`:name` parameters) on the store at `url`, through the sync driver
    without SQLAlchemy's type processing, each value made `plain()`."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            result = conn.execute(text(sql), dict(params or {}))
            return [tuple(plain(v) for v in row) for row in result]
    finally:
        engine.dispose()
