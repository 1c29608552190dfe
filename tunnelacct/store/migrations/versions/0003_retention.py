"""Retention: orgs.logging, retention_days NULL = forever, purge runs, the purge lock, and a
partial index of ongoing sessions for resume.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add orgs.logging, allow NULL retention_days; create purge_runs and purge_locks."""
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(
            sa.Column("logging", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.alter_column("retention_days", existing_type=sa.Integer(), nullable=True)
    op.create_table(
        "purge_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cutoff", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purge_runs")),
    )
    op.create_index(op.f("ix_purge_runs_started_at"), "purge_runs", ["started_at"])
    op.create_table(
        "purge_locks",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_purge_locks")),
    )
    op.bulk_insert(sa.table("purge_locks", sa.column("name", sa.String)), [{"name": "retention"}])
    # Resume needs the ongoing sessions only: a partial index is not touched when completed
    # sessions are written or purged (one index fewer per deleted row).
    ongoing = sa.text("status = 'ongoing'")
    op.drop_index("ix_sessions_gateway_status", table_name="sessions")
    op.create_index(
        "ix_sessions_gateway_ongoing",
        "sessions",
        ["gateway"],
        sqlite_where=ongoing,
        postgresql_where=ongoing,
    )


def downgrade() -> None:
    """Drop purge_locks and purge_runs; orgs back to NOT NULL retention (forever -> 30)."""
    op.drop_index("ix_sessions_gateway_ongoing", table_name="sessions")
    op.create_index("ix_sessions_gateway_status", "sessions", ["gateway", "status"])
    op.drop_table("purge_locks")
    op.drop_index(op.f("ix_purge_runs_started_at"), table_name="purge_runs")
    op.drop_table("purge_runs")
    op.execute("UPDATE orgs SET retention_days = 30 WHERE retention_days IS NULL")
    with op.batch_alter_table("orgs") as batch:
        batch.alter_column("retention_days", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("logging")
