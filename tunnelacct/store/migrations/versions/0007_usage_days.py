"""Usage (issue 18): sessions.day_split, the usage_days rollup, orgs.usage_retention_days and
the usage part of purge_runs.

sessions.day_split holds, for a session that ran across midnight, its counters at the end of
each UTC day before its last packet's; the rollup splits the session's traffic by them. A
nullable column without a default: PostgreSQL adds it to the partitioned parent and every
partition without rewriting a row; SQLite adds it to sessions_default and every partition (a
change of the schema only) and then creates the sessions view and its triggers again over the
new column list.

usage_days is one row per org, UTC day and group (client, user, resource, protocol, gateway).
orgs.usage_retention_days (NULL: forever) starts as the default: the longer of 400 days and
the org's session retention, forever for an org whose sessions are kept forever.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sessions columns as of 0006, and this revision's one more (not imported from the model,
# so that this revision stays what it was when later ones change it).
_COLUMNS_0006 = (
    "id, org_id, client_id, client_name, user_id, resource_id, resource_name, protocol, "
    "ip_version, src_addr, dst_addr, src_port, dst_port, started_at, ended_at, last_seen_at, "
    "duration_s, bytes_tx, bytes_rx, packets_tx, packets_rx, payload_bytes_tx, "
    "payload_bytes_rx, status, close_reason, midstream, community_id, gateway, interface"
)
_COLUMNS_0007 = f"{_COLUMNS_0006}, day_split"
_PARTITION = re.compile(r"sessions_p\d{8}_\d{1,5}d_(?:[0-9a-f]{2})+")
_CHUNK_VIEW = re.compile(r"sessions_v\d+")
_VIEW_CHUNK = 400  # partitions per view, as tunnelacct.store.sqlite.layout.VIEW_CHUNK


def _sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def _begin() -> None:
    """One transaction for all of it: Python's sqlite3 commits each CREATE, DROP and ALTER on
    its own outside one (tunnelacct.store.sqlite.layout.begin_write)."""
    bind = op.get_bind()
    if not bind.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
        bind.exec_driver_sql("BEGIN IMMEDIATE")


def _names(kind: str) -> list[str]:
    rows = op.get_bind().exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = ? ORDER BY name", (kind,)
    )
    return [str(name) for name in rows.scalars()]


def _layout_tables() -> list[str]:
    """sessions_default and every partition, in the order the view unites them."""
    partitions = [name for name in _names("table") if _PARTITION.fullmatch(name)]
    return ["sessions_default", *partitions]


def _recreate_views(columns: str) -> None:
    """The sessions view (chunked past _VIEW_CHUNK tables) and its INSTEAD OF triggers over
    `columns`, as tunnelacct.store.sqlite.layout.rebuild_view creates them."""
    for view in ["sessions", *(v for v in _names("view") if _CHUNK_VIEW.fullmatch(v))]:
        op.execute(f"DROP VIEW IF EXISTS {view}")  # drops its triggers too
    tables = _layout_tables()
    sources = tables
    if len(sources) > _VIEW_CHUNK:
        chunks = [sources[i : i + _VIEW_CHUNK] for i in range(0, len(sources), _VIEW_CHUNK)]
        sources = []
        for number, chunk in enumerate(chunks):
            union = " UNION ALL ".join(f"SELECT {columns} FROM {t}" for t in chunk)
            op.execute(f"CREATE VIEW sessions_v{number} AS {union}")
            sources.append(f"sessions_v{number}")
    union = " UNION ALL ".join(f"SELECT {columns} FROM {s}" for s in sources)
    op.execute(f"CREATE VIEW sessions AS {union}")
    new = ", ".join(f"NEW.{c}" for c in columns.split(", "))
    op.execute(
        "CREATE TRIGGER sessions_insert INSTEAD OF INSERT ON sessions BEGIN "
        f"INSERT INTO sessions_default ({columns}) VALUES ({new}); END"
    )
    deletes = " ".join(f"DELETE FROM {t} WHERE id = OLD.id;" for t in tables)
    op.execute(f"CREATE TRIGGER sessions_delete INSTEAD OF DELETE ON sessions BEGIN {deletes} END")


def upgrade() -> None:
    """Add sessions.day_split; create usage_days."""
    if _sqlite():
        _begin()
        for table in _layout_tables():
            op.execute(f"ALTER TABLE {table} ADD COLUMN day_split TEXT")
        _recreate_views(_COLUMNS_0007)
    else:
        op.execute("ALTER TABLE sessions ADD COLUMN day_split TEXT")
    op.create_table(
        "usage_days",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("client_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("gateway", sa.String(), nullable=False),
        sa.Column("bytes_tx", sa.BigInteger(), nullable=False),
        sa.Column("bytes_rx", sa.BigInteger(), nullable=False),
        sa.Column("packets_tx", sa.BigInteger(), nullable=False),
        sa.Column("packets_rx", sa.BigInteger(), nullable=False),
        sa.Column("sessions_started", sa.BigInteger(), nullable=False),
        sa.Column("sessions_completed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "org_id",
            "day",
            "client_id",
            "user_id",
            "resource_id",
            "protocol",
            "gateway",
            name="pk_usage_days",
        ),
    )
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(sa.Column("usage_retention_days", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE orgs SET usage_retention_days = CASE WHEN retention_days IS NULL THEN NULL "
        "WHEN retention_days > 400 THEN retention_days ELSE 400 END"
    )
    with op.batch_alter_table("purge_runs") as batch:
        batch.add_column(sa.Column("usage_cutoff_day", sa.String(10), nullable=True))
        batch.add_column(
            sa.Column("usage_deleted", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Drop usage_days, sessions.day_split and the usage columns of orgs and purge_runs."""
    with op.batch_alter_table("purge_runs") as batch:
        batch.drop_column("usage_deleted")
        batch.drop_column("usage_cutoff_day")
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("usage_retention_days")
    op.drop_table("usage_days")
    if _sqlite():
        _begin()
        _recreate_views(_COLUMNS_0006)
        for table in _layout_tables():
            op.execute(f"ALTER TABLE {table} DROP COLUMN day_split")
    else:
        op.execute("ALTER TABLE sessions DROP COLUMN day_split")
