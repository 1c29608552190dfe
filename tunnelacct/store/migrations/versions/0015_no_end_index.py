"""The (org_id, ended_at) index goes (issue 21): it served only the retention purge, and cost
every session written 15-20% of SQLite's work and 7% of the store (tests/benchmarks/
bench_indexes.py: 25.2 against 20.5 µs a row on SQLite).

A purge now finds an org's expired sessions (completed, ended before the cutoff) by
(org_id, started_at, id), which the pages read already: a session ends at its latest packet,
never before its first, so one that ended before the cutoff started before it as well, and
`started_at < cutoff` bounds the range (store/purgework.py, `expired_conditions()`). On SQLite
the counts that decide whether a partition of expired days is emptied at once read its rows
instead (store/sqlite/purge.py); docs/performance.md, "Retention purge", has both measured.

PostgreSQL: the partitioned sessions' index, and so each partition's. SQLite: sessions_default's
(named as the table it was before partitions, 0006) and every partition table's
(`ix_<table>_org_id_ended_at`). Dropping is quick; the downgrade builds them again, reading
every session (about as long as 0014's upgrade: a minute for 10,000,000 on the 2-core test
machine, the store locked meanwhile).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARTITION = re.compile(r"sessions_p\d{8}_\d{1,5}d_(?:[0-9a-f]{2})+")
_SUFFIX = "org_id_ended_at"


def _sqlite_tables() -> list[tuple[str, str]]:
    """(table, the prefix of its index names) of every SQLite table that holds sessions."""
    rows = op.get_bind().exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    )
    partitions = [str(name) for name in rows.scalars() if _PARTITION.fullmatch(str(name))]
    return [("sessions_default", "sessions"), *((name, name) for name in partitions)]


def upgrade() -> None:
    """Drop the (org_id, ended_at) index of every table that holds sessions."""
    if op.get_context().dialect.name == "sqlite":
        for _table, prefix in _sqlite_tables():
            op.execute(f"DROP INDEX IF EXISTS ix_{prefix}_{_SUFFIX}")
    else:  # the partitioned sessions: each partition's index goes with it
        op.drop_index(f"ix_sessions_{_SUFFIX}", table_name="sessions")


def downgrade() -> None:
    """Build it again."""
    if op.get_context().dialect.name == "sqlite":
        for table, prefix in _sqlite_tables():
            op.execute(
                f"CREATE INDEX IF NOT EXISTS ix_{prefix}_{_SUFFIX} ON {table} (org_id, ended_at)"
            )
    else:
        op.execute(f"CREATE INDEX ix_sessions_{_SUFFIX} ON sessions (org_id, ended_at)")
