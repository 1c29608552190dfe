"""REST API: `create_app(ctx)` -> FastAPI, the routes of `routes/` over query, export and auth.

    GET /healthz                               liveness (no token, no data)
    GET /readyz                                store reachable, captures running (no token)
    GET /metrics                               Prometheus text (no token, no session data)
    GET /api/v1/orgs                           the orgs this token may read
    GET /api/v1/orgs/{org}/clients|resources   their inventory
    GET /api/v1/orgs/{org}/sessions?q=&limit=&cursor=   a keyset page + capped count
    GET /api/v1/orgs/{org}/sessions.csv?q=     every matching session, streamed
    GET /api/v1/orgs/{org}                     one org, and whether the config or the API owns it
    PATCH /api/v1/orgs/{org}                   {"retention_days": N | "forever"} (admin only)
    GET /api/v1/purge-runs?limit=              the newest retention purge runs (admin only)

    GET /docs, /redoc                          the OpenAPI description, browsable (no CDN)

Every /api route needs `Authorization: Bearer tat_…` (401 without a valid one). An org the
token may not read answers 404, exactly like an org that does not exist. Admin-only routes
answer 403 to an auditor token, whatever the org. The config file owns the retention of the
orgs it defines (a PATCH of one is a 409); the API sets it for the others.

Every error is one JSON shape, `{"error": CODE, "detail": TEXT}`; a bad parameter (query,
body, filter or cursor) is a 400 with `"error": "bad_parameter"` and `parameter` naming it
(a filter adds its `token` and `expected`), never FastAPI's 422.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from tunnelacct import __version__
from tunnelacct.web.context import ApiContext
from tunnelacct.web.errors import HANDLED_ERRORS, render_error
from tunnelacct.web.guards import HttpGuards
from tunnelacct.web.routes.admin import admin_routes
from tunnelacct.web.routes.orgs import org_routes
from tunnelacct.web.routes.probes import probe_routes
from tunnelacct.web.routes.sessions import session_routes
from tunnelacct.web.routes.usage import usage_routes
from tunnelacct.web.ui.site import UI_ERRORS, add_ui

__all__ = ["ApiContext", "create_app"]


class _Api(FastAPI):
    """FastAPI whose OpenAPI description documents no 422: a bad parameter is a 400 here."""

    def openapi(self) -> dict[str, Any]:
        """The description FastAPI builds, less the 422 it adds to routes with parameters."""
        schema = super().openapi()  # built once, then cached: dropping again changes nothing
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        return schema


# Swagger UI and ReDoc from the fastapi-offline package's files, never from a CDN: a gateway
# may reach no other host (issue 15).
DOCS_ASSETS = "/docs/assets"
_ASSETS_PACKAGE = ("fastapi_offline", "static")


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, whose scripts, styles and icon this app serves."""
    app.mount(DOCS_ASSETS, StaticFiles(packages=[_ASSETS_PACKAGE]), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            # no validator badge: it is an image from validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def create_app(ctx: ApiContext) -> FastAPI:
    """The ASGI app for `ctx` (no globals: tests build their own)."""
    app = _Api(title="tunnelacct", version=__version__, docs_url=None, redoc_url=None)
    app.state.api_context = ctx  # the routes' dependencies read it (web/context.py)
    # HEAD, relative redirects, a body cap, stalled readers cut (issue 16)
    app.add_middleware(HttpGuards, stalled_send_s=ctx.stalled_send_s)
    _add_docs(app)
    factories = (probe_routes, org_routes, admin_routes, session_routes, usage_routes)
    routers = [routes(ctx) for routes in factories]
    for router in routers:
        app.include_router(router)
    site = add_ui(app, ctx)  # the web UI: pages over the same routes' functions (issue 19)

    async def answer_error(request: Request, exc: Exception) -> Response:
        """A UI request's error as a page; every other as the API's JSON."""
        if site.owns(request):
            return await site.error_page(request, exc)
        return await render_error(request, exc)

    for error in (*HANDLED_ERRORS, *UI_ERRORS):
        app.add_exception_handler(error, answer_error)
    # the routes as written, for a 405 that names every method at its path (web/errors.py)
    app.state.method_routes = [route for router in routers for route in router.routes]
    return app
