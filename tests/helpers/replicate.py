"""Millions of real-looking sessions in seconds, on either engine: copies of a store's sessions
shifted in time (for tests and benchmarks that need big stores).

SQLite goes through tests/helpers/sqlite.py `replicate_sessions`; PostgreSQL copies in SQL
(`INSERT ... SELECT` over `generate_series`), after creating the copies' day partitions.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from tests.helpers.pg import add_partitions
from tests.helpers.sqlite import replicate_sessions
from tunnelacct.store.engine import sync_url

# The columns a copy changes; every other column is copied as it is, whatever its type.
SHIFTED = ("id", "src_port", "started_at", "ended_at", "last_seen_at")
ROWS_PER_STATEMENT = 200_000  # PostgreSQL: copies per INSERT so that one holds about this many


def replicate(url: str, copies: int, step_s: int, org_id: str | None = None) -> int:
    """Add `copies` copies of every session stored at `url` (of `org_id`, or all): copy k gets
    a new time-ordered id, times shifted by k * step_s seconds and src_port by k (mod 65536);
    returns the rows added."""
    if make_url(url).get_backend_name() != "postgresql":
        return replicate_sessions(Path(str(make_url(url).database)), copies, step_s, org_id)
    return _replicate_pg(url, copies, step_s, org_id)


def _time_ordered_id(started_at: str) -> str:
    """SQL for a random uuid that sorts like tunnelacct's session ids (flowkey.SessionIds): 48
    bits of the start's Unix milliseconds, version 8, variant 10, random bits (no issuer tag:
    no import ever issued it)."""
    ms = f"floor(extract(epoch FROM {started_at}) * 1000)::bigint"
    rnd = "md5(random()::text)"
    return (
        f"(lpad(to_hex({ms}), 12, '0') || '8' || substr({rnd}, 1, 3) || 'a'"
        f" || substr({rnd}, 1, 15))::uuid"
    )


def _replicate_pg(url: str, copies: int, step_s: int, org_id: str | None) -> int:
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            # The originals, kept apart: copies must not be copied again by a later chunk.
            conn.execute(
                text(
                    "CREATE TEMP TABLE seeds AS SELECT * FROM sessions"
                    " WHERE CAST(:org AS text) IS NULL OR org_id = :org"
                ),
                {"org": org_id},
            )
            seeds, low, high = conn.execute(
                text("SELECT count(*), min(started_at), max(started_at) FROM seeds")
            ).one()
            conn.commit()
            if not seeds or copies <= 0:
                return 0
            _partitions(url, low, high + timedelta(seconds=copies * step_s))
            columns = [
                str(name)
                for (name,) in conn.execute(
                    text(
                        "SELECT column_name FROM information_schema.columns"
                        " WHERE table_name = 'sessions' AND table_schema = current_schema()"
                        " ORDER BY ordinal_position"
                    )
                )
            ]
            kept = ", ".join(c for c in columns if c not in SHIFTED)
            shift = f"k * interval '{int(step_s)} seconds'"
            insert = text(f"""
                INSERT INTO sessions ({kept}, {", ".join(SHIFTED)})
                SELECT {kept}, {_time_ordered_id(f"started_at + {shift}")},
                       (src_port + k) % 65536, started_at + {shift}, ended_at + {shift},
                       last_seen_at + {shift}
                FROM seeds, generate_series(CAST(:first AS int), CAST(:last AS int)) AS k
            """)
            per_statement = max(1, ROWS_PER_STATEMENT // int(seeds))
            added = 0
            for first in range(1, copies + 1, per_statement):
                last = min(copies, first + per_statement - 1)
                added += conn.execute(insert, {"first": first, "last": last}).rowcount
                conn.commit()
            conn.execute(text("DROP TABLE seeds"))
            conn.commit()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE sessions"))  # as autovacuum would, later
        return added
    finally:
        engine.dispose()


def _partitions(url: str, low: datetime, high: datetime) -> None:
    """The sessions partitions of every UTC day from `low` to `high`."""
    times = [low + timedelta(days=d) for d in range((high - low).days + 1)] + [high]
    add_partitions(url, times)
