"""Benchmark: the query API and the CSV export on a store of 10 million sessions (SQLite).

Builds (or reuses) a migrated SQLite file: 1,000 seed sessions over 3 orgs, 60 clients, 12
resources, TCP and UDP, spread over 17 minutes, copied with `replicate_sessions` so that the
copies span ~120 days. Then, through the real app in-process (httpx ASGI transport: routing,
auth, filter parsing, SQL, JSON), it times each request kind many times and prints p50/p99/max:

  first page       GET /api/v1/orgs/acme/sessions?limit=100
  filtered page    q = started_after + started_before (one week) + one more term
  next page        the filtered page's next_cursor
  rare filter      a term no row matches inside the week (the capped count scans the week)

Last, CSV export throughput of one org: `sqlite3 -csv` on the same rows (raw columns) as the
floor, the API stream with 0, 1 and 2 export worker processes, and the CLI (its peak RSS, for
a day, a week and the whole org: memory must not follow the row count). Asserts nothing
about time.

    .venv/bin/python tests/benchmarks/bench_query.py [--sessions 10000000] [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.sqlite import replicate_sessions  # noqa: E402
from tunnelacct.api import ApiContext, create_app  # noqa: E402
from tunnelacct.auth import Role, create_token  # noqa: E402
from tunnelacct.export import ExportWorkers  # noqa: E402
from tunnelacct.schema import migrate  # noqa: E402
from tunnelacct.store import make_engine  # noqa: E402

SEEDS = 1000
STEP_S = 1037  # seeds span < STEP_S; 10,000 copies span 120 days
T0 = datetime(2026, 7, 1, tzinfo=UTC)
ORGS = ("acme",) * 6 + ("globex",) * 3 + ("initech",)


def time_ordered(start: datetime) -> str:
    """A random id laid out like tunnelacct's session ids: Unix ms of the start first."""
    ms = int(start.timestamp() * 1000)
    return f"{ms:012x}8{uuid.uuid4().hex[:3]}a{uuid.uuid4().hex[:15]}"


def seed_rows(rng: random.Random) -> list[tuple[object, ...]]:
    """SEEDS session rows in the stored form (naive UTC text times, hex ids)."""
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
        rows.append((
            time_ordered(start), org, f"{org}-c{client}", f"{org} laptop {client}", f"user{client}",
            f"{org}-r{resource}", f"{org} service {resource}", "udp" if udp else "tcp", 4,
            f"100.64.{client}.2", f"10.99.{resource}.5", rng.randrange(1024, 65536),
            (53, 443, 5432, 22)[resource], start.strftime("%Y-%m-%d %H:%M:%S.%f"),
            None if ongoing else end.strftime("%Y-%m-%d %H:%M:%S.%f"),
            end.strftime("%Y-%m-%d %H:%M:%S.%f"), dur, pkts * 90, pkts * 700, pkts, pkts,
            pkts * 50, pkts * 660, "ongoing" if ongoing else "completed",
            None if ongoing else rng.choice(("fin", "fin", "rst", "idle")), 0,
            "1:" + uuid.uuid4().hex[:27] + "=", "gw1", "wg0",
        ))  # fmt: skip
    return rows


