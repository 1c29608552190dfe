"""Benchmark: SessionWriter into a fresh migrated store, rows/s and where the time goes.

Builds N session events like an import of short-session-heavy traffic produces (mostly CLOSED,
some CHECKPOINT; TCP and UDP; IPv4 and IPv6; attributed and unattributed), submits them in
import-sized chunks to a running SessionWriter and waits for the drain. A second pass closes the
checkpointed sessions, which exercises the ON CONFLICT update path. For each pass it prints rows/s
and the CPU time of the event-loop thread (submit, row building, SQLAlchemy, asyncpg encoding)
beside the wall time.

SQLite (default): the store is a temporary file, and last comes the "sqlite floor": the same
upsert and rows through the stdlib sqlite3 module alone (no asyncio, no SQLAlchemy, rows
prebuilt) into another fresh file, the ceiling for any writer on this schema and machine;
with `--floor-page-sizes`, into a fresh store rebuilt with each of those page sizes in turn,
with `--floor-batch-sizes` for each of those rows a commit, `--floor-rounds` times. Each floor
also prints the bytes written to disk per row (the WAL and, at the checkpoints, the file).

PostgreSQL (`--url postgresql://user@host/db`, any database the user may connect to): the
benchmark creates its own database `tunnelacct_bench_<random>` on that server, migrates it and
drops it at the end. It also prints the CPU the server's processes used (from /proc, so only
for a server on this machine) and the WAL written, both server-wide, so other databases' work
counts too; the size of the table after the insert pass; and the "pg floor": the writer's COPY and
upsert with prebuilt rows through asyncpg alone, one batch at a time.

`--gateways N` runs N writer processes at once (gateways gw-bench-1..N, each with its own
events), released together, and prints each one's rows/s and the sustained total: all rows over
the time from the first start to the last drain. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_writer.py [--events 200000] [--batch-size 5000]
        [--floor-page-sizes 4096 16384 --floor-batch-sizes 20 200 5000 --floor-rounds 3]
    .venv/bin/python tests/benchmarks/bench_writer.py --url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python tests/benchmarks/bench_writer.py --url postgresql://... --gateways 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, pool
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.benchmarks.measured import postgres_server_cpu_s  # noqa: E402
from tests.benchmarks.pagesize import rebuild_with_page_size  # noqa: E402
from tunnelacct.config.model import WriterConfig  # noqa: E402
from tunnelacct.enums import CloseReason, EventKind, IpProto  # noqa: E402
from tunnelacct.sessions.events import Attribution, SessionEvent  # noqa: E402
from tunnelacct.store.codec import (  # noqa: E402
    STAGING_TABLE,
    staged_upsert_sql,
    staging_table_sql,
    upsert_sql,
)
from tunnelacct.store.engine import make_engine, sync_url  # noqa: E402
from tunnelacct.store.migrate import migrate  # noqa: E402
from tunnelacct.store.postgres.partitions import ensure_partitions
from tunnelacct.store.rows import ROW_COLUMNS, driver_values, session_values  # noqa: E402
from tunnelacct.store.sqlite.layout import DEFAULT_TABLE  # noqa: E402
from tunnelacct.store.sqlite.write import (  # noqa: E402
    WRITER_CACHE_KIB,
    WRITER_WAL_AUTOCHECKPOINT_PAGES,
)
from tunnelacct.store.writer import SessionWriter  # noqa: E402

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
    url: str,
    events: Sequence[SessionEvent],
    config: WriterConfig,
    chunk: int,
    gateway: str = "gw-bench",
    synchronous: str = "normal",
) -> tuple[float, float, GcClock, int]:
    """Submit `events` in chunks to a running writer and drain it.

    Returns (wall s, event-loop thread CPU s, its garbage collections, rows written).
    """
    engine = make_engine(url, synchronous=synchronous)
    try:
        writer = SessionWriter(engine, config, gateway=gateway)
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


@dataclass(frozen=True, slots=True)
class Floor:
    """A floor run: its seconds, and the bytes this process wrote to disk per row (the WAL,
    and the database file at the checkpoints, the last one included)."""

    seconds: float
    bytes_per_row: float


def written_bytes() -> int:
    """Bytes this process has caused to be written to disk so far (proc(5) io)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def sqlite_floor(path: Path, events: Sequence[SessionEvent], batch_size: int) -> Floor:
    """Upsert `events` with sqlite3 executemany alone, `batch_size` rows a commit, then
    checkpoint the WAL into the file; the seconds of the upserts and the bytes written."""
    driver = driver_values("sqlite")
    rows = [session_values(e, "gw-bench", driver) for e in events]
    # sessions is a view over the tables of SQLite's layout; an import's rows without
    # partitions go to sessions_default, as the writer's routed upsert does
    sql = upsert_sql(sqlite.dialect(), DEFAULT_TABLE)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("busy_timeout=5000", "journal_mode=WAL", "synchronous=NORMAL"):
            conn.execute(f"PRAGMA {pragma}")  # as store.make_engine sets them
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")  # as the writer's flush
        conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_WAL_AUTOCHECKPOINT_PAGES}")  # too
        os.sync()
        written_before = written_bytes()
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[start : start + batch_size])
            conn.execute("COMMIT")
        seconds = time.perf_counter() - started
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        os.sync()
        return Floor(seconds, (written_bytes() - written_before) / len(rows))
    finally:
        conn.close()


