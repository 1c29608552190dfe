"""Benchmark: the query API and the CSV export on a store of 10 million sessions, on SQLite
or PostgreSQL.

Builds (or reuses) a migrated store: 1,000 seed sessions over 3 orgs, 60 clients, 12
resources, TCP and UDP, spread over 17 minutes, copied (tests/helpers/replicate.py) so that the
copies span ~120 days. SQLite by default (`--db PATH`, or a temporary file). With `--url
postgresql://user@host/db`, that database instead (create it first; it is kept, so that a
second run reuses it: drop it yourself): the copies are made in SQL after their day
partitions, then VACUUM ANALYZE. The seeds are the same on both engines (only the copies'
random ids differ), so a SQLite run and a PostgreSQL run print figures to set side by side.

Then, through the real app in-process (httpx ASGI transport: routing, auth, filter parsing,
SQL, JSON), it times each request kind many times and prints p50/p99/max:

  first page       GET /api/v1/orgs/acme/sessions?limit=100
  filtered page    q = started_after + started_before (one week) + one more term
  next page        the filtered page's next_cursor
  rare filter      a term no row matches inside the week (the capped count scans the week)

Last, CSV export throughput of one org: the engine's own CSV dump of the same rows (raw
columns: `sqlite3 -csv`, or psql's COPY ... CSV) as the floor, the API stream with 0, 1 and 2
export worker processes, and the CLI (its peak RSS, for a day, a week and the whole org: memory
must not follow the row count). Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_query.py [--sessions 10000000] [--db PATH]
    createdb -h 127.0.0.1 -U postgres tunnelacct_bench_query
    .venv/bin/python tests/benchmarks/bench_query.py \\
        --url postgresql://postgres@127.0.0.1/tunnelacct_bench_query
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
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
from tunnelacct.query.export import ExportWorkers  # noqa: E402
from tunnelacct.store.engine import make_engine, sync_url  # noqa: E402
from tunnelacct.store.migrate import migrate  # noqa: E402
from tunnelacct.store.models import Org, SessionRecord, table_of  # noqa: E402
from tunnelacct.store.sqlite.layout import move_default_rows  # noqa: E402
from tunnelacct.web.app import ApiContext, create_app  # noqa: E402
from tunnelacct.web.auth import Role, create_token  # noqa: E402

SEEDS = 1000
STEP_S = 1037  # seeds span < STEP_S; 10,000 copies span 120 days
T0 = datetime(2026, 7, 1, tzinfo=UTC)
ORGS = ("acme",) * 6 + ("globex",) * 3 + ("initech",)
FLOOR_SQL = "SELECT * FROM sessions WHERE org_id = 'acme' ORDER BY started_at, id"


def is_postgresql(url: str) -> bool:
    return make_url(url).get_backend_name() == "postgresql"


def time_ordered(start: datetime) -> uuid.UUID:
    """A random id laid out like tunnelacct's session ids: Unix ms of the start first."""
    ms = int(start.timestamp() * 1000)
    return uuid.UUID(hex=f"{ms:012x}8{uuid.uuid4().hex[:3]}a{uuid.uuid4().hex[:15]}")


def seed_rows(rng: random.Random) -> list[dict[str, Any]]:
    """SEEDS session rows (column -> value, as the models take them)."""
    rows = []
    for i in range(SEEDS):
        org = ORGS[i % len(ORGS)]
        client = rng.randrange(20)
        resource = rng.randrange(4)
        udp = rng.random() < 0.2
        start = T0 + timedelta(seconds=rng.uniform(0, STEP_S - 60))
        dur = rng.expovariate(1 / 30)
        end = start + timedelta(seconds=dur)
        ongoing = rng.random() < 0.02
        pkts = rng.randrange(2, 400)
        rows.append(
            {
                "id": time_ordered(start),
                "org_id": org,
                "client_id": f"{org}-c{client}",
                "client_name": f"{org} laptop {client}",
                "user_id": f"user{client}",
                "resource_id": f"{org}-r{resource}",
                "resource_name": f"{org} service {resource}",
                "protocol": "udp" if udp else "tcp",
                "ip_version": 4,
                "src_addr": f"100.64.{client}.2",
                "dst_addr": f"10.99.{resource}.5",
                "src_port": rng.randrange(1024, 65536),
                "dst_port": (53, 443, 5432, 22)[resource],
                "started_at": start,
                "ended_at": None if ongoing else end,
                "last_seen_at": end,
                "duration_s": dur,
                "bytes_tx": pkts * 90,
                "bytes_rx": pkts * 700,
                "packets_tx": pkts,
                "packets_rx": pkts,
                "payload_bytes_tx": pkts * 50,
                "payload_bytes_rx": pkts * 660,
                "status": "ongoing" if ongoing else "completed",
                "close_reason": None if ongoing else rng.choice(("fin", "fin", "rst", "idle")),
                "midstream": False,
                "community_id": "1:" + uuid.uuid4().hex[:27] + "=",
                "gateway": "gw1",
                "interface": "wg0",
            }
        )
    return rows


