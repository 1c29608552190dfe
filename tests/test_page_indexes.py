"""Migration 0014: the client's and the resource's index gain the id, on every table that holds
sessions (SQLite: sessions_default and each partition; PostgreSQL: the partitioned sessions
and so each partition), and lose it again on downgrade. Which index a page then reads is
tested in tests/test_sqliteparts.py (EXPLAIN QUERY PLAN)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from tests.helpers.indexes import pg_indexes, sqlite_indexes, sqlite_rows
from tests.helpers.layout0012 import partition_made_now
from tests.helpers.pg import add_partitions, fresh_database
from tests.helpers.stores import alembic_to
from tests.test_flow_columns import sqlite_store_at_0012

OLD = {"client_id": ["org_id", "client_id", "started_at"]}
OLD["resource_id"] = ["org_id", "resource_id", "started_at"]
NEW = {by: [*columns, "id"] for by, columns in OLD.items()}


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
    for table in tables:
        shape = sqlite_indexes(path, table)
        for by in OLD:
            assert NEW[by] in shape and OLD[by] not in shape, table
        # nothing else changed
        unchanged = [columns for columns in old_shape[table] if columns not in OLD.values()]
        assert [c for c in shape if c not in NEW.values()] == unchanged, table

    alembic_to(url, "0013", down=True)
    for table in tables:
        assert sqlite_indexes(path, table) == old_shape[table], table
    assert sqlite_rows(path, everything) == before
    alembic_to(url, "head")  # and up again, to the layout a partition made now has
    made = sqlite_indexes(path, partition_made_now(url, "acme", date(2026, 11, 24)))
    for table in partitions:
        assert sqlite_indexes(path, table) == made, table
    # sessions_default lacks only the partitions' own index of sessions that outlive them (0015)
    made.remove(["org_id", "ended_at"])
    assert sqlite_indexes(path, "sessions_default") == made


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
