"""Benchmark: a retention purge of a 10-million-session SQLite store while sessions are written.

Builds the store of bench_query.py (3 orgs, 120 days; or copies `--db`, which it never
changes), gives acme 30 days, globex 7 and initech "forever", and purges as of the newest
session's end, so most of acme and globex goes. Meanwhile, sharing the event loop, engine and
write lock as in `tunnelacct serve`, a SessionWriter writes closed sessions at `--rate` per
second; every flush is timed. Prints purge throughput (sessions deleted per second) and the
writer's flush latency during the purge (p50, p99, max: the longest write stall the ingest
path saw), next to the same writer without a purge. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_purge.py [--db STORE] [--sessions N] [--rate N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy.ext.asyncio import AsyncEngine  # noqa: E402

from tests.benchmarks.bench_query import build  # noqa: E402
from tests.benchmarks.bench_writer import make_events  # noqa: E402
from tests.benchmarks.machine import machine  # noqa: E402
from tunnelacct.config.model import WriterConfig  # noqa: E402
from tunnelacct.retention.purge import purge  # noqa: E402
from tunnelacct.store.engine import make_engine  # noqa: E402
from tunnelacct.store.migrate import migrate  # noqa: E402
from tunnelacct.store.writer import SessionWriter  # noqa: E402

RETENTION = {"acme": 30, "globex": 7, "initech": None}


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if values else 0.0


async def write_while(
    engine: AsyncEngine,
    lock: asyncio.Lock,
    rate: int,
    work: asyncio.Future[object] | None,
    seconds: float,
) -> list[float]:
    """Write `rate` closed sessions a second until `work` is done (or for `seconds`); returns
    the duration of every flush."""
    config = WriterConfig(flush_interval_s=0.2)
    writer = SessionWriter(engine, config, gateway="gw-bench", write_lock=lock)
    task = asyncio.create_task(writer.run())
    events = make_events(200_000, closed_share=1.0)
    started, sent = time.monotonic(), 0
    while (work is not None and not work.done()) or (
        work is None and time.monotonic() - started < seconds
    ):
        due = int((time.monotonic() - started) * rate)
        if due > sent:
            await writer.submit(events[sent % len(events) : sent % len(events) + due - sent])
            sent = due
        await asyncio.sleep(0.01)
    await writer.close()
    await task
    return list(writer.recent_write_seconds)


def report(label: str, flushes: list[float]) -> None:
    ms = [f * 1000 for f in flushes]
    print(
        f"{label:34s} {len(ms):5d} flushes: p50 {statistics.median(ms):6.1f} ms, "
        f"p99 {quantile(ms, 99):6.1f} ms, max {max(ms):6.1f} ms"
    )


async def run(db: Path, rate: int, batch_size: int) -> None:
    conn = sqlite3.connect(db)
    with conn:
        for org, days in RETENTION.items():
            conn.execute("UPDATE orgs SET retention_days = ? WHERE id = ?", (days, org))
    (newest,) = conn.execute("SELECT max(ended_at) FROM sessions").fetchone()
    (before,) = conn.execute("SELECT count(*) FROM sessions").fetchone()
    conn.close()
    now = datetime.fromisoformat(newest).replace(tzinfo=UTC)

    # one engine and one write lock for the writer and the purge, as in `tunnelacct serve`
    engine = make_engine(f"sqlite:///{db}")
    lock = asyncio.Lock()
    report("writer alone (10 s)", await write_while(engine, lock, rate, None, 10.0))
    started = time.perf_counter()
    job = asyncio.ensure_future(purge(engine, now=now, batch_size=batch_size, write_lock=lock))
    flushes = await write_while(engine, lock, rate, job, 0)
    result = await job
    elapsed = time.perf_counter() - started
    await engine.dispose()
    report("writer during the purge", flushes)
    print(
        f"purge: {result.deleted:,} of {before:,} sessions deleted in {elapsed:.1f} s: "
        f"{result.deleted / elapsed:,.0f} sessions/s (batches of {batch_size})"
    )
    for p in result.orgs:
        print(f"  {p.org_id}: {p.deleted:,} ended before {p.cutoff.isoformat()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="a bench_query.py store to copy (kept as is)")
    parser.add_argument("--sessions", type=int, default=10_000_000)
    parser.add_argument("--rate", type=int, default=2000, help="sessions written per second")
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp(prefix="tunnelacct-bench-purge-"))
    try:
        db = tmp / "purge.db"
        if args.db is not None:
            with sqlite3.connect(args.db) as source:  # fold its WAL in, then copy one file
                source.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            shutil.copyfile(args.db, db)
            migrate(f"sqlite:///{db}")
        else:
            build(f"sqlite:///{db}", args.sessions, RETENTION)
        asyncio.run(run(db, args.rate, args.batch_size))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
