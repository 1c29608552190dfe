"""Benchmark: SessionWriter into a fresh migrated SQLite file, rows/s and event-loop time.

Builds N session events like an import of short-session-heavy traffic produces (mostly CLOSED,
some CHECKPOINT; TCP and UDP; IPv4 and IPv6; attributed and unattributed), submits them in
import-sized chunks to a running SessionWriter and waits for the drain. A second pass closes the
checkpointed sessions, which exercises the ON CONFLICT update path. For each pass it prints rows/s
and the CPU time of the event-loop thread (submit, row building, SQLAlchemy) beside the wall time;
SQLite itself runs in aiosqlite's thread. Last, the "sqlite floor": the same upsert and rows
through the stdlib sqlite3 module alone (no asyncio, no SQLAlchemy, rows prebuilt) into another
fresh file, the ceiling for any writer on this schema and machine. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_writer.py [--events 200000] [--batch-size 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from sqlalchemy.dialects import sqlite

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tunnelacct.config import WriterConfig  # noqa: E402
from tunnelacct.enums import CloseReason, EventKind, IpProto  # noqa: E402
from tunnelacct.events import Attribution, SessionEvent  # noqa: E402
from tunnelacct.rows import driver_values, session_values, upsert_sql  # noqa: E402
from tunnelacct.schema import migrate  # noqa: E402
from tunnelacct.store import make_engine  # noqa: E402
from tunnelacct.writer import SessionWriter  # noqa: E402

T0 = 1_700_000_000.0
CLOSE_REASONS = (CloseReason.FIN, CloseReason.FIN, CloseReason.RST, CloseReason.IDLE)
ATTRIBUTIONS = (
    Attribution("acme", "c-laptop-1", "alice laptop", "alice", "r-web", "intranet web"),
    Attribution("acme", "c-phone-7", "bob phone", "bob", "r-db", "pg primary"),
    Attribution("globex", "c-ci-2", "ci runner", None, "r-git", "git"),
    Attribution("acme"),  # unattributed: default org only
)


def make_events(n: int, closed_share: float, seed: int = 7) -> list[SessionEvent]:
    """`n` events of distinct sessions with varied addresses, times, counters and attribution."""
    rng = random.Random(seed)
    events = []
    for i in range(n):
        v6 = rng.random() < 0.3
        if v6:
            src = f"fd7a:115c:a1e0::{rng.randrange(1, 0xFFFF):x}"
            dst = f"2001:db8:{rng.randrange(0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}"
        else:
            src = f"100.64.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            dst = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        proto = IpProto.TCP if rng.random() < 0.8 else IpProto.UDP
        started = T0 + i * 0.0007 + rng.random() * 1e-3
        last = started + rng.expovariate(1 / 3.0)
        closed = rng.random() < closed_share
        packets_tx, packets_rx = rng.randrange(1, 200), rng.randrange(0, 400)
        events.append(
            SessionEvent(
                kind=EventKind.CLOSED if closed else EventKind.CHECKPOINT,
                session_id=uuid.UUID(int=rng.getrandbits(128), version=5),
                proto=proto,
                family=6 if v6 else 4,
                src_addr=src,
                src_port=rng.randrange(1024, 65536),
                dst_addr=dst,
                dst_port=rng.choice((443, 22, 5432, 53, 8080)),
                started_ts=started,
                last_ts=last,
                ended_ts=last if closed else None,
                bytes_tx=packets_tx * 60 + rng.randrange(200_000),
                bytes_rx=packets_rx * 60 + rng.randrange(2_000_000),
                packets_tx=packets_tx,
                packets_rx=packets_rx,
                payload_bytes_tx=rng.randrange(200_000),
                payload_bytes_rx=rng.randrange(2_000_000),
                close_reason=rng.choice(CLOSE_REASONS) if closed else None,
                midstream=rng.random() < 0.05,
                community_id=f"1:{rng.getrandbits(160):040x}",
                attribution=rng.choice(ATTRIBUTIONS),
                interface="wg0",
            )
        )
    return events


class GcClock:
    """Wall time the cyclic garbage collector runs on this thread, and how often (full ones)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.runs = 0
        self.full_runs = 0
        self._thread = threading.get_ident()
        self._started = 0.0

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self._thread:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.runs += 1
            self.full_runs += info["generation"] == 2


