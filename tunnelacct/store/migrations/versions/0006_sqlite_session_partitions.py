"""SQLite: sessions becomes a view over tables of one org and a span of UTC days each, so that
retention can empty or drop whole expired tables (issue 5; tunnelacct/store/sqlite/layout.py).
PostgreSQL is unchanged (a no-op there: its sessions is partitioned by day since 0004).

Upgrade renames the sessions table to sessions_default (its rows stay there; the indexes keep
their names) and creates the view over it with its INSTEAD OF triggers: rows inserted into the
view go to sessions_default, a DELETE of the view deletes from the tables. serve creates
partitions ahead of their days; `tunnelacct db partition` moves the old rows into partitions.
Downgrade copies every partition's rows back into one table and drops the partitions and views.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sessions columns as of 0005 (the same as tunnelacct.store.sqlite.layout.columns() then; not
# imported, so that this revision stays what it was when later ones change the model).
_COLUMNS = (
    "id, org_id, client_id, client_name, user_id, resource_id, resource_name, protocol, "
    "ip_version, src_addr, dst_addr, src_port, dst_port, started_at, ended_at, last_seen_at, "
    "duration_s, bytes_tx, bytes_rx, packets_tx, packets_rx, payload_bytes_tx, "
    "payload_bytes_rx, status, close_reason, midstream, community_id, gateway, interface"
)
_PARTITION = re.compile(r"sessions_p\d{8}_\d{1,5}d_(?:[0-9a-f]{2})+")
_CHUNK_VIEW = re.compile(r"sessions_v\d+")


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


def upgrade() -> None:
    """sessions -> sessions_default, and the sessions view over it (SQLite only)."""
    if not _sqlite():
        return
    _begin()
    op.execute("ALTER TABLE sessions RENAME TO sessions_default")
    op.execute(f"CREATE VIEW sessions AS SELECT {_COLUMNS} FROM sessions_default")
    new = ", ".join(f"NEW.{c}" for c in _COLUMNS.split(", "))
    op.execute(
        "CREATE TRIGGER sessions_insert INSTEAD OF INSERT ON sessions BEGIN "
        f"INSERT INTO sessions_default ({_COLUMNS}) VALUES ({new}); END"
    )
    op.execute(
        "CREATE TRIGGER sessions_delete INSTEAD OF DELETE ON sessions BEGIN "
        "DELETE FROM sessions_default WHERE id = OLD.id; END"
    )


def downgrade() -> None:
    """Every partition's rows back into sessions_default, renamed sessions (SQLite only)."""
    if not _sqlite():
        return
    _begin()
    for view in ["sessions", *(v for v in _names("view") if _CHUNK_VIEW.fullmatch(v))]:
        op.execute(f"DROP VIEW IF EXISTS {view}")
    for table in _names("table"):
        if _PARTITION.fullmatch(table):
            op.execute(f"INSERT INTO sessions_default ({_COLUMNS}) SELECT {_COLUMNS} FROM {table}")
            op.execute(f"DROP TABLE {table}")
    op.execute("ALTER TABLE sessions_default RENAME TO sessions")
