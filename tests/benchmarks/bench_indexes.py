"""Benchmark: what each index of the sessions tables costs SQLite's writes (issue 21).

Imports the session-heavy capture of bench_sessions.py (synth_sessions.py, seeded) into a new
store with the `tunnelacct import` command, reads its rows back in the order they were written,
then writes them again with the writer's own upsert, `--batch-size` rows a transaction, into a
new file per variant of the table's indexes (its CREATE statements as the store has them, some
left out or changed), with the writer's pragmas. Variants alternate, `--runs` times; it prints
each run's microseconds per row. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_indexes.py [--sessions 300000] [--runs 3]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy.dialects import sqlite  # noqa: E402

from tests.benchmarks.bench_sessions import import_once, session_heavy  # noqa: E402
from tests.benchmarks.machine import machine  # noqa: E402
from tunnelacct.store.codec import upsert_sql  # noqa: E402
from tunnelacct.store.models import SessionRecord, table_of  # noqa: E402
from tunnelacct.store.sqlite.layout import DEFAULT_TABLE  # noqa: E402
from tunnelacct.store.sqlite.write import WRITER_CACHE_KIB, WRITER_WAL_AUTOCHECKPOINT_PAGES  # noqa: E402

Indexes = list[str]  # CREATE INDEX statements


def without(*fragments: str) -> Callable[[Indexes], Indexes]:
    """The indexes but those whose statement holds one of `fragments`."""
    return lambda indexes: [sql for sql in indexes if not any(f in sql for f in fragments)]


def without_id_in_client_and_resource(indexes: Indexes) -> Indexes:
    """The client's and the resource's index as they were before migration 0014."""
    return [
        sql.replace("started_at, id)", "started_at)") if by_client_or_resource(sql) else sql
        for sql in indexes
    ]


def by_client_or_resource(index: str) -> bool:
    return "_client_id_started_at" in index or "_resource_id_started_at" in index


def with_end_index(indexes: Indexes) -> Indexes:
    """The indexes and (org_id, ended_at), as the tables had it before migration 0015."""
    return [
        *indexes,
        f"CREATE INDEX ix_sessions_org_id_ended_at ON {DEFAULT_TABLE} (org_id, ended_at)",
    ]


def with_outliving_index(indexes: Indexes, rows: Sequence[tuple[object, ...]]) -> Indexes:
    """The indexes and a partition's partial index of the sessions that ended after its last
    day (migration 0015), for a partition of the rows' first day."""
    first_day = date.fromisoformat(min(str(row[STARTED_AT]) for row in rows)[:10])
    day_end = datetime.combine(first_day + timedelta(days=1), datetime.min.time())
    condition = f"ended_at >= '{day_end.isoformat(' ', 'microseconds')}'"
    return [
        *indexes,
        f"CREATE INDEX ix_outliving ON {DEFAULT_TABLE} (org_id, ended_at) WHERE {condition}",
    ]


STARTED_AT = [c.name for c in table_of(SessionRecord).columns].index("started_at")

VARIANTS: dict[str, Callable[[Indexes], Indexes]] = {
    "as the store has them": lambda indexes: indexes,
    "with (org_id, ended_at) (before 0015)": with_end_index,
    "client and resource without the id": without_id_in_client_and_resource,
    "without the client's and the resource's": without("_client_id_", "_resource_id_"),
    "primary key only": without("CREATE INDEX"),
}


def stored(path: Path) -> tuple[str, Indexes, list[tuple[object, ...]]]:
    """sessions_default's CREATE TABLE, its CREATE INDEX statements and its rows in rowid order."""
    with closing(sqlite3.connect(path)) as db:
        schema = db.execute(
            "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL",
            (DEFAULT_TABLE,),
        ).fetchall()
        rows = db.execute(f"SELECT * FROM {DEFAULT_TABLE} ORDER BY rowid").fetchall()
    table = next(str(sql) for kind, sql in schema if kind == "table")
    indexes = [str(sql) for kind, sql in schema if kind == "index"]
    return table, indexes, rows


def new_table(path: Path, table: str, indexes: Sequence[str]) -> sqlite3.Connection:
    """A new file at `path` holding `table` (its CREATE statement) and `indexes`, and a
    connection to it with the writer's pragmas, in autocommit mode."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    db = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        f"cache_size=-{WRITER_CACHE_KIB}",
        f"wal_autocheckpoint={WRITER_WAL_AUTOCHECKPOINT_PAGES}",
    ):
        db.execute(f"PRAGMA {pragma}")  # as the writer's connection has them
    db.execute(table)
    for index in indexes:
        db.execute(index)
    return db


def write_all(
    path: Path, table: str, indexes: Indexes, rows: Sequence[tuple[object, ...]], batch: int
) -> float:
    """Seconds to upsert `rows` into a new table of `indexes` at `path`, `batch` a commit."""
    sql = upsert_sql(sqlite.dialect(), DEFAULT_TABLE)
    with closing(new_table(path, table, indexes)) as db:
        started = time.perf_counter()
        for first in range(0, len(rows), batch):
            db.execute("BEGIN")
            db.executemany(sql, rows[first : first + batch])
            db.execute("COMMIT")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config, capture, _packets, _sessions = session_heavy(work, args.sessions)
        store = work / "store.db"
        import_once(f"sqlite:///{store}", config, capture)
        table, indexes, rows = stored(store)
        print(f"{len(rows):,} rows of an import of {args.sessions:,} sessions; indexes:")
        for index in indexes:
            print(f"  {index}")
        variants = dict(VARIANTS)
        variants["as a partition has them (0015: sessions outliving its day)"] = lambda indexes: (
            with_outliving_index(indexes, rows)
        )
        for run in range(1, args.runs + 1):
            for label, variant in variants.items():
                seconds = write_all(
                    work / "variant.db", table, variant(indexes), rows, args.batch_size
                )
                print(
                    f"run {run}: {label:60s} {seconds:6.2f} s, "
                    f"{seconds / len(rows) * 1e6:5.1f} µs a row",
                    flush=True,
                )


if __name__ == "__main__":
    main()
