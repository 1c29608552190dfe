"""Usage reports (issue 18): totals per group and interval, read from the usage_days rollup.

    query = usage_query("acme", by="user,resource", interval="month", month="2026-11")
    rows = await read_usage(engine, query)

A group is the values of the `by` dimensions (client, user, resource, protocol, gateway; ''
where a session had none); an interval is a UTC day, an ISO week (from Monday) or a calendar
month, named by its first day. Only the days from `first_day` to `last_day` (inclusive)
count, so the first and last week or month of a range may be partial. The filter language
applies, limited to the dimensions: the rollup has no ports, addresses or times of day.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.errors import TunnelacctError
from tunnelacct.query.filters import Filter, filter_clause, parse_filter
from tunnelacct.store.engine import backend_of
from tunnelacct.store.models import SessionRecord, UsageDay, table_of
from tunnelacct.store.usage import FIGURE_COLUMNS

DIMENSIONS = {
    "client": "client_id",
    "user": "user_id",
    "resource": "resource_id",
    "protocol": "protocol",
    "gateway": "gateway",
}
INTERVALS = ("day", "week", "month")
FILTER_KEYS = ("protocol", "client", "user", "resource", "gateway")
MAX_DAYS = 3660  # ten years of days in one report


class UsageQueryError(TunnelacctError):
    """A usage report's parameter that cannot be taken: names it and says why."""

    def __init__(self, parameter: str, detail: str) -> None:
        self.parameter = parameter
        self.detail = detail
        super().__init__(detail)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """One report: an org's totals per `by` group and `interval`, `first_day`..`last_day`."""

    org_id: str
    by: tuple[str, ...]
    interval: str
    first_day: date
    last_day: date
    flt: Filter = field(default_factory=Filter)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """The totals of one group in one interval (`period_start`: its first day, ISO)."""

    period_start: str
    group: tuple[str, ...]
    bytes_tx: int
    bytes_rx: int
    packets_tx: int
    packets_rx: int
    sessions_started: int
    sessions_completed: int


def usage_query(
    org_id: str,
    *,
    by: str = "",
    interval: str = "day",
    month: str | None = None,
    first: str | None = None,
    last: str | None = None,
    q: str = "",
    today: date | None = None,
) -> UsageQuery:
    """A UsageQuery from a report's parameters as given (CLI options, API query parameters):
    `by` comma-separated dimensions, `month` YYYY-MM or `first`/`last` YYYY-MM-DD (inclusive;
    either may be left out: the month so far up to `today`, UTC), `q` a filter on dimensions.
    Raises UsageQueryError naming the parameter."""
    dimensions = tuple(name.strip() for name in by.split(",") if name.strip())
    for name in dimensions:
        if name not in DIMENSIONS:
            known = ", ".join(DIMENSIONS)
            raise UsageQueryError("by", f"by: {name!r} is not one of {known}")
    if len(set(dimensions)) != len(dimensions):
        raise UsageQueryError("by", f"by: {by!r} names a dimension twice")
    if interval not in INTERVALS:
        raise UsageQueryError("interval", f"interval: {interval!r} is not one of day, week, month")
    today = today or datetime.now(UTC).date()
    if month is not None:
        if first is not None or last is not None:
            raise UsageQueryError("month", "month: give a month, or from and to, not both")
        first_day, last_day = month_days(month)
    else:
        last_day = _day("to", last) if last is not None else today
        first_day = _day("from", first) if first is not None else last_day.replace(day=1)
    if first_day > last_day:
        raise UsageQueryError("from", f"from: {first_day} is after to ({last_day})")
    if (last_day - first_day).days >= MAX_DAYS:
        raise UsageQueryError("from", f"from: at most {MAX_DAYS} days in one report")
    flt = parse_filter(q, keys=FILTER_KEYS, reader="the usage report") if q else Filter()
    return UsageQuery(org_id, dimensions, interval, first_day, last_day, flt)


