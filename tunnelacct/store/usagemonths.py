"""usage_months kept equal to the sums of usage_days per month (issue 18).

Every usage_months row is the sum of the usage_days rows of its org, month and group, and
exists while one of them does. The writer adds to both in one transaction
(`UsageChanges.month_rows`); what rewrites usage_days otherwise brings the months along, in its
own transaction and under the usage lock (`StoreBackend.lock_usage`), which the caller takes:

- a rebuild computes the months of its days again from usage_days (`recompute_months`);
- a purge takes each day it deletes out of its month first (`take_day_from_months`).
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tunnelacct.store.codec import placeholders
from tunnelacct.store.usage import (
    FIGURE_COLUMNS,
    KEY_COLUMNS,
    MONTH_COLUMNS,
    MONTH_KEY_COLUMNS,
    usage_upsert_sql,
)

_GROUP = ", ".join(KEY_COLUMNS[2:])  # client_id, user_id, resource_id, protocol, gateway
_FIGURES = ", ".join(FIGURE_COLUMNS)
_SUMS = ", ".join(f"SUM({figure})" for figure in FIGURE_COLUMNS)
_NO_FIGURE = " AND ".join(f"{figure} = 0" for figure in FIGURE_COLUMNS)


def _month(day: date) -> str:
    return day.strftime("%Y-%m")


async def recompute_months(
    conn: AsyncConnection, org_id: str, first_day: date, last_day: date
) -> None:
    """Compute `org_id`'s usage_months rows of the months of `first_day`..`last_day` again
    from usage_days, on `conn` inside the caller's transaction."""
    months = {"org": org_id, "first": _month(first_day), "last": _month(last_day)}
    await conn.execute(
        text("DELETE FROM usage_months WHERE org_id = :org AND month >= :first AND month <= :last"),
        months,
    )
    days = {"org": org_id, "first": f"{months['first']}-01", "last": f"{months['last']}-31"}
    await conn.execute(
        text(
            f"INSERT INTO usage_months (org_id, month, {_GROUP}, {_FIGURES}) "
            f"SELECT org_id, substr(day, 1, 7), {_GROUP}, {_SUMS} FROM usage_days "
            "WHERE org_id = :org AND day >= :first AND day <= :last "
            f"GROUP BY org_id, substr(day, 1, 7), {_GROUP}"
        ),
        days,
    )


async def take_day_from_months(conn: AsyncConnection, org_id: str, day: str) -> None:
    """Take `org_id`'s usage_days rows of `day` (ISO) out of their month's rows, before they
    are deleted, on `conn` inside the caller's transaction; a month row left with nothing
    and no day row of its month and group is deleted."""
    rows = await conn.execute(
        text(
            f"SELECT org_id, substr(day, 1, 7), {_GROUP}, {_FIGURES} FROM usage_days "
            "WHERE org_id = :org AND day = :day"
        ),
        {"org": org_id, "day": day},
    )
    negated = []
    for row in rows:
        key = tuple(row[: len(MONTH_KEY_COLUMNS)])
        figures = tuple(-int(value) for value in row[len(MONTH_KEY_COLUMNS) :])
        negated.append((*key, *figures))
    if not negated:
        return
    marks = placeholders(conn.dialect, len(MONTH_COLUMNS))
    await conn.exec_driver_sql(usage_upsert_sql(conn.dialect, marks, months=True), negated)
    month = day[:7]
    same_group = " AND ".join(f"d.{column} = usage_months.{column}" for column in KEY_COLUMNS[2:])
    await conn.execute(
        text(
            f"DELETE FROM usage_months WHERE org_id = :org AND month = :month AND {_NO_FIGURE} "
            "AND NOT EXISTS (SELECT 1 FROM usage_days AS d WHERE d.org_id = :org "
            f"AND d.day >= :first AND d.day <= :last AND d.day <> :day AND {same_group})"
        ),
        {"org": org_id, "month": month, "first": f"{month}-01", "last": f"{month}-31", "day": day},
    )
