"""How the web UI's pages are made: Jinja2 templates from the package, autoescaped, with URLs
built from the root path a proxy serves the app under, and the few formats the pages share.

    pages = Pages()
    return pages.render(request, "sessions.html", viewer=viewer, rows=rows)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from tunnelacct import __version__

STATIC_PREFIX = "/static/ui"
_BYTE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def root_of(request: Request) -> str:
    """The path prefix the app is served under ("" at the host's root)."""
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def link(request: Request, path: str, query: Mapping[str, Any] | None = None) -> str:
    """An absolute path inside the app (under its root path), with `query` minus empty values."""
    kept = {name: value for name, value in (query or {}).items() if value not in (None, "")}
    suffix = f"?{urlencode(kept)}" if kept else ""
    return f"{root_of(request)}{path}{suffix}"


def human_bytes(count: int | None) -> str:
    """1234567 -> "1.23 MB" (SI units, as the filter's 10M); "" for NULL."""
    if count is None:
        return ""
    value = float(count)
    for unit in _BYTE_UNITS:
        if value < 1000 or unit == _BYTE_UNITS[-1]:
            return f"{count} B" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    return f"{count} B"


def human_duration(duration_s: float) -> str:
    """3725.5 -> "1 h 2 min"; under a minute to a tenth of a second."""
    if duration_s < 60:
        return f"{duration_s:.1f} s"
    minutes = int(duration_s // 60)
    if minutes < 60:
        return f"{minutes} min {int(duration_s % 60)} s"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60} min"
    return f"{hours // 24} d {hours % 24} h"


def utc_text(value: datetime | None) -> str:
    """A time as the pages show it: 2026-12-05 10:40:45 (UTC, to the second)."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def with_port(address: str, port: int | None) -> str:
    """addr:port, an IPv6 address in brackets; the address alone without a port."""
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def grouped(number: int) -> str:
    """12345 -> "12,345"."""
    return f"{number:,}"


class Pages:
    """The UI's templates and the response every page is sent in."""

    def __init__(self) -> None:
        self.env = Environment(
            loader=PackageLoader("tunnelacct.web.ui", "templates"),
            autoescape=select_autoescape(default=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["bytes"] = human_bytes
        self.env.filters["duration"] = human_duration
        self.env.filters["utc"] = utc_text
        self.env.filters["grouped"] = grouped
        self.env.globals["with_port"] = with_port
        self.env.globals["version"] = __version__

    def render(
        self,
        request: Request,
        template: str,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **values: Any,
    ) -> HTMLResponse:
        """`template` filled with `values`, plus `link` and `static` for the request's root."""

        def static(name: str) -> str:
            return f"{root_of(request)}{STATIC_PREFIX}/{name}?v={__version__}"

        def page_link(path: str, query: Mapping[str, Any] | None = None) -> str:
            return link(request, path, query)

        html = self.env.get_template(template).render(
            link=page_link, static=static, request=request, **values
        )
        no_store = {"Cache-Control": "no-store"}  # pages hold session data: never cached
        return HTMLResponse(html, status, headers={**no_store, **(headers or {})})