def copy_with_page_size(template: Path, path: Path, page_size: int | None) -> None:
    """`path` becomes a copy of the migrated, empty store `template`, rebuilt with
    `page_size`-byte pages (None: the page size migrate() gave it)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(template, path)
    if page_size is not None:
        rebuild_with_page_size(path, page_size)


def report(name: str, wall: float, loop_cpu: float, gc_clock: GcClock, rows: int) -> None:
    """One RESULT line: rows/s, and where the time went."""
    print(
        f"RESULT {name}: {rows:,} rows in {wall:.2f} s = {rows / wall:,.0f} rows/s; "
        f"event-loop thread {loop_cpu:.2f} s CPU ({loop_cpu / wall:.0%} of wall, "
        f"{loop_cpu / rows * 1e6:.1f} µs/row), of which garbage collection "
        f"{gc_clock.seconds:.2f} s ({gc_clock.runs} runs, {gc_clock.full_runs} full)"
    )


def load() -> str:
    """The load averages, to say how quiet the machine was."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


@contextmanager
def fresh_store(url: str | None) -> Iterator[str]:
    """A migrated empty store: a temporary SQLite file (url None), or a database created on the
    PostgreSQL server of `url` and dropped afterwards."""
    if url is None:
        with tempfile.TemporaryDirectory() as tmp:
            store = f"sqlite:///{Path(tmp) / 'bench.db'}"
            migrate(store)
            yield store
        return
    name = f"tunnelacct_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(sync_url(url), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            store = make_url(url).set(database=name).render_as_string(hide_password=False)
            migrate(store)
            yield store
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def count_rows(url: str) -> tuple[int, int, dict[str, int]]:
    """(rows, completed rows, rows per gateway) of the store."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            count, completed = conn.exec_driver_sql(
                "SELECT count(*), sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END)"
                " FROM sessions"
            ).one()
            per_gateway = {
                gateway: n
                for gateway, n in conn.exec_driver_sql(
                    "SELECT gateway, count(*) FROM sessions GROUP BY gateway"
                )
            }
    finally:
        engine.dispose()
    return int(count), int(completed or 0), {str(k): int(v) for k, v in per_gateway.items()}


def wal_bytes(url: str) -> int:
    """The server's current WAL position in bytes (PostgreSQL; 0 for SQLite)."""
    if not url.startswith("postgresql"):
        return 0
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            lsn = conn.exec_driver_sql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").scalar()
    finally:
        engine.dispose()
    return int(lsn)


def pg_size(url: str) -> str:
    """On-disk size of the sessions table: heap, indexes, total, and per row (after ANALYZE)."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("VACUUM ANALYZE sessions")  # visibility map, as autovacuum would
            rows = conn.exec_driver_sql("SELECT count(*) FROM sessions").scalar_one()
            # sessions and its day partitions (issue 7; the partitioned table itself is empty)
            heap, indexes, total = conn.exec_driver_sql(
                "SELECT sum(pg_relation_size(relid)), sum(pg_indexes_size(relid)),"
                " sum(pg_total_relation_size(relid)) FROM pg_partition_tree('sessions')"
            ).one()
    finally:
        engine.dispose()
    return (
        f"{rows:,} rows: heap {heap / 2**20:,.1f} MiB, indexes {indexes / 2**20:,.1f} MiB, "
        f"total {total / 2**20:,.1f} MiB = {total / rows:,.0f} bytes/row "
        f"(heap {heap / rows:,.0f}, indexes {indexes / rows:,.0f})"
    )


def closing_updates(events: Sequence[SessionEvent]) -> list[SessionEvent]:
    """A CLOSED event for each CHECKPOINT in `events` (the update pass)."""
    return [
        replace(e, kind=EventKind.CLOSED, ended_ts=e.last_ts + 1, close_reason=CloseReason.FIN)
        for e in events
        if e.kind is EventKind.CHECKPOINT
    ]


async def partitions_for(url: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """The sessions partitions of the rows' days, as the writer creates them (untimed)."""
    engine = make_engine(url)
    try:
        await ensure_partitions(
            engine, {row[ROW_COLUMNS.index("started_at")].date() for row in rows}
        )
    finally:
        await engine.dispose()