def build(db: Path, sessions: int) -> None:
    """A migrated store holding about `sessions` sessions."""
    url = f"sqlite:///{db}"
    migrate(url)
    conn = sqlite3.connect(db)
    with conn:
        marks = ", ".join("?" * 29)
        conn.executemany(f"INSERT INTO sessions VALUES ({marks})", seed_rows(random.Random(7)))
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        orgs = [(org, org.title(), 365, now) for org in sorted(set(ORGS))]
        conn.executemany(
            "INSERT INTO orgs (id, name, retention_days, updated_at) VALUES (?, ?, ?, ?)", orgs
        )
    conn.close()
    started = time.perf_counter()
    replicate_sessions(db, sessions // SEEDS - 1, STEP_S)
    print(f"built {sessions:,} sessions in {time.perf_counter() - started:.0f} s: {db}")


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


def middle_day(db: Path) -> date:
    """A day in the middle of the stored sessions' time span."""
    sql = "SELECT min(started_at), max(started_at) FROM sessions"
    low, high = (datetime.fromisoformat(t) for t in sqlite3.connect(db).execute(sql).fetchone())
    return (low + (high - low) / 2).date()


async def latencies(db: Path, runs: int) -> None:
    engine = make_engine(f"sqlite:///{db}")
    token, _ = await create_token(engine, Role.ADMIN, name="bench")
    app = create_app(ApiContext(engine))
    auth = {"Authorization": f"Bearer {token}"}
    week = middle_day(db)
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
        url = "/api/v1/orgs/acme/sessions"
        for name, params in kinds.items():
            first = (await http.get(url, params=params, headers=auth)).json()
            cursor = first["next_cursor"]
            for label, extra in ((name, {}), ("  next page of it", {"cursor": cursor})):
                if label.endswith("next page of it") and cursor is None:
                    continue
                times = []
                for i in range(runs + 5):
                    t = time.perf_counter()
                    r = await http.get(url, params={**params, **extra}, headers=auth)
                    if i >= 5:
                        times.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
                ms = (statistics.median(times), pct(times, 99), max(times))
                count = f"{first['count']}{'+' if first['count_capped'] else ''}"
                print(f"{label:36s} p50 {ms[0]:6.1f} ms  p99 {ms[1]:6.1f} ms  "
                      f"max {ms[2]:6.1f} ms  (count {count})")  # fmt: skip
    await engine.dispose()


async def api_export(db: Path, workers: int) -> tuple[int, float]:
    engine = make_engine(f"sqlite:///{db}")
    token, _ = await create_token(engine, Role.ADMIN, name="bench-export")
    pool = ExportWorkers(workers) if workers else None
    app = create_app(ApiContext(engine, export_workers=pool))
    transport = httpx.ASGITransport(app=app)
    lines = 0
    started = time.perf_counter()
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=None) as http,
        http.stream("GET", "/api/v1/orgs/acme/sessions.csv",
                    headers={"Authorization": f"Bearer {token}"}) as r,
    ):  # fmt: skip
        async for chunk in r.aiter_bytes():
            lines += chunk.count(b"\n")
    elapsed = time.perf_counter() - started
    if pool is not None:
        pool.close()
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
    db: Path, config: Path, q: str | None, out: Path, workers: int
) -> tuple[int, float, int]:
    """(rows, seconds, peak RSS bytes) of `tunnelacct export` in its own process.

    The peak is VmHWM read until the process ends (ru_maxrss of a child would include this
    process's memory from before its exec).
    """
    argv = [sys.executable, "-m", "tunnelacct", "export", "--config", str(config),
            "--org", "acme", "-o", str(out), "--workers", str(workers)]  # fmt: skip
    if q:
        argv += ["-q", q]
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
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


def sqlite_floor(db: Path) -> tuple[int, float]:
    sql = "SELECT * FROM sessions WHERE org_id = 'acme' ORDER BY started_at, id"
    started = time.perf_counter()
    subprocess.run(["sqlite3", "-csv", str(db), sql], stdout=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - started
    (rows,) = sqlite3.connect(db).execute("SELECT count(*) FROM sessions WHERE org_id = 'acme'")
    return int(rows[0]), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000_000)
    parser.add_argument("--db", type=Path, help="store to build or reuse (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=200, help="requests per latency figure")
    parser.add_argument("--no-export", action="store_true", help="latencies only")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="tunnelacct-bench-query-"))
    try:
        db = args.db or tmp / "query.db"
        if not db.exists():
            build(db, args.sessions)
        (total,) = sqlite3.connect(db).execute("SELECT count(*) FROM sessions").fetchone()
        if total < 10 * SEEDS:
            raise SystemExit(f"{db}: only {total} sessions; build with --sessions >= {10 * SEEDS}")
        print(f"store: {total:,} sessions, {db.stat().st_size / 2**30:.1f} GiB")
        asyncio.run(latencies(db, args.runs))
        if args.no_export:
            return

        config = tmp / "bench.toml"
        config.write_text('[[orgs]]\nid = "acme"\nname = "Acme"\n', encoding="utf-8")
        rows_all, floor_s = sqlite_floor(db)
        rows = rows_all
        print(f"sqlite3 -csv (raw columns)   {rows:,} rows in {floor_s:.1f} s: "
              f"{rows / floor_s:,.0f} rows/s")  # fmt: skip
        for workers in (0, 1, 2):
            rows, secs = asyncio.run(api_export(db, workers))
            print(f"API sessions.csv, {workers} workers {rows:,} rows in {secs:.1f} s: "
                  f"{rows / secs:,.0f} rows/s ({secs / floor_s:.1f}x sqlite3 -csv)")  # fmt: skip
        day = middle_day(db)
        for label, q, workers in (
            ("one day", f"started_after:{day} started_before:{day + timedelta(1)}", 2),
            ("one week", f"started_after:{day} started_before:{day + timedelta(7)}", 2),
            ("whole org", None, 0),
            ("whole org", None, 2),
        ):
            rows, secs, rss = cli_export(db, config, q, tmp / "out.csv", workers)
            print(f"CLI export, {label}, {workers} workers: {rows:,} rows in {secs:.1f} s: "
                  f"{rows / secs:,.0f} rows/s ({secs / floor_s * rows_all / rows:.1f}x), "
                  f"peak RSS {rss / 2**20:.0f} MiB (the CLI process)")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
