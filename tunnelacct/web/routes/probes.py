"""Probes: liveness, readiness and the Prometheus metrics; no token, no session data.

GET /healthz                               liveness
GET /readyz                                store reachable, captures running
GET /metrics                               Prometheus text
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tunnelacct.store.probe import readiness_reasons
from tunnelacct.web.context import ApiContext
from tunnelacct.web.errors import error_doc


def probe_routes(ctx: ApiContext) -> APIRouter:
    """Liveness, readiness and the Prometheus metrics: no token needed."""
    router = APIRouter()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", responses={503: error_doc("not ready: `reasons` says why")})
    async def readyz() -> JSONResponse:
        # a probe of the store now, kept for serve's tunnelacct_ready: one judgement of both
        await ctx.store_probe.probe(ctx.engine)
        reasons = readiness_reasons(ctx.not_ready(), ctx.store_probe)
        status = 200 if not reasons else 503
        return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=status)

    @router.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        # Collected on the event loop: the collectors read in-memory counters only.
        return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)

    return router
