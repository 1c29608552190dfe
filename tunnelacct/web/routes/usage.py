"""Usage reports: an org's totals per group and interval, from the usage rollup (issue 18).

GET /api/v1/orgs/{org}/usage?by=user,resource&interval=day|week|month&from=&to=&month=&q=
GET /api/v1/orgs/{org}/usage.csv?...   the same report as CSV

The same tokens and org scoping as the sessions; `q` takes the filter language's dimension
terms only (client:, user:, resource:, protocol:, gateway:). Each report is written to the
access log (web/accesslog.py) with its `q` as given and its rows.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.reports.render import csv_chunks, header
from tunnelacct.reports.usage import (
    UsageQuery,
    UsageRow,
    report_statement,
    usage_query,
)
from tunnelacct.web.accesslog import AccessTarget, api_access, record_access
from tunnelacct.web.context import ApiContext, OrgId, Who
from tunnelacct.web.errors import ORG_ERRORS, bad_doc, error_doc

_USAGE_ERRORS = {
    **ORG_ERRORS,
    400: bad_doc("by, interval, month, from, to, or a filter q on dimensions (`token`)"),
    429: error_doc("the token already runs its most queries and exports at once: see Retry-After"),
    503: error_doc("the query ran over its time limit (`query_timeout`), or the store is down"),
}
Interval = Literal["day", "week", "month"]
_BY = "comma-separated: client, user, resource, protocol, gateway"
_Q = "filter on dimensions, e.g. user:alice -protocol:udp"


_REPORT = "totals per group and interval: a row per group and interval, under `columns`"
_REPORT_SCHEMA = {
    "type": "object",
    "required": ["org", "by", "interval", "from", "to", "columns", "rows"],
    "properties": {
        "org": {"type": "string"},
        "by": {"type": "array", "items": {"type": "string"}},
        "interval": {"type": "string", "enum": ["day", "week", "month"]},
        "from": {"type": "string", "format": "date"},
        "to": {"type": "string", "format": "date"},
        "columns": {"type": "array", "items": {"type": "string"}},
        "rows": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": {"type": ["string", "integer"]}},
        },
    },
}
_DIMENSION = "(client|user|resource|protocol|gateway)"
_DAY = "^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9:.]+(Z|[+-][0-9]{2}:[0-9]{2}))?$"
_DAY_OR_TIME = "YYYY-MM-DD, or an RFC 3339 time (its UTC day)"
By = Annotated[str, Query(description=_BY, pattern=f"^({_DIMENSION}(,{_DIMENSION})*)?$")]
Month = Annotated[str | None, Query(description="YYYY-MM", pattern="^[0-9]{4}-[0-9]{2}$")]
FirstDay = Annotated[str | None, Query(alias="from", description=_DAY_OR_TIME, pattern=_DAY)]
LastDay = Annotated[
    str | None, Query(alias="to", description=f"{_DAY_OR_TIME}, inclusive", pattern=_DAY)
]


def _usage_query(
    org: OrgId,
    by: By = "",
    interval: Annotated[Interval, Query(description="one row per group and interval")] = "day",
    month: Month = None,
    first: FirstDay = None,
    last: LastDay = None,
    q: Annotated[str, Query(description=_Q)] = "",
) -> UsageQuery:
    """The report a request asks for (UsageQueryError, a 400, naming a bad parameter)."""
    return usage_query(
        org, by=by, interval=interval, month=month, first=first, last=last, q=q.strip()
    )


Report = Annotated[UsageQuery, Depends(_usage_query)]


def usage_routes(ctx: ApiContext) -> APIRouter:
    """An org's usage report, as JSON and as CSV."""
    router = APIRouter()

    async def report(
        request: Request, who: Who, query: UsageQuery, what: AccessTarget
    ) -> list[UsageRow]:
        """The report's rows, its read written to the access log."""
        statement = report_statement(ctx.engine, query)

        async def read(db: AsyncSession) -> list[UsageRow]:
            return [tuple(row) for row in await db.execute(statement)]

        async with ctx.limits.slot(who.token_id):
            rows = await ctx.limits.run(ctx.engine, request.receive, read)
        q = request.query_params.get("q", "")
        access = api_access(who, query.org_id, what, q, rows=len(rows), at=ctx.clock())
        await record_access(ctx.engine, access)
        return rows

    @router.get(
        "/api/v1/orgs/{org}/usage",
        response_class=JSONResponse,
        responses={
            200: {
                "description": _REPORT,
                "content": {"application/json": {"schema": _REPORT_SCHEMA}},
            },
            **_USAGE_ERRORS,
        },
    )
    async def usage(request: Request, who: Who, query: Report) -> JSONResponse:
        rows = await report(request, who, query, AccessTarget.USAGE)
        names = header(query)
        body = {
            "org": query.org_id,
            "by": list(query.by),
            "interval": query.interval,
            "from": query.first_day.isoformat(),
            "to": query.last_day.isoformat(),
            "columns": names,
            "rows": [dict(zip(names, row, strict=True)) for row in rows],
        }
        # JSON of str and int only, encoded once: FastAPI's jsonable_encoder would walk every
        # value of 10,000 rows again (~130 ms of a month's report by user)
        return JSONResponse(body)

    @router.get(
        "/api/v1/orgs/{org}/usage.csv",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "the report as CSV (RFC 4180, UTF-8), a row per group and interval",
                "content": {"text/csv": {"schema": {"type": "string"}}},
            },
            **_USAGE_ERRORS,
        },
    )
    async def usage_csv(request: Request, who: Who, query: Report) -> StreamingResponse:
        # read whole: a report is days x groups
        rows = await report(request, who, query, AccessTarget.USAGE_CSV)
        return usage_csv_response(query, rows)

    return router


def usage_csv_response(query: UsageQuery, rows: list[UsageRow]) -> StreamingResponse:
    """A report as a CSV attachment (the API's usage.csv and the UI's Download CSV)."""
    filename = f"tunnelacct-{query.org_id}-usage-{query.first_day}-{query.last_day}.csv"
    return StreamingResponse(
        iter(list(csv_chunks(query, rows))),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )
