"""The ongoing sessions of an org, newest first, from a partial index (issue 19): the web UI's
live log (`status:ongoing`) and its count read a few hundred rows of it instead of walking
every session of the org. Only ongoing rows are in it, so writing and purging completed
sessions never touch it (as ix_sessions_gateway_ongoing, 0003).

PostgreSQL: one index on the partitioned sessions (each partition gets its own). SQLite: one
on sessions_default and on every partition table, named as tunnelacct.store.sqlite.layout
names a new partition's (`ix_<table>_org_id_started_at_id_ongoing`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_sessions_org_id_started_at_id_ongoing"
_PARTITION = re.compile(r"sessions_p\d{8}_\d{1,5}d_(?:[0-9a-f]{2})+")
_ONGOING = "status = 'ongoing'"


def _sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def _partitions() -> list[str]:
    rows = op.get_bind().exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    )
    return [str(name) for name in rows.scalars() if _PARTITION.fullmatch(str(name))]


def upgrade() -> None:
    """Create the partial index of ongoing sessions by org and start."""
    if not _sqlite():
        op.create_index(
            INDEX, "sessions", ["org_id", "started_at", "id"], postgresql_where=sa.text(_ONGOING)
        )
        return
    op.execute(
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON sessions_default (org_id, started_at, id) "
        f"WHERE {_ONGOING}"
    )
    for table in _partitions():
        op.execute(
            f"CREATE INDEX IF NOT EXISTS ix_{table}_org_id_started_at_id_ongoing "
            f"ON {table} (org_id, started_at, id) WHERE {_ONGOING}"
        )


def downgrade() -> None:
    """Drop it."""
    if not _sqlite():
        op.drop_index(INDEX, table_name="sessions")
        return
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    for table in _partitions():
        op.execute(f"DROP INDEX IF EXISTS ix_{table}_org_id_started_at_id_ongoing")
