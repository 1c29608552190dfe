"""Benchmark: what binding a session row's values costs SQLite's writes, its NULLs above all.

Imports the session-heavy capture of bench_sessions.py (synth_sessions.py, seeded) into a new
store with the `tunnelacct import` command, reads its rows back in the order they were written,
then writes them again with the writer's upsert and pragmas, `--batch-size` rows a transaction,
into a new table with the store's indexes, once per way of binding them, the ways in turn,
`--runs` times:

- "adapter search": the stdlib sqlite3 module as it comes, which looks for an adapter of every
  value that is not an int, float or str, None included (a key tuple, a registry miss, then
  `__adapt__` and `__conform__` looked up) before it binds NULL;
- "None adapter": with the adapter of None that the writer registers
  (`store/sqlite/write.py`, `register_none_adapter`);
- "NULL columns left out": the columns that are NULL in every row left out of the statement
  (a lower bound for skipping NULLs altogether: the writer would need a statement per set of
  NULL columns, and work out each row's set).

With `--unattributed`, the import's config has no clients and no resources: every session is
unattributed, and its row holds six NULLs instead of one.

Prints each run's wall and CPU microseconds per row. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_binding.py [--sessions 300000] [--runs 3]
        [--unattributed]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy.dialects import sqlite  # noqa: E402

from tests.benchmarks.bench_indexes import new_table, stored  # noqa: E402
from tests.benchmarks.bench_sessions import import_once, session_heavy  # noqa: E402
from tests.benchmarks.machine import machine  # noqa: E402
from tunnelacct.store.codec import upsert_sql  # noqa: E402
from tunnelacct.store.rows import ROW_COLUMNS  # noqa: E402
from tunnelacct.store.sqlite.layout import DEFAULT_TABLE  # noqa: E402
from tunnelacct.store.sqlite.write import register_none_adapter  # noqa: E402

Row = tuple[object, ...]
NONE_ADAPTER_KEY = (type(None), sqlite3.PrepareProtocol)
WAYS = ("adapter search", "None adapter", "NULL columns left out")


def without_null_columns(rows: Sequence[Row]) -> tuple[str, list[Row]]:
    """The upsert without the columns that are NULL in every row, and the rows without them."""
    kept = [i for i in range(len(ROW_COLUMNS)) if any(row[i] is not None for row in rows)]
    dialect = sqlite.dialect()
    quote = dialect.identifier_preparer.quote
    every_column = ", ".join(quote(column) for column in ROW_COLUMNS)
    kept_columns = ", ".join(quote(ROW_COLUMNS[i]) for i in kept)
    every_value = ", ".join("?" for _ in ROW_COLUMNS)
    kept_values = ", ".join("?" for _ in kept)
    sql = upsert_sql(dialect, DEFAULT_TABLE)
    sql = sql.replace(f"({every_column})", f"({kept_columns})", 1)
    sql = sql.replace(f"VALUES ({every_value})", f"VALUES ({kept_values})", 1)
    return sql, [tuple(row[i] for i in kept) for row in rows]


def write_all(
    path: Path, table: str, indexes: Sequence[str], sql: str, rows: Sequence[Row], batch: int
) -> tuple[float, float]:
    """(wall, CPU) seconds to upsert `rows` with `sql` into a new table at `path`."""
    with closing(new_table(path, table, indexes)) as db:
        wall_started = time.perf_counter()
        cpu_started = time.process_time()
        for first in range(0, len(rows), batch):
            db.execute("BEGIN")
            db.executemany(sql, rows[first : first + batch])
            db.execute("COMMIT")
        return time.perf_counter() - wall_started, time.process_time() - cpu_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--unattributed", action="store_true", help="no clients, no resources")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config, capture, _packets, _sessions = session_heavy(work, args.sessions)
        if args.unattributed:
            config.write_text("")  # the default org, and nothing attributed
        store = work / "store.db"
        import_once(f"sqlite:///{store}", config, capture)
        table, indexes, rows = stored(store)
        nulls_per_row = sum(value is None for row in rows for value in row) / len(rows)
        print(f"{len(rows):,} rows of an import of {args.sessions:,} sessions")
        print(f"NULLs a row: {nulls_per_row:.1f}")
        every_column_sql = upsert_sql(sqlite.dialect(), DEFAULT_TABLE)
        fewer_columns_sql, fewer_columns_rows = without_null_columns(rows)
        for run in range(1, args.runs + 1):
            for way in WAYS:
                sqlite3.adapters.pop(NONE_ADAPTER_KEY, None)
                sql = every_column_sql
                bound = rows
                if way == "None adapter":
                    register_none_adapter()
                elif way == "NULL columns left out":
                    sql = fewer_columns_sql
                    bound = fewer_columns_rows
                wall_s, cpu_s = write_all(
                    work / "again.db", table, indexes, sql, bound, args.batch_size
                )
                print(
                    f"run {run}: {way:24s} {wall_s / len(rows) * 1e6:5.1f} µs a row "
                    f"({cpu_s / len(rows) * 1e6:5.1f} µs of CPU)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
