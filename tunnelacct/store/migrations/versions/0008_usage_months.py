"""Usage (issue 18): usage_months, the usage rollup summed per calendar month.

One row per org, month ('YYYY-MM') and group (client, user, resource, protocol, gateway), each
the sum of the usage_days rows of its month and group, kept so by everything that writes
usage_days (the writer, a rebuild, a purge). A month's report by user then reads one row per
user instead of one per user and day. Filled from usage_days here.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_GROUP = "org_id, client_id, user_id, resource_id, protocol, gateway"
_FIGURES = (
    "bytes_tx",
    "bytes_rx",
    "packets_tx",
    "packets_rx",
    "sessions_started",
    "sessions_completed",
)


def upgrade() -> None:
    """Create usage_months and fill it from usage_days."""
    op.create_table(
        "usage_months",
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("client_id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=False),
        sa.Column("protocol", sa.String(8), nullable=False),
        sa.Column("gateway", sa.String(), nullable=False),
        *(sa.Column(figure, sa.BigInteger(), nullable=False) for figure in _FIGURES),
        sa.PrimaryKeyConstraint(
            "org_id",
            "month",
            "client_id",
            "user_id",
            "resource_id",
            "protocol",
            "gateway",
            name="pk_usage_months",
        ),
    )
    sums = ", ".join(f"SUM({figure})" for figure in _FIGURES)
    op.execute(
        f"INSERT INTO usage_months (month, {_GROUP}, {', '.join(_FIGURES)}) "
        f"SELECT substr(day, 1, 7), {_GROUP}, {sums} FROM usage_days "
        f"GROUP BY substr(day, 1, 7), {_GROUP}"
    )


def downgrade() -> None:
    """Drop usage_months."""
    op.drop_table("usage_months")
