"""HTTP details of the API that clients and proxies rely on (issue 16, item 9): HEAD answers,
relative redirects, and a cap on request bodies."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.helpers.stores import imported_store
from tunnelacct.service.listeners import listen_socket
from tunnelacct.store.engine import make_engine
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token
from tunnelacct.web.guards import MAX_BODY_BYTES

pytestmark = pytest.mark.hardening


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """wg-small.pcap imported by the real CLI into SQLite (orgs acme, globex, ...)."""
    with imported_store("sqlite", tmp_path_factory.mktemp("guards")) as url:
        yield url


@pytest.fixture
async def api(store: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    engine = make_engine(store)
    token = (await create_token(engine, Role.ADMIN))[0]
    app = create_app(ApiContext(engine))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client, {"Authorization": f"Bearer {token}"}
    await engine.dispose()


async def test_head_of_every_get_route_answers_the_get_s_status_and_headers_without_a_body(
    api: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, auth = api
    spec = (await client.get("/openapi.json")).json()
    paths = [p for p, ops in spec["paths"].items() if "get" in ops]
    paths += ["/docs", "/openapi.json", "/api/v1/orgs/nosuch/sessions"]
    assert "/api/v1/orgs/{org}/sessions.csv" in paths
    for template in paths:
        path = template.replace("{org}", "acme")
        got = await client.get(path, headers=auth)
        head = await client.head(path, headers=auth)
        assert head.status_code == got.status_code != 405, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if "content-length" in got.headers:  # JSON and pages; a CSV streams
            assert head.headers["content-length"] == got.headers["content-length"], path


async def test_a_redirect_is_relative_whatever_the_host_header(
    api: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, auth = api
    headers = {**auth, "Host": "attacker.example:8443"}
    r = await client.get("/api/v1/orgs/?x=1", headers=headers)
    assert r.status_code == 307
    assert r.headers["location"] == "/api/v1/orgs?x=1"
    followed = await client.get(r.headers["location"], headers=auth)
    assert followed.status_code == 200 and any(o["id"] == "acme" for o in followed.json())


async def test_a_body_over_the_cap_is_413_whether_its_length_is_declared_or_not(
    api: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, auth = api
    url = "/api/v1/orgs/acme"
    declared = await client.patch(url, headers=auth, content=b" " * (MAX_BODY_BYTES + 1))
    assert declared.status_code == 413
    assert declared.json()["error"] == "content_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY_BYTES // 1000 + 2):
            yield b" " * 1000

    streamed = await client.patch(url, headers=auth, content=chunks())
    assert streamed.status_code == 413
    # under the cap the body is read and judged as usual
    ok = await client.patch(url, headers=auth, json={"retention_days": 3})
    assert ok.status_code == 200 and ok.json()["retention_days"] == 3, ok.text


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_connections_to_the_listeners_are_accepted_with_tcp_nodelay(host: str) -> None:
    # Issue 16: without it each keep-alive request after the first waited ~44 ms for a
    # delayed ACK. The listener is serve's own ([api] and [metrics] listen).
    listener = listen_socket("api", host, 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_connection(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connection, sock=listener)
    try:
        _reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        assert await asyncio.wait_for(accepted, 60) == 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
