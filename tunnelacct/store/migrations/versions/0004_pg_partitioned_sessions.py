"""PostgreSQL: sessions partitioned by range of started_at, one partition per UTC day
(issue 7), so that retention can drop whole days. SQLite is unchanged (a no-op there).

The primary key becomes (id, started_at): a unique constraint of a partitioned table must
include the partition key. It is as unique as id alone was, since an id's first 48 bits are its
session's start (Unix ms), so started_at never changes for an id. Existing rows are moved: the
table is renamed, a partitioned one is created with a partition per day present, the rows are
copied, the key and indexes are built on the partitioned table (one pass per partition, after
the copy), and the old table is dropped. Downgrade reverses it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sessions indexes as of 0003 (names from the naming convention).
_INDEXES = {
    "ix_sessions_org_id_started_at_id": ["org_id", "started_at", "id"],
    "ix_sessions_org_id_ended_at": ["org_id", "ended_at"],
    "ix_sessions_org_id_client_id_started_at": ["org_id", "client_id", "started_at"],
    "ix_sessions_org_id_resource_id_started_at": ["org_id", "resource_id", "started_at"],
}
_ONGOING = "ix_sessions_gateway_ongoing"


def _postgresql() -> bool:
    return bool(op.get_context().dialect.name == "postgresql")


def _strip(table: str) -> None:
    """Drop the key and indexes of `table` (about to be copied and dropped), freeing the names."""
    op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_sessions")
    for name in [*_INDEXES, _ONGOING]:
        op.execute(f"DROP INDEX {name}")


def _build(key: list[str]) -> None:
    """Primary key `key` and the indexes of sessions, built after its rows are in."""
    op.create_primary_key("pk_sessions", "sessions", key)
    for name, columns in _INDEXES.items():
        op.create_index(name, "sessions", columns)
    op.create_index(
        _ONGOING, "sessions", ["gateway"], postgresql_where=sa.text("status = 'ongoing'")
    )


def upgrade() -> None:
    """Turn sessions into a table partitioned by UTC day of started_at (PostgreSQL only)."""
    if not _postgresql():
        return
    op.execute("ALTER TABLE sessions RENAME TO sessions_unpartitioned")
    _strip("sessions_unpartitioned")
    op.execute(
        "CREATE TABLE sessions (LIKE sessions_unpartitioned INCLUDING DEFAULTS)"
        " PARTITION BY RANGE (started_at)"
    )
    days = op.get_bind().execute(
        sa.text(
            "SELECT DISTINCT CAST(started_at AT TIME ZONE 'UTC' AS date)"
            " FROM sessions_unpartitioned"
        )
    )
    for (day,) in days.all():
        _create_partition(day)
    op.execute("INSERT INTO sessions SELECT * FROM sessions_unpartitioned")
    op.execute("DROP TABLE sessions_unpartitioned")
    _build(["id", "started_at"])


def _create_partition(day: date) -> None:
    # The same names and bounds as ensure_partitions() in tunnelacct/store/postgres/partitions.py
    # (not imported: a migration stays as it was written).
    op.execute(
        f"CREATE TABLE sessions_p{day:%Y%m%d} PARTITION OF sessions"
        f" FOR VALUES FROM ('{day.isoformat()} 00:00:00+00')"
        f" TO ('{day + timedelta(days=1)} 00:00:00+00')"
    )


def downgrade() -> None:
    """Back to one plain sessions table keyed by id (PostgreSQL only)."""
    if not _postgresql():
        return
    op.execute("ALTER TABLE sessions RENAME TO sessions_partitioned")
    _strip("sessions_partitioned")
    op.execute("CREATE TABLE sessions (LIKE sessions_partitioned INCLUDING DEFAULTS)")
    op.execute("INSERT INTO sessions SELECT * FROM sessions_partitioned")
    op.execute("DROP TABLE sessions_partitioned")  # and its partitions
    _build(["id"])
