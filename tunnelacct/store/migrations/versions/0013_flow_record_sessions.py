"""Sessions from flow records (issue 20): sessions.payload_bytes_tx and payload_bytes_rx become
nullable (a NetFlow or IPFIX record has no payload figures: NULL, never 0), and two flags are
added, `estimated` (a sampling interval scaled the counters) and `incomplete` (the exporter
lost records while the session was open), both BOOLEAN NOT NULL DEFAULT false.

PostgreSQL: ALTER TABLE on the partitioned sessions, which recurses to every partition. DROP
NOT NULL and ADD COLUMN with a constant default change the catalog only: no row is rewritten
or scanned.

SQLite: sessions_default and every partition table (sqlite/layout.py), then the sessions view
and its triggers again over the new column list (they name every column). ADD COLUMN ... NOT
NULL DEFAULT 0 changes the schema only. Removing a NOT NULL is no ALTER TABLE of SQLite's: the
general way rebuilds each table, copying every row and building its indexes again, which took
5.3 s on a store of 1,000,000 sessions in 31 tables and 64 s on one of 10,000,000 (5.2 GB;
tests/benchmarks/bench_flow_columns.py, 2 vCPUs; up to twice that beside other work), with the
store locked all along. A removed NOT NULL changes nothing in how rows are stored, so this
revision follows instead the procedure of SQLite's documentation for such changes
(https://www.sqlite.org/lang_altertable.html, "Making Other Kinds Of Table Schema Changes",
which names removing NOT NULL constraints): in the one transaction of the revision, with PRAGMA
writable_schema=ON, the CREATE TABLE text of each table is edited in sqlite_schema,
schema_version is incremented (so that every connection, this one included, reads the schema
again) and writable_schema turned OFF. Its cost does not depend on the rows: the whole upgrade
took 0.1 s on both stores (1.1 s on the 10M one right after a copy of its file, whose writes
were still going). Each edit must change exactly the two column definitions, and before the
commit PRAGMA table_info must read both columns back nullable from every table; else the
revision fails and its transaction rolls back, leaving the store as it was. The PRAGMA
integrity_check that the procedure may end with reads the whole file (2.7 s on the 1M store,
32 s on the 10M one; quick_check 0.7 s and 7 s), so it is not run here but by the test of
this revision (tests/test_flow_columns.py), on a store with rows. A SQLite in defensive mode
(SQLITE_DBCONFIG_DEFENSIVE; Python's sqlite3 does not set it) refuses the edit: the revision
then fails with SQLite's error and changes nothing.

Downgrade: the reverse. NULL payloads become 0 (as before 0013, which had no way to say "not
known"); the flags are dropped (on SQLite, DROP COLUMN rewrites each table: 3.7 s on the 1M
store, 38 s on the 10M one); NOT NULL comes back (SQLite: the same schema edit, once no row
holds a NULL).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The sessions columns as of 0012 (unchanged since 0007), and this revision's two more (not
# imported from the model, so that this revision stays what it was when later ones change it).
_COLUMNS_0012 = (
    "id, org_id, client_id, client_name, user_id, resource_id, resource_name, protocol, "
    "ip_version, src_addr, dst_addr, src_port, dst_port, started_at, ended_at, last_seen_at, "
    "duration_s, bytes_tx, bytes_rx, packets_tx, packets_rx, payload_bytes_tx, "
    "payload_bytes_rx, status, close_reason, midstream, community_id, gateway, interface, "
    "day_split"
)
_COLUMNS_0013 = f"{_COLUMNS_0012}, estimated, incomplete"
PAYLOAD_COLUMNS = ("payload_bytes_tx", "payload_bytes_rx")
FLAG_COLUMNS = ("estimated", "incomplete")
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


def _drop_views() -> None:
    """Drop the sessions view and its chunk views (and with them the triggers)."""
    for view in ["sessions", *(v for v in _names("view") if _CHUNK_VIEW.fullmatch(v))]:
        op.execute(f"DROP VIEW IF EXISTS {view}")


def _create_views(columns: str) -> None:
    """The sessions view (chunked past _VIEW_CHUNK tables) and its INSTEAD OF triggers over
    `columns`, as tunnelacct.store.sqlite.layout.rebuild_view creates them."""
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


def _payload_definition(column: str, not_null: bool) -> re.Pattern[str]:
    """The definition of payload `column` in a CREATE TABLE text, as SQLAlchemy writes it
    (`payload_bytes_tx BIGINT NOT NULL,`), with or without its NOT NULL; group 1 is the name
    and type, group 2 what follows them."""
    name = f'(?:{column}|"{column}")'
    if not_null:
        return re.compile(rf"(?<![\w\"])({name}\s+BIGINT)(\s+NOT\s+NULL)(?=\s*,)", re.IGNORECASE)
    return re.compile(rf"(?<![\w\"])({name}\s+BIGINT)(\s*,)", re.IGNORECASE)


def _edited(table: str, sql: str, not_null: bool) -> str:
    """The CREATE TABLE text `sql` of `table` with its payload columns made nullable (or NOT
    NULL again when `not_null`); RuntimeError unless each is defined exactly once as expected."""
    for column in PAYLOAD_COLUMNS:
        if not_null:
            pattern = _payload_definition(column, not_null=False)
            replacement = r"\1 NOT NULL\2"
        else:
            pattern = _payload_definition(column, not_null=True)
            replacement = r"\1"
        sql, count = pattern.subn(replacement, sql)
        if count != 1:
            raise RuntimeError(
                f"migration 0013: the definition of {table}.{column} is not as tunnelacct "
                f"created it ({count} matches of {pattern.pattern!r}): nothing was changed"
            )
    return sql


def _set_payload_not_null(tables: list[str], not_null: bool) -> None:
    """Edit the CREATE TABLE texts of `tables` in sqlite_schema so that their payload columns
    are nullable (or NOT NULL), by SQLite's documented procedure for changes that leave the
    stored rows as they are (see the module docstring), then check that every table reads
    back so. In the caller's transaction, which a failure rolls back."""
    bind = op.get_bind()
    version = int(bind.exec_driver_sql("PRAGMA schema_version").scalar_one())
    texts = {
        str(name): str(sql)
        for name, sql in bind.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table'"
        ).all()
    }
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        for table in tables:
            bind.exec_driver_sql(
                "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                (_edited(table, texts[table], not_null), table),
            )
        # a new schema version makes every connection, this one included, read it again
        bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    for table in tables:
        not_nulls = {
            str(name): bool(notnull)
            for _cid, name, _type, notnull, _default, _pk in bind.exec_driver_sql(
                f"PRAGMA table_info({table})"
            ).all()
        }
        wrong = [c for c in PAYLOAD_COLUMNS if not_nulls.get(c) is not not_null]
        if wrong:
            raise RuntimeError(
                f"migration 0013: {table}.{', '.join(wrong)} did not become "
                f"{'NOT NULL' if not_null else 'nullable'}: nothing was changed"
            )