def build(url: str, sessions: int, retention: dict[str, int | None] | None = None) -> None:
    """Migrate the store at `url` and fill it with about `sessions` sessions, its orgs kept
    `retention` days (365 each by default): on SQLite that sizes their partitions."""
    migrate(url)
    started = time.perf_counter()
    add_partitions(url, [T0])  # PostgreSQL: the seeds' day (nothing on SQLite)
    now = datetime.now(UTC)
    days = retention or {}
    orgs = [
        {"id": org, "name": org.title(), "retention_days": days.get(org, 365), "updated_at": now}
        for org in sorted(set(ORGS))
    ]
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(insert(table_of(Org)), orgs)
            conn.execute(insert(table_of(SessionRecord)), seed_rows(random.Random(7)))
    finally:
        engine.dispose()
    replicate(url, sessions // SEEDS - 1, STEP_S)
    if make_url(url).get_backend_name() == "sqlite":
        # where serve would have put them: partitions of each org's span of days, but for orgs
        # kept forever (sqliteparts.py)
        sync = create_engine(sync_url(url), poolclass=pool.NullPool)
        try:
            move_default_rows(sync)
        finally:
            sync.dispose()
    print(f"built {sessions:,} sessions in {time.perf_counter() - started:.0f} s: {url}")


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def middle_day(url: str) -> date:
    """A day in the middle of the stored sessions' time span."""
    ((low, high),) = read_rows(url, "SELECT min(started_at), max(started_at) FROM sessions")
    first, last = datetime.fromisoformat(str(low)), datetime.fromisoformat(str(high))
    return (first + (last - first) / 2).date()


async def latencies(url: str, runs: int) -> None:
    engine = make_engine(url)
    token, _ = await create_token(engine, Role.ADMIN, name="bench")
    app = create_app(ApiContext(engine))
    auth = {"Authorization": f"Bearer {token}"}
    week = middle_day(url)
    span = f"started_after:{week} started_before:{week + timedelta(days=7)}"
    kinds = {
        "first page": {"limit": "100"},
        "filtered page (week + udp)": {"limit": "100", "q": f"{span} protocol:udp"},
        "filtered page (week + client)": {"limit": "100", "q": f"{span} client:acme-c3"},
        "filtered page (week + dst CIDR)": {"limit": "100", "q": f"{span} dst:10.99.2.0/24"},
        "rare filter (week + bytes>1G)": {"limit": "100", "q": f"{span} bytes>1G"},
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        path = "/api/v1/orgs/acme/sessions"
        for name, params in kinds.items():
            first = (await http.get(path, params=params, headers=auth)).json()
            cursor = first["next_cursor"]
            for label, extra in ((name, {}), ("  next page of it", {"cursor": cursor})):
                if label.endswith("next page of it") and cursor is None:
                    continue
                times = []
                for i in range(runs + 5):
                    t = time.perf_counter()
                    r = await http.get(path, params={**params, **extra}, headers=auth)
                    if i >= 5:
                        times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
                ms = (statistics.median(times), pct(times, 99), max(times))
                count = f"{first['count']}{'+' if first['count_capped'] else ''}"
                print(
                    f"{label:36s} p50 {ms[0]:6.1f} ms  p99 {ms[1]:6.1f} ms  "
                    f"max {ms[2]:6.1f} ms  (count {count})"
                )
    await engine.dispose()


async def api_export(url: str, workers: int) -> tuple[int, float]:
    engine = make_engine(url)
    token, _ = await create_token(engine, Role.ADMIN, name="bench-export")
    pool_ = ExportWorkers(workers) if workers else None
    app = create_app(ApiContext(engine, export_workers=pool_))
    transport = httpx.ASGITransport(app=app)
    lines = 0
    started = time.perf_counter()
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=None) as http,
        http.stream(
            "GET", "/api/v1/orgs/acme/sessions.csv", headers={"Authorization": f"Bearer {token}"}
        ) as r,
    ):
        async for chunk in r.aiter_bytes():
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    if pool_ is not None:
        pool_.close()
    await engine.dispose()
    return lines - 1, elapsed