async def pg_floor(url: str, events: Sequence[SessionEvent], batch_size: int) -> float:
    """Seconds to upsert `events` as the writer does (COPY into the staging table, upsert from
    it) with prebuilt rows through asyncpg alone (no SQLAlchemy, no row building, no queue),
    one batch at a time on one connection (the writer has PG_FLIGHTS batches in flight)."""
    import asyncpg

    driver = driver_values("postgresql")
    rows = [session_values(e, "gw-floor", driver) for e in events]
    await partitions_for(url, rows)
    dialect = postgresql_asyncpg.dialect()
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
    try:
        await conn.execute(staging_table_sql(dialect))
        upsert = staged_upsert_sql(dialect)
        started = time.perf_counter()
        for start in range(0, len(rows), batch_size):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    STAGING_TABLE, records=rows[start : start + batch_size], columns=ROW_COLUMNS
                )
                await conn.execute(upsert)
        return time.perf_counter() - started
    finally:
        await conn.close()


def single(a: argparse.Namespace, config: WriterConfig) -> None:
    """One writer: the insert pass, the update pass, then the floor of the engine."""
    events = make_events(a.events, a.closed_share)
    closes = closing_updates(events)
    print(
        f"events: {len(events):,} new sessions ({len(events) - len(closes):,} closed, "
        f"{len(closes):,} checkpoints), then {len(closes):,} closing updates; "
        f"batch_size={config.batch_size}, submit chunks of {a.chunk}"
    )
    with fresh_store(a.url) as url:
        for name, batch in (("insert", events), ("update", closes)):
            server0, wal0 = postgres_server_cpu_s(), wal_bytes(url)
            written = write_pass(url, batch, config, a.chunk, synchronous=a.synchronous)
            report(name, *asyncio.run(written))
            if a.url is not None:
                wal = wal_bytes(url) - wal0
                print(
                    f"  server: postgres processes {postgres_server_cpu_s() - server0:.2f} s CPU, "
                    f"{wal / 2**20:,.0f} MiB of WAL ({wal / len(batch):,.0f} bytes/row)"
                )
            if a.url is not None and name == "insert":
                print(f"  size: {pg_size(url)}")
        count, completed, _ = count_rows(url)
        print(f"check: {count:,} rows, {completed:,} completed")
    if a.url is None:
        floors = []
        with tempfile.TemporaryDirectory() as tmp:
            template = Path(tmp) / "template.db"
            migrate(f"sqlite:///{template}")
            for round_number in range(1, a.floor_rounds + 1):
                for batch_size in a.floor_batch_sizes or [config.batch_size]:
                    for page_size in a.floor_page_sizes or [None]:
                        floor_db = Path(tmp) / "floor.db"
                        copy_with_page_size(template, floor_db, page_size)
                        pages = "" if page_size is None else f", {page_size}-byte pages"
                        floor = sqlite_floor(floor_db, events, batch_size)
                        floors.append(
                            (
                                "sqlite floor",
                                f"stdlib sqlite3 alone, same upsert and rows{pages}, "
                                f"{batch_size} rows a commit, "
                                f"{floor.bytes_per_row:,.0f} bytes written a row, "
                                f"round {round_number}",
                                floor.seconds,
                            )
                        )
    else:
        floors = []
        for name, note, floor in (
            ("pg floor", "asyncpg alone, COPY + upsert, one batch at a time", pg_floor),
        ):
            with fresh_store(a.url) as url:
                floors.append((name, note, asyncio.run(floor(url, events, config.batch_size))))
    for name, note, wall in floors:
        print(
            f"RESULT {name}: {len(events):,} rows in {wall:.2f} s = "
            f"{len(events) / wall:,.0f} rows/s ({note})"
        )


