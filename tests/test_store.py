"""Store: URLs, migrations vs models, SQLite pragmas, type round-trips, inventory sync.

Store tests run on SQLite and PostgreSQL (`store_url`, `store_engine`); read-backs go through
`read_rows`, which shows values as SQLite stores them on either engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Index, Integer, MetaData, Table, create_engine, inspect, pool, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.helpers.pg import fresh_database, read_rows
from tests.helpers.sqlite import raw_query
from tests.helpers.stores import alembic_to
from tests.helpers.waiting import WAIT_S
from tunnelacct.config.model import ClientConfig, Config, OrgConfig, ResourceConfig
from tunnelacct.enums import IpProto
from tunnelacct.errors import StoreError
from tunnelacct.retention.purge import purge
from tunnelacct.store.engine import async_url, keep_partitions_ahead, make_engine, sync_url
from tunnelacct.store.inventory import sync_inventory
from tunnelacct.store.migrate import alembic_config, heads, include_name, migrate
from tunnelacct.store.models import Client as ClientRow
from tunnelacct.store.models import Org as OrgRow
from tunnelacct.store.models import Resource as ResourceRow
from tunnelacct.store.models import SessionRecord, TableBase
from tunnelacct.store.postgres.partitions import ensure_partitions
from tunnelacct.store.schema import HEAD_REVISION, check_schema
from tunnelacct.store.sqlite.layout import is_layout_name, parse_partition


def record(**overrides: Any) -> SessionRecord:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "org_id": "acme",
        "protocol": "tcp",
        "ip_version": 4,
        "src_addr": "10.0.0.2",
        "dst_addr": "10.1.0.5",
        "src_port": 40000,
        "dst_port": 443,
        "started_at": datetime(2026, 11, 23, 10, 40, 45, 123456, tzinfo=UTC),
        "last_seen_at": datetime(2026, 11, 23, 10, 41, 0, 1, tzinfo=UTC),
        "duration_s": 14.876545,
        "bytes_tx": 1,
        "bytes_rx": 2,
        "packets_tx": 3,
        "packets_rx": 4,
        "payload_bytes_tx": 5,
        "payload_bytes_rx": 6,
        "status": "ongoing",
        "midstream": False,
        "community_id": "1:abc=",
        "gateway": "gw1",
        "interface": "wg0",
    }
    values.update(overrides)
    return SessionRecord(**values)


async def store_and_reload(engine: AsyncEngine, row: SessionRecord) -> SessionRecord:
    key = row.id
    # PostgreSQL: the row's day partition (the writer creates those of what it writes)
    await ensure_partitions(engine, [row.started_at.astimezone(UTC).date()])
    async with AsyncSession(engine) as db:
        db.add(row)
        await db.commit()
    async with AsyncSession(engine) as db:
        loaded = await db.get(SessionRecord, key)
    assert loaded is not None
    return loaded


# --- URLs ---------------------------------------------------------------------------------------


def test_sync_and_async_urls_map_drivers_both_ways() -> None:
    assert async_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert async_url("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert sync_url("sqlite+aiosqlite:////var/lib/t.db") == "sqlite:////var/lib/t.db"
    assert sync_url("sqlite:///x.db") == "sqlite:///x.db"
    pg = "postgresql://u:p%40ss@db:5432/acct"
    assert async_url(pg) == "postgresql+asyncpg://u:p%40ss@db:5432/acct"
    psycopg = "postgresql+psycopg://u:p%40ss@db:5432/acct"  # Alembic's sync driver
    assert sync_url(pg) == sync_url(async_url(pg)) == psycopg
    assert sync_url("postgresql+psycopg2://h/acct") == "postgresql+psycopg2://h/acct"  # explicit
    assert async_url("postgresql+psycopg://h/acct") == "postgresql+asyncpg://h/acct"


def test_unsupported_url_scheme_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="unsupported database URL scheme 'mysql'"):
        async_url("mysql://u@h/db")


# --- migrations -----------------------------------------------------------------------------------

# The newest revision file in migrations/versions (its name starts with the revision id).
HEAD = max(
    p.name.split("_")[0]
    for p in (Path(__file__).parents[1] / "migrations" / "versions").glob("0*.py")
)


TABLES = {
    "alembic_version",
    "orgs",
    "clients",
    "resources",
    "sessions",
    "api_tokens",
    "purge_runs",
    "purge_locks",
    "usage_days",
    "usage_months",
    "users",
    "web_logins",
    "access_log",
}


def table_names(url: str) -> set[str]:
    """Tables and views as readers see them: on SQLite sessions is a view (migration 0006)
    over tables no model names (`sqliteparts.is_layout_name`)."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        inspector = inspect(engine)
        names = set(inspector.get_table_names()) | set(inspector.get_view_names())
    finally:
        engine.dispose()
    return {name for name in names if not is_layout_name(name)}


