"""The store's engines: database URLs, the async engine, the backend of each engine
(`backend_of`, store/backend.py), the partitions kept ahead of the days, inventory sync and the
reads of ongoing sessions and known orgs.

Schema migrations are in `migrate.py` (Alembic is slow to import and only needed there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    Table,
    create_engine,
    event,
    literal_column,
    or_,
    pool,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from tunnelacct.config.database_url import shown_database, sqlite_file
from tunnelacct.config.model import SYNCHRONOUS_LEVELS, Config, ResourceConfig
from tunnelacct.config.orgs import configured_orgs
from tunnelacct.enums import EventKind, IpProto, SessionStatus
from tunnelacct.errors import StoreError
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.store.backend import StoreBackend
from tunnelacct.store.models import Client, Org, Resource, SessionRecord, table_of
from tunnelacct.store.postgres.backend import PostgresBackend
from tunnelacct.store.postgres.partitions import utc_days
from tunnelacct.store.sqlite.backend import SqliteBackend

log = logging.getLogger(__name__)

# Drivers used for each backend: async for the service, sync for Alembic.
_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}

T = TypeVar("T")


def _parse(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"invalid database URL: {exc}") from None


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _backend(url: URL) -> str:
    backend = url.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise StoreError(
            f"unsupported database URL scheme {url.drivername!r}: use sqlite:// or postgresql://"
        )
    return backend


def sync_url(url: str) -> str:
    """Return the sync-driver form of `url`: `sqlite+aiosqlite:///x.db` -> `sqlite:///x.db`,
    `postgresql://h/db` and `postgresql+asyncpg://h/db` -> `postgresql+psycopg://h/db`.

    An explicit sync driver (`postgresql+psycopg2://`) is kept.
    """
    parsed = _parse(url)
    backend = _backend(parsed)
    if parsed.drivername in (backend, _ASYNC_DRIVERS[backend]):
        parsed = parsed.set(drivername=_SYNC_DRIVERS[backend])
    return _render(parsed)


def async_url(url: str) -> str:
    """Return the async-driver form of `url`: `sqlite:///x.db` -> `sqlite+aiosqlite:///x.db`."""
    parsed = _parse(url)
    return _render(parsed.set(drivername=_ASYNC_DRIVERS[_backend(parsed)]))


_BACKENDS: dict[str, StoreBackend] = {"sqlite": SqliteBackend(), "postgresql": PostgresBackend()}


def backend_of(store: AsyncEngine | AsyncConnection | Engine | str) -> StoreBackend:
    """The backend of the engine `store` talks to: an engine, a connection, or a database URL
    (raises StoreError for any other engine)."""
    name = _backend(_parse(store)) if isinstance(store, str) else store.dialect.name
    backend = _BACKENDS.get(name)
    if backend is None:
        raise StoreError(f"unsupported database {name!r}: use SQLite or PostgreSQL")
    return backend


def make_sync_engine(url: str, *, busy_timeout_ms: int = 5000) -> Engine:
    """A sync engine for `url` (a process of its own, a CLI command); SQLite connections wait
    up to `busy_timeout_ms` for a lock rather than fail at once."""
    engine = create_engine(sync_url(url))
    if engine.dialect.name == "sqlite":
        timeout = int(busy_timeout_ms)
        event.listen(engine, "connect", lambda c, _r: c.execute(f"PRAGMA busy_timeout = {timeout}"))
    return engine


# A new SQLite store is readable by its owner only: it holds who reached what, and when.
# SQLite gives its -wal and -shm files the database file's mode.
SQLITE_FILE_MODE = 0o600


def ensure_sqlite_file(url: URL) -> None:
    """Create the parent directory of a SQLite database file, and the file itself, empty and
    mode 0600, when it is not there (not for :memory: or file: URIs)."""
    if url.get_backend_name() != "sqlite":
        return
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SQLITE_FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)


def sqlite_free_bytes(url: str) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of the SQLite store at
    `url` (statvfs of its directory); None for PostgreSQL (its disk is the server's) or when
    the directory cannot be read."""
    path = sqlite_file(url)
    if path is None:
        return None
    try:
        fs = os.statvfs(Path(path).expanduser().parent)
    except OSError:
        return None
    return fs.f_bavail * fs.f_frsize


