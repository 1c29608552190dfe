"""Exports can no longer exhaust memory (issue 16, item 5): a few stream at once (429 with
Retry-After past that), and a reader that stops reading is cut, giving its slot back.

The API runs in a real uvicorn server in this process, so that a client that reads nothing
fills the socket buffers and holds the server's sends, as over a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.helpers.accuracy import run_cli
from tests.helpers.prometheus import free_port
from tests.helpers.replicate import replicate
from tests.helpers.serving import Serve, write_config
from tests.helpers.stores import empty_store, query
from tunnelacct.store.engine import make_engine
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token
from tunnelacct.web.limits import QueryLimits

pytestmark = pytest.mark.hardening

DATA = Path(__file__).parents[1] / "data"
ROWS = 100_000  # a CSV of ~30 MB: far more than socket buffers hold
STALLED_SEND_S = 1.0
# serve grew 86-103 MiB with its 4 exports streaming (312 MiB before the cap, all 20 at once),
# 2026-12-05 on the 2-core VM: the figure is docs/hardening.md's; the test keeps 10x of it
MAX_GROWTH_BYTES = 1024 * 2**20


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with empty_store("sqlite", tmp_path_factory.mktemp("exports")) as url:
        env = {"TUNNELACCT_DATABASE_URL": url}
        config = str(DATA / "wg-small.toml")
        run_cli("import", "--config", config, str(DATA / "wg-small.pcap"), env=env)
        ((acme,),) = query(url, "SELECT count(*) FROM sessions WHERE org_id = 'acme'")
        replicate(url, -(-ROWS // int(acme)), step_s=60, org_id="acme")
        yield url


@contextlib.asynccontextmanager
async def serving(url: str, limits: QueryLimits) -> AsyncIterator[tuple[int, list[str]]]:
    """The API on a free port with `limits`; (port, two admin tokens)."""
    engine = make_engine(url)
    tokens = [(await create_token(engine, Role.ADMIN))[0] for _ in range(2)]
    app = create_app(ApiContext(engine, limits=limits, stalled_send_s=STALLED_SEND_S))
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port, tokens
    finally:
        server.should_exit = True
        await task
        await engine.dispose()


async def stalled_reader(port: int, token: str) -> socket.socket:
    """A client that asks for the CSV, reads the answer's head, then reads nothing more."""
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)  # the server runs on this event loop too
    request = (
        f"GET /api/v1/orgs/acme/sessions.csv HTTP/1.1\r\nHost: api\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += await loop.sock_recv(sock, 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_to_the_end(sock: socket.socket) -> bytes:
    """What the server sent, read until it closed the connection."""
    sock.setblocking(True)
    sock.settimeout(60)
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_exports_past_the_cap_are_429_and_stalled_readers_are_cut(store: str) -> None:
    limits = QueryLimits(exports=2)
    ((rows,),) = query(store, "SELECT count(*) FROM sessions WHERE org_id = 'acme'")
    async with serving(store, limits) as (port, tokens):
        stalled = [await stalled_reader(port, tokens[0]), await stalled_reader(port, tokens[1])]
        assert limits.exporting == 2
        base = f"http://127.0.0.1:{port}/api/v1/orgs/acme/sessions.csv"
        auth = {"Authorization": f"Bearer {tokens[1]}"}
        async with httpx.AsyncClient(timeout=60) as http:
            refused = await http.get(base, headers=auth)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"] == "too_many_requests"
            # the stalled readers are cut: their slots come back, an export streams whole
            deadline = time.monotonic() + 100 * STALLED_SEND_S
            while limits.exporting:
                assert time.monotonic() < deadline, "stalled readers kept their exports"
                await asyncio.sleep(0.05)
            whole = await http.get(base, headers=auth)
        assert whole.status_code == 200
        assert whole.text.count("\r\n") == int(rows) + 1  # the header and every row
        for sock in stalled:
            cut = await asyncio.to_thread(read_to_the_end, sock)
            sock.close()
            assert 0 < cut.count(b"\r\n") < int(rows)  # a broken transfer, never a whole file


DOWNLOADS = 20


def test_twenty_concurrent_downloads_keep_serve_s_memory_bounded(
    tmp_path: Path, store: str
) -> None:
    # Issue 16: twenty concurrent sessions.csv downloads took serve from 124 to 570 MB.
    env = {"TUNNELACCT_DATABASE_URL": store}
    port = free_port()
    base = DATA / "wg-small.toml"
    config = write_config(base, tmp_path / "serve.toml", {"api": {"listen": f"127.0.0.1:{port}"}})
    token = run_cli("token", "create", "--config", str(config), "--role", "admin", env=env)
    headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
    url = f"http://127.0.0.1:{port}/api/v1/orgs/acme/sessions.csv"
    ((rows,),) = query(store, "SELECT count(*) FROM sessions WHERE org_id = 'acme'")
    with Serve(None, config, store, tmp_path) as serve:
        serve.start(wait_for="")
        serve.wait(lambda s: s["state"] == "running", 120, "running")
        with httpx.Client(timeout=120) as http:  # warm up: imports, pools, a first page
            assert http.get(url, params={"q": "dport:1"}, headers=headers).status_code == 200
        baseline = peak = serve.rss_bytes()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, serve.rss_bytes())
                done.wait(0.02)

        def download(_i: int) -> tuple[int, int]:
            with (
                httpx.Client(timeout=120) as client,
                client.stream("GET", url, headers=headers) as r,
            ):
                lines = sum(chunk.count(b"\n") for chunk in r.iter_bytes())  # \r\n may split
                return r.status_code, lines

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with ThreadPoolExecutor(DOWNLOADS) as pool:
                answers = list(pool.map(download, range(DOWNLOADS)))
        finally:
            done.set()
            sampler.join()
        assert serve.stop() == 0, serve.log()
    growth = peak - baseline
    print(f"serve grew {growth / 2**20:.1f} MiB; answers {sorted(a[0] for a in answers)}")
    assert all(a in ((200, int(rows) + 1), (429, 0)) for a in answers), (rows, answers)
    assert any(status == 429 for status, _ in answers)
    assert growth < MAX_GROWTH_BYTES, f"serve grew by {growth / 2**20:.1f} MiB"
