"""The web UI in the API's app: its routes, its static files, its error pages and its headers.

add_ui(app, ctx)   # create_app does it: one app, one filter parser, one org scoping
"""

# No `from __future__ import annotations`: kept like the routes it assembles.
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from tunnelacct.web.context import ApiContext
from tunnelacct.web.ui.account import account_routes
from tunnelacct.web.ui.adminpages import admin_page_routes
from tunnelacct.web.ui.errors import ui_error_page
from tunnelacct.web.ui.headers import SecurityHeaders
from tunnelacct.web.ui.render import STATIC_PREFIX, Pages
from tunnelacct.web.ui.retentionpage import retention_page_routes
from tunnelacct.web.ui.sessionlog import session_log_routes
from tunnelacct.web.ui.usagepage import usage_page_routes
from tunnelacct.web.ui.viewers import LoginNeeded, is_ui_request, mark_ui


class UiSite:
    """The UI's routers and the page renderer they share."""

    def __init__(self, ctx: ApiContext) -> None:
        self.pages = Pages()
        factories = (
            account_routes,
            session_log_routes,
            usage_page_routes,
            retention_page_routes,
            admin_page_routes,
        )
        self.routers = [routes(ctx, self.pages) for routes in factories]

    def router(self) -> APIRouter:
        """Every UI route, each tagged as the UI's (for its error pages), none in the OpenAPI."""
        router = APIRouter(dependencies=[Depends(mark_ui)], include_in_schema=False)
        for part in self.routers:
            router.include_router(part)
        return router

    def owns(self, request: Request) -> bool:
        """Whether an error on `request` is answered by a UI page."""
        return is_ui_request(request)

    async def error_page(self, request: Request, exc: Exception) -> Response:
        """The UI's answer to `exc`."""
        return await ui_error_page(request, exc, self.pages)


def add_ui(app: FastAPI, ctx: ApiContext) -> UiSite:
    """Mount the UI in `app`: routes, static files, security headers. The caller routes errors
    of UI requests to the returned site's `error_page`."""
    site = UiSite(ctx)
    app.include_router(site.router())
    static = StaticFiles(packages=[("tunnelacct.web.ui", "static")])
    app.mount(STATIC_PREFIX, static, name="ui-static")
    app.add_middleware(SecurityHeaders)
    return site


UI_ERRORS = (LoginNeeded,)  # errors only the UI raises (the API's handler never sees them)
