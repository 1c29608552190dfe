"""Rebuild a SQLite store with another page size, to weigh page sizes on the same rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def rebuild_with_page_size(path: Path, page_size: int) -> None:
    """Rewrite the SQLite file `path` (closed by everyone else) with `page_size`-byte pages.

    The page size of a WAL database is fixed, so the file leaves WAL for the VACUUM that
    rewrites it, and comes back."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(f"PRAGMA page_size = {int(page_size)}")
        conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode = WAL")
        (got,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    if got != page_size:
        raise SystemExit(f"SQLite refused page size {page_size} for {path} (has {got})")
