"""Schema migrations with Alembic: `migrate()` to head, and the schema check before reading.

The migrations (Alembic `env.py`, `versions/`) ship inside the package, in
`tunnelacct/store/migrations/`, so every install can create and upgrade a database: a
checkout, an editable install, a wheel. The repository's top-level `migrations` is a link to
them, for Alembic's own command line.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.errors import StoreError
from tunnelacct.store.engine import ensure_sqlite_file, store_why, sync_url
from tunnelacct.store.postgres.partitions import partition_day
from tunnelacct.store.sqlite.layout import is_layout_name

log = logging.getLogger(__name__)

NOT_MIGRATED = "database is not migrated: run `tunnelacct db upgrade`"


def migrations_dir() -> Path:
    """The Alembic scripts shipped with the package (`tunnelacct/store/migrations/`)."""
    path = Path(__file__).resolve().parent / "migrations"
    if not (path / "env.py").is_file():
        raise StoreError(f"Alembic migrations not found at {path}: the installation is incomplete")
    return path


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic's filter of reflected names: everything but the sessions partitions
    (`sessions_pYYYYMMDD` on PostgreSQL; on SQLite `sessions_pYYYYMMDD_<N>d_<org>` and
    `sessions_default`, sqlite/layout.py), which the service creates and retention drops, and
    which no model describes."""
    if type_ != "table" or name is None:
        return True
    return partition_day(name) is None and not is_layout_name(name)


def alembic_config(script_location: Path | None = None) -> AlembicConfig:
    """Build the Alembic config in code (no alembic.ini)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location or migrations_dir()))
    return cfg


def migrate(url: str, *, script_location: Path | None = None) -> None:
    """Upgrade the database at `url` to the newest schema (Alembic `upgrade head`), blocking.

    Run it before the event loop starts or through `asyncio.to_thread`.
    """
    cfg = alembic_config(script_location)
    parsed = make_url(sync_url(url))
    ensure_sqlite_file(parsed)
    try:
        engine = create_engine(parsed, poolclass=pool.NullPool)
    except ModuleNotFoundError as exc:
        raise StoreError(f"database driver {exc.name!r} is not installed") from exc
    try:
        if parsed.get_backend_name() == "sqlite":
            # WAL is persistent: switch now, so the service's first connection need not wait
            # for exclusive access to do it.
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        with engine.begin() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StoreError(f"migration failed: {store_why(exc)}") from exc
    finally:
        engine.dispose()
    head = heads(cfg)
    if before == head:
        log.debug("database schema at %s", head)
    else:
        log.info("database schema migrated from %s to %s", before or "nothing", head)


def heads(cfg: AlembicConfig) -> str:
    """The head revision(s) of the migration scripts, comma-separated."""
    return ",".join(ScriptDirectory.from_config(cfg).get_heads())


async def check_schema_by_alembic(
    engine: AsyncEngine, *, script_location: Path | None = None
) -> None:
    """Raise StoreError unless the database is migrated to this version's head revision, as
    Alembic reads it (store/schema.py answers the common case without Alembic)."""

    def current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    try:
        async with engine.connect() as conn:
            revision = await conn.run_sync(current)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the database: {store_why(exc)}") from exc
    if revision is None:
        raise StoreError(NOT_MIGRATED)
    cfg = alembic_config(script_location)
    expected = heads(cfg)
    if revision == expected:
        return
    known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
    if revision in known:
        raise StoreError(
            f"database schema is at revision {revision}, this tunnelacct needs {expected}: "
            "run `tunnelacct db upgrade`"
        )
    raise StoreError(
        f"database schema revision {revision} is unknown to this tunnelacct "
        f"(it expects {expected}): was it migrated by a newer version?"
    )
