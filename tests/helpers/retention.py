"""Sessions for the retention tests, stored counts, and a purge lock held by someone else, on
SQLite or PostgreSQL (tests/test_retention.py, tests/test_retention_cli.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from tests.helpers.pg import read_rows
from tunnelacct.models import SessionRecord
from tunnelacct.purgelock import ADVISORY_LOCK_KEY, acquire_lease, release_lease
from tunnelacct.store import make_engine, sync_url

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)


def session(
    org: str, ended_days_ago: float | None, now: datetime = NOW, **overrides: Any
) -> SessionRecord:
    """A session that ended `ended_days_ago` days before `now` (None: still ongoing)."""
    ended = None if ended_days_ago is None else now - timedelta(days=ended_days_ago)
    started = (ended or now) - timedelta(minutes=5)
    values: dict[str, Any] = {
        "id": uuid.uuid4(), "org_id": org, "protocol": "tcp", "ip_version": 4,
        "src_addr": "100.64.0.2", "dst_addr": "10.99.0.5", "src_port": 40000, "dst_port": 443,
        "started_at": started, "ended_at": ended, "last_seen_at": ended or now,
        "duration_s": 300.0, "bytes_tx": 1, "bytes_rx": 1, "packets_tx": 1, "packets_rx": 1,
        "payload_bytes_tx": 0, "payload_bytes_rx": 0,
        "status": "ongoing" if ended is None else "completed",
        "close_reason": None if ended is None else "fin", "midstream": False,
        "community_id": "1:x", "gateway": "gw1", "interface": "wg0",
    }  # fmt: skip
    values.update(overrides)
    return SessionRecord(**values)


def counts(url: str) -> dict[str, int]:
    """Sessions per org of the store at `url`, read past SQLAlchemy's types (`read_rows`)."""
    rows = read_rows(url, "SELECT org_id, count(*) FROM sessions GROUP BY 1")
    return {str(org): int(str(n)) for org, n in rows}


@contextmanager
def purge_lock_held(url: str, holder: str) -> Iterator[None]:
    """The purge lock held by `holder` (another process) until the block ends: the lease row
    on SQLite; on PostgreSQL the advisory lock, on a connection of its own, and the lock row
    naming `holder`, as a running purge holds them (tunnelacct/purgelock.py)."""
    if make_url(url).get_backend_name() != "postgresql":

        async def lease(take: bool) -> None:
            engine = make_engine(url)
            try:
                if take:
                    assert await acquire_lease(engine, holder, datetime.now(UTC)) is None
                else:
                    await release_lease(engine, holder)
            finally:
                await engine.dispose()

        asyncio.run(lease(True))
        try:
            yield
        finally:
            asyncio.run(lease(False))
        return
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.execute(
                text("UPDATE purge_locks SET holder = :h, expires_at = now() + interval '1 hour'"),
                {"h": holder},
            )
            conn.commit()
            yield  # the lock ends with the connection
    finally:
        engine.dispose()