def gateway_process(
    url: str, index: int, a: argparse.Namespace, config: WriterConfig, go: Any, out: Any
) -> None:
    """One gateway of --gateways: build its events, wait for `go`, write them, send figures."""
    events = make_events(a.events, a.closed_share, seed=7 + index)
    go.wait()
    started = time.time()
    wall, cpu, gc_clock, rows = asyncio.run(
        write_pass(url, events, config, a.chunk, gateway=f"gw-bench-{index}")
    )
    out.put((index, started, time.time(), wall, cpu, gc_clock.seconds, rows))


def gateways(a: argparse.Namespace, config: WriterConfig) -> None:
    """N writer processes at once into one store: per-process and sustained rows/s."""
    ctx = multiprocessing.get_context("spawn")
    print(
        f"{a.gateways} gateway processes, {a.events:,} new sessions each (insert pass), "
        f"batch_size={config.batch_size}"
    )
    with fresh_store(a.url) as url:
        go, out = ctx.Barrier(a.gateways + 1), ctx.Queue()
        procs = [
            ctx.Process(target=gateway_process, args=(url, i, a, config, go, out))
            for i in range(1, a.gateways + 1)
        ]
        for proc in procs:
            proc.start()
        try:
            go.wait(timeout=600)  # every process has built its events
            server0 = postgres_server_cpu_s()
            results = sorted(out.get(timeout=3600) for _ in procs)
            server = postgres_server_cpu_s() - server0
        finally:
            for proc in procs:
                proc.join(timeout=60)
                if proc.is_alive():
                    proc.kill()
        for index, _, _, wall, cpu, _gc_s, rows in results:
            print(
                f"  gw-bench-{index}: {rows:,} rows in {wall:.2f} s = {rows / wall:,.0f} rows/s;"
                f" event-loop thread {cpu:.2f} s CPU ({cpu / wall:.0%} of wall)"
            )
        first, last = min(r[1] for r in results), max(r[2] for r in results)
        total = sum(r[6] for r in results)
        print(
            f"RESULT {a.gateways} gateways: {total:,} rows in {last - first:.2f} s = "
            f"{total / (last - first):,.0f} rows/s sustained, all gateways together"
        )
        if a.url is not None:
            print(
                f"  server: postgres processes {server:.2f} s CPU "
                f"({server / (last - first):.0%} of one core)"
            )
        count, _, per_gateway = count_rows(url)
        print(f"check: {count:,} rows; per gateway {per_gateway}")


def main() -> None:
    """Parse flags; run one writer or --gateways N processes; print figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="new sessions (per gateway)")
    ap.add_argument(
        "--closed-share", type=float, default=0.8, help="CLOSED events, rest CHECKPOINT"
    )
    ap.add_argument("--chunk", type=int, default=4096, help="events per submit() call")
    ap.add_argument("--batch-size", type=int, default=WriterConfig().batch_size)
    ap.add_argument("--max-pending", type=int, default=WriterConfig().max_pending)
    ap.add_argument("--url", help="a PostgreSQL server (postgresql://...) instead of SQLite")
    ap.add_argument("--gateways", type=int, default=1, help="writer processes at once")
    ap.add_argument(
        "--synchronous",
        choices=["normal", "full"],
        default="normal",
        help="SQLite: [database] synchronous of the writer's store",
    )
    ap.add_argument(
        "--floor-page-sizes",
        type=int,
        nargs="+",
        help="SQLite: the floor on a store rebuilt with each of these page sizes, in turn",
    )
    ap.add_argument(
        "--floor-batch-sizes",
        type=int,
        nargs="+",
        help="SQLite: the floor with each of these rows a commit, in turn (default --batch-size)",
    )
    ap.add_argument("--floor-rounds", type=int, default=1, help="SQLite: rounds of the floor")
    a = ap.parse_args()
    if a.url is not None and not a.url.startswith("postgresql"):
        ap.error("--url must be a postgresql:// URL (SQLite is the default)")
    config = WriterConfig(batch_size=a.batch_size, max_pending=a.max_pending)
    print(f"machine: {machine()}; {load()}; synchronous={a.synchronous}")
    if a.gateways > 1:
        gateways(a, config)
    else:
        single(a, config)
    print(f"after: {load()}")


if __name__ == "__main__":
    main()
