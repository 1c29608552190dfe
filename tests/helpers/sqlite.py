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


def time_ordered_id(started_at: str) -> str:
    """SQL for a random session id that sorts like tunnelacct's (flowkey.SessionIds): 48 bits
    of the start's Unix milliseconds, version 8, variant 10, random bits (32 hex digits)."""
    ms = f"CAST(round((julianday({started_at}) - 2440587.5) * 86400000) AS INTEGER)"
    return (
        f"(printf('%012x', {ms}) || '8' || substr(lower(hex(randomblob(2))), 1, 3)"
        " || 'a' || substr(lower(hex(randomblob(8))), 1, 15))"
    )


def replicate_sessions(
    path: Path, copies: int, step_s: int, org_id: str | None = None, *, chunk: int = 200
) -> int:
    """Add `copies` copies of every stored session (of `org_id`, or all): copy k gets a new id,
    times shifted by k * step_s seconds and src_port shifted by k; returns the rows added.

    For tests and benchmarks that need millions of real-looking rows in seconds; `chunk`
    copies per transaction keep the WAL small. The copies go into sessions_default (past the
    view's row-by-row trigger; `tunnelacct.store.sqlite.layout.move_default_rows()` moves them into
    partitions), the stored sessions are read through the view.
    """

    def shifted(col: str) -> str:
        # whole seconds shifted by SQLite's datetime(), microseconds kept as text (fixed width)
        return f"datetime({col}, '+' || (k * {step_s}) || ' seconds') || substr({col}, 20)"

    conn = sqlite3.connect(path)
    (partitioned,) = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE name = 'sessions_default'"
    ).fetchone()
    target = "sessions_default" if partitioned else "sessions"
    sql = f"""
        WITH RECURSIVE n(k) AS (SELECT ? UNION ALL SELECT k + 1 FROM n WHERE k < ?)
        INSERT INTO {target}
        SELECT {time_ordered_id(shifted("started_at"))}, org_id, client_id, client_name, user_id,
               resource_id, resource_name, protocol, ip_version, src_addr, dst_addr,
               (src_port + k) % 65536, dst_port, {shifted("started_at")},
               CASE WHEN ended_at IS NULL THEN NULL ELSE {shifted("ended_at")} END,
               {shifted("last_seen_at")}, duration_s, bytes_tx, bytes_rx, packets_tx,
               packets_rx, payload_bytes_tx, payload_bytes_rx, status, close_reason, midstream,
               community_id, gateway, interface, day_split, estimated, incomplete
        FROM temp.seeds, n
    """
    try:
        conn.execute("PRAGMA cache_size = -1048576")  # 1 GiB: the random-id index stays cached
        conn.execute(
            "CREATE TEMP TABLE seeds AS SELECT * FROM sessions WHERE ? IS NULL OR org_id = ?",
            (org_id, org_id),
        )
        before = conn.total_changes  # (rowcount is -1 for a statement starting with WITH)
        for first in range(1, copies + 1, chunk):
            last = min(copies, first + chunk - 1)
            with conn:
                conn.execute(sql, (first, last))
        return conn.total_changes - before
    finally:
        conn.close()
