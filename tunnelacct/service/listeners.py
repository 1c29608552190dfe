"""Connection guards of serve's HTTP listeners ([api] and [metrics] listen; issue 16, item 1).

With `ulimit -n 200`, 260 plain TCP connections that sent nothing took every descriptor: the API
and /healthz stopped answering and the capture died. uvicorn closes a keep-alive connection
idle after a response, but not one that never completes a request. So:

- a connection has HEADER_TIMEOUT_S to complete each request's headers (the first one, and each
  one after a response), else it is closed;
- at most `max_connections` are open (`connection_cap()`: a quarter of the descriptors, so the
  store, the capture and exports keep the rest). Past the cap, the oldest connection without a
  request in progress is closed to make room: a flood of idle sockets cannot lock out a client
  that sends its request at once, such as a health check. The listen backlog is the cap too:
  asyncio accepts up to that many sockets at once before any reaches the protocol.
- accept() failures (EMFILE, ENFILE, ...) and other loop errors are logged at most once a minute
  per kind, with how many were not (`RateLimitedLoopErrors`); asyncio stops accepting for a
  second after each such failure by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from tunnelacct.errors import TunnelacctError

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 1024
LOOP_ERROR_LOG_EVERY_S = 60.0


def connection_cap(nofile_soft: int | None = None) -> int:
    """How many HTTP connections serve keeps open: a quarter of the open-file limit
    (RLIMIT_NOFILE soft, read when not given), at least 16 and at most MAX_CONNECTIONS."""
    if nofile_soft is None:
        nofile_soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile_soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, nofile_soft // 4))


def guarded_protocol(
    max_connections: int, header_timeout_s: float = HEADER_TIMEOUT_S
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class with the guards above, for `uvicorn.Config(http=...)`."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol  # only when something listens

    base: Any = AutoHTTPProtocol

    class GuardedHttp(base):  # type: ignore[misc]
        """One HTTP connection, closed when it is slow to send headers or crowds the cap."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_timer: asyncio.TimerHandle | None = None
            self._opened_at = time.monotonic()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()
            self._make_room()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm_header_timer()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            """No request whose headers are complete is being answered."""
            return self.cycle is None or bool(self.cycle.response_complete)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = asyncio.get_running_loop().call_later(
                header_timeout_s, self._header_timeout
            )

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.close()

        def _make_room(self) -> None:
            """Past the cap, close the oldest other connection without a request in progress,
            or this one when every other is answering a request. Connections already closing
            stay in uvicorn's set until their loss is reported: they are not counted."""
            live = [c for c in self.connections if not c.transport.is_closing()]
            if len(live) <= max_connections:
                return
            idle = [c for c in live if c is not self and c._between_requests()]
            victim = min(idle, key=lambda c: c._opened_at, default=self)
            victim.transport.close()

    return GuardedHttp


class RateLimitedLoopErrors:
    """An event loop exception handler that logs each kind of error (its message) at most once
    every LOOP_ERROR_LOG_EVERY_S, saying how many were not logged since."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        kind = str(context.get("message", "event loop error"))
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < LOOP_ERROR_LOG_EVERY_S:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            context = {**context, "message": f"{kind} ({suppressed} more since the last)"}
        loop.default_exception_handler(context)


Server = tuple[Any, socket.socket]  # a uvicorn.Server and the socket it serves


def listen_socket(section: str, host: str, port: int) -> socket.socket:
    """The listening TCP socket of `[section] listen`; a clear error when it cannot be bound.

    TCP_NODELAY is set on it, so that every accepted connection inherits it (Linux): asyncio
    sets it only on sockets whose proto is IPPROTO_TCP, which create_server's are not, and
    without it a keep-alive request waited ~40 ms for a delayed ACK (issue 16).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as e:
        raise TunnelacctError(f"[{section}] listen {host}:{port}: {e.strerror or e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def uvicorn_server(app: Any, *, root_path: str = "", trusted_proxies: tuple[str, ...] = ()) -> Any:
    """A uvicorn server for `app` that leaves SIGTERM/SIGINT to the service, with the
    connection guards above (header timeout, a cap that evicts idle connections), served
    under `root_path`, believing X-Forwarded-* only from `trusted_proxies` (none: never)."""
    import uvicorn  # imported only when something listens

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    cap = connection_cap()
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        http=guarded_protocol(cap),
        # asyncio accepts up to `backlog` sockets per wakeup before any of them reaches the
        # protocol and its cap: uvicorn's 2048 took every descriptor (issue 16)
        backlog=cap,
        root_path=root_path,
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=",".join(trusted_proxies) or None,
    )
    return Server(config)
