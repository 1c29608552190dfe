"""ASGI middleware around the API's app: HTTP details a client or a proxy relies on (issue 16).

- HEAD of any GET route answers as the GET would, headers only; the body is never produced
  beyond its first chunk (a HEAD of sessions.csv stops the export at its first page).
- Redirects are relative (`Location: /api/v1/orgs`): built from the Host header, they pointed
  wherever a client said the API was.
- A request body larger than MAX_BODY_BYTES is refused with 413 before it is read into memory.
- A response the client does not read for `stalled_send_s` is cut: ten stalled CSV readers held
  245 MB for as long as they stalled.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # the API's only body is {"retention_days": N}
STALLED_SEND_S = 60.0


class _Stalled(Exception):
    """The client read nothing of the answer for `stalled_send_s`."""


class _HeadDone(Exception):
    """The headers of a HEAD answer are out: stop producing the body."""


class HttpGuards:
    """Wraps an ASGI app (see the module docstring)."""

    def __init__(
        self,
        app: App,
        max_body_bytes: int = MAX_BODY_BYTES,
        stalled_send_s: float = STALLED_SEND_S,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.stalled_send_s = stalled_send_s
        self.stalled = 0  # answers cut because their client stopped reading

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        received = 0
        started = False

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # a chunked body without a length
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = _relative_location(message)
                await send(message)
                return
            if message["type"] == "http.response.body" and head:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                raise _HeadDone
            try:
                # the transport's flow control holds send() while the client reads nothing
                await asyncio.wait_for(send(message), self.stalled_send_s)
            except TimeoutError:
                raise _Stalled from None

        try:
            await self.app(scope, capped_receive, guarded_send)
        except _HeadDone:
            return
        except _Stalled:
            self.stalled += 1
            log.info("cut an answer whose client read nothing for %.0f s", self.stalled_send_s)
        except _BodyTooLarge:
            if not started:
                await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": "content_too_large",
                "detail": f"the request body is over {self.max_body_bytes} bytes",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _BodyTooLarge(Exception):
    """A request body without a declared length grew past the cap."""


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _relative_location(message: Message) -> Message:
    """The response start with an absolute Location made relative (path and query)."""
    headers = message.get("headers", ())
    if not any(name == b"location" for name, _ in headers):
        return message
    fixed = []
    for name, value in headers:
        if name == b"location":
            parts = urlsplit(value.decode("latin-1"))
            relative = parts.path or "/"
            if parts.query:
                relative += "?" + parts.query
            value = relative.encode("latin-1")
        fixed.append((name, value))
    return {**message, "headers": fixed}
