"""Migration 0015: the (org_id, ended_at) index goes from every table that holds sessions
(SQLite: sessions_default and each partition; PostgreSQL: the partitioned sessions and so each
partition), and comes back on downgrade; nothing else changes. Which index a purge reads
instead is tested in tests/test_sqliteparts.py (EXPLAIN QUERY PLAN), and what it deletes in
tests/test_retention.py and tests/test_sqliteparts.py."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from tests.helpers.indexes import pg_indexes, sqlite_indexes, sqlite_rows
from tests.helpers.layout0012 import END_INDEX_UNTIL_0015, partition_made_now
from tests.helpers.pg import add_partitions, fresh_database
from tests.helpers.stores import alembic_to
from tests.test_flow_columns import sqlite_store_at_0012

END = list(END_INDEX_UNTIL_0015)


def test_0015_on_sqlite_drops_the_end_index_of_every_table_and_downgrades(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    url, partitions = sqlite_store_at_0012(path)
    alembic_to(url, "0014")
    tables = ["sessions_default", *partitions]
    everything = "SELECT * FROM sessions ORDER BY id"
    before = sqlite_rows(path, everything)
    assert len(before) == 110
    shape_0014 = {table: sqlite_indexes(path, table) for table in tables}
    for table in tables:
        assert END in shape_0014[table], table

    alembic_to(url, "0015")
    assert sqlite_rows(path, everything) == before
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    made = partition_made_now(url, "acme", date(2026, 11, 24))
    for table in tables:
        shape = sqlite_indexes(path, table)
        assert shape == [columns for columns in shape_0014[table] if columns != END], table
        assert shape == sqlite_indexes(path, made), table  # as the layout makes one now

    alembic_to(url, "0014", down=True)
    for table in tables:
        assert sqlite_indexes(path, table) == shape_0014[table], table
    assert END in sqlite_indexes(path, made)  # the one made at 0015 too
    assert sqlite_rows(path, everything) == before
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    alembic_to(url, "head")
    assert END not in sqlite_indexes(path, partitions[0])


def test_0015_on_postgresql_drops_the_end_index_of_the_partitions_and_downgrades() -> None:
    with fresh_database() as url:
        alembic_to(url, "0014")
        add_partitions(url, [datetime(2026, 11, 22, 12, tzinfo=UTC)])
        partition = "sessions_p20261122"
        shape_0014 = pg_indexes(url, partition)
        assert END in shape_0014 and END in pg_indexes(url, "sessions")

        alembic_to(url, "0015")
        add_partitions(url, [datetime(2026, 11, 23, 12, tzinfo=UTC)])  # made after it
        for table in ("sessions", partition, "sessions_p20261123"):
            shape = pg_indexes(url, table)
            assert END not in shape, table
        without_end = [columns for columns in shape_0014 if columns != END]
        assert pg_indexes(url, partition) == without_end
        assert pg_indexes(url, "sessions_p20261123") == without_end

        alembic_to(url, "0014", down=True)
        assert pg_indexes(url, partition) == shape_0014
        assert pg_indexes(url, "sessions_p20261123") == shape_0014
        alembic_to(url, "head")
