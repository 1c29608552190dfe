"""Rebuild the usage rollup from the session rows still stored (`tunnelacct usage rebuild`).

An org's usage_days rows of a range of days are deleted and computed again from its sessions,
in one transaction that the writer's changes wait for (they then apply on top: a session's
write adds its share now less its share as last written, which is what the rebuild read).
Sessions on one day (no day split) are summed by the database; the few that ran across
midnight are split by their day marks here (store/usage.py). The usage_months rows of the
range's months are then summed again from usage_days (store/usagemonths.py).

Days whose sessions a purge may have deleted cannot come back: the range starts no earlier than
the first day after the latest purge cutoff of the org (`purge_runs`), and the rebuild says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import bindparam, func, literal_column, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.enums import SessionStatus
from tunnelacct.store.codec import placeholders
from tunnelacct.store.engine import backend_of
from tunnelacct.store.models import PurgeRun, SessionRecord, UtcDateTime, table_of
from tunnelacct.store.shares import SHARE_COLUMNS, aware_ts, stored_share
from tunnelacct.store.usage import USAGE_COLUMNS, UsageChanges, usage_upsert_sql
from tunnelacct.store.usagemonths import recompute_months

_COMPLETED = SessionStatus.COMPLETED.value


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild did for one org."""

    org_id: str
    first_day: date | None  # the range rebuilt; None when nothing could be
    last_day: date | None
    sessions: int  # session rows read
    rows: int  # usage_days rows written
    seconds: float
    purged_before: date | None  # days before this one lost sessions to a purge: not rebuilt


async def first_complete_day(engine: AsyncEngine, org_id: str) -> date | None:
    """The first day all of whose sessions are still stored, after the org's purges (None: no
    purge ever deleted any): a purge deletes sessions that ended before its cutoff, so the
    sessions of a day that begins at or after the cutoff are all there."""
    t = table_of(PurgeRun)
    stmt = select(func.max(t.c.cutoff)).where(t.c.org_id == org_id, t.c.dry_run.is_(False))
    async with engine.connect() as conn:
        cutoff: datetime | None = (await conn.execute(stmt)).scalar_one()
    if cutoff is None:
        return None
    cutoff = cutoff.astimezone(UTC)
    midnight = datetime.combine(cutoff.date(), datetime.min.time(), UTC)
    return cutoff.date() if cutoff == midnight else cutoff.date() + timedelta(days=1)


async def rebuild_usage(
    engine: AsyncEngine, org_id: str, first_day: date, last_day: date
) -> Rebuilt:
    """Compute `org_id`'s usage of `first_day`..`last_day` (inclusive) again from its sessions;
    the days before `first_complete_day` are left as they are."""
    started = time.perf_counter()
    complete_from = await first_complete_day(engine, org_id)
    purged_before = None
    if complete_from is not None and first_day < complete_from:
        purged_before = complete_from
        first_day = complete_from
    if first_day > last_day:
        return Rebuilt(org_id, None, None, 0, 0, time.perf_counter() - started, purged_before)
    backend = backend_of(engine)
    days = {"org": org_id, "first": first_day.isoformat(), "last": last_day.isoformat()}
    in_range = "org_id = :org AND day >= :first AND day <= :last"
    async with engine.begin() as conn:
        await backend.lock_usage(conn)
        await conn.execute(text(f"DELETE FROM usage_days WHERE {in_range}"), days)
        single = await _sum_single_day_sessions(conn, org_id, first_day, last_day)
        spanning, changes = await _split_spanning_sessions(conn, org_id, first_day, last_day)
        rows = changes.rows()
        if rows:
            sql = usage_upsert_sql(conn.dialect, placeholders(conn.dialect, len(USAGE_COLUMNS)))
            await conn.exec_driver_sql(sql, rows)
        count = text(f"SELECT COUNT(*) FROM usage_days WHERE {in_range}")
        written = int((await conn.execute(count, days)).scalar_one())
        await recompute_months(conn, org_id, first_day, last_day)
    seconds = time.perf_counter() - started
    return Rebuilt(org_id, first_day, last_day, single + spanning, written, seconds, purged_before)


def _range(first_day: date, last_day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(first_day, datetime.min.time(), UTC)
    return start, datetime.combine(last_day + timedelta(days=1), datetime.min.time(), UTC)


async def _sum_single_day_sessions(
    conn: AsyncConnection, org_id: str, first_day: date, last_day: date
) -> int:
    """INSERT the sums of the org's sessions that started in the range and had all their
    packets on one day (no day split); returns how many sessions they are."""
    backend = backend_of(conn)
    start_day = backend.day_text_sql("started_at")
    last_seen_day = backend.day_text_sql("last_seen_at")
    where = (
        f"org_id = :org AND started_at >= :start AND started_at < :end "
        f"AND day_split IS NULL AND {start_day} = {last_seen_day}"
    )
    start, end = _range(first_day, last_day)
    params = {"org": org_id, "start": start, "end": end}
    typed = [bindparam("start", type_=UtcDateTime()), bindparam("end", type_=UtcDateTime())]
    insert = text(
        "INSERT INTO usage_days (org_id, day, client_id, user_id, resource_id, protocol, "
        "gateway, bytes_tx, bytes_rx, packets_tx, packets_rx, sessions_started, "
        "sessions_completed) "
        f"SELECT org_id, {last_seen_day}, COALESCE(client_id, ''), COALESCE(user_id, ''), "
        "COALESCE(resource_id, ''), protocol, gateway, SUM(bytes_tx), SUM(bytes_rx), "
        "SUM(packets_tx), SUM(packets_rx), COUNT(*), "
        f"SUM(CASE WHEN status = '{_COMPLETED}' THEN 1 ELSE 0 END) "
        f"FROM sessions WHERE {where} "
        f"GROUP BY org_id, {last_seen_day}, COALESCE(client_id, ''), COALESCE(user_id, ''), "
        "COALESCE(resource_id, ''), protocol, gateway"
    ).bindparams(*typed)
    await conn.execute(insert, params)
    # the range's rows are these sums alone so far: their sessions_started counts the sessions
    started = text(
        "SELECT COALESCE(SUM(sessions_started), 0) FROM usage_days "
        "WHERE org_id = :org AND day >= :first AND day <= :last"
    )
    days = {"org": org_id, "first": first_day.isoformat(), "last": last_day.isoformat()}
    return int((await conn.execute(started, days)).scalar_one())


async def _split_spanning_sessions(
    conn: AsyncConnection, org_id: str, first_day: date, last_day: date
) -> tuple[int, UsageChanges]:
    """The shares, on the range's days, of the org's sessions that ran across midnight and
    had packets in the range; returns how many sessions they are, and the shares."""
    backend = backend_of(conn)
    t = table_of(SessionRecord)
    start, end = _range(first_day, last_day)
    across_midnight = or_(
        t.c.day_split.is_not(None),
        literal_column(backend.day_text_sql("started_at"))
        != literal_column(backend.day_text_sql("last_seen_at")),
    )
    stmt = select(*(t.c[name] for name in SHARE_COLUMNS)).where(
        t.c.org_id == org_id,
        t.c.started_at < end,
        or_(t.c.ended_at.is_(None), t.c.ended_at >= start),
        across_midnight,
    )
    changes = UsageChanges()
    sessions = 0
    for row in await conn.execute(stmt):
        sessions += 1
        share = stored_share(row, aware_ts)
        changes.add_stored(share, first_day.isoformat(), last_day.isoformat())
    return sessions, changes
