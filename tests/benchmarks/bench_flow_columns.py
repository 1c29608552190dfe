"""Benchmark: migration 0013 (flow-record columns) on a SQLite store with rows, against the
table rebuild it avoids.

Builds a store as 0012 left it (tests/helpers/layout0012.py): one org kept 30 days, a one-day
partition per day holding `--sessions` sessions in all, a few in sessions_default. It times:

- the upgrade to 0013 (ADD COLUMN, and payloads made nullable by editing sqlite_schema),
  after an Alembic run with nothing to do (what Alembic's own start costs);
- PRAGMA integrity_check and PRAGMA quick_check of the upgraded store (what the procedure of
  SQLite's documentation ends with, optionally);
- the downgrade back to 0012;
- on a copy of the store made before, the rebuild of every table that the edit replaces
  (CREATE TABLE with the new definition, INSERT ... SELECT, DROP, RENAME, indexes built
  again), as SQLite's general procedure for schema changes does it.

Prints seconds each and the file's size. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_flow_columns.py [--sessions 1000000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import create_engine, pool  # noqa: E402

from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.layout0012 import PAYLOAD_COLUMNS, create_partitions_0012, fill_0012  # noqa: E402
from tests.helpers.stores import alembic_to  # noqa: E402

DAYS = 30
FIRST_DAY = date(2026, 10, 1)
DEFAULT_ROWS = 1000  # rows of sessions_default: the day before the first partition


def build(path: Path, sessions: int) -> None:
    """A store at 0012 holding `sessions` sessions, most in DAYS one-day partitions."""
    url = f"sqlite:///{path}"
    alembic_to(url, "0012")
    engine = create_engine(url, poolclass=pool.NullPool)
    per_day = (sessions - DEFAULT_ROWS) // DAYS
    days = [FIRST_DAY + timedelta(days=k) for k in range(DAYS)]
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO orgs (id, name, retention_days, updated_at, logging) "
                "VALUES ('acme', 'Acme', 30, '2026-11-25 00:00:00.000000', 1)"
            )
            names = create_partitions_0012(conn, "acme", days)
            day_before = FIRST_DAY - timedelta(days=1)
            fill_0012(conn, "sessions_default", "acme", day_before, 1, DEFAULT_ROWS)
        for number, (name, day) in enumerate(zip(names, days, strict=True)):
            with engine.begin() as conn:
                fill_0012(conn, name, "acme", day, DEFAULT_ROWS + 1 + number * per_day, per_day)
    finally:
        engine.dispose()


def timed(label: str, work: Callable[[], object]) -> float:
    """Run `work`, print how long it took and return that (seconds)."""
    started = time.perf_counter()
    work()
    took = time.perf_counter() - started
    print(f"{label:<48} {took:8.2f} s")
    return took


def pragma(path: Path, name: str) -> None:
    """Run a checking PRAGMA (integrity_check, quick_check); exit unless it says ok."""
    with closing(sqlite3.connect(path)) as db:
        result = db.execute(f"PRAGMA {name}").fetchall()
    if result != [("ok",)]:
        raise SystemExit(f"{name}: {result}")


def rebuild_all(path: Path) -> None:
    """What a rebuild of every sessions table costs: each copied into a table of the same
    definition less the payloads' NOT NULL, dropped, the copy renamed, its indexes rebuilt."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("DROP VIEW sessions")  # it names the tables (made again by a real rebuild)
        tables = [
            str(name)
            for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'sessions_%'"
            )
        ]
        for table in tables:
            (sql,) = db.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()
            indexes = [
                str(index_sql)
                for (index_sql,) in db.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
                    "AND sql IS NOT NULL",
                    (table,),
                )
            ]
            for column in PAYLOAD_COLUMNS:
                sql = sql.replace(f"{column} BIGINT NOT NULL", f"{column} BIGINT")
            sql = sql.replace(table, f"{table}_new", 1)
            db.execute(sql)
            db.execute(f"INSERT INTO {table}_new SELECT * FROM {table}")
            db.execute(f"DROP TABLE {table}")
            db.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
            for index_sql in indexes:
                db.execute(index_sql)
        db.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = Path(tmp) / "store.db"
        timed(
            f"build a store of {args.sessions:,} sessions at 0012",
            lambda: build(store, args.sessions),
        )
        print(f"{'store size':<48} {store.stat().st_size / 1e6:8.1f} MB")
        # the rebuild works on a copy; the migration on the store itself, as a real one does
        # (right after a copy of the file, its writes compete with the copy's: 10x slower)
        rebuilt = Path(tmp) / "rebuilt.db"
        shutil.copyfile(store, rebuilt)
        url = f"sqlite:///{store}"
        timed("Alembic at 0012, nothing to do (its own start)", lambda: alembic_to(url, "0012"))
        timed("upgrade 0012 -> 0013 (schema edit)", lambda: alembic_to(url, "0013"))
        timed("PRAGMA integrity_check", lambda: pragma(store, "integrity_check"))
        timed("PRAGMA quick_check", lambda: pragma(store, "quick_check"))
        timed("downgrade 0013 -> 0012", lambda: alembic_to(url, "0012", down=True))
        timed("rebuild of every sessions table instead", lambda: rebuild_all(rebuilt))


if __name__ == "__main__":
    main()
