"""Initial schema: orgs, clients, resources and sessions.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the inventory tables and the sessions table with its indexes."""
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("retention_days", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orgs")),
    )
    op.create_table(
        "clients",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("addresses", sa.Text(), nullable=False),  # JSON list of CIDR strings
        sa.Column("public_key", sa.String(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_clients_org_id_orgs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_clients")),
    )
    op.create_table(
        "resources",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("ports", sa.Text(), nullable=True),  # "22,8000-8100"; NULL = all ports
        sa.Column("protocols", sa.Text(), nullable=False),  # "tcp,udp"
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_resources_org_id_orgs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
    )
    # No foreign keys from sessions: deleting config must never delete or rewrite history.
    op.create_table(
        "sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("org_id", sa.String(), nullable=False),
        sa.Column("client_id", sa.String(), nullable=True),
        sa.Column("client_name", sa.String(), nullable=True),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("resource_id", sa.String(), nullable=True),
        sa.Column("resource_name", sa.String(), nullable=True),
        sa.Column("protocol", sa.String(length=8), nullable=False),
        sa.Column("ip_version", sa.SmallInteger(), nullable=False),
        sa.Column("src_addr", sa.String(length=45), nullable=False),
        sa.Column("dst_addr", sa.String(length=45), nullable=False),
        sa.Column("src_port", sa.Integer(), nullable=False),
        sa.Column("dst_port", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("bytes_tx", sa.BigInteger(), nullable=False),
        sa.Column("bytes_rx", sa.BigInteger(), nullable=False),
        sa.Column("packets_tx", sa.BigInteger(), nullable=False),
        sa.Column("packets_rx", sa.BigInteger(), nullable=False),
        sa.Column("payload_bytes_tx", sa.BigInteger(), nullable=False),
        sa.Column("payload_bytes_rx", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("close_reason", sa.String(length=32), nullable=True),
        sa.Column("midstream", sa.Boolean(), nullable=False),
        sa.Column("community_id", sa.String(), nullable=False),
        sa.Column("gateway", sa.String(), nullable=False),
        sa.Column("interface", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions") as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sessions_org_id_started_at_id"), ["org_id", "started_at", "id"]
        )
        batch_op.create_index(batch_op.f("ix_sessions_org_id_ended_at"), ["org_id", "ended_at"])
        batch_op.create_index(batch_op.f("ix_sessions_gateway_status"), ["gateway", "status"])
        batch_op.create_index(
            batch_op.f("ix_sessions_org_id_client_id_started_at"),
            ["org_id", "client_id", "started_at"],
        )
        batch_op.create_index(
            batch_op.f("ix_sessions_org_id_resource_id_started_at"),
            ["org_id", "resource_id", "started_at"],
        )


def downgrade() -> None:
    """Drop everything this revision created."""
    op.drop_table("sessions")
    op.drop_table("resources")
    op.drop_table("clients")
    op.drop_table("orgs")
