"""Migration 0014: the client's and the resource's index gain the id, on every table that holds
sessions (SQLite: sessions_default and each partition; PostgreSQL: the partitioned sessions
and so each partition), and lose it again on downgrade. Which index a page then reads is
tested in tests/test_sqliteparts.py (EXPLAIN QUERY PLAN)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime
from pathlib import Path

from tests.helpers.layout0012 import partition_made_now
from tests.helpers.pg import add_partitions, fresh_database, read_rows
from tests.helpers.stores import alembic_to
from tests.test_flow_columns import sqlite_store_at_0012

OLD = {"client_id": ["org_id", "client_id", "started_at"]}
OLD["resource_id"] = ["org_id", "resource_id", "started_at"]
NEW = {by: [*columns, "id"] for by, columns in OLD.items()}


def sqlite_indexes(path: Path, table: str) -> list[list[str]]:
    """The column lists of `table`'s indexes, as SQLite's PRAGMAs state them, sorted."""
    with closing(sqlite3.connect(path)) as db:
        names = [str(row[1]) for row in db.execute(f"PRAGMA index_list({table})")]
        columns = [
            [str(row[2]) for row in db.execute(f"PRAGMA index_info({name})")] for name in names
        ]
    return sorted(columns)


def sqlite_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


def test_0014_on_sqlite_gives_every_table_the_indexes_with_the_id_and_downgrades(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    url, partitions = sqlite_store_at_0012(path)
    alembic_to(url, "0013")
    tables = ["sessions_default", *partitions]
    everything = "SELECT * FROM sessions ORDER BY id"
    before = sqlite_rows(path, everything)
    assert len(before) == 110
    old_shape = {table: sqlite_indexes(path, table) for table in tables}
    for table in tables:
        assert all(columns in old_shape[table] for columns in OLD.values()), table

    alembic_to(url, "0014")
    assert sqlite_rows(path, everything) == before
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    # a partition made now, from the model, has the same indexes as the upgraded tables
    made = partition_made_now(url, "acme", date(2026, 11, 24))
    new_shape = sqlite_indexes(path, made)
    for table in tables:
        assert sqlite_indexes(path, table) == new_shape, table
        for by in OLD:
            assert NEW[by] in new_shape and OLD[by] not in new_shape, table
        # nothing else changed
        unchanged = [columns for columns in old_shape[table] if columns not in OLD.values()]
        assert [c for c in new_shape if c not in NEW.values()] == unchanged

    alembic_to(url, "0013", down=True)
    for table in tables:
        assert sqlite_indexes(path, table) == old_shape[table], table
    assert sqlite_rows(path, everything) == before
    alembic_to(url, "head")  # and up again
    assert sqlite_indexes(path, partitions[0]) == new_shape


def pg_indexes(url: str, table: str) -> list[list[str]]:
    """The column lists of `table`'s indexes, from pg_index, sorted."""
    rows = read_rows(
        url,
        "SELECT i.indexrelid, array_agg(a.attname ORDER BY k.ordinality)"
        " FROM pg_index i"
        " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ordinality)"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = CAST(:table AS regclass) GROUP BY i.indexrelid",
        {"table": table},
    )
    return sorted([str(name) for name in columns] for _index, columns in rows)


def test_0014_on_postgresql_gives_the_partitions_the_indexes_with_the_id_and_downgrades() -> None:
    with fresh_database() as url:
        alembic_to(url, "0013")
        add_partitions(url, [datetime(2026, 11, 22, 12, tzinfo=UTC)])
        partition = "sessions_p20261122"
        old_shape = pg_indexes(url, partition)
        assert all(columns in old_shape for columns in OLD.values())

        alembic_to(url, "0014")
        add_partitions(url, [datetime(2026, 11, 23, 12, tzinfo=UTC)])  # made after it
        for table in ("sessions", partition, "sessions_p20261123"):
            shape = pg_indexes(url, table)
            for by in OLD:
                assert NEW[by] in shape and OLD[by] not in shape, table
            assert [c for c in shape if c not in NEW.values()] == [
                c for c in old_shape if c not in OLD.values()
            ], table

        alembic_to(url, "0013", down=True)
        assert pg_indexes(url, partition) == old_shape
        assert pg_indexes(url, "sessions_p20261123") == old_shape
        alembic_to(url, "head")
