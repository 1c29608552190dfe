"""Shared fixtures: a migrated SQLite store per test (real files, real Alembic migrations)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

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
