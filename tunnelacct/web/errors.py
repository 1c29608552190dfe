"""The API's one error shape, `{"error": CODE, "detail": TEXT}`, and its OpenAPI description:
a bad parameter (query, body, filter or cursor) is a 400 naming it, never FastAPI's 422."""

# No `from __future__ import annotations`: FastAPI reads the handlers' signatures at runtime.
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tunnelacct.errors import FilterError, StoreError, TunnelacctError
from tunnelacct.reports.usage import UsageQueryError
from tunnelacct.web.limits import ClientGone, QueryTimeout, TooBusy


class BadParameter(TunnelacctError):
    """A request parameter the API cannot take (query, body or cursor): names it and says why."""

    def __init__(self, parameter: str, detail: str) -> None:
        self.parameter = parameter
        self.detail = detail
        super().__init__(detail)


BAD_PARAMETER = "bad_parameter"  # the `error` of every 400
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client went away
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what went wrong, e.g. not_found"},
        "detail": {"type": "string", "description": "the same, for a person"},
    },
    "required": ["error", "detail"],
}
_BAD_PARAMETER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "enum": [BAD_PARAMETER]},
        "parameter": {"type": "string", "description": "the bad one, e.g. limit, q or cursor"},
        "detail": {"type": "string", "description": "its value and what it should be"},
        "token": {"type": "string", "description": "q only: the bad filter term as written"},
        "expected": {"type": "string", "description": "q only: what the term should be"},
    },
    "required": ["error", "parameter", "detail"],
}


def error_doc(description: str, schema: dict[str, Any] = _ERROR_SCHEMA) -> dict[str, Any]:
    """An OpenAPI response: the API's JSON error shape."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def bad_doc(description: str) -> dict[str, Any]:
    """An OpenAPI 400 response: a bad parameter, named."""
    return error_doc(f"a bad parameter, named by `parameter`: {description}", _BAD_PARAMETER_SCHEMA)


def error_response(
    status: int,
    error: str,
    detail: str,
    *,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
    **more: str,
) -> JSONResponse:
    """The one shape of every error answer: `error`, `parameter` (a 400's), `detail`, `more`."""
    named = {"parameter": parameter} if parameter is not None else {}
    body = {"error": error, **named, "detail": detail, **more}
    return JSONResponse(body, status, headers=headers)


def _invalid(exc: RequestValidationError) -> BadParameter:
    """FastAPI's validation error as a BadParameter naming the (first) parameter at fault."""
    errors = exc.errors()
    first: Mapping[str, Any] = errors[0] if errors else {}
    place = [str(part) for part in first.get("loc", ())]
    parameter = ".".join(place[1:]) or ".".join(place) or "request"  # loc: ("query", "limit")
    why = str(first.get("msg", "invalid"))
    if "input" not in first:
        return BadParameter(parameter, f"{parameter}: {why}")
    return BadParameter(parameter, f"{parameter} {shown(first['input'])}: {why}")


async def render_error(request: Request, exc: Exception) -> Response:
    """The app's one error handler: core and API errors to HTTP, in the one JSON shape."""
    if isinstance(exc, RequestValidationError):
        exc = _invalid(exc)
    if isinstance(exc, BadParameter):
        return error_response(400, BAD_PARAMETER, exc.detail, parameter=exc.parameter)
    if isinstance(exc, UsageQueryError):
        return error_response(400, BAD_PARAMETER, exc.detail, parameter=exc.parameter)
    if isinstance(exc, FilterError):
        return error_response(
            400, BAD_PARAMETER, str(exc), parameter="q", token=exc.token, expected=exc.expected
        )
    if isinstance(exc, StoreError):
        return error_response(503, "store_unavailable", str(exc))
    if isinstance(exc, QueryTimeout):
        return error_response(503, "query_timeout", str(exc))
    if isinstance(exc, TooBusy):
        retry = {"Retry-After": str(exc.retry_after_s)}
        return error_response(429, "too_many_requests", str(exc), headers=retry)
    if isinstance(exc, ClientGone):
        return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it
    if isinstance(exc, StarletteHTTPException):
        # 401, 403, 404, 409 of the routes, and Starlette's own 404 and 405
        error = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        headers = exc.headers
        allowed = _allowed_methods(request) if exc.status_code == 405 else None
        if allowed is not None:
            headers = {**(headers or {}), "Allow": allowed}
        return error_response(exc.status_code, error, str(exc.detail), headers=headers)
    raise exc  # not registered for anything else


def _allowed_methods(request: Request) -> str | None:
    """Every method of the API's routes at the request's path (None if it has none): Starlette's
    own 405 names only the first route's (the GET of an org, not its PATCH)."""
    methods: set[str] = set()
    for route in getattr(request.app.state, "method_routes", []):
        match, _child_scope = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= route.methods
    if "GET" in methods:
        methods.add("HEAD")  # HttpGuards answers a HEAD as the GET, without its body
    return ", ".join(sorted(methods)) if methods else None


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: error_doc("no bearer token, or a bad, revoked or malformed one")
}
ORG_ERRORS = {**UNAUTHORIZED, 404: error_doc("no such org, or one the token may not read")}
ADMIN_ERRORS = {**UNAUTHORIZED, 403: error_doc("an auditor token: the route is for admin tokens")}


def shown(value: object) -> str:
    """`value` as JSON, cut short: how a bad value is named in a 400."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else f"{text[:57]}..."


# the errors `render_error` answers for
HANDLED_ERRORS = (
    BadParameter,
    ClientGone,
    FilterError,
    QueryTimeout,
    RequestValidationError,
    StarletteHTTPException,
    StoreError,
    TooBusy,
    UsageQueryError,
)
