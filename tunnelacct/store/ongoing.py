"""The sessions a gateway left `ongoing` in the store, read back as events to resume."""

from __future__ import annotations

from sqlalchemy import literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.enums import EventKind, IpProto, SessionStatus
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.store.models import SessionRecord, table_of
from tunnelacct.store.rows import day_marks_of


async def ongoing_sessions(engine: AsyncEngine, gateway: str) -> list[SessionEvent]:
    """The sessions of `gateway` still `ongoing` in the store, as CHECKPOINT events (for resume)."""
    table = table_of(SessionRecord)
    # The status as literal SQL, not a bound parameter: SQLite uses a partial index only
    # when the query's WHERE visibly implies the index's (status = 'ongoing').
    ongoing = table.c.status == literal_column(f"'{SessionStatus.ONGOING.value}'")
    stmt = select(SessionRecord).where(table.c.gateway == gateway, ongoing)
    async with AsyncSession(engine, expire_on_commit=False) as db:
        rows = (await db.scalars(stmt.order_by(table.c.started_at, table.c.id))).all()
    return [_stored_event(row) for row in rows]


_PROTOCOLS = {p.label: p for p in IpProto}


def _stored_event(row: SessionRecord) -> SessionEvent:
    """The CHECKPOINT event of an ongoing row as it was written: payloads None where NULL (a
    flow record's), the flags, and the row's gateway (the caller decides what to do with a
    gateway other than its own)."""
    return SessionEvent(
        kind=EventKind.CHECKPOINT,
        session_id=row.id,
        proto=_PROTOCOLS[row.protocol],
        family=row.ip_version,
        src_addr=row.src_addr,
        src_port=row.src_port,
        dst_addr=row.dst_addr,
        dst_port=row.dst_port,
        started_ts=row.started_at.timestamp(),
        last_ts=row.last_seen_at.timestamp(),
        ended_ts=None,
        bytes_tx=row.bytes_tx,
        bytes_rx=row.bytes_rx,
        packets_tx=row.packets_tx,
        packets_rx=row.packets_rx,
        payload_bytes_tx=row.payload_bytes_tx,
        payload_bytes_rx=row.payload_bytes_rx,
        close_reason=None,
        midstream=row.midstream,
        community_id=row.community_id,
        attribution=Attribution(
            org_id=row.org_id,
            client_id=row.client_id,
            client_name=row.client_name,
            user_id=row.user_id,
            resource_id=row.resource_id,
            resource_name=row.resource_name,
        ),
        interface=row.interface,
        day_marks=day_marks_of(row.day_split),
        estimated=row.estimated,
        incomplete=row.incomplete,
        gateway=row.gateway,
    )