def upgrade() -> None:
    """Make the payload columns nullable; add estimated and incomplete."""
    if not _sqlite():
        for column in PAYLOAD_COLUMNS:
            op.alter_column("sessions", column, existing_type=sa.BigInteger(), nullable=True)
        for column in FLAG_COLUMNS:
            op.add_column(
                "sessions",
                sa.Column(column, sa.Boolean(), nullable=False, server_default=sa.false()),
            )
        return
    _begin()
    _drop_views()
    tables = _layout_tables()
    for table in tables:
        for column in FLAG_COLUMNS:
            op.execute(f"ALTER TABLE {table} ADD COLUMN {column} BOOLEAN NOT NULL DEFAULT 0")
    # last of the table changes: ADD COLUMN edits the text as this connection parsed it
    _set_payload_not_null(tables, not_null=False)
    _create_views(_COLUMNS_0013)


def downgrade() -> None:
    """NULL payloads become 0 and NOT NULL again; drop estimated and incomplete."""
    if not _sqlite():
        for column in PAYLOAD_COLUMNS:
            op.execute(f"UPDATE sessions SET {column} = 0 WHERE {column} IS NULL")
            op.alter_column("sessions", column, existing_type=sa.BigInteger(), nullable=False)
        for column in reversed(FLAG_COLUMNS):
            op.drop_column("sessions", column)
        return
    _begin()
    _drop_views()
    tables = _layout_tables()
    for table in tables:
        for column in PAYLOAD_COLUMNS:
            op.execute(f"UPDATE {table} SET {column} = 0 WHERE {column} IS NULL")
        for column in reversed(FLAG_COLUMNS):
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    _set_payload_not_null(tables, not_null=True)
    _create_views(_COLUMNS_0012)
