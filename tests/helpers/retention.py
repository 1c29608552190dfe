"""Sessions and access-log reads for the retention tests, stored counts, a purge lock held by
someone else, and stores of the recorded capture shifted back in time, on SQLite or PostgreSQL
(tests/test_retention.py, tests/test_retention_cli.py, tests/benchmarks/bench_purge_serve.py)."""

from __future__ import annotations

import asyncio
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from tests.helpers.accuracy import run_cli
from tests.helpers.pg import read_rows
from tests.helpers.replicate import replicate
from tests.helpers.serving import dump_toml
from tests.helpers.stores import query
from tunnelacct.store.engine import make_engine, sync_url
from tunnelacct.store.models import AccessRecord, SessionRecord
from tunnelacct.store.postgres.lock import ADVISORY_LOCK_KEY
from tunnelacct.store.purgelock import acquire_lease, release_lease

NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
DATA = Path(__file__).resolve().parent.parent / "data"


def session(
    org: str, ended_days_ago: float | None, now: datetime = NOW, **overrides: Any
) -> SessionRecord:
    """A session that ended `ended_days_ago` days before `now` (None: still ongoing)."""
    ended = None if ended_days_ago is None else now - timedelta(days=ended_days_ago)
    started = (ended or now) - timedelta(minutes=5)
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "org_id": org,
        "protocol": "tcp",
        "ip_version": 4,
        "src_addr": "100.64.0.2",
        "dst_addr": "10.99.0.5",
        "src_port": 40000,
        "dst_port": 443,
        "started_at": started,
        "ended_at": ended,
        "last_seen_at": ended or now,
        "duration_s": 300.0,
        "bytes_tx": 1,
        "bytes_rx": 1,
        "packets_tx": 1,
        "packets_rx": 1,
        "payload_bytes_tx": 0,
        "payload_bytes_rx": 0,
        "status": "ongoing" if ended is None else "completed",
        "close_reason": None if ended is None else "fin",
        "midstream": False,
        "community_id": "1:x",
        "gateway": "gw1",
        "interface": "wg0",
    }
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
    naming `holder`, as a running purge holds them (tunnelacct/store/purgelock.py)."""
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


def shifted_store(
    tmp_path: Path,
    url: str,
    retention: dict[str, int],
    extra: dict[str, dict[str, Any]] | None = None,
) -> tuple[Path, dict[int, dict[str, int]]]:
    """A config (wg-small.toml with `retention` per org, plus `extra` sections), and the
    migrated store at `url` filled with the recorded capture shifted (editcap -t) to have ended
    100, 20 and 3 days ago; returns (config, sessions per org of each copy)."""
    from scapy.utils import rdpcap

    last = float(rdpcap(str(DATA / "wg-small.pcap"))[-1].time)
    doc = tomllib.loads((DATA / "wg-small.toml").read_text(encoding="utf-8"))
    for org in doc["orgs"]:
        org["retention_days"] = retention[org["id"]]
    doc.update(extra or {})
    config = tmp_path / "r.toml"
    config.write_text(dump_toml(doc), encoding="utf-8")
    env = {"TUNNELACCT_DATABASE_URL": url}
    now = datetime.now(UTC).timestamp()
    per_copy: dict[int, dict[str, int]] = {}
    for days in (100, 20, 3):
        shifted = tmp_path / f"d{days}.pcap"
        offset = now - days * 86400 - last  # the last packet lands `days` days ago
        subprocess.run(
            ["editcap", "-t", f"{offset:.6f}", str(DATA / "wg-small.pcap"), str(shifted)],
            check=True,
            capture_output=True,
        )
        before = counts(url)
        run_cli("import", "--config", str(config), str(shifted), env=env)
        per_copy[days] = {org: n - before.get(org, 0) for org, n in counts(url).items()}
    assert per_copy[100]["acme"] > 0 and per_copy[100]["globex"] > 0
    return config, per_copy


PURGED_ORGS = ["acme", "globex", "unattributed"]  # the orgs of wg-small.toml, and the default


def purge_beside_replay(tmp_path: Path, url: str, copies: int = 14_000) -> tuple[Path, datetime]:
    """A store at `url` with copies of the capture shifted back in time, over 300,000 sessions
    of them expired (acme and globex keep 7 days), and a config for `serve` that purges it every
    2 s while it replays, looping at full speed, the copy of 3 days ago (whose sessions stay);
    returns (config, a cutoff every expired row ended before and no kept one did)."""
    config, _per_copy = shifted_store(tmp_path, url, {"acme": 7, "globex": 7})
    replicate(url, copies, step_s=1)  # copies of the 3-day-old stay
    if url.startswith("sqlite"):  # imported rows are in sessions_default: partition them
        env = {"TUNNELACCT_DATABASE_URL": url}
        moved = run_cli("db", "partition", "--config", str(config), env=env).stdout
        assert "moved" in moved and " 0 sessions" not in moved
    doc = tomllib.loads(config.read_text(encoding="utf-8"))
    doc["retention"] = {"interval": 2}
    # Full speed keeps the packets' times: replay the copy of 3 days ago, whose sessions stay
    # (the recorded capture, of 2026-11-23, would be expired itself and purged as it is written).
    doc["capture"] = [{"pcap": str(tmp_path / "d3.pcap"), "loop": True}]
    config.write_text(dump_toml(doc), encoding="utf-8")
    # before the service starts: its purge's cutoff (now - 7 days) is later, no row in between
    return config, datetime.now(UTC) - timedelta(days=7)


def expired_rows(url: str, cutoff: datetime) -> int:
    """Sessions of acme and globex that ended before `cutoff`."""
    # by org and start: the (org_id, started_at, id) index of each table (a session starts
    # before it ends), not a scan of the whole sessions view, which on SQLite reads every row
    # through the view (~2 µs each)
    sql = (
        "SELECT count(*) FROM sessions WHERE org_id IN ('acme', 'globex')"
        " AND started_at < ? AND ended_at < ?"
    )
    ((n,),) = query(url, sql, cutoff, cutoff)
    return int(str(n))


def purged_orgs(url: str) -> list[str]:
    """The orgs with a purge run that ended "ok" (a run records each org's part when it ends,
    after deleting its rows), in id order."""
    sql = "SELECT DISTINCT org_id FROM purge_runs WHERE outcome = 'ok' ORDER BY 1"
    return [str(org) for (org,) in read_rows(url, sql)]


def access_record(org: str, at: datetime, *, role: str = "admin") -> AccessRecord:
    """A read of `org`'s sessions through the API at `at` by a token of `role`, as the access
    log stores it."""
    return AccessRecord(
        at=at,
        org_id=org,
        actor="token:0123456789abcdef",
        role=role,
        via="api",
        what="sessions",
        filter_text=f"read at {at.isoformat()}",
        rows=1,
        status=200,
    )
