"""Usage reports (issue 18): totals per group and interval, read from the usage rollup.

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
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Subquery,
    Table,
    and_,
    cast,
    func,
    literal_column,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.errors import TunnelacctError
from tunnelacct.query.filters import Filter, filter_clause, parse_filter
from tunnelacct.store.engine import backend_of
from tunnelacct.store.models import SessionRecord, UsageDay, UsageMonth, table_of
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


# One row of a report: its interval's first day (ISO), the values of the `by` dimensions in
# order ('' for none), then the sums of FIGURE_COLUMNS (ints), as the report's SELECT gives it.
UsageRow = tuple[Any, ...]


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
    is the store's SQL for the Monday of the `day` column's week.

    Monthly reports read usage_months for the months the range covers whole, and usage_days
    only for the days of a month it covers in part (its first and last month)."""
    days = table_of(UsageDay)
    if query.interval == "day":
        return _summed(
            query, days, days.c.day, _day_range(query, days, query.first_day, query.last_day)
        )
    if query.interval == "week":
        where = _day_range(query, days, query.first_day, query.last_day)
        return _summed(query, days, literal_column(week_start_sql), where)
    whole_first, whole_last = _whole_months(query.first_day, query.last_day)
    if whole_first is None or whole_last is None:
        where = _day_range(query, days, query.first_day, query.last_day)
        return _summed(query, days, _month_start(days.c.day), where)
    months = table_of(UsageMonth)
    month_start = months.c.month.concat("-01")
    in_months = and_(
        months.c.org_id == query.org_id,
        months.c.month >= whole_first.strftime("%Y-%m"),
        months.c.month <= whole_last.strftime("%Y-%m"),
        filter_clause(query.flt, months),
    )
    if whole_first == query.first_day and _month_end(whole_last) == query.last_day:
        return _summed(query, months, month_start, in_months)
    parts = [_figures(query, months, month_start, in_months)]
    if query.first_day < whole_first:
        head = _day_range(query, days, query.first_day, whole_first - timedelta(days=1))
        parts.append(_figures(query, days, _month_start(days.c.day), head))
    if query.last_day > _month_end(whole_last):
        tail = _day_range(query, days, _month_end(whole_last) + timedelta(days=1), query.last_day)
        parts.append(_figures(query, days, _month_start(days.c.day), tail))
    both = union_all(*parts).subquery("usage")
    return _summed(query, both, both.c.period_start, true())


def _whole_months(first_day: date, last_day: date) -> tuple[date | None, date | None]:
    """The first days of the first and last months that `first_day`..`last_day` covers
    whole; (None, None) when it covers none."""
    first = first_day if first_day.day == 1 else _month_end(first_day) + timedelta(days=1)
    last = last_day.replace(day=1)
    if _month_end(last_day) != last_day:
        last = (last - timedelta(days=1)).replace(day=1)
    if first > last:
        return None, None
    return first, last


def _month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _month_start(day_column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The first day of an ISO date column's month, as ISO text."""
    return func.substr(day_column, 1, 7).concat("-01")


def _day_range(query: UsageQuery, days: Table, first: date, last: date) -> ColumnElement[bool]:
    """The report's usage_days rows of `first`..`last`."""
    return and_(
        days.c.org_id == query.org_id,
        days.c.day >= first.isoformat(),
        days.c.day <= last.isoformat(),
        filter_clause(query.flt, days),
    )


def _figures(
    query: UsageQuery, source: Table, period: ColumnElement[Any], where: ColumnElement[bool]
) -> Select[tuple[object, ...]]:
    """The rows of `source` that `where` takes, as (period_start, the `by` columns, figures)."""
    groups = [source.c[DIMENSIONS[name]] for name in query.by]
    figures = [source.c[figure] for figure in FIGURE_COLUMNS]
    return select(period.label("period_start"), *groups, *figures).where(where)


def _summed(
    query: UsageQuery,
    source: Table | Subquery,
    period: ColumnElement[Any],
    where: ColumnElement[bool],
) -> Select[tuple[object, ...]]:
    """`source`'s figures summed per period and `by` group, in that order."""
    labelled = period.label("period_start")
    groups = [source.c[DIMENSIONS[name]] for name in query.by]
    # CAST: PostgreSQL sums BIGINTs as NUMERIC, which its driver reads as Decimal
    sums = [cast(func.sum(source.c[figure]), BigInteger).label(figure) for figure in FIGURE_COLUMNS]
    return (
        select(labelled, *groups, *sums)
        .where(where)
        .group_by(labelled, *groups)
        .order_by(labelled, *groups)
    )


def report_statement(engine: AsyncEngine, query: UsageQuery) -> Select[tuple[object, ...]]:
    """The report's SELECT for the store at `engine`."""
    return usage_statement(query, backend_of(engine).week_start_sql("day"))


async def read_usage(engine: AsyncEngine, query: UsageQuery) -> list[UsageRow]:
    """The report's rows, from the store at `engine`."""
    async with engine.connect() as conn:
        result = await conn.execute(report_statement(engine, query))
        return [tuple(row) for row in result]


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
