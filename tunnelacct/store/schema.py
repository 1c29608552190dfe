"""Whether a database is at this version's schema, answered without Alembic when it is.

The export checks the schema before it reads. Importing Alembic to ask took 0.08 s of a CLI
export that takes 2 s in all (issue 21), so the revision this version needs is pinned here,
`HEAD_REVISION`, and a database that stores it is answered by one SELECT. Any other answer
(no alembic_version table, an older or unknown revision, several heads) goes to Alembic's
`check_schema_by_alembic`, which names what to do. tests/test_store.py checks
`HEAD_REVISION` against the migration scripts: a new migration must change it.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

HEAD_REVISION = "0013"  # the newest file in store/migrations/versions


async def _stored_revisions(engine: AsyncEngine) -> list[str] | None:
    """The revisions in the database's alembic_version table; None when it cannot be read."""
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT version_num FROM alembic_version"))
            return [str(row[0]) for row in rows]
    except SQLAlchemyError:
        return None  # no such table, or no database at all: Alembic's check says which


async def check_schema(engine: AsyncEngine) -> None:
    """Raise StoreError unless the database is migrated to this version's head revision."""
    if await _stored_revisions(engine) == [HEAD_REVISION]:
        return
    from tunnelacct.store.migrate import check_schema_by_alembic

    await check_schema_by_alembic(engine)  # raises, naming the cause, unless at the head
