"""A page of an org's sessions filtered by client or resource reads that client's or
resource's own index (issue 21): the (org_id, client_id, started_at) and (org_id, resource_id,
started_at) indexes gain the id, so that they hold the rows in the page's order, (started_at,
id), as (org_id, started_at, id) does.

Without it, SQLite chose (org_id, started_at, id) for the page of a client's sessions, as the
only index that gives its order, and read every session of the org in the range to find the
client's: on bench_query.py's 10,000,000 sessions a week holds about 350,000 of one org, and a
page for a client with few or no sessions in it took 110-190 ms; with the id in the client's
index, 7-11 ms (docs/performance.md, "The client and resource indexes"). The capped count
read the old indexes already, and reads these as well. Writing costs the same within this
machine's noise (300,000 rows: 19.1-22.7 µs a row against 20.6-21.6); each of the two indexes
is about half as large again (32 bytes of id more per row).

PostgreSQL's planner already read the client's index and sorted the few rows it found: there,
pages took as long before as after (2,000,000 sessions); the model has one set of indexes for
both engines.

PostgreSQL: the partitioned sessions' indexes, which each partition's follow (9 s for
2,000,000 sessions). SQLite: sessions_default's and every partition table's, named as
tunnelacct.store.sqlite.layout names a new partition's
(`ix_<table>_org_id_client_id_started_at_id`). Building them reads every session: about a
minute for 10,000,000 on this project's 2-core test machine, the store locked meanwhile.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARTITION = re.compile(r"sessions_p\d{8}_\d{1,5}d_(?:[0-9a-f]{2})+")
_BY = ("client_id", "resource_id")  # the column of each index, after org_id


def _sqlite() -> bool:
    return bool(op.get_context().dialect.name == "sqlite")


def _sqlite_tables() -> list[tuple[str, str]]:
    """(table, the prefix of its index names) of every SQLite table that holds sessions:
    sessions_default keeps the names of the table it was before partitions (0006)."""
    rows = op.get_bind().exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    )
    partitions = [str(name) for name in rows.scalars() if _PARTITION.fullmatch(str(name))]
    return [("sessions_default", "sessions"), *((name, name) for name in partitions)]


def _swap(with_id: bool) -> None:
    """Replace each index by its other form: with the id (upgrade) or without (downgrade)."""
    tail = ", id" if with_id else ""
    for by in _BY:
        old = f"org_id_{by}_started_at" if with_id else f"org_id_{by}_started_at_id"
        new = f"org_id_{by}_started_at_id" if with_id else f"org_id_{by}_started_at"
        if _sqlite():
            for table, prefix in _sqlite_tables():
                op.execute(f"DROP INDEX IF EXISTS ix_{prefix}_{old}")
                op.execute(
                    f"CREATE INDEX IF NOT EXISTS ix_{prefix}_{new} "
                    f"ON {table} (org_id, {by}, started_at{tail})"
                )
        else:  # the partitioned sessions: each partition's index follows
            op.drop_index(f"ix_sessions_{old}", table_name="sessions")
            op.execute(
                f"CREATE INDEX ix_sessions_{new} ON sessions (org_id, {by}, started_at{tail})"
            )


def upgrade() -> None:
    """The client's and the resource's index with the id."""
    _swap(with_id=True)


def downgrade() -> None:
    """Without it, as before."""
    _swap(with_id=False)
