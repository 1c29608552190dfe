"""Migration 0015: the (org_id, ended_at) index goes from every table that holds sessions
(SQLite: sessions_default and each partition; PostgreSQL: the partitioned sessions and so each
partition), and comes back on downgrade; nothing else changes. Which index a purge reads
instead is tested in tests/test_sqliteparts.py (EXPLAIN QUERY PLAN), and what it deletes in
tests/test_retention.py and tests/test_sqliteparts.py."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from tests.helpers.indexes import pg_indexes, sqlite_index_shapes, sqlite_rows
from tests.helpers.layout0012 import END_INDEX_UNTIL_0015, partition_made_now
from tests.helpers.pg import add_partitions, fresh_database
from tests.helpers.stores import alembic_to
from tests.test_flow_columns import sqlite_store_at_0012

END = tuple(END_INDEX_UNTIL_0015)
END_COLUMNS = list(END_INDEX_UNTIL_0015)  # as pg_indexes() lists them


def _outliving(partition: str) -> tuple[tuple[str, ...], str]:
    """The partial index 0015 gives a partition, as the test reads it from the table's name:
    (org_id, ended_at) of the sessions that ended after its last day."""
    start = datetime.strptime(partition.split("_")[1][1:], "%Y%m%d")
    days = int(partition.split("_")[2].removesuffix("d"))
    end = start + timedelta(days=days)
    return ("org_id", "ended_at"), f"ended_at >= '{end:%Y-%m-%d} 00:00:00.000000'"


def test_0015_on_sqlite_drops_the_end_index_of_every_table_and_downgrades(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    url, partitions = sqlite_store_at_0012(path)
    alembic_to(url, "0014")
    tables = ["sessions_default", *partitions]
    everything = "SELECT * FROM sessions ORDER BY id"
    before = sqlite_rows(path, everything)
    assert len(before) == 110
    shape_0014 = {table: sqlite_index_shapes(path, table) for table in tables}
    for table in tables:
        assert (END, None) in shape_0014[table], table

    alembic_to(url, "0015")
    assert sqlite_rows(path, everything) == before
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    made = partition_made_now(url, "acme", date(2026, 11, 24))
    for table in tables:
        kept = [shape for shape in shape_0014[table] if shape != (END, None)]
        if table in partitions:
            kept = sorted([*kept, _outliving(table)], key=repr)
        assert sqlite_index_shapes(path, table) == kept, table
    made_now = sorted([*shape_0014[partitions[0]], _outliving(made)], key=repr)
    made_now.remove((END, None))
    assert sqlite_index_shapes(path, made) == made_now  # as the layout makes one now

    alembic_to(url, "0014", down=True)
    for table in tables:
        assert sqlite_index_shapes(path, table) == shape_0014[table], table
    assert (END, None) in sqlite_index_shapes(path, made)  # the one made at 0015 too
    assert _outliving(made) not in sqlite_index_shapes(path, made)
    assert sqlite_rows(path, everything) == before
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    alembic_to(url, "head")
    assert (END, None) not in sqlite_index_shapes(path, partitions[0])


def test_the_outliving_index_holds_every_session_that_ended_after_its_partition(
    tmp_path: Path,
) -> None:
    """What a purge copies out of a partition before emptying it, it reads by the partial
    index of 0015: read through the index (INDEXED BY), the sessions that ended after the
    partition's last day are those a scan of the table (NOT INDEXED) finds, after 0015 built
    the index of rows already there and as the writer changes rows later."""
    path = tmp_path / "store.db"
    url, partitions = sqlite_store_at_0012(path)
    alembic_to(url, "0014")
    first = partitions[0]
    late = "'2026-11-25 10:00:00.000000'"  # two days after the first partition's day
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            f"UPDATE {first} SET ended_at = {late} WHERE id IN (SELECT id FROM {first} LIMIT 3)"
        )
    alembic_to(url, "head")
    with closing(sqlite3.connect(path)) as db, db:
        two_more = f"SELECT id FROM {first} WHERE ended_at < {late} LIMIT 2 OFFSET 10"
        db.execute(f"UPDATE {first} SET ended_at = {late} WHERE id IN ({two_more})")
        one_back = f"SELECT min(id) FROM {first} WHERE ended_at = {late}"
        db.execute(f"UPDATE {first} SET ended_at = started_at WHERE id = ({one_back})")
    condition = _outliving(first)[1]
    index = f"ix_{first}_org_id_ended_at_outliving"
    by_index = sqlite_rows(
        path,
        f"SELECT id FROM {first} INDEXED BY {index} WHERE {condition} AND org_id = 'acme'"
        " ORDER BY id",
    )
    by_scan = sqlite_rows(path, f"SELECT id FROM {first} NOT INDEXED WHERE {condition} ORDER BY id")
    assert len(by_scan) == 4
    assert by_index == by_scan


def test_0015_on_postgresql_drops_the_end_index_of_the_partitions_and_downgrades() -> None:
    with fresh_database() as url:
        alembic_to(url, "0014")
        add_partitions(url, [datetime(2026, 11, 22, 12, tzinfo=UTC)])
        partition = "sessions_p20261122"
        shape_0014 = pg_indexes(url, partition)
        assert END_COLUMNS in shape_0014 and END_COLUMNS in pg_indexes(url, "sessions")

        alembic_to(url, "0015")
        add_partitions(url, [datetime(2026, 11, 23, 12, tzinfo=UTC)])  # made after it
        for table in ("sessions", partition, "sessions_p20261123"):
            shape = pg_indexes(url, table)
            assert END_COLUMNS not in shape, table
        without_end = [columns for columns in shape_0014 if columns != END_COLUMNS]
        assert pg_indexes(url, partition) == without_end
        assert pg_indexes(url, "sessions_p20261123") == without_end

        alembic_to(url, "0014", down=True)
        assert pg_indexes(url, partition) == shape_0014
        assert pg_indexes(url, "sessions_p20261123") == shape_0014
        alembic_to(url, "head")
