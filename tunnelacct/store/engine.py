"""The store's engines: database URLs, the async and sync engines, the backend of each engine
(`backend_of`, store/backend.py), and the partitions kept ahead of the days.

Schema migrations are in `migrate.py` (Alembic is slow to import and only needed there).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    create_engine,
    event,
    pool,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tunnelacct.config.database_url import shown_database, sqlite_file
from tunnelacct.config.model import SYNCHRONOUS_LEVELS
from tunnelacct.errors import StoreError
from tunnelacct.store.backend import StoreBackend
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