def peak_rss(pid: int) -> int:
    """VmHWM of a running process in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cli_export(
    url: str, config: Path, q: str | None, out: Path, workers: int
) -> tuple[int, float, int]:
    """(rows, seconds, peak RSS bytes) of `tunnelacct export` in its own process.

    The peak is VmHWM read until the process ends (ru_maxrss of a child would include this
    process's memory from before its exec).
    """
    argv = [
        sys.executable,
        "-m",
        "tunnelacct",
        "export",
        "--config",
        str(config),
        "--org",
        "acme",
        "-o",
        str(out),
        "--workers",
        str(workers),
    ]
    if q:
        argv += ["-q", q]
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": url}
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, peak_rss(proc.pid))
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    assert proc.returncode == 0
    with out.open("rb") as f:
        rows = sum(1 for _ in f) - 1  # no quoted newlines in this data
    return rows, elapsed, peak


def floor(url: str) -> tuple[str, int, float]:
    """(what, rows, seconds) of the engine's own CLI writing acme's rows as CSV."""
    if is_postgresql(url):
        libpq = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        what = "psql COPY ... CSV (raw columns)"
        argv = ["psql", "-X", "-q", libpq, "-c", f"COPY ({FLOOR_SQL}) TO STDOUT (FORMAT csv)"]
    else:
        what = "sqlite3 -csv (raw columns)"
        argv = ["sqlite3", "-csv", str(make_url(url).database), FLOOR_SQL]
    started = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - started
    ((rows,),) = read_rows(url, "SELECT count(*) FROM sessions WHERE org_id = 'acme'")
    return what, int(str(rows)), elapsed


def store_size(url: str) -> str:
    """The size of the store: the SQLite file, or the PostgreSQL database."""
    if not is_postgresql(url):
        return f"{Path(str(make_url(url).database)).stat().st_size / 2**30:.1f} GiB"
    ((size,),) = read_rows(url, "SELECT pg_database_size(current_database())")
    return f"{int(str(size)) / 2**30:.1f} GiB (PostgreSQL database)"


def stored_sessions(url: str) -> int:
    """Sessions in the store, 0 when it has no sessions table yet."""
    if is_postgresql(url):
        exists = read_rows(url, "SELECT to_regclass('sessions') IS NOT NULL") == [(1,)]
    else:
        exists = Path(str(make_url(url).database)).exists() and bool(
            read_rows(url, "SELECT 1 FROM sqlite_master WHERE name = 'sessions'")
        )
    if not exists:
        return 0
    ((total,),) = read_rows(url, "SELECT count(*) FROM sessions")
    return int(str(total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000_000)
    parser.add_argument("--db", type=Path, help="SQLite store to build or reuse (default: temp)")
    parser.add_argument("--url", help="a PostgreSQL database (postgresql://...) to build or reuse")
    parser.add_argument("--runs", type=int, default=200, help="requests per latency figure")
    parser.add_argument("--no-export", action="store_true", help="latencies only")
    args = parser.parse_args()
    if args.url is not None and not args.url.startswith("postgresql"):
        parser.error("--url must be a postgresql:// URL (SQLite is the default)")
    if args.url is not None and args.db is not None:
        parser.error("--db and --url are two stores: give one")
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="tunnelacct-bench-query-"))
    try:
        url = args.url or f"sqlite:///{(args.db or tmp / 'query.db').resolve()}"
        if stored_sessions(url) == 0:
            build(url, args.sessions)
        total = stored_sessions(url)
        if total < 10 * SEEDS:
            raise SystemExit(f"{url}: only {total} sessions; build with --sessions >= {10 * SEEDS}")
        engine_name = "postgresql" if is_postgresql(url) else "sqlite"
        print(f"store: {engine_name}, {total:,} sessions, {store_size(url)}")
        asyncio.run(latencies(url, args.runs))
        if args.no_export:
            return

        config = tmp / "bench.toml"
        config.write_text('[[orgs]]\nid = "acme"\nname = "Acme"\n', encoding="utf-8")
        what, rows_all, floor_s = floor(url)
        print(f"{what:32s} {rows_all:,} rows in {floor_s:.1f} s: {rows_all / floor_s:,.0f} rows/s")
        for workers in (0, 1, 2):
            rows, secs = asyncio.run(api_export(url, workers))
            print(
                f"API sessions.csv, {workers} workers {rows:,} rows in {secs:.1f} s: "
                f"{rows / secs:,.0f} rows/s ({secs / floor_s:.1f}x the floor)"
            )
        day = middle_day(url)
        for label, q, workers in (
            ("one day", f"started_after:{day} started_before:{day + timedelta(1)}", 2),
            ("one week", f"started_after:{day} started_before:{day + timedelta(7)}", 2),
            ("whole org", None, 0),
            ("whole org", None, 2),
        ):
            rows, secs, rss = cli_export(url, config, q, tmp / "out.csv", workers)
            print(
                f"CLI export, {label}, {workers} workers: {rows:,} rows in {secs:.1f} s: "
                f"{rows / secs:,.0f} rows/s ({secs / floor_s * rows_all / rows:.1f}x), "
                f"peak RSS {rss / 2**20:.0f} MiB (the CLI process)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
