"""Shared fixtures: migrated stores per test (real files or databases, real Alembic migrations).

`db_path` and `engine` are a SQLite file. `database_url`, `store_url` and `store_engine` are
parametrised over SQLite and PostgreSQL (a fresh database per test, dropped afterwards; see
tests/helpers/pg.py for when PostgreSQL tests skip or fail).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers.pg import fresh_database
from tunnelacct.schema import migrate
from tunnelacct.store import make_engine


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A SQLite file migrated to the newest schema."""
    path = tmp_path / "store.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture
async def engine(db_path: Path) -> AsyncIterator[AsyncEngine]:
    """An async engine on `db_path`, disposed after the test."""
    engine = make_engine(f"sqlite:///{db_path}")
    yield engine
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database: a SQLite file in tmp_path, or a fresh PostgreSQL database
    `tunnelacct_t_<random>` dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_database() as url:
        yield url


@pytest.fixture
def store_url(database_url: str) -> str:
    """`database_url` migrated to the newest schema."""
    migrate(database_url)
    return database_url


@pytest.fixture
async def store_engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on `store_url`, disposed after the test."""
    engine = make_engine(store_url)
    yield engine
    await engine.dispose()