async def write_pass(
    url: str, events: Sequence[SessionEvent], config: WriterConfig, chunk: int
) -> tuple[float, float, GcClock, int]:
    """Submit `events` in chunks to a running writer and drain it.

    Returns (wall s, event-loop thread CPU s, its garbage collections, rows written).
    """
    engine = make_engine(url)
    try:
        writer = SessionWriter(engine, config, gateway="gw-bench")
        async with engine.connect():
            pass  # open the pooled connection (pragmas) before the clock starts
        with GcClock() as gc_clock:
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            task = asyncio.create_task(writer.run())
            for start in range(0, len(events), chunk):
                await writer.submit(events[start : start + chunk])
                await asyncio.sleep(0)  # an import yields between decoded batches
            await writer.close(timeout_s=600)
            await task
            wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
        return wall, cpu, gc_clock, writer.rows_written
    finally:
        await engine.dispose()


def sqlite_floor(path: Path, events: Sequence[SessionEvent], batch_size: int) -> float:
    """Seconds to upsert `events` with sqlite3 executemany alone, `batch_size` rows a commit."""
    driver = driver_values("sqlite")
    rows = [session_values(e, "gw-bench", driver) for e in events]
    sql = upsert_sql(sqlite.dialect())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("busy_timeout=5000", "journal_mode=WAL", "synchronous=NORMAL"):
            conn.execute(f"PRAGMA {pragma}")  # as store.make_engine sets them
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[start : start + batch_size])
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


def report(name: str, wall: float, loop_cpu: float, gc_clock: GcClock, rows: int) -> None:
    """One RESULT line: rows/s, and where the time went."""
    print(
        f"RESULT {name}: {rows:,} rows in {wall:.2f} s = {rows / wall:,.0f} rows/s; "
        f"event-loop thread {loop_cpu:.2f} s CPU ({loop_cpu / wall:.0%} of wall, "
        f"{loop_cpu / rows * 1e6:.1f} µs/row), of which garbage collection "
        f"{gc_clock.seconds:.2f} s ({gc_clock.runs} runs, {gc_clock.full_runs} full)"
    )


def main() -> None:
    """Run the insert pass and the update pass, print their figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument(
        "--closed-share", type=float, default=0.8, help="CLOSED events, rest CHECKPOINT"
    )
    ap.add_argument("--chunk", type=int, default=4096, help="events per submit() call")
    ap.add_argument("--batch-size", type=int, default=WriterConfig().batch_size)
    ap.add_argument("--max-pending", type=int, default=WriterConfig().max_pending)
    a = ap.parse_args()
    config = WriterConfig(batch_size=a.batch_size, max_pending=a.max_pending)
    print(f"machine: {machine()}")
    events = make_events(a.events, a.closed_share)
    closes = [
        replace(e, kind=EventKind.CLOSED, ended_ts=e.last_ts + 1, close_reason=CloseReason.FIN)
        for e in events
        if e.kind is EventKind.CHECKPOINT
    ]
    print(
        f"events: {len(events):,} new sessions ({len(events) - len(closes):,} closed, "
        f"{len(closes):,} checkpoints), then {len(closes):,} closing updates; "
        f"batch_size={config.batch_size}, submit chunks of {a.chunk}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        url = f"sqlite:///{db}"
        migrate(url)
        report("insert", *asyncio.run(write_pass(url, events, config, a.chunk)))
        report("update", *asyncio.run(write_pass(url, closes, config, a.chunk)))
        conn = sqlite3.connect(db)
        try:
            count, completed = conn.execute(
                "SELECT count(*), sum(status = 'completed') FROM sessions"
            ).fetchone()
        finally:
            conn.close()
        print(f"check: {count:,} rows, {completed:,} completed")
        floor_db = Path(tmp) / "floor.db"
        migrate(f"sqlite:///{floor_db}")
        wall = sqlite_floor(floor_db, events, config.batch_size)
        print(
            f"RESULT sqlite floor: {len(events):,} rows in {wall:.2f} s = "
            f"{len(events) / wall:,.0f} rows/s (stdlib sqlite3 alone, same upsert and rows)"
        )


if __name__ == "__main__":
    main()
