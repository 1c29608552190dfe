"""PostgreSQL's sessions partitions (issue 7): one per UTC day, created before their rows."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tunnelacct.store.models import SessionRecord, table_of

log = logging.getLogger(__name__)

# PostgreSQL (issue 7): sessions is partitioned by range of started_at, one partition per UTC
# day, named sessions_pYYYYMMDD. There is no DEFAULT partition: a default holding rows of a day
# would make creating that day's partition fail (or first move those rows), so every writer
# creates the partitions of its rows' days first (`ensure_partitions()`), and serve creates the
# next days' ahead of time.
PARTITION_PREFIX = "sessions_p"
_PARTITION_NAME = re.compile(r"sessions_p(\d{8})")
# Serialises partition creation between processes (gateways sharing a store): "tunnelpa".
PARTITION_LOCK_KEY = 0x74756E6E656C7061


def day_partition_name(day: date) -> str:
    """The name of the sessions partition of UTC `day`: `sessions_p20261125`."""
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The UTC day of a partition named by `day_partition_name()`; None for any other name."""
    match = _PARTITION_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").date()
    except ValueError:
        return None


def utc_days(start: datetime, count: int) -> list[date]:
    """`count` consecutive UTC days from the day of `start` (aware): for creating partitions
    ahead of time."""
    first = start.astimezone(UTC).date()
    return [first + timedelta(days=k) for k in range(count)]


async def ensure_partitions(db: AsyncConnection | AsyncEngine, days: Iterable[date]) -> int:
    """Create the sessions partitions of the UTC `days` that do not exist yet; return how many
    were created. PostgreSQL only (a no-op returning 0 elsewhere).

    Given an engine, it runs in a transaction of its own; given a connection, in the
    connection's transaction, which the caller commits. Each partition is created as a table
    and then attached: ATTACH PARTITION locks the parent SHARE UPDATE EXCLUSIVE, which does
    not wait for (or block) reads and writes of other days, where CREATE TABLE ... PARTITION OF
    would wait for a running export to end. Concurrent callers are serialised by an advisory
    transaction lock, so two gateways starting a new day create its partition once.
    """
    if isinstance(db, AsyncEngine):
        if db.dialect.name != "postgresql":
            return 0
        async with db.begin() as conn:
            return await ensure_partitions(conn, days)
    if db.dialect.name != "postgresql":
        return 0
    wanted = {day_partition_name(day): day for day in days}
    if not wanted:
        return 0
    sessions = table_of(SessionRecord).name
    await db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK_KEY})
    have = set(await attached_partitions(db)) & wanted.keys()
    missing = sorted(wanted.keys() - have)
    quote = db.dialect.identifier_preparer.quote
    for name in missing:
        day = wanted[name]
        # Literal bounds (DDL takes no parameters), built from a date: midnight UTC to midnight.
        low, high = f"'{day.isoformat()} 00:00:00+00'", f"'{day + timedelta(days=1)} 00:00:00+00'"
        await db.exec_driver_sql(
            f"CREATE TABLE {quote(name)} (LIKE {quote(sessions)} INCLUDING DEFAULTS)"
        )
        await db.exec_driver_sql(
            f"ALTER TABLE {quote(sessions)} ATTACH PARTITION {quote(name)}"
            f" FOR VALUES FROM ({low}) TO ({high})"
        )
    if missing:
        log.info("created %d sessions partitions (%s)", len(missing), ", ".join(missing))
    return len(missing)


async def attached_partitions(db: AsyncConnection) -> list[str]:
    """The names of every partition attached to sessions, as the catalog lists them."""
    stmt = text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = CAST(:parent AS regclass)"
    )
    names = await db.scalars(stmt, {"parent": table_of(SessionRecord).name})
    return [str(name) for name in names.all()]