def stored_sessions(url: str) -> str:
    """The table that holds sessions as the models describe it: on SQLite sessions_default,
    the sessions table of 0001-0005 renamed (its indexes keep their names)."""
    return "sessions_default" if make_url(url).get_backend_name() == "sqlite" else "sessions"


def test_migrate_creates_tables_and_is_idempotent(database_url: str) -> None:
    migrate(database_url)
    migrate(database_url)
    assert table_names(database_url) == TABLES
    assert read_rows(database_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]


# SQLite only: a database file's directory (PostgreSQL has none).
def test_migrate_creates_the_parent_dir_of_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "t.db"
    migrate(f"sqlite:///{path}")
    assert raw_query(path, "SELECT version_num FROM alembic_version") == [(HEAD,)]


# The index definitions as each engine's catalog states them.
INDEX_SQL = {
    "sqlite": "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
    " AND tbl_name = 'sessions_default' AND sql IS NOT NULL",
    "postgresql": "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'sessions'"
    " AND indexname != 'pk_sessions'",
}


def test_sessions_table_has_the_paging_and_resume_indexes(store_url: str) -> None:
    engine = create_engine(sync_url(store_url), poolclass=pool.NullPool)
    try:
        inspector = inspect(engine)
        stored = stored_sessions(store_url)
        indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes(stored)}
        foreign_keys = inspector.get_foreign_keys(stored)
        dialect = engine.dialect.name
    finally:
        engine.dispose()
    assert sorted(indexes.values()) == sorted(
        [
            ["org_id", "started_at", "id"],  # pages, exports and purges (no end index: 0015)
            ["gateway"],  # partial: WHERE status = 'ongoing'
            ["org_id", "client_id", "started_at", "id"],  # in a page's order (0014)
            ["org_id", "resource_id", "started_at", "id"],
            ["org_id", "started_at", "id"],  # partial: WHERE status = 'ongoing'
        ]
    )
    definitions = {str(n): str(d) for n, d in read_rows(store_url, INDEX_SQL[dialect])}
    assert set(definitions) == set(indexes)
    partial = sorted(name for name, sql in definitions.items() if " WHERE " in sql.upper())
    assert partial == ["ix_sessions_gateway_ongoing", "ix_sessions_org_id_started_at_id_ongoing"]
    for name in partial:
        assert "'ongoing'" in definitions[name]
    assert not foreign_keys


# PostgreSQL column types the migrations must create (information_schema names).
PG_TYPES = {
    ("sessions", "id"): "uuid",
    ("sessions", "started_at"): "timestamp with time zone",
    ("sessions", "ended_at"): "timestamp with time zone",
    ("sessions", "bytes_tx"): "bigint",
    ("sessions", "payload_bytes_rx"): "bigint",
    ("sessions", "ip_version"): "smallint",
    ("sessions", "midstream"): "boolean",
    ("sessions", "estimated"): "boolean",
    ("sessions", "incomplete"): "boolean",
    ("sessions", "duration_s"): "double precision",
    ("orgs", "logging"): "boolean",
    ("orgs", "updated_at"): "timestamp with time zone",
    ("purge_runs", "deleted"): "bigint",
    ("purge_runs", "dry_run"): "boolean",
    ("purge_locks", "expires_at"): "timestamp with time zone",
    ("api_tokens", "created_at"): "timestamp with time zone",
}


