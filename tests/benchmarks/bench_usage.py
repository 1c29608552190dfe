"""Benchmark: the usage rollup (issue 18) on a store of 10 million sessions and 10,000 users,
on SQLite or PostgreSQL.

Builds (or reuses) a migrated store: 10,000 seed sessions of one org, one user each (10,000
users, their clients, 20 resources, TCP and UDP), within 15 minutes, copied
(tests/helpers/replicate.py) every 15 minutes until there are `--sessions` of them (10M: 1,000
copies, about 10 days). Then:

- rebuild: `rebuild_usage` of the org over every day (`tunnelacct usage rebuild`), the rollup
  written from the sessions: its sessions/s;
- report: through the real app in-process (httpx ASGI transport: routing, auth, SQL, JSON),
  `GET /api/v1/orgs/acme/usage?by=user&interval=month&month=...`, a month of the org grouped
  by user (10,000 rows), timed `--runs` times: p50/p99/max.

Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_usage.py [--sessions 10000000] [--db PATH]
        [--only rebuild|report] [--runs 200]
    createdb -h 127.0.0.1 -U postgres tunnelacct_bench_usage
    .venv/bin/python tests/benchmarks/bench_usage.py \\
        --url postgresql://postgres@127.0.0.1/tunnelacct_bench_usage
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, insert, pool
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.pg import add_partitions, read_rows  # noqa: E402
from tests.helpers.replicate import replicate  # noqa: E402
from tunnelacct.store.engine import make_engine, sync_url  # noqa: E402
from tunnelacct.store.migrate import migrate  # noqa: E402
from tunnelacct.store.models import Org, SessionRecord, table_of  # noqa: E402
from tunnelacct.store.sqlite.layout import move_default_rows  # noqa: E402
from tunnelacct.store.usagerebuild import rebuild_usage  # noqa: E402
from tunnelacct.web.app import ApiContext, create_app  # noqa: E402
from tunnelacct.web.auth import Role, create_token  # noqa: E402

ORG = "acme"
USERS = 10_000
STEP_S = 900  # the seeds span this, and each copy is this much later
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def seed_rows(rng: random.Random) -> list[dict[str, Any]]:
    """One session per user (column -> value, as the models take them)."""
    rows = []
    for user in range(USERS):
        resource = rng.randrange(20)
        start = T0 + timedelta(seconds=rng.uniform(0, STEP_S - 60))
        duration_s = rng.expovariate(1 / 30)
        end = start + timedelta(seconds=duration_s)
        packets = rng.randrange(2, 400)
        rows.append(
            {
                "id": uuid.UUID(int=(int(start.timestamp() * 1000) << 80) | rng.getrandbits(80)),
                "org_id": ORG,
                "client_id": f"c{user:05d}",
                "client_name": f"laptop {user}",
                "user_id": f"u{user:05d}",
                "resource_id": f"r{resource}",
                "resource_name": f"service {resource}",
                "protocol": "udp" if rng.random() < 0.2 else "tcp",
                "ip_version": 4,
                "src_addr": f"100.{64 + user // 65536}.{user // 256 % 256}.{user % 256}",
                "dst_addr": f"10.99.{resource}.5",
                "src_port": rng.randrange(1024, 65536),
                "dst_port": 443,
                "started_at": start,
                "ended_at": end,
                "last_seen_at": end,
                "duration_s": duration_s,
                "bytes_tx": packets * 90,
                "bytes_rx": packets * 700,
                "packets_tx": packets,
                "packets_rx": packets,
                "payload_bytes_tx": packets * 50,
                "payload_bytes_rx": packets * 660,
                "status": "completed",
                "close_reason": "fin",
                "midstream": False,
                "community_id": "1:" + uuid.uuid4().hex[:27] + "=",
                "gateway": "gw1",
                "interface": "wg0",
                "day_split": None,
            }
        )
    return rows


def build(url: str, sessions: int) -> None:
    migrate(url)
    started = time.perf_counter()
    add_partitions(url, [T0])
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            org = {"id": ORG, "name": "Acme", "retention_days": 365, "updated_at": T0}
            conn.execute(insert(table_of(Org)), [org])
            conn.execute(insert(table_of(SessionRecord)), seed_rows(random.Random(7)))
    finally:
        engine.dispose()
    replicate(url, sessions // USERS - 1, STEP_S)
    if make_url(url).get_backend_name() == "sqlite":
        sync = create_engine(sync_url(url), poolclass=pool.NullPool)
        try:
            move_default_rows(sync)
        finally:
            sync.dispose()
    print(f"built {sessions:,} sessions in {time.perf_counter() - started:.0f} s: {url}")


def stored_sessions(url: str) -> int:
    try:
        return int(str(read_rows(url, "SELECT COUNT(*) FROM sessions")[0][0]))
    except Exception:  # noqa: BLE001 - no store yet
        return 0


async def rebuild(url: str, first: date, last: date) -> None:
    engine = make_engine(url)
    try:
        done = await rebuild_usage(engine, ORG, first, last)
    finally:
        await engine.dispose()
    rate = done.sessions / done.seconds
    print(
        f"rebuild {first} to {last}: {done.sessions:,} sessions, {done.rows:,} usage rows in "
        f"{done.seconds:.1f} s: {rate:,.0f} sessions/s"
    )


async def report_latencies(url: str, month: str, runs: int) -> None:
    engine = make_engine(url)
    try:
        token, _row = await create_token(engine, Role.AUDITOR, org_id=ORG)
        app = create_app(ApiContext(engine, config_orgs=frozenset({ORG})))
        gc.freeze()  # as serve does once it runs (tunnelacct/service/service.py)
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        params = {"by": "user", "interval": "month", "month": month}
        path = f"/api/v1/orgs/{ORG}/usage"
        times = []
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _run in range(runs):
                started = time.perf_counter()
                answer = await client.get(path, params=params, headers=headers)
                times.append((time.perf_counter() - started) * 1000)
                answer.raise_for_status()
        rows = len(answer.json()["rows"])
    finally:
        await engine.dispose()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(
        f"report {month} by user ({rows:,} rows), {runs} runs: p50 "
        f"{statistics.median(times):.1f} ms, p99 {p99:.1f} ms, max {times[-1]:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000_000)
    parser.add_argument("--db", type=Path, help="SQLite file (built when missing)")
    parser.add_argument("--url", help="PostgreSQL URL instead")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--only", choices=("rebuild", "report"), help="run one of the two")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunnelacct-bench-usage-") as tmp:
        url = args.url or f"sqlite:///{args.db or Path(tmp) / 'usage.db'}"
        print(f"machine: {machine()}")
        if stored_sessions(url) < args.sessions:
            build(url, args.sessions)
        last = (T0 + timedelta(seconds=STEP_S * (args.sessions // USERS))).date()
        if args.only != "report":
            asyncio.run(rebuild(url, T0.date(), last))
        if args.only != "rebuild":
            asyncio.run(report_latencies(url, T0.strftime("%Y-%m"), args.runs))


if __name__ == "__main__":
    main()
