"""A flood of idle and half-sent connections under a small descriptor limit (issue 16, item 1).

Before: with `ulimit -n 200` and 260 idle connections, /healthz stopped answering, accept()
errors filled the log (215 MB in 15 s), the replay died with "Too many open files", and idle
connections stayed open 70 s and more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.prometheus import free_port
from tests.helpers.serving import Serve, write_config
from tunnelacct.service.listeners import (
    HEADER_TIMEOUT_S,
    LOOP_ERROR_LOG_EVERY_S,
    MAX_CONNECTIONS,
    RateLimitedLoopErrors,
    connection_cap,
)

pytestmark = pytest.mark.hardening

DATA = Path(__file__).parents[1] / "data"
NOFILE = 200
FLOOD = 300  # connections, more than serve may hold (a quarter of NOFILE)


def small_nofile() -> None:
    """In serve's process, before exec: the descriptor limit of the probe."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def flood(port: int) -> Iterator[list[socket.socket]]:
    """FLOOD connections: most send nothing, every fifth half a request line."""
    socks = []
    try:
        for i in range(FLOOD):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 5 == 0:
                s.sendall(b"GET /api/v1/orgs HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.0)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_idle_connections_neither_take_the_api_down_nor_stay_open(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        DATA / "wg-small.toml",
        tmp_path / "serve.toml",
        {"api": {"listen": f"127.0.0.1:{port}"}},
        captures=[{"pcap": str(DATA / "wg-small.pcap"), "speed": 0.05, "loop": True}],
    )
    serve = Serve(None, config, tmp_path / "store.db", tmp_path, "flooded", preexec=small_nofile)
    with serve:
        serve.start()
        with flood(port) as socks:
            before = serve.wait(lambda s: s["captures"][0]["packets"] > 0, 60, "packets")
            # a client that sends its request at once is served while the flood holds
            assert any(healthz(port) for _ in range(5)), serve.log()
            deadline = time.monotonic() + 10 * HEADER_TIMEOUT_S
            while not all(closed_by_server(s) for s in socks):
                assert time.monotonic() < deadline, "idle connections were kept open"
                time.sleep(0.5)
            assert healthz(port)
        # the capture went on, and so did its sessions
        serve.wait(
            lambda s: (
                s["captures"][0]["packets"] > before["captures"][0]["packets"]
                and s["writer"]["rows_written"] > 0
                and s["status_write_failures"] == 0
            ),
            60,
            "the capture going on",
        )
        assert serve.proc is not None and serve.proc.poll() is None
        assert len(serve.log()) < 1_000_000, "the log is flooded"
        assert "Too many open files" not in serve.log(), serve.log()
        assert serve.stop() == 0, serve.log()


def test_the_example_unit_gives_serve_descriptors_for_its_full_connection_cap() -> None:
    unit = (Path(__file__).parents[2] / "examples" / "tunnelacct.service").read_text()
    limits = [
        line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("LimitNOFILE=")
    ]
    assert len(limits) == 1, "one LimitNOFILE= in [Service]"
    assert connection_cap(int(limits[0])) == MAX_CONNECTIONS


def test_loop_errors_of_one_kind_are_logged_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    handler = RateLimitedLoopErrors(clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(1000):  # an accept() storm: EMFILE again and again
                handler(loop, {"message": "socket.accept() out of system resource"})
                now[0] += 0.01
            handler(loop, {"message": "another kind"})
            now[0] = LOOP_ERROR_LOG_EVERY_S + 1
            handler(loop, {"message": "socket.accept() out of system resource"})
    finally:
        loop.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "socket.accept() out of system resource",
        "another kind",
        "socket.accept() out of system resource (999 more since the last)",
    ]
