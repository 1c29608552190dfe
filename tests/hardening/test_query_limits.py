"""A read that runs too long, or whose client has gone, stops in the database too; a token
runs a few reads at a time (issue 16, item 4). SQLite and PostgreSQL, with statements that
would run for minutes: the wait for the database to be free again would time out otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.helpers.stores import imported_store
from tunnelacct.store.engine import make_engine
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token
from tunnelacct.web.limits import ClientGone, QueryLimits, QueryTimeout, TooBusy

pytestmark = pytest.mark.hardening

# minutes of work for either engine, and an observable for PostgreSQL
ENDLESS = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3e9) "
    "SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(600)",
}


def endless(engine: AsyncEngine, used: list[Any]) -> Callable[[AsyncSession], Any]:
    """A read that runs for minutes; it notes its driver connection in `used`."""

    async def work(db: AsyncSession) -> Any:
        raw = await (await db.connection()).get_raw_connection()
        used.append(raw.driver_connection)
        return (await db.execute(text(ENDLESS[engine.dialect.name]))).scalar_one()

    return work


class Client:
    """An ASGI receive: the request (no body), then a disconnect once `leave()` is called."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()
        self._sent_request = False

    def leave(self) -> None:
        self._gone.set()

    async def receive(self) -> dict[str, Any]:
        if not self._sent_request:
            self._sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}


async def until(check: Callable[[], Any], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        await asyncio.sleep(0.05)


async def database_free(engine: AsyncEngine, used: list[Any]) -> None:
    """Fails unless the read's statement stopped: on SQLite its connection (whose one thread
    would still run it for minutes) answers another; on PostgreSQL the server runs no such."""
    if engine.dialect.name == "sqlite":
        # aiosqlite runs a connection's statements, and its close, on one thread: a closed
        # connection, or one that answers, has no statement left running
        (connection,) = used
        deadline = time.monotonic() + 60
        while connection._connection is not None:
            try:
                cursor = await asyncio.wait_for(connection.execute("SELECT 1"), 1)
            except TimeoutError:
                assert time.monotonic() < deadline, "the statement still runs"
                continue
            except ValueError:  # closed meanwhile (the pool discards a cancelled one)
                return
            assert await cursor.fetchone() == (1,)
            return
        return
    deadline = time.monotonic() + 60
    while True:
        async with engine.connect() as conn:
            busy = await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                    "AND query LIKE 'SELECT pg_sleep(600)%'"
                )
            )
            if int(busy.scalar_one()) == 0:
                return
        assert time.monotonic() < deadline, "the statement still runs on the server"
        await asyncio.sleep(0.05)


@pytest.fixture
async def engine(store_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    yield store_engine


async def test_a_read_over_its_time_limit_is_stopped_in_the_database(engine: AsyncEngine) -> None:
    limits, used = QueryLimits(timeout_s=0.3), []
    with pytest.raises(QueryTimeout, match="over 0.3 s"):
        await limits.run(engine, Client().receive, endless(engine, used))
    await database_free(engine, used)
    assert (limits.stopped, limits.running) == (1, 0)
    # the connection it used is fine for the next read
    assert await limits.run(engine, Client().receive, _one) == 1


async def test_a_read_whose_client_left_is_stopped_in_the_database(engine: AsyncEngine) -> None:
    limits, used = QueryLimits(timeout_s=600), []
    client = Client()
    read = asyncio.create_task(limits.run(engine, client.receive, endless(engine, used)))
    await until(_running(limits), "read running")
    client.leave()
    with pytest.raises(ClientGone):
        await read
    await database_free(engine, used)


async def test_a_token_runs_a_few_reads_at_a_time() -> None:
    limits = QueryLimits(per_token=2)
    async with limits.slot("t1"), limits.slot("t1"):
        with pytest.raises(TooBusy):
            async with limits.slot("t1"):
                pass
        async with limits.slot("t2"):  # another token has its own
            pass
    async with limits.slot("t1"), limits.slot("t1"):  # slots come back
        pass


async def _one(db: AsyncSession) -> Any:
    return (await db.execute(text("SELECT 1"))).scalar_one()


def _running(limits: QueryLimits) -> Callable[[], Any]:
    async def check() -> bool:
        return limits.running > 0

    return check


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with imported_store("sqlite", tmp_path_factory.mktemp("limits")) as url:
        yield url


@contextlib.asynccontextmanager
async def api_client(
    url: str, limits: QueryLimits
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """An in-process client of the API on `url` with `limits`, and two admin tokens."""
    engine = make_engine(url)
    tokens = {
        "admin": (await create_token(engine, Role.ADMIN))[0],
        "other": (await create_token(engine, Role.ADMIN))[0],
    }
    transport = httpx.ASGITransport(app=create_app(ApiContext(engine, limits=limits)))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client, tokens
    finally:
        await engine.dispose()


async def test_the_api_answers_a_read_over_its_limit_with_503_query_timeout(
    captured: str,
) -> None:
    async with api_client(captured, QueryLimits(timeout_s=1e-6)) as (client, tokens):
        r = await client.get("/api/v1/orgs/acme/sessions", headers=bearer(tokens["admin"]))
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "query_timeout" and "narrow the filter" in r.json()["detail"]


async def test_the_api_answers_a_token_past_its_reads_with_429_and_retry_after(
    captured: str,
) -> None:
    limits = QueryLimits(per_token=1)
    url = "/api/v1/orgs/acme/sessions"
    async with api_client(captured, limits) as (client, tokens):
        admin_id = tokens["admin"].split("_")[1]
        async with limits.slot(admin_id):  # the token's one read is running
            busy = await client.get(url, headers=bearer(tokens["admin"]))
            other = await client.get(url, headers=bearer(tokens["other"]))
        again = await client.get(url, headers=bearer(tokens["admin"]))
    assert busy.status_code == 429, busy.text
    assert busy.json()["error"] == "too_many_requests"
    assert int(busy.headers["retry-after"]) >= 1
    assert other.status_code == 200, other.text  # another token has its own reads
    assert again.status_code == 200, again.text  # and the slot comes back


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
