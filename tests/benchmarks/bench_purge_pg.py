"""Benchmark: a retention purge on PostgreSQL, day partitions dropped vs rows deleted in batches.

Builds the same sessions three times, in SQL (INSERT ... SELECT generate_series): `--sessions`
rows over 120 days: acme (30 days) and globex (7 days) every day, and initech (forever) only
in the last 20 days, so that the days older than 30 hold only expired rows. Then purges each
store as of the newest start, and prints sessions deleted per second and partitions before and
after:

- "drops": a store at head (sessions partitioned by day, issue 7) and `purge()`: expired days
  dropped whole, the rest deleted in batches of 5,000, partition by partition;
- "batches only": the same store and data, every org's expired rows deleted by the purge's
  batched deletes alone (`retention.purge._delete_expired`), no drop;
- "plain table": a store at 0003 (one table, as before issue 7) and the purge's delete
  statement of then (by id, in `ended_at` order, batches of 5,000).

It checks that all three keep the same rows (a fingerprint of the ids) and count the same per
org. Each database is created on the server of `--url` and dropped at the end. Asserts nothing
about time.

    .venv/bin/python tests/benchmarks/bench_purge_pg.py --url postgresql://postgres@127.0.0.1/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from alembic import command  # noqa: E402
from sqlalchemy import create_engine, delete, pool, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from tests.benchmarks.machine import machine  # noqa: E402
from tunnelacct.config.model import Config, DatabaseConfig, OrgConfig  # noqa: E402
from tunnelacct.retention.purge import BATCH_SIZE, _delete_expired, purge  # noqa: E402
from tunnelacct.store.engine import make_engine, sync_url  # noqa: E402
from tunnelacct.store.inventory import sync_inventory  # noqa: E402
from tunnelacct.store.migrate import alembic_config  # noqa: E402
from tunnelacct.store.models import SessionRecord, table_of  # noqa: E402
from tunnelacct.store.postgres.partitions import ensure_partitions  # noqa: E402
from tunnelacct.store.purgelock import acquire_lease  # noqa: E402
from tunnelacct.store.purgework import PurgeWork  # noqa: E402

ORGS = (
    OrgConfig("acme", "Acme", retention_days=30),
    OrgConfig("globex", "Globex", retention_days=7),
    OrgConfig("initech", "Initech", retention_days=None),
)
NOW = datetime(2026, 11, 25, tzinfo=UTC)
SPAN_DAYS = 120

# n rows, evenly over SPAN_DAYS days before NOW; every 20th is initech's when it falls in the
# last 20 days, the others alternate acme and globex; in the last day, 1 in 50 is ongoing.
# the columns of 0003 (the plain table), which every later revision has; the addresses cast
# to inet from 0005 on ({address} is "inet" or "text")
INSERT = """
INSERT INTO sessions (id, org_id, client_id, client_name, user_id, resource_id, resource_name,
       protocol, ip_version, src_addr, dst_addr, src_port, dst_port, started_at, ended_at,
       last_seen_at, duration_s, bytes_tx, bytes_rx, packets_tx, packets_rx, payload_bytes_tx,
       payload_bytes_rx, status, close_reason, midstream, community_id, gateway, interface)
SELECT md5(g::text || :salt)::uuid, org, NULL, NULL, NULL, NULL, NULL, 'tcp', 4,
       CAST('100.64.0.' || (g % 250 + 1) AS {address}),
       CAST('10.99.0.' || (g % 200 + 1) AS {address}), 40000 + g % 20000, 443,
       t, CASE WHEN g % 50 = 0 AND t > :today THEN NULL ELSE t + interval '90 seconds' END,
       t + interval '90 seconds', 90.0, g % 100000, g % 1000000, g % 100, g % 200, 0, 0,
       CASE WHEN g % 50 = 0 AND t > :today THEN 'ongoing' ELSE 'completed' END,
       CASE WHEN g % 50 = 0 AND t > :today THEN NULL ELSE 'fin' END, false, '1:x', 'gw1', 'wg0'
