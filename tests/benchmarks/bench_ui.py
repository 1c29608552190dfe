"""Benchmark: the web UI's session log page on a store of 10 million sessions (issue 19's
acceptance: p99 under 200 ms), on SQLite or PostgreSQL.

The store is bench_query.py's (1,000 seed sessions over 3 orgs copied to span ~120 days; built
here when the store is empty, or reused). Through the real app in-process (httpx ASGI
transport: routing, the login cookie's lookup, the filter, the keyset page and capped count,
the Jinja2 page of 50 rows), it times each kind of page many times and prints p50/p99/max:

  newest page                      /orgs/acme/sessions
  older page                       the newest page's Older link
  udp / client / dst CIDR          a filter term, no range
  week + udp                       from/to as a dashboard link gives them (epoch ms)
  last 24 h                        from=now-24h (relative, the app's clock at the data's end)
  ongoing (live refresh)           q=status:ongoing&partial=1, what the live page fetches
  rare filter in a week            bytes>1G: nothing matches, the capped count scans the week

    .venv/bin/python tests/benchmarks/bench_ui.py [--sessions 10000000] [--db PATH] [--runs 200]
    .venv/bin/python tests/benchmarks/bench_ui.py --url postgresql://postgres@127.0.0.1/DB

Asserts nothing about time; README "Web UI" holds the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_query import (  # noqa: E402
    build,
    middle_day,
    pct,
    store_size,
    stored_sessions,
)
from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.pg import read_rows  # noqa: E402
from tunnelacct.store.engine import make_engine  # noqa: E402
from tunnelacct.web.app import ApiContext, create_app  # noqa: E402
from tunnelacct.web.auth import Role  # noqa: E402
from tunnelacct.web.users import create_user  # noqa: E402

PASSWORD = "benchmark password 1"
WARMUP = 5


def newest_start(url: str) -> datetime:
    ((newest,),) = read_rows(url, "SELECT max(started_at) FROM sessions")
    when = newest if isinstance(newest, datetime) else datetime.fromisoformat(str(newest))
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


async def latencies(url: str, runs: int) -> None:
    engine = make_engine(url)
    user = f"bench-{int(time.time())}"
    await create_user(engine, user, Role.ADMIN, org_id=None, password=PASSWORD)
    clock_at = newest_start(url) + timedelta(hours=1)
    app = create_app(ApiContext(engine, clock=lambda: clock_at))
    week = middle_day(url)
    week_start = datetime(week.year, week.month, week.day, tzinfo=UTC)
    week_ms = {
        "from": str(int(week_start.timestamp() * 1000)),
        "to": str(int((week_start + timedelta(days=7)).timestamp() * 1000)),
    }
    kinds: dict[str, dict[str, str]] = {
        "newest page": {},
        "udp": {"q": "protocol:udp"},
        "client": {"q": "client:acme-c3"},
        "dst CIDR": {"q": "dst:10.99.2.0/24"},
        "week + udp (epoch ms range)": {"q": "protocol:udp", **week_ms},
        "last 24 h (now-24h)": {"from": "now-24h"},
        "ongoing (live refresh fragment)": {"q": "status:ongoing", "partial": "1"},
        "rare filter in a week (bytes>1G)": {"q": "bytes>1G", **week_ms},
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
        form = await http.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        signed = await http.post(
            "/login", data={"csrf": csrf.group(1), "user": user, "password": PASSWORD}
        )
        assert signed.status_code == 303, signed.text
        path = "/orgs/acme/sessions"
        newest = await http.get(path)
        older = re.search(r'<a rel="next" href="([^"]+)"', newest.text)
        cases = [(name, path, params) for name, params in kinds.items()]
        if older is not None:
            cases.insert(1, ("older page", older.group(1).replace("&amp;", "&"), {}))
        for name, target, params in cases:
            times = []
            rows = 0
            for i in range(runs + WARMUP):
                started = time.perf_counter()
                r = await http.get(target, params=params)
                if i >= WARMUP:
                    times.append((time.perf_counter() - started) * 1000)
                assert r.status_code == 200, r.text[:300]
                rows = r.text.count('<tr id="s-')
            count = re.search(r'data-count="([0-9+]*)"', r.text)
            shown = count.group(1) if count else "?"
            print(
                f"{name:34s} p50 {statistics.median(times):6.1f} ms  p99 {pct(times, 99):6.1f} ms"
                f"  max {max(times):6.1f} ms  ({rows} rows, count {shown})"
            )
    await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000_000)
    parser.add_argument("--db", type=Path, help="SQLite store to build or reuse (default: temp)")
    parser.add_argument("--url", help="a PostgreSQL database (postgresql://...) to build or reuse")
    parser.add_argument("--runs", type=int, default=200, help="requests per latency figure")
    args = parser.parse_args()
    if args.url is not None and args.db is not None:
        parser.error("--db and --url are two stores: give one")
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="tunnelacct-bench-ui-"))
    try:
        url = args.url or f"sqlite:///{(args.db or tmp / 'ui.db').resolve()}"
        if stored_sessions(url) == 0:
            build(url, args.sessions)
        print(f"store: {stored_sessions(url):,} sessions, {store_size(url)}")
        asyncio.run(latencies(url, args.runs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
