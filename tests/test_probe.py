"""The store's readiness probe (tunnelacct/store/probe.py): an answer within its time limit, or
why not, kept for serve's `tunnelacct_ready`; GET /readyz probes through it (issue 22)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.store.engine import make_engine
from tunnelacct.store.probe import NOT_PROBED, StoreProbe, readiness_reasons
from tunnelacct.web.app import ApiContext, create_app


@pytest.fixture
async def silent_store() -> AsyncIterator[AsyncEngine]:
    """An engine on a "PostgreSQL" that accepts connections and never says a word, as a
    frozen server does (its kernel still completes the handshakes)."""
    held: list[asyncio.StreamWriter] = []

    def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # kept open, never answered

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{port}/tunnelacct")
    try:
        yield engine
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
        await engine.dispose()


async def test_a_store_that_answers_is_ready_and_the_answer_is_kept(store_url: str) -> None:
    engine = make_engine(store_url)
    probe = StoreProbe()
    assert readiness_reasons([], probe) == [NOT_PROBED]  # no answer yet: not ready
    try:
        assert await probe.probe(engine) is None
    finally:
        await engine.dispose()
    assert readiness_reasons([], probe) == []
    waiting = ["capture on wg0 is waiting"]
    assert readiness_reasons(waiting, probe) == waiting


async def test_a_store_that_never_answers_is_unreachable_once_the_time_limit_passed(
    silent_store: AsyncEngine,
) -> None:
    probe = StoreProbe(timeout_s=0.5)
    started = time.monotonic()
    problem = await probe.probe(silent_store)
    took_s = time.monotonic() - started
    assert problem == "store unreachable: no answer within 0.5 s"
    assert readiness_reasons([], probe) == [problem]
    assert 0.5 <= took_s < 5  # asyncpg alone would wait 60 s


async def test_readyz_answers_503_for_a_silent_store_within_the_probes_time_limit(
    silent_store: AsyncEngine,
) -> None:
    probe = StoreProbe(timeout_s=0.5)
    app = create_app(ApiContext(silent_store, store_probe=probe))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.get("/readyz")
    reasons = ["store unreachable: no answer within 0.5 s"]
    assert (answer.status_code, answer.json()) == (503, {"ready": False, "reasons": reasons})
    assert probe.problem == reasons[0]  # kept: what serve's tunnelacct_ready reads