def test_postgresql_columns_have_native_types() -> None:
    with fresh_database() as url:
        migrate(url)
        rows = read_rows(
            url,
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public'",
        )
    types = {(str(t), str(c)): str(d) for t, c, d in rows}
    assert {key: types[key] for key in PG_TYPES} == PG_TYPES


def _as_stored(url: str, metadata: MetaData) -> tuple[MetaData, Callable[..., bool]]:
    """`metadata` and the filter of reflected names to compare it with the store at `url`.

    As env.py, the partitions are not compared. On SQLite sessions is compared as the table
    that holds it, sessions_default, with its indexes' names of before the rename; the day
    tables are made from the model by code (`sqliteparts._partition_table`).
    """
    if make_url(url).get_backend_name() != "sqlite":
        return metadata, include_name
    copy = MetaData(naming_convention=metadata.naming_convention)
    for table in metadata.tables.values():
        if table.name != "sessions":
            table.to_metadata(copy)
    model = metadata.tables["sessions"]
    stored = Table("sessions_default", copy, *(c._copy() for c in model.columns))
    for index in model.indexes:
        cols = [stored.c[c.name] for c in index.columns]
        name = index.name or f"ix_sessions_{'_'.join(c.name for c in cols)}"
        Index(name, *cols, unique=index.unique, **index.dialect_kwargs)

    def only_partitions_out(name: str | None, type_: str, parents: object) -> bool:
        return not (type_ == "table" and name is not None and parse_partition(name) is not None)

    return copy, only_partitions_out


def _drift(url: str, metadata: MetaData) -> list[object]:
    metadata, names = _as_stored(url, metadata)
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            opts = {"compare_type": True, "include_name": names}
            context = MigrationContext.configure(conn, opts=opts)
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_models_and_migrations_do_not_drift(store_url: str) -> None:
    # `alembic check` semantics: autogenerate would produce no operations.
    assert _drift(store_url, TableBase.metadata) == []


def test_sessions_primary_key_includes_started_at_only_where_partitioned(store_url: str) -> None:
    """The one intended difference between the models and PostgreSQL's schema, which the drift
    check does not see (Alembic compares no primary keys): sessions is partitioned by
    started_at there (migration 0004), so its key is (id, started_at). SQLite keeps (id)."""
    engine = create_engine(sync_url(store_url), poolclass=pool.NullPool)
    try:
        stored = stored_sessions(store_url)
        key = inspect(engine).get_pk_constraint(stored)["constrained_columns"]
        dialect = engine.dialect.name
    finally:
        engine.dispose()
    assert [c.name for c in SessionRecord.__table__.primary_key] == ["id"]  # type: ignore[attr-defined]
    assert key == {"sqlite": ["id"], "postgresql": ["id", "started_at"]}[dialect]


def test_drift_check_notices_a_model_change(store_url: str) -> None:
    # The oracle above must be able to fail: an extra model column is reported.
    changed = MetaData(naming_convention=TableBase.metadata.naming_convention)
    for table in TableBase.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["sessions"].append_column(Column("extra", Integer, nullable=True))
    diffs = _drift(store_url, changed)
    assert [d[0] for d in diffs if isinstance(d, tuple)] == ["add_column"]


def test_migrations_go_from_the_first_revision_to_head_and_back_down(database_url: str) -> None:
    alembic_to(database_url, "0001")
    assert table_names(database_url) == {
        "alembic_version",
        "orgs",
        "clients",
        "resources",
        "sessions",
    }
    alembic_to(database_url, "head")
    assert table_names(database_url) == TABLES
    assert _drift(database_url, TableBase.metadata) == []
    alembic_to(database_url, "base", down=True)
    assert table_names(database_url) == {"alembic_version"}
    alembic_to(database_url, "head")  # and up again from nothing
    assert _drift(database_url, TableBase.metadata) == []


async def schema_refusal(database_url: str) -> str:
    """What check_schema() raises for the store at `database_url` (it must raise)."""
    engine = make_engine(database_url)
    try:
        with pytest.raises(StoreError) as refused:
            await check_schema(engine)
    finally:
        await engine.dispose()
    return str(refused.value)


async def test_check_schema_names_the_upgrade_command_when_not_migrated(database_url: str) -> None:
    assert "run `tunnelacct db upgrade`" in await schema_refusal(database_url)


async def test_check_schema_accepts_a_migrated_database(
    store_engine: AsyncEngine, store_url: str
) -> None:
    await check_schema(store_engine)  # raises StoreError otherwise
    assert read_rows(store_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_the_pinned_head_revision_is_the_migrations_head() -> None:
    # check_schema answers without Alembic when the database stores HEAD_REVISION: a
    # migration added without moving the pin would let a store one revision behind pass
    assert HEAD_REVISION == heads(alembic_config()) == HEAD


def upgrade_in_a_new_process(url: str) -> bool:
    """upgrade_to_head(url) in a fresh interpreter; whether it imported Alembic to do it."""
    script = (
        "import sys\n"
        "from tunnelacct.store.schema import upgrade_to_head\n"
        f"upgrade_to_head({url!r})\n"
        "print('alembic' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return {"True": True, "False": False}[done.stdout.strip()]


def test_upgrade_to_head_migrates_a_store_behind_and_only_asks_one_at_the_head(
    database_url: str,
) -> None:
    previous = f"{int(HEAD) - 1:04d}"
    alembic_to(database_url, previous)
    assert upgrade_in_a_new_process(database_url) is True  # Alembic ran the last migration
    assert read_rows(database_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert _drift(database_url, TableBase.metadata) == []
    assert upgrade_in_a_new_process(database_url) is False  # one SELECT, no Alembic
    assert read_rows(database_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_upgrade_to_head_creates_a_new_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "new" / "store.db"
    url = f"sqlite:///{path}"
    assert upgrade_in_a_new_process(url) is True
    assert read_rows(url, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert table_names(url) == TABLES


async def test_check_schema_names_the_upgrade_for_a_store_one_revision_behind(
    database_url: str,
) -> None:
    previous = f"{int(HEAD) - 1:04d}"
    alembic_to(database_url, previous)
    refusal = await schema_refusal(database_url)
    assert re.search(
        f"at revision {previous}, .* needs {HEAD}: run `tunnelacct db upgrade`", refusal
    )


async def test_check_schema_refuses_a_revision_it_does_not_know(
    store_engine: AsyncEngine, store_url: str
) -> None:
    async with store_engine.begin() as conn:
        await conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    refusal = await schema_refusal(store_url)
    assert re.search("revision 9999 is unknown .* newer version", refusal)


# SQLite only: the pragmas make_engine sets on each SQLite connection.
async def test_sqlite_connections_get_wal_busy_timeout_and_foreign_keys(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as conn:
        values = [
            (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        ]
    assert values == ["wal", 1, 5000, 1]  # synchronous: 1 = NORMAL


async def test_sqlite_purged_rows_leave_no_readable_content_in_their_pages(
    engine: AsyncEngine, db_path: Path
) -> None:
    # secure_delete=FAST: content is zeroed in the pages a delete rewrites (not OFF, which
    # leaves purged rows readable in the file), without rewriting whole freed pages (not ON)
    ended = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        record(
            client_name=f"marker-{k:03d}-",
            status="completed",
            started_at=ended - timedelta(minutes=1),
            ended_at=ended,
            org_id="gone" if k % 10 == 3 else "acme",
        )
        for k in range(60)
    ]
    async with AsyncSession(engine) as db:
        db.add_all(
            [
                OrgRow(id=o, name=o, retention_days=d, updated_at=ended)
                for o, d in (("acme", None), ("gone", 1))
            ]
        )
        db.add_all(rows)
        await db.commit()
    async with engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA secure_delete")).scalar() == 2  # FAST
    result = await purge(engine, now=ended + timedelta(days=30))
    assert result.deleted == 6
    await engine.dispose()
    raw_query(db_path, "PRAGMA wal_checkpoint(TRUNCATE)")
    content = db_path.read_bytes()
    kept = [k for k in range(60) if f"marker-{k:03d}-".encode() in content]
    assert kept == [k for k in range(60) if k % 10 != 3]


# --- type round-trips ---------------------------------------------------------------------------


async def test_times_round_trip_with_microseconds_as_aware_utc(
    store_engine: AsyncEngine, store_url: str
) -> None:
    plus2 = timezone(timedelta(hours=2))
    started = datetime(2026, 11, 23, 12, 40, 45, 123456, tzinfo=plus2)
    loaded = await store_and_reload(store_engine, record(started_at=started, ended_at=None))
    assert loaded.started_at == started
    assert loaded.started_at.tzinfo is UTC
    assert loaded.started_at.microsecond == 123456
    assert loaded.last_seen_at == datetime(2026, 11, 23, 10, 41, 0, 1, tzinfo=UTC)
    assert loaded.ended_at is None
    # Stored as UTC, so text order is time order whatever the writer's zone.
    assert read_rows(store_url, "SELECT started_at FROM sessions") == [
        ("2026-11-23 10:40:45.123456",)
    ]


async def test_naive_datetimes_are_refused(store_engine: AsyncEngine) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        await store_and_reload(store_engine, record(started_at=datetime(2026, 1, 1)))


async def test_64bit_counters_round_trip(store_engine: AsyncEngine) -> None:
    big = 2**40 + 3
    loaded = await store_and_reload(
        store_engine, record(bytes_tx=big, bytes_rx=2**63 - 1, payload_bytes_tx=big - 1)
    )
    assert (loaded.bytes_tx, loaded.bytes_rx, loaded.payload_bytes_tx) == (big, 2**63 - 1, big - 1)


async def test_longest_ipv6_text_fits_address_columns(store_engine: AsyncEngine) -> None:
    longest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"  # 45: SQLite's VARCHAR(45)
    dialect = store_engine.dialect
    want = {"sqlite": f"VARCHAR({len(longest)})", "postgresql": "INET"}[dialect.name]
    for name in ("src_addr", "dst_addr"):  # PostgreSQL: inet (migration 0005)
        assert inspect(SessionRecord).columns[name].type.compile(dialect=dialect) == want
    row = record(ip_version=6, src_addr=longest, dst_addr="2001:db8::1")
    loaded = await store_and_reload(store_engine, row)
    as_inet_ntop = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"  # how PostgreSQL's inet reads back
    read = {"sqlite": longest, "postgresql": as_inet_ntop}[dialect.name]
    assert (loaded.src_addr, loaded.dst_addr) == (read, "2001:db8::1")


# --- inventory ----------------------------------------------------------------------------------


def inventory(
    *, orgs: int = 2, clients: int = 2, resources: int = 2, renamed: bool = False
) -> Config:
    all_orgs = (OrgConfig("acme", "Acme"), OrgConfig("globex", "Globex", retention_days=90))
    return Config(
        orgs=all_orgs[:orgs],
        clients=tuple(
            ClientConfig(
                id=f"c{i}",
                org="acme",
                name=f"laptop {i}" + (" (new)" if renamed and i == 0 else ""),
                user=f"user{i}" if i else None,
                addresses=(f"100.64.0.{i + 2}/32", f"fd00::{i + 2}/128"),
            )
            for i in range(clients)
        ),
        resources=tuple(
            ResourceConfig(
                id=f"r{i}",
                org="acme",
                name=f"db {i}",
                address=f"10.1.{i}.0/24",
                ports=((5432, 5432), (8000, 8100)) if i == 0 else None,
                protocols=(IpProto.TCP,) if i == 0 else (IpProto.TCP, IpProto.UDP),
            )
            for i in range(resources)
        ),
    )


async def test_sync_inventory_inserts_orgs_clients_and_resources(
    store_engine: AsyncEngine, store_url: str
) -> None:
    await sync_inventory(store_engine, inventory())
    assert read_rows(store_url, "SELECT id, name, retention_days FROM orgs ORDER BY id") == [
        ("acme", "Acme", 30),
        ("globex", "Globex", 90),
        ("unattributed", "unattributed", 30),  # the default org, not declared
    ]
    clients = read_rows(
        store_url, "SELECT id, org_id, name, user_id, addresses, active FROM clients ORDER BY id"
    )
    assert clients[1][:4] == ("c1", "acme", "laptop 1", "user1")
    assert json.loads(str(clients[1][4])) == ["100.64.0.3/32", "fd00::3/128"]
    assert clients[0][3] is None
    assert read_rows(
        store_url, "SELECT id, ports, protocols, active FROM resources ORDER BY id"
    ) == [
        ("r0", "5432,8000-8100", "tcp", 1),
        ("r1", None, "tcp,udp", 1),
    ]


async def test_sync_inventory_updates_changed_rows_and_deactivates_removed_ones(
    store_engine: AsyncEngine,
) -> None:
    t1 = datetime(2026, 1, 1, tzinfo=UTC)
    t2 = t1 + timedelta(days=1)
    await sync_inventory(store_engine, inventory(clients=3, resources=2), now=t1)
    await sync_inventory(
        store_engine, inventory(orgs=1, clients=2, resources=1, renamed=True), now=t2
    )
    async with AsyncSession(store_engine) as db:
        clients = (await db.scalars(select(ClientRow))).all()
        c0, c1, c2 = [await db.get(ClientRow, f"c{i}") for i in range(3)]
        r1 = await db.get(ResourceRow, "r1")
        globex = await db.get(OrgRow, "globex")
    assert len(clients) == 3
    assert c0 is not None and c1 is not None and c2 is not None and r1 is not None
    assert (c0.name, c0.active, c0.updated_at) == ("laptop 0 (new)", True, t2)
    assert (c1.active, c1.updated_at) == (True, t1)  # unchanged: updated_at kept
    assert (c2.active, c2.updated_at) == (False, t2)  # removed from config: kept, inactive
    assert (r1.active, r1.updated_at) == (False, t2)
    assert globex is not None  # orgs removed from config are kept


async def test_sync_inventory_reactivates_a_returning_client(store_engine: AsyncEngine) -> None:
    await sync_inventory(store_engine, inventory(clients=2))
    await sync_inventory(store_engine, inventory(clients=1))
    await sync_inventory(store_engine, inventory(clients=2))
    async with AsyncSession(store_engine) as db:
        c1 = await db.get(ClientRow, "c1")
    assert c1 is not None and c1.active


async def test_sync_inventory_never_touches_sessions(
    store_engine: AsyncEngine, store_url: str
) -> None:
    await sync_inventory(store_engine, inventory())
    row = record(client_id="c1", client_name="laptop 1", resource_id="r1", resource_name="db 1")
    await store_and_reload(store_engine, row)
    before = read_rows(store_url, "SELECT * FROM sessions")
    await sync_inventory(store_engine, Config(orgs=(OrgConfig("acme", "Renamed"),)))
    assert read_rows(store_url, "SELECT * FROM sessions") == before


async def test_sync_inventory_accepts_clients_of_the_undeclared_default_org(
    store_engine: AsyncEngine, store_url: str
) -> None:
    config = Config(
        default_org="home",
        orgs=(OrgConfig("acme", "Acme"),),
        clients=(ClientConfig(id="c9", org="home", name="c9"),),
    )
    await sync_inventory(store_engine, config)
    assert read_rows(store_url, "SELECT id FROM orgs ORDER BY id") == [("acme",), ("home",)]
    assert read_rows(store_url, "SELECT org_id FROM clients") == [("home",)]


async def test_sync_inventory_refuses_a_client_of_an_unknown_org(store_engine: AsyncEngine) -> None:
    config = Config(clients=(ClientConfig(id="c9", org="nobody", name="c9"),))
    with pytest.raises(StoreError, match="client 'c9' names unknown org 'nobody'"):
        await sync_inventory(store_engine, config)


def test_upgrade_to_0003_keeps_orgs_and_downgrade_turns_forever_into_30_days(
    database_url: str,
) -> None:
    alembic_to(database_url, "0002")
    engine = create_engine(sync_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO orgs VALUES ('acme', 'Acme', 7, '2026-11-25 00:00:00+00')"
            )
        alembic_to(database_url, "0003")
        assert read_rows(database_url, "SELECT id, retention_days, logging FROM orgs") == [
            ("acme", 7, 1)
        ]
        assert read_rows(database_url, "SELECT name, holder FROM purge_locks") == [
            ("retention", None)
        ]
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE orgs SET retention_days = NULL")  # forever
        alembic_to(database_url, "0002", down=True)
        assert read_rows(database_url, "SELECT id, retention_days FROM orgs") == [("acme", 30)]
    finally:
        engine.dispose()


def test_upgrade_to_0004_moves_sessions_into_day_partitions_and_downgrade_back(
    database_url: str,
) -> None:
    """PostgreSQL: rows of three UTC days (one just before midnight) end up in one partition
    each, unchanged; the downgrade puts them back into one plain table keyed by id. SQLite:
    0004 changes nothing."""
    alembic_to(database_url, "0003")
    midnight = datetime(2026, 11, 24, tzinfo=UTC)
    starts = [midnight - timedelta(microseconds=1), midnight, midnight + timedelta(days=1, hours=5)]
    table = SessionRecord.__table__  # type: ignore[attr-defined]
    rows = [record(started_at=at, last_seen_at=at) for at in starts]
    engine = create_engine(sync_url(database_url), poolclass=pool.NullPool)
    try:
        present = {column["name"] for column in inspect(engine).get_columns("sessions")}
        # the sessions of 0003: the model's columns that exist then (and none of the later
        # ones, whose Python-side defaults an insert of the model's table would add)
        as_of_0003 = Table(
            "sessions", MetaData(), *(c._copy() for c in table.columns if c.name in present)
        )
        with engine.begin() as conn:
            conn.execute(
                as_of_0003.insert(),
                [{c.name: getattr(r, c.name) for c in as_of_0003.columns} for r in rows],
            )
        everything = "SELECT * FROM sessions ORDER BY id"
        before = read_rows(database_url, everything)
        alembic_to(database_url, "0004")
        assert read_rows(database_url, everything) == before
        postgresql = engine.dialect.name == "postgresql"
        partitions = (
            "SELECT c.relname, count(s.id) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " LEFT JOIN sessions s ON s.tableoid = c.oid"
            " WHERE i.inhparent = CAST('sessions' AS regclass) GROUP BY 1"
        )
        if postgresql:
            assert dict(read_rows(database_url, partitions)) == {
                "sessions_p20261123": 1,
                "sessions_p20261124": 1,
                "sessions_p20261125": 1,
            }
        key = {"sqlite": ["id"], "postgresql": ["id", "started_at"]}[engine.dialect.name]
        assert inspect(engine).get_pk_constraint("sessions")["constrained_columns"] == key
        alembic_to(database_url, "0003", down=True)
        assert read_rows(database_url, everything) == before
        assert inspect(engine).get_pk_constraint("sessions")["constrained_columns"] == ["id"]
        if postgresql:
            assert read_rows(database_url, partitions) == []
    finally:
        engine.dispose()


async def test_serve_creates_today_s_and_the_next_days_partitions_ahead() -> None:
    """PostgreSQL: today's (UTC) partition and the next 3 days' exist before any row needs
    them, created at once when the loop starts."""
    late_evening = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
    expected = {
        "sessions_p20261130",
        "sessions_p20261201",
        "sessions_p20261202",
        "sessions_p20261203",
    }
    query = (
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = CAST('sessions' AS regclass)"
    )
    with fresh_database() as url:
        migrate(url)
        engine = make_engine(url)
        loop = keep_partitions_ahead(engine, interval_s=3600, clock=lambda: late_evening)
        task = asyncio.create_task(loop)
        try:
            deadline = time.monotonic() + WAIT_S
            while {str(n) for (n,) in read_rows(url, query)} != expected:
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await engine.dispose()


@pytest.mark.parametrize(("synchronous", "level"), [("normal", 1), ("full", 2)])
async def test_a_sqlite_engine_commits_as_durably_as_configured(
    tmp_path: Path, synchronous: str, level: int
) -> None:
    # Oracle: SQLite's own answer on the engine's connection (1 = NORMAL, 2 = FULL).
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}", synchronous=synchronous)
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == level
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        await engine.dispose()
