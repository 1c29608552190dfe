"""Whether a database is at this version's schema, answered without Alembic when it is.

Every command that opens the store first checks or migrates its schema: the export checks it,
serve, the import's writer and the reading commands migrate it. Importing Alembic and loading
its scripts to find nothing to do took 0.1 s or more of each (the CLI export takes 2 s in all;
issue 21), so the revision this version needs is pinned here, `HEAD_REVISION`, and a database
that stores it is answered by one SELECT. Any other answer (a new store, no alembic_version
table, an older or unknown revision, several heads) goes to Alembic (store/migrate.py), which
migrates, or names what to do. tests/test_store.py checks `HEAD_REVISION` against the
migration scripts: a new migration must change it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.database_url import sqlite_file
from tunnelacct.store.engine import sync_url

HEAD_REVISION = "0015"  # the newest file in store/migrations/versions
_REVISIONS = "SELECT version_num FROM alembic_version"


async def _stored_revisions(engine: AsyncEngine) -> list[str] | None:
    """The revisions in the database's alembic_version table; None when it cannot be read."""
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text(_REVISIONS))
            return [str(row[0]) for row in rows]
    except SQLAlchemyError:
        return None  # no such table, or no database at all: Alembic's check says which


async def check_schema(engine: AsyncEngine) -> None:
    """Raise StoreError unless the database is migrated to this version's head revision."""
    if await _stored_revisions(engine) == [HEAD_REVISION]:
        return
    from tunnelacct.store.migrate import check_schema_by_alembic

    await check_schema_by_alembic(engine)  # raises, naming the cause, unless at the head


def _stored_revisions_at(url: str) -> list[str] | None:
    """The revisions stored at `url` (blocking); None when there is no store or no answer."""
    path = sqlite_file(url)
    if path is not None and not Path(path).expanduser().is_file():
        return None  # a new store: connecting would leave an empty file before migrate() does
    try:
        engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    except ModuleNotFoundError:
        return None  # no driver: migrate() says which
    try:
        with engine.connect() as conn:
            return [str(row[0]) for row in conn.execute(text(_REVISIONS))]
    except SQLAlchemyError:
        return None
    finally:
        engine.dispose()


def upgrade_to_head(url: str) -> None:
    """Migrate the store at `url` to this version's schema, creating it when new (Alembic's
    `upgrade head`, store/migrate.py); a store already there is only asked. Blocking."""
    if _stored_revisions_at(url) == [HEAD_REVISION]:
        return
    from tunnelacct.store.migrate import migrate

    migrate(url)
