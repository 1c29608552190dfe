"""The web UI's security headers, on every answer of the app but the API docs' pages.

Swagger UI and ReDoc (/docs, /redoc) run inline scripts, so those two pages keep no CSP; every
other answer (pages, static files, JSON, CSV) gets the UI's, which forbids inline script and
style and any other origin, and `nosniff`, a referrer policy and no framing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_ALWAYS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]
_CSP = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
]
_WITHOUT_CSP = ("/docs", "/redoc")  # Swagger UI's and ReDoc's pages: inline scripts


class SecurityHeaders:
    """Wraps an ASGI app (see the module docstring)."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _ALWAYS if app_path(scope) in _WITHOUT_CSP else _ALWAYS + _CSP

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                named = {name.lower() for name, _ in message.get("headers", ())}
                added = [header for header in extra if header[0] not in named]
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            await send(message)

        await self.app(scope, receive, with_headers)


def app_path(scope: Scope) -> str:
    """The request's path inside the app: without the root path a proxy serves it under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path