FROM (
    SELECT g, t,
           CASE WHEN g % 20 = 0 AND t > :recent THEN 'initech'
                WHEN g % 2 = 0 THEN 'acme' ELSE 'globex' END AS org
    FROM (SELECT g, CAST(:start AS timestamptz) + (g * :step) * interval '1 second' AS t
          FROM generate_series(0, :n - 1) AS g) AS s
) AS rows
"""


@contextmanager
def database(admin_url: str, revision: str) -> Iterator[str]:
    """A database on the server of `admin_url` migrated to `revision`, dropped afterwards."""
    name = f"tunnelacct_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        sync_url(admin_url), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
            engine = create_engine(sync_url(url), poolclass=pool.NullPool)
            cfg = alembic_config()
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            engine.dispose()
            yield url
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def fill(url: str, n: int) -> float:
    """Insert the n sessions (and ANALYZE); return the seconds it took."""
    start = NOW - timedelta(days=SPAN_DAYS)
    params = {
        "salt": "x",
        "recent": NOW - timedelta(days=20),
        "today": NOW - timedelta(days=1),
        "start": start,
        "step": SPAN_DAYS * 86400 / n,
        "n": n,
    }
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    began = time.perf_counter()
    try:
        with engine.begin() as conn:
            address = conn.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'sessions' AND column_name = 'src_addr'"
            ).scalar_one()
            conn.execute(
                text(INSERT.format(address="inet" if address == "inet" else "text")), params
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE sessions")
    finally:
        engine.dispose()
    return time.perf_counter() - began


def scalar(url: str, sql: str) -> object:
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


PARTITIONS = "SELECT count(*) FROM pg_inherits WHERE inhparent = CAST('sessions' AS regclass)"
FINGERPRINT = "SELECT count(*), sum(hashtext(id::text)::bigint) FROM sessions"


async def batches_only(engine: AsyncEngine) -> dict[str, int]:
    """Every org's expired rows deleted by the purge's batched deletes alone (no drop)."""
    deleted = {}
    assert await acquire_lease(engine, "bench", clock()) is None  # the lease its batches renew
    for org in ORGS:
        if org.retention_days is not None:
            cutoff = NOW - timedelta(days=org.retention_days)
            work = PurgeWork(engine, "bench", clock, asyncio.Lock(), {org.id: cutoff})
            batches = _delete_expired(work, org.id, cutoff, BATCH_SIZE, asyncio.Lock())
            deleted[org.id] = sum([n async for n in batches])
    return deleted


async def plain_table(engine: AsyncEngine) -> dict[str, int]:
    """The purge's delete statement before issue 7, on the table at 0003 (one table)."""
    t = table_of(SessionRecord)
    deleted = {}
    for org in ORGS:
        if org.retention_days is None:
            continue
        cutoff = NOW - timedelta(days=org.retention_days)
        expired = (t.c.org_id == org.id, t.c.status == "completed", t.c.ended_at < cutoff)
        batch = select(t.c.id).where(*expired).order_by(t.c.ended_at).limit(BATCH_SIZE)
        stmt = delete(t).where(t.c.id.in_(batch.scalar_subquery()))
        deleted[org.id] = 0
        while True:
            async with engine.begin() as conn:
                n = (await conn.execute(stmt)).rowcount
            deleted[org.id] += n
            if n < BATCH_SIZE:
                break
    return deleted


def clock() -> datetime:
    return datetime.now(UTC)


async def run(url: str, n: int, how: str) -> tuple[dict[str, int], float, object]:
    engine = make_engine(url)
    try:
        if how == "plain table":  # the orgs table of 0003, which sync_inventory outgrew
            async with engine.begin() as conn:
                for org in ORGS:
                    await conn.execute(
                        text(
                            "INSERT INTO orgs (id, name, retention_days, updated_at)"
                            " VALUES (:id, :name, :days, now())"
                        ),
                        {"id": org.id, "name": org.name, "days": org.retention_days},
                    )
        else:
            await sync_inventory(engine, Config(database=DatabaseConfig(url), orgs=ORGS))
            days = [(NOW - timedelta(days=d)).date() for d in range(SPAN_DAYS + 1)]
            await ensure_partitions(engine, days)
        took = fill(url, n)
        print(f"{how}: {n:,} sessions inserted in {took:.1f} s", flush=True)
        before = scalar(url, PARTITIONS)
        began = time.perf_counter()
        if how == "drops":
            result = await purge(engine, now=NOW)
            deleted = {o.org_id: o.deleted for o in result.orgs if o.deleted}
        elif how == "batches only":
            deleted = await batches_only(engine)
        else:
            deleted = await plain_table(engine)
        took = time.perf_counter() - began
    finally:
        await engine.dispose()
    after = scalar(url, PARTITIONS)
    total = sum(deleted.values())
    per_org = ", ".join(f"{org} {k:,}" for org, k in sorted(deleted.items()))
    print(
        f"RESULT {how}: purged {total:,} sessions in {took:.1f} s = "
        f"{total / took:,.0f} sessions/s ({per_org}); partitions {before} -> {after}",
        flush=True,
    )
    return deleted, took, scalar(url, FINGERPRINT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="a PostgreSQL server (postgresql://...)")
    ap.add_argument("--sessions", type=int, default=3_000_000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"PostgreSQL: {scalar(args.url, 'SHOW server_version')}", flush=True)
    figures = {}
    for how, revision in (("drops", "head"), ("batches only", "head"), ("plain table", "0003")):
        with database(args.url, revision) as url:
            figures[how] = asyncio.run(run(url, args.sessions, how))
    counts = {how: deleted for how, (deleted, _, _) in figures.items()}
    prints = {how: fingerprint for how, (_, _, fingerprint) in figures.items()}
    print(
        f"same per-org counts: {len({str(sorted(c.items())) for c in counts.values()}) == 1}; "
        f"same rows left: {len(set(prints.values())) == 1} ({prints['drops']})"
    )
    seconds = {how: took for how, (_, took, _) in figures.items()}
    for how in ("batches only", "plain table"):
        print(f"RESULT drops vs {how}: {seconds[how] / seconds['drops']:.1f}x faster")


if __name__ == "__main__":
    main()
