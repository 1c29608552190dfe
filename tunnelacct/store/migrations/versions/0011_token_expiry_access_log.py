"""API tokens' expiry and last use, and the access log (issue 19): who read or exported which
org's sessions or usage, when, through the API or the UI, with what filter and how many rows.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add api_tokens.expires_at and last_used_at; create access_log."""
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "access_log",
        # BIGINT on PostgreSQL (a row per read for years); SQLite's rowid is 64-bit already
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("what", sa.String(32), nullable=False),
        sa.Column("filter_text", sa.Text(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_log")),
        # ids never given again after a purge, so that newest-first pages by id stay exact
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_access_log_org_id_at"), "access_log", ["org_id", "at"])


def downgrade() -> None:
    """Drop access_log and the tokens' expiry and last use."""
    op.drop_index(op.f("ix_access_log_org_id_at"), table_name="access_log")
    op.drop_table("access_log")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
