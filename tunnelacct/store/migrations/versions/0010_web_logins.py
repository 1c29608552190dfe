"""Logins of the web UI (issue 19): one row per signed-in browser, found by the id its cookie
carries and checked against the SHA-256 of the cookie's secret (never the secret itself), with
its CSRF token and the times its idle and absolute expiry count from.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create web_logins."""
    op.create_table(
        "web_logins",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("user_name", sa.String(), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_logins")),
    )
    op.create_index(op.f("ix_web_logins_user_name"), "web_logins", ["user_name"])


def downgrade() -> None:
    """Drop web_logins."""
    op.drop_index(op.f("ix_web_logins_user_name"), table_name="web_logins")
    op.drop_table("web_logins")
