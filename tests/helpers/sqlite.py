"""Reading a store with the stdlib sqlite3 module: an oracle independent of SQLAlchemy."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def raw_query(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """All rows of `sql` run on the SQLite file at `path`."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()