def month_days(month: str) -> tuple[date, date]:
    """The first and last day of `month` (YYYY-MM)."""
    try:
        first = datetime.strptime(month, "%Y-%m").date()
    except ValueError:
        raise UsageQueryError("month", f"month: {month!r} is not a month YYYY-MM") from None
    last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
    return first, last


_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RFC3339_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})"
)


def _day(parameter: str, text: str) -> date:
    """`text`, a day YYYY-MM-DD, or an RFC 3339 time with its offset (what a Grafana link's
    `${__from:date:iso}` gives) whose UTC day counts; UsageQueryError naming `parameter`
    otherwise."""
    try:
        if _ISO_DAY.fullmatch(text):
            return date.fromisoformat(text)
        if _RFC3339_TIME.fullmatch(text):
            return datetime.fromisoformat(text).astimezone(UTC).date()
    except ValueError:
        pass  # 2026-02-30: the right shape, not a day
    raise UsageQueryError(
        parameter, f"{parameter}: {text!r} is not a day YYYY-MM-DD or an RFC 3339 time"
    )


def usage_statement(query: UsageQuery, week_start_sql: str) -> Select[tuple[object, ...]]:
    """The report's SELECT: one row per interval and group, in that order; `week_start_sql`
    is the store's SQL for the Monday of the `day` column's week."""
    table = table_of(UsageDay)
    first_day_sql: ColumnElement[Any]
    if query.interval == "day":
        first_day_sql = table.c.day
    elif query.interval == "month":
        first_day_sql = func.substr(table.c.day, 1, 7).concat("-01")
    else:
        first_day_sql = literal_column(week_start_sql)
    period = first_day_sql.label("period_start")
    groups = [table.c[DIMENSIONS[name]] for name in query.by]
    sums = [func.sum(table.c[figure]).label(figure) for figure in FIGURE_COLUMNS]
    return (
        select(period, *groups, *sums)
        .where(
            table.c.org_id == query.org_id,
            table.c.day >= query.first_day.isoformat(),
            table.c.day <= query.last_day.isoformat(),
            filter_clause(query.flt, table),
        )
        .group_by(period, *groups)
        .order_by(period, *groups)
    )


def report_statement(engine: AsyncEngine, query: UsageQuery) -> Select[tuple[object, ...]]:
    """The report's SELECT for the store at `engine`."""
    return usage_statement(query, backend_of(engine).week_start_sql("day"))


def report_rows(result: Iterable[Sequence[Any]], query: UsageQuery) -> list[UsageRow]:
    """The rows of the report's SELECT as UsageRows."""
    dimensions = len(query.by)
    rows = []
    for row in result:
        values = list(row)
        figures = [int(value) for value in values[1 + dimensions :]]
        group = tuple(str(value) for value in values[1 : 1 + dimensions])
        rows.append(UsageRow(str(values[0]), group, *figures))
    return rows


async def read_usage(engine: AsyncEngine, query: UsageQuery) -> list[UsageRow]:
    """The report's rows, from the store at `engine`."""
    async with engine.connect() as conn:
        result = await conn.execute(report_statement(engine, query))
        return report_rows(result, query)


async def usage_days_range(
    engine: AsyncEngine, org_id: str, first: str | None, last: str | None
) -> tuple[date, date] | None:
    """The days a rebuild of `org_id` covers: `first`..`last` (YYYY-MM-DD) as given, else from
    the org's first stored session to today (UTC); None when it has no session to start from."""
    last_day = _day("to", last) if last is not None else datetime.now(UTC).date()
    if first is not None:
        return _day("from", first), last_day
    table = table_of(SessionRecord)
    stmt = select(func.min(table.c.started_at)).where(table.c.org_id == org_id)
    async with engine.connect() as conn:
        earliest: datetime | None = (await conn.execute(stmt)).scalar_one()
    if earliest is None:
        return None
    return earliest.astimezone(UTC).date(), last_day
