"""PostgreSQL: sessions.src_addr and dst_addr become `inet` (issue 7, item 3). SQLite keeps
text (a no-op there).

The text the writer stores (inet_ntop) casts to inet as it is, and `host()` gives it back
character for character (tests/test_inet.py), so the downgrade restores the same text. Not
`CAST(addr AS varchar)`: that appends the mask (`10.0.0.1/32`). ALTER TABLE on the
partitioned parent changes every partition (rewriting them), and later partitions, created
`LIKE sessions`, are inet from the start.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("src_addr", "dst_addr")


def _postgresql() -> bool:
    return bool(op.get_context().dialect.name == "postgresql")


def upgrade() -> None:
    """The address columns of sessions as inet (PostgreSQL only)."""
    if not _postgresql():
        return
    changes = ", ".join(f"ALTER COLUMN {c} TYPE inet USING CAST({c} AS inet)" for c in _COLUMNS)
    op.execute(f"ALTER TABLE sessions {changes}")  # one rewrite of the rows for both


def downgrade() -> None:
    """The address columns back to varchar(45) holding the same text (PostgreSQL only)."""
    if not _postgresql():
        return
    changes = ", ".join(f"ALTER COLUMN {c} TYPE varchar(45) USING host({c})" for c in _COLUMNS)
    op.execute(f"ALTER TABLE sessions {changes}")
