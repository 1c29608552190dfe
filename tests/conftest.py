"""Shared fixtures: migrated stores per test (real files or databases, real Alembic migrations),
and what a test needs from the machine.

`db_path` and `engine` are a SQLite file. `database_url`, `store_url` and `store_engine` are
parametrised over SQLite and PostgreSQL (a fresh database per test, dropped afterwards; see
tests/helpers/pg.py for when PostgreSQL tests skip or fail).

`require_root`, `require_lab`, `require_tshark` and `require_tcpdump` skip a test loudly when
the machine lacks what it needs, and fail it when CI is set (tests/helpers/needs.py); a module
uses them as marks, e.g. `needs_lab = pytest.mark.usefixtures("require_lab")`. They are
session-scoped: checked once, and before any module fixture that would build what is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers.browser import PageOpener, launch_chromium
from tests.helpers.needs import INSTALL_HINT, missing_tools, not_root, require
from tests.helpers.netlab import WireguardLab
from tests.helpers.pg import fresh_database
from tunnelacct.store.engine import make_engine
from tunnelacct.store.migrate import migrate


@pytest.fixture(scope="session")
def require_root() -> None:
    """Root (AF_PACKET capture, network namespaces): else skip, or under CI fail."""
    require(not_root(), "root-only tests", hint="run them as root")


@pytest.fixture(scope="session")
def require_lab() -> None:
    """The WireGuard lab can run here (root, its tools, /dev/net/tun): else skip, or under CI
    fail."""
    ok, why = WireguardLab.available()
    require(None if ok else why, "WireGuard lab tests")


@pytest.fixture(scope="session")
def require_tshark() -> None:
    """tshark, the session oracle: else skip, or under CI fail."""
    require(missing_tools("tshark"), "tshark oracle tests", hint=INSTALL_HINT)


@pytest.fixture(scope="session")
def require_tcpdump() -> None:
    """tcpdump, the packet oracle: else skip, or under CI fail."""
    require(missing_tools("tcpdump"), "tcpdump oracle tests", hint=INSTALL_HINT)


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


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, once per module of browser tests (never per session:
    Playwright's sync API holds the main thread's event loop while it runs, see
    tests/helpers/browser.py)."""
    with launch_chromium() as launched:
        yield launched


@pytest.fixture
def open_page(browser: Browser) -> Iterator[PageOpener]:
    """Opens pages in fresh browser contexts, closed when the test ends."""
    with PageOpener(browser) as opener:
        yield opener
