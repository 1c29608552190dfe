"""The indexes of a table as the database itself states them, as column lists: the oracle of
the tests of the migrations that change indexes (0014, 0015)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from tests.helpers.pg import read_rows


def sqlite_indexes(path: Path, table: str) -> list[list[str]]:
    """The column lists of `table`'s indexes, as SQLite's PRAGMAs state them, sorted."""
    with closing(sqlite3.connect(path)) as db:
        names = [str(row[1]) for row in db.execute(f"PRAGMA index_list({table})")]
        columns = [
            [str(row[2]) for row in db.execute(f"PRAGMA index_info({name})")] for name in names
        ]
    return sorted(columns)


def sqlite_index_shapes(path: Path, table: str) -> list[tuple[tuple[str, ...], str | None]]:
    """Each of `table`'s indexes as (its columns, the condition of a partial one or None), from
    SQLite's PRAGMAs and the CREATE INDEX text it keeps, sorted."""
    with closing(sqlite3.connect(path)) as db:
        names = [str(row[1]) for row in db.execute(f"PRAGMA index_list({table})")]
        shapes = []
        for name in names:
            columns = tuple(str(row[2]) for row in db.execute(f"PRAGMA index_info({name})"))
            (created,) = db.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (name,)
            ).fetchone()
            condition = None
            if created is not None and " WHERE " in created:
                condition = created.split(" WHERE ", 1)[1].strip()
            shapes.append((columns, condition))
    return sorted(shapes, key=repr)


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


def sqlite_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()
