"""The usage page: the usage report's table for one grouping and interval, a bar chart of bytes
per interval drawn on the server (SVG, the table is its text alternative), and its CSV.

    GET /orgs/{org}/usage?by=user&interval=day&from=2026-11-01&to=2026-11-30&q=
    GET /orgs/{org}/usage.csv?...   the same report as CSV (the API's columns)

Each cell links to the session log filtered to its group and to the sessions started in its
interval. The report is the API's: the same query builder, statement and CSV writer.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession

from tunnelacct.errors import FilterError
from tunnelacct.reports.render import header
from tunnelacct.reports.usage import UsageQuery, UsageQueryError, report_statement, usage_query
from tunnelacct.web.accesslog import AccessTarget
from tunnelacct.web.context import ApiContext
from tunnelacct.web.routes.usage import usage_csv_response
from tunnelacct.web.ui.render import Pages, human_bytes
from tunnelacct.web.ui.sessionlog import quoted
from tunnelacct.web.ui.viewers import SignedIn, ViewerOrg, log_access

GROUPINGS = ("user", "client", "resource", "protocol")
CHART_WIDTH = 720
CHART_HEIGHT = 220
CHART_LEFT = 70  # room for the axis labels
CHART_BOTTOM = 30


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar of the chart: an interval and its bytes, with its box in the SVG."""

    label: str
    total_bytes: int
    x: float
    y: float
    width: float
    height: float


def interval_end(start: date, interval: str) -> date:
    """The first day after the interval that starts on `start`."""
    if interval == "day":
        return start + timedelta(days=1)
    if interval == "week":
        return start + timedelta(days=7)
    next_month = start.replace(day=28) + timedelta(days=4)
    return next_month.replace(day=1)


def period_starts(query: UsageQuery) -> list[str]:
    """The first day of every interval of the report's range, as its rows name them: each
    gets a bar, an interval without traffic a bar of zero."""
    first = query.first_day
    if query.interval == "week":
        first -= timedelta(days=first.weekday())  # ISO weeks start on Monday
    elif query.interval == "month":
        first = first.replace(day=1)
    starts = []
    while first <= query.last_day:
        starts.append(first.isoformat())
        first = interval_end(first, query.interval)
    return starts


def chart_bars(totals: dict[str, int]) -> list[Bar]:
    """The bars of bytes per interval, scaled to the chart's plot area."""
    if not totals:
        return []
    plot_width = CHART_WIDTH - CHART_LEFT - 10
    plot_height = CHART_HEIGHT - CHART_BOTTOM - 10
    slot = plot_width / len(totals)
    most = max(totals.values()) or 1
    bars = []
    for index, (label, total) in enumerate(sorted(totals.items())):
        height = plot_height * total / most
        bars.append(
            Bar(
                label=label,
                total_bytes=total,
                x=CHART_LEFT + index * slot + slot * 0.1,
                y=10 + plot_height - height,
                width=max(slot * 0.8, 1.0),
                height=height,
            )
        )
    return bars


def form_of(request: Request) -> dict[str, str]:
    """The report's parameters as the page's form holds them (defaults: by user, per day)."""
    params = request.query_params
    return {
        "by": params.get("by", "user"),
        "interval": params.get("interval", "day"),
        "from": params.get("from", ""),
        "to": params.get("to", ""),
        "q": params.get("q", ""),
    }


def usage_page_routes(ctx: ApiContext, pages: Pages) -> APIRouter:
    """The usage page and its CSV (see the module docstring)."""
    router = APIRouter()

    def asked(org: str, form: dict[str, str]) -> UsageQuery:
        """The report the form asks for; UsageQueryError or FilterError naming what is bad."""
        return usage_query(
            org,
            by=form["by"],
            interval=form["interval"],
            first=form["from"] or None,
            last=form["to"] or None,
            q=form["q"].strip(),
            today=ctx.clock().date(),
        )

    async def read(request: Request, viewer_id: str, query: UsageQuery) -> list[tuple[Any, ...]]:
        statement = report_statement(ctx.engine, query)

        async def rows_of(db: AsyncSession) -> list[tuple[Any, ...]]:
            return [tuple(row) for row in await db.execute(statement)]

        async with ctx.limits.slot(viewer_id):
            return await ctx.limits.run(ctx.engine, request.receive, rows_of)

    def session_link_args(query: UsageQuery, row: tuple[Any, ...]) -> dict[str, str]:
        """The session log's view of one report row: its group, sessions started in its
        interval (within the report's range)."""
        start = date.fromisoformat(str(row[0]))
        first = max(start, query.first_day)
        end = min(interval_end(start, query.interval), query.last_day + timedelta(days=1))
        terms = [
            f"{name}:{quoted(str(value))}"
            for name, value in zip(query.by, row[1 : 1 + len(query.by)], strict=True)
            if value
        ]
        return {"q": " ".join(terms), "from": first.isoformat(), "to": end.isoformat()}

    @router.get("/orgs/{org}/usage")
    async def usage_page(request: Request, viewer: SignedIn, org: ViewerOrg) -> Response:
        problem = ""
        parameter = ""
        rows: list[tuple[Any, ...]] = []
        query = None
        form = form_of(request)
        try:
            query = asked(org, form)
            rows = await read(request, viewer.principal.token_id, query)
            what = AccessTarget.USAGE
            await log_access(request, viewer, org, what, form["q"], rows=len(rows))
        except UsageQueryError as e:
            problem = e.detail
            parameter = e.parameter
        except FilterError as e:
            problem = f"Bad filter term {e.token}: expected {e.expected}."
            parameter = "q"
        totals: dict[str, int] = {}
        links = []
        if query is not None:
            totals = dict.fromkeys(period_starts(query), 0)
            figures_at = 1 + len(query.by)
            for row in rows:
                period = str(row[0])
                totals[period] = (
                    totals.get(period, 0) + int(row[figures_at]) + int(row[figures_at + 1])
                )
                links.append(session_link_args(query, row))
        return pages.render(
            request,
            "usage.html",
            viewer=viewer,
            org=org,
            form=form,
            groupings=GROUPINGS,
            query=query,
            columns=header(query) if query is not None else [],
            rows=list(zip(rows, links, strict=True)),
            bars=chart_bars(totals),
            chart_width=CHART_WIDTH,
            chart_height=CHART_HEIGHT,
            chart_left=CHART_LEFT,
            most_bytes=human_bytes(max(totals.values())) if totals else "",
            problem=problem,
            parameter=parameter,
        )

    @router.get("/orgs/{org}/usage.csv")
    async def usage_csv(request: Request, viewer: SignedIn, org: ViewerOrg) -> Response:
        form = form_of(request)
        query = asked(org, form)  # a bad one is the error page's 400
        query_text = form["q"]
        rows = await read(request, viewer.principal.token_id, query)
        await log_access(request, viewer, org, AccessTarget.USAGE_CSV, query_text, rows=len(rows))
        return usage_csv_response(query, rows)

    return router