def store_why(exc: SQLAlchemyError) -> str:
    """What the driver said, without SQLAlchemy's class prefix and "Background on this error"."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        return str(orig) or type(orig).__name__
    return str(exc).split("\n(Background on this error", 1)[0]


def require_database(url: str) -> None:
    """Raise a StoreError naming the store when it is not there: for the commands that only
    read or purge, which never create one. A SQLite file must exist; a PostgreSQL database
    must answer a connection (a refused connection or a missing database is named, not a
    traceback)."""
    path = sqlite_file(url)
    if path is None:
        _require_connection(url)
        return
    if not Path(path).expanduser().is_file():
        raise StoreError(
            f"no database at {shown_database(url)}: create it with `tunnelacct db upgrade` "
            "(serve and import create it too), or point --config or $TUNNELACCT_DATABASE_URL "
            "at the existing one"
        )


def _require_connection(url: str) -> None:
    try:
        engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    except ModuleNotFoundError as exc:
        raise StoreError(f"database driver {exc.name!r} is not installed") from exc
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot connect to {shown_database(url)}: {store_why(exc)}") from exc
    except OSError as exc:
        raise StoreError(f"cannot connect to {shown_database(url)}: {exc}") from exc
    finally:
        engine.dispose()


def make_engine(
    url: str, *, busy_timeout_ms: int = 5000, synchronous: str = "normal"
) -> AsyncEngine:
    """Create the async engine for `url`; SQLite connections get WAL, a busy timeout and
    `synchronous` ("normal" or "full": [database] synchronous)."""
    if synchronous not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}, not {synchronous!r}")
    sqlite_synchronous = synchronous.upper()
    parsed = make_url(async_url(url))
    ensure_sqlite_file(parsed)
    engine = create_async_engine(parsed)
    if parsed.get_backend_name() == "sqlite":

        def set_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets readers (API, export) run beside the writer; NORMAL is durable in WAL
            # mode except for the last transactions before a power loss, FULL also then
            # (an fsync of the WAL per commit; docs/hardening.md "Durability").
            for pragma in (
                f"busy_timeout={int(busy_timeout_ms)}",  # first: the others may wait for locks
                "journal_mode=WAL",
                f"synchronous={sqlite_synchronous}",
                "foreign_keys=ON",
                # Deleted rows are zeroed in the pages a change writes anyway, but whole pages
                # freed are not rewritten just to zero them (Debian builds default to ON,
                # which doubled a purge's writes); README "Retention".
                "secure_delete=FAST",
            ):
                cursor.execute(f"PRAGMA {pragma}")
            cursor.close()

        event.listen(engine.sync_engine, "connect", set_pragmas)
    return engine


def insert_for(dialect_name: str, table: Table) -> sqlite.Insert | postgresql.Insert:
    """An INSERT that supports ON CONFLICT for the dialect (`sqlite` or `postgresql`)."""
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    raise StoreError(f"unsupported database dialect {dialect_name!r}")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# serve creates the partitions of today and of this many next UTC days, at start and hourly.
PARTITION_DAYS_AHEAD = 3
PARTITION_CHECK_S = 3600.0


async def keep_partitions_ahead(
    engine: AsyncEngine,
    *,
    days_ahead: int = PARTITION_DAYS_AHEAD,
    interval_s: float = PARTITION_CHECK_S,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Forever: create the sessions partitions of today and the next `days_ahead` UTC days
    where the engine's layout wants them (`StoreBackend.ensure_days_ahead`), now and every
    `interval_s` seconds. Failures are logged and retried next time."""
    backend = backend_of(engine)
    while True:
        days = utc_days(clock(), days_ahead + 1)
        try:
            await backend.ensure_days_ahead(engine, days)
        except SQLAlchemyError as exc:
            log.warning("could not create the next days' sessions partitions: %s", exc)
        await asyncio.sleep(interval_s)


def _ports_text(resource: ResourceConfig) -> str | None:
    if resource.ports is None:
        return None
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in resource.ports)


def inventory_rows(config: Config, now: datetime) -> dict[Table, list[dict[str, Any]]]:
    """Rows for orgs, clients and resources as the config describes them (all active)."""
    orgs = [
        {
            "id": o.id,
            "name": o.name,
            "retention_days": o.retention_days,
            "logging": o.logging,
            "updated_at": now,
        }
        for o in configured_orgs(config)
    ]
    clients = [
        {
            "id": c.id,
            "org_id": c.org,
            "name": c.name,
            "user_id": c.user,
            "addresses": json.dumps(list(c.addresses)),
            "public_key": c.public_key,
            "active": True,
            "updated_at": now,
        }
        for c in config.clients
    ]
    resources = [
        {
            "id": r.id,
            "org_id": r.org,
            "name": r.name,
            "address": r.address,
            "ports": _ports_text(r),
            "protocols": ",".join(p.label for p in r.protocols),
            "active": True,
            "updated_at": now,
        }
        for r in config.resources
    ]
    return {table_of(Org): orgs, table_of(Client): clients, table_of(Resource): resources}


