"""Alembic environment for tunnelacct: sync driver, batch mode for SQLite, no alembic.ini.

`tunnelacct.store.migrate.migrate(url)` builds the Alembic config in code and hands over an open
connection in `config.attributes["connection"]`; a `sqlalchemy.url` main option also works.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from tunnelacct.store.migrate import include_name
from tunnelacct.store.models import TableBase

config = context.config
target_metadata = TableBase.metadata


def _configure(**kwargs: Any) -> None:
    # SQLite cannot ALTER most things: batch mode rebuilds the table ("move and copy").
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        include_name=include_name,  # not the sessions partitions
        **kwargs,
    )


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL for `--sql` mode without a database connection."""
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run migrations on the given connection, or on one opened from `sqlalchemy.url`."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: use tunnelacct.store.migrate.migrate(url)")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
