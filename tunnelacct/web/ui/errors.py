"""The UI's errors as pages: the one place they are rendered for a browser.

A request a UI route took (web/ui/viewers.py `mark_ui`) gets an HTML page for the errors the
API answers as JSON, and a redirect to the sign-in page when it needs a login.
"""

# No `from __future__ import annotations`: kept like the API's handlers.
from http import HTTPStatus

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunnelacct.errors import FilterError, StoreError
from tunnelacct.reports.usage import UsageQueryError
from tunnelacct.web.errors import BadParameter
from tunnelacct.web.limits import ClientGone, QueryTimeout, TooBusy
from tunnelacct.web.ui.render import Pages, link
from tunnelacct.web.ui.viewers import LoginNeeded, current_viewer


def _status_and_detail(exc: Exception) -> tuple[int, str, dict[str, str]]:
    if isinstance(exc, BadParameter | UsageQueryError):
        return 400, exc.detail, {}
    if isinstance(exc, FilterError):
        return 400, str(exc), {}
    if isinstance(exc, StoreError | QueryTimeout):
        return 503, str(exc), {}
    if isinstance(exc, TooBusy):
        return 429, str(exc), {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail), dict(exc.headers or {})
    return 500, "an unexpected error", {}


async def ui_error_page(request: Request, exc: Exception, pages: Pages) -> Response:
    """The page answering `exc` on a UI request."""
    if isinstance(exc, LoginNeeded):
        return RedirectResponse(link(request, "/login", {"next": exc.back_to}), 303)
    if isinstance(exc, ClientGone):
        return Response(status_code=499)
    status, detail, headers = _status_and_detail(exc)
    viewer = await current_viewer(request) if status != 503 else None
    return pages.render(
        request,
        "error.html",
        status=status,
        headers=headers,
        viewer=viewer,
        org=None,
        title=HTTPStatus(status).phrase,
        detail=detail[:1:].upper() + detail[1:],
    )