async def _upsert_changed(conn: AsyncConnection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert rows, or update them by id when a value differs (then `updated_at` moves too)."""
    if not rows:
        return
    compared = [c for c in table.columns if c.name not in ("id", "updated_at")]
    stmt = insert_for(conn.dialect.name, table)
    excluded = stmt.excluded
    upsert = stmt.on_conflict_do_update(
        index_elements=[table.c.id],
        set_={c.name: excluded[c.name] for c in [*compared, table.c.updated_at]},
        where=or_(*(c.is_distinct_from(excluded[c.name]) for c in compared)),
    )
    await conn.execute(upsert, rows)  # executemany: compiled once, no bound-parameter limit


async def _deactivate_missing(
    conn: AsyncConnection, table: Table, keep: set[str], now: datetime
) -> int:
    """Mark active rows whose id is not in `keep` inactive; return how many."""
    active = set((await conn.scalars(select(table.c.id).where(table.c.active))).all())
    stale = sorted(active - keep)
    for chunk in _chunks(stale, 500):
        await conn.execute(
            update(table).where(table.c.id.in_(chunk)).values(active=False, updated_at=now)
        )
    return len(stale)


async def sync_inventory(
    engine: AsyncEngine, config: Config, *, now: datetime | None = None
) -> None:
    """Upsert orgs, clients and resources from `config` in one transaction.

    The default org gets a row too (clients may name it without declaring it). Clients and
    resources missing from the config are kept but marked inactive; orgs are kept as they are.
    Session records are never touched.
    """
    now = now or datetime.now(UTC)
    rows = inventory_rows(config, now)
    org_table, client_table, resource_table = table_of(Org), table_of(Client), table_of(Resource)
    try:
        async with engine.begin() as conn:
            known = set((await conn.scalars(select(org_table.c.id))).all())
            known |= {o.id for o in configured_orgs(config)}
            for kind, items in (("client", config.clients), ("resource", config.resources)):
                for item in items:
                    if item.org not in known:
                        raise StoreError(f"{kind} {item.id!r} names unknown org {item.org!r}")
            for table, table_rows in rows.items():
                await _upsert_changed(conn, table, table_rows)
            gone_clients = await _deactivate_missing(
                conn, client_table, {c.id for c in config.clients}, now
            )
            gone_resources = await _deactivate_missing(
                conn, resource_table, {r.id for r in config.resources}, now
            )
    except SQLAlchemyError as exc:
        raise StoreError(f"inventory sync failed: {exc}") from exc
    log.info(
        "inventory synced: %d orgs, %d clients, %d resources; deactivated %d clients, %d resources",
        len(rows[org_table]),
        len(config.clients),
        len(config.resources),
        gone_clients,
        gone_resources,
    )


async def sync_orgs(engine: AsyncEngine, config: Config, *, now: datetime | None = None) -> None:
    """Upsert only the orgs of `config` (names, retention, logging); for a running service's
    purge, which must not touch the clients and resources it attributes with."""
    rows = inventory_rows(config, now or datetime.now(UTC))[table_of(Org)]
    try:
        async with engine.begin() as conn:
            await _upsert_changed(conn, table_of(Org), rows)
    except SQLAlchemyError as exc:
        raise StoreError(f"org sync failed: {exc}") from exc


async def stored_org_ids(engine: AsyncEngine) -> set[str]:
    """Ids of every org the store knows (configured now or before)."""
    async with engine.connect() as db:
        return set((await db.execute(select(table_of(Org).c.id))).scalars())


async def ongoing_sessions(engine: AsyncEngine, gateway: str) -> list[SessionEvent]:
    """The sessions of `gateway` still `ongoing` in the store, as CHECKPOINT events (for resume)."""
    table = table_of(SessionRecord)
    # The status as literal SQL, not a bound parameter: SQLite uses a partial index only
    # when the query's WHERE visibly implies the index's (status = 'ongoing').
    ongoing = table.c.status == literal_column(f"'{SessionStatus.ONGOING.value}'")
    stmt = select(SessionRecord).where(table.c.gateway == gateway, ongoing)
    async with AsyncSession(engine, expire_on_commit=False) as db:
        rows = (await db.scalars(stmt.order_by(table.c.started_at, table.c.id))).all()
    return [_stored_event(row) for row in rows]


_PROTOCOLS = {p.label: p for p in IpProto}


def _stored_event(row: SessionRecord) -> SessionEvent:
    return SessionEvent(
        kind=EventKind.CHECKPOINT,
        session_id=row.id,
        proto=_PROTOCOLS[row.protocol],
        family=row.ip_version,
        src_addr=row.src_addr,
        src_port=row.src_port,
        dst_addr=row.dst_addr,
        dst_port=row.dst_port,
        started_ts=row.started_at.timestamp(),
        last_ts=row.last_seen_at.timestamp(),
        ended_ts=None,
        bytes_tx=row.bytes_tx,
        bytes_rx=row.bytes_rx,
        packets_tx=row.packets_tx,
        packets_rx=row.packets_rx,
        payload_bytes_tx=row.payload_bytes_tx,
        payload_bytes_rx=row.payload_bytes_rx,
        close_reason=None,
        midstream=row.midstream,
        community_id=row.community_id,
        attribution=Attribution(
            org_id=row.org_id,
            client_id=row.client_id,
            client_name=row.client_name,
            user_id=row.user_id,
            resource_id=row.resource_id,
            resource_name=row.resource_name,
        ),
        interface=row.interface,
    )
