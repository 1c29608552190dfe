"""SQLite stores laid out as migration 0012 left them, before the flow-record columns of 0013:
partition tables as tunnelacct.store.sqlite.layout made them then (from the model of the
time: payloads NOT NULL, no `estimated` or `incomplete`), the sessions view over them, and
rows generated in SQL. For the tests of migrations 0013 (tests/test_flow_columns.py), 0014
(tests/test_page_indexes.py) and 0015 (tests/test_end_index.py), and the benchmark of 0013
(tests/benchmarks/bench_flow_columns.py).
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Index,
    MetaData,
    Table,
    create_engine,
    pool,
    text,
)
from sqlalchemy.schema import CreateIndex, CreateTable

from tunnelacct.enums import SessionStatus
from tunnelacct.store.models import SessionRecord, table_of
from tunnelacct.store.sqlite.layout import DEFAULT_TABLE, cover_days, partition_name, partitions

FLAG_COLUMNS = ("estimated", "incomplete")  # added by 0013
PAYLOAD_COLUMNS = ("payload_bytes_tx", "payload_bytes_rx")  # NOT NULL before 0013
# the client's and the resource's index, which 0014 gave the id
WITH_ID_SINCE_0014 = (["client_id", "started_at", "id"], ["resource_id", "started_at", "id"])
END_INDEX_UNTIL_0015 = ("org_id", "ended_at")  # dropped by 0015, no longer in the model
COLUMNS_0012 = [c.name for c in table_of(SessionRecord).columns if c.name not in FLAG_COLUMNS]


def _column_0012(column: Column[object]) -> Column[object]:
    copy = column._copy()
    if column.name in PAYLOAD_COLUMNS:
        copy.nullable = False
    return copy


def partition_table_0012(name: str) -> Table:
    """The partition table `name` as layout.py's `_partition_table` built it at 0012."""
    model = table_of(SessionRecord)
    statuses = ", ".join(f"'{s.value}'" for s in SessionStatus)
    table = Table(
        name,
        MetaData(),
        *(_column_0012(c) for c in model.columns if c.name not in FLAG_COLUMNS),
        CheckConstraint(f"status IN ({statuses})", name=f"ck_{name}_status"),
    )
    for index in model.indexes:
        cols = [table.c[c.name] for c in index.columns]
        if [c.name for c in cols[1:]] in WITH_ID_SINCE_0014:
            cols = cols[:-1]
        suffix = "_".join(c.name for c in cols)
        if index.dialect_options["sqlite"]["where"] is not None:
            suffix = f"{suffix}_ongoing"
        Index(f"ix_{name}_{suffix}", *cols, unique=index.unique, **index.dialect_kwargs)
    end_suffix = "_".join(END_INDEX_UNTIL_0015)
    Index(f"ix_{name}_{end_suffix}", *(table.c[c] for c in END_INDEX_UNTIL_0015))
    return table


def create_partitions_0012(conn: Connection, org_id: str, days: list[date]) -> list[str]:
    """Create a one-day partition of `org_id` for each of `days` as 0012 did, and the view
    over sessions_default and every partition; returns the partitions' names."""
    names = [partition_name(org_id, day) for day in days]
    for name in names:
        table = partition_table_0012(name)
        conn.execute(CreateTable(table))
        for index in table.indexes:
            conn.execute(CreateIndex(index))
    rebuild_view_0012(conn)
    return names


def rebuild_view_0012(conn: Connection) -> None:
    """The sessions view and its triggers over COLUMNS_0012, as layout.rebuild_view made them
    (one view: the tests and the benchmark have fewer than its 400 tables a view)."""
    tables = [DEFAULT_TABLE, *(p.name for p in partitions(conn))]
    columns = ", ".join(COLUMNS_0012)
    conn.exec_driver_sql("DROP VIEW IF EXISTS sessions")
    union = " UNION ALL ".join(f"SELECT {columns} FROM {t}" for t in tables)
    conn.exec_driver_sql(f"CREATE VIEW sessions AS {union}")
    new = ", ".join(f"NEW.{c}" for c in COLUMNS_0012)
    conn.exec_driver_sql(
        "CREATE TRIGGER sessions_insert INSTEAD OF INSERT ON sessions BEGIN "
        f"INSERT INTO {DEFAULT_TABLE} ({columns}) VALUES ({new}); END"
    )
    deletes = " ".join(f"DELETE FROM {t} WHERE id = OLD.id;" for t in tables)
    conn.exec_driver_sql(
        f"CREATE TRIGGER sessions_delete INSTEAD OF DELETE ON sessions BEGIN {deletes} END"
    )


# One generated row per number i: ids are i in 32 hex digits (unique across tables), every
# 50th session ongoing, times within `day` from i, counters from i.
_GENERATED = """
WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last)
SELECT printf('%032x', i), :org, 'c' || (i % 7), 'laptop ' || (i % 7), NULL, 'r1', 'web',
       CASE WHEN i % 5 = 0 THEN 'udp' ELSE 'tcp' END, 4,
       '100.64.' || (i % 200) || '.' || (i % 250 + 1), '10.99.0.5', 1024 + i % 60000, 443,
       printf('%s %02d:%02d:%02d.%06d', :day, i / 3600 % 24, i / 60 % 60, i % 60, i % 1000000),
       CASE WHEN i % 50 = 0 THEN NULL
            ELSE printf('%s %02d:%02d:%02d.%06d', :day, i / 3600 % 24, i / 60 % 60, i % 60,
                        i % 1000000) END,
       printf('%s %02d:%02d:%02d.%06d', :day, i / 3600 % 24, i / 60 % 60, i % 60, i % 1000000),
       0.0, 100 * i, 1000 * i, i, 2 * i, 60 * i, 960 * i,
       CASE WHEN i % 50 = 0 THEN 'ongoing' ELSE 'completed' END,
       CASE WHEN i % 50 = 0 THEN NULL ELSE 'fin' END,
       i % 2, '1:x' || i, 'gw-a', 'wg0', NULL
FROM n
"""


def fill_0012(conn: Connection, table: str, org_id: str, day: date, first: int, count: int) -> None:
    """Insert `count` generated sessions of `org_id` started on `day`, numbered from `first`,
    into `table` (sessions_default or a partition) with the 0012 columns."""
    insert = text(f"INSERT INTO {table} ({', '.join(COLUMNS_0012)}) {_GENERATED}")
    params = {"first": first, "last": first + count - 1, "org": org_id, "day": day.isoformat()}
    conn.execute(insert, params)


def partition_made_now(url: str, org_id: str, day: date) -> str:
    """Make the one-day partition of `org_id` for `day` as the current layout does (from the
    model), from a connection of its own, as serve would; returns its name."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            made, _moved = cover_days(conn, {(org_id, day)}, {org_id: 1})
    finally:
        engine.dispose()
    assert made == [partition_name(org_id, day)]
    return made[0]
