"""The (org_id, ended_at) index goes (issue 21): it served only the retention purge, and cost
every session written 15-20% of SQLite's work and 7% of the store (tests/benchmarks/
bench_indexes.py: 25.2 against 20.5 µs a row on SQLite).

A purge now finds an org's expired sessions (completed, ended before the cutoff) by
(org_id, started_at, id), which the pages read already: a session ends at its latest packet,
never before its first, so one that ended before the cutoff started before it as well, and
`started_at < cutoff` bounds the range (store/purgework.py, `expired_conditions()`).

SQLite's partitions get a partial index instead, of the sessions that ended after the
partition's last day (`ix_<table>_org_id_ended_at_outliving`, condition
`ended_at >= '<the day after its last>'`): a purge empties a partition whose days are all
before the cutoff at once, keeping its ongoing sessions (their partial index) and those that
ended after the cutoff, all of them in this one (store/sqlite/purge.py). Sessions rarely run
past midnight, so the index is small, and a write of any other session only evaluates its
condition.

PostgreSQL: the partitioned sessions' index, and so each partition's. SQLite: sessions_default's
(named as the table it was before partitions, 0006) and every partition table's
(`ix_<table>_org_id_ended_at`). Dropping is quick, and the partial index reads each partition
once (13 s for 10,000,000 sessions in 1-day partitions on the 2-core test machine,
docs/performance-sessions.md "Migration 0015"); the downgrade builds the end index again,
reading every session (about as long as 0014's upgrade: a minute for 10,000,000 on the 2-core
test machine, the store locked meanwhile).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARTITION = re.compile(r"sessions_p(\d{8})_(\d{1,5})d_(?:[0-9a-f]{2})+")
_SUFFIX = "org_id_ended_at"
_OUTLIVING_SUFFIX = "org_id_ended_at_outliving"


def _sqlite_tables() -> list[tuple[str, str]]:
    """(table, the prefix of its index names) of every SQLite table that holds sessions."""
    rows = op.get_bind().exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    )
    partitions = [str(name) for name in rows.scalars() if _PARTITION.fullmatch(str(name))]
    return [("sessions_default", "sessions"), *((name, name) for name in partitions)]


def _partition_end(name: str) -> str | None:
    """The end of partition `name`'s last day as sessions times are stored (naive UTC text);
    None for sessions_default."""
    match = _PARTITION.fullmatch(name)
    if match is None:
        return None
    end = datetime.strptime(match.group(1), "%Y%m%d") + timedelta(days=int(match.group(2)))
    return end.isoformat(" ", "microseconds")


def upgrade() -> None:
    """Drop the (org_id, ended_at) index of every table that holds sessions; index each SQLite
    partition's sessions that outlive it."""
    if op.get_context().dialect.name == "sqlite":
        for table, prefix in _sqlite_tables():
            op.execute(f"DROP INDEX IF EXISTS ix_{prefix}_{_SUFFIX}")
            end = _partition_end(table)
            if end is not None:
                op.execute(
                    f"CREATE INDEX IF NOT EXISTS ix_{prefix}_{_OUTLIVING_SUFFIX}"
                    f" ON {table} (org_id, ended_at) WHERE ended_at >= '{end}'"
                )
    else:  # the partitioned sessions: each partition's index goes with it
        op.drop_index(f"ix_sessions_{_SUFFIX}", table_name="sessions")


def downgrade() -> None:
    """Build it again."""
    if op.get_context().dialect.name == "sqlite":
        for table, prefix in _sqlite_tables():
            op.execute(f"DROP INDEX IF EXISTS ix_{prefix}_{_OUTLIVING_SUFFIX}")
            op.execute(
                f"CREATE INDEX IF NOT EXISTS ix_{prefix}_{_SUFFIX} ON {table} (org_id, ended_at)"
            )
    else:
        op.execute(f"CREATE INDEX ix_sessions_{_SUFFIX} ON sessions (org_id, ended_at)")
