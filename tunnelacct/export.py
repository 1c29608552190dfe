"""CSV export of session records: column order, cell formatting and the formula guard.

Format: RFC 4180 (comma-separated, `"`-quoted when needed, CRLF line ends), one header row
with CSV_COLUMNS, then one row per session ordered by (started_at, id).
"""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from sqlalchemy import ColumnElement, String, literal_column, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config import Config
from tunnelacct.errors import StoreError, UnknownOrgError
from tunnelacct.models import SessionRecord
from tunnelacct.query import Filter, filter_clause
from tunnelacct.schema import check_schema
from tunnelacct.store import make_engine, stored_org_ids, table_of

# The header, in order. Times are RFC 3339 UTC with microseconds; counters are integers; tx is
# initiator -> responder, rx the reverse; empty cells are NULLs (e.g. ended_at of an ongoing
# session); midstream is true/false.
CSV_COLUMNS: tuple[str, ...] = (
    "session_id",
    "org_id",
    "client_id",
    "client_name",
    "user_id",
    "resource_id",
    "resource_name",
    "protocol",
    "ip_version",
    "src_addr",
    "src_port",
    "dst_addr",
    "dst_port",
    "started_at",
    "started_at_unix",
    "ended_at",
    "last_seen_at",
    "duration_s",
    "bytes_tx",
    "bytes_rx",
    "packets_tx",
    "packets_rx",
    "payload_bytes_tx",
    "payload_bytes_rx",
    "status",
    "close_reason",
    "midstream",
    "community_id",
    "gateway",
    "interface",
)

# Model attribute behind each column (session_id is the id; started_at_unix is computed).
_ATTRS = tuple("id" if name == "session_id" else name for name in CSV_COLUMNS)

# Spreadsheets run a cell starting with one of these as a formula (CSV injection, OWASP); a
# leading single quote makes them show it as text. Free text is guarded: ids, names, gateway
# and interface. Numbers are never negative, and times, addresses and enums never start so.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_GUARDED = frozenset(
    {"org_id", "client_id", "client_name", "user_id", "resource_id", "resource_name",
     "community_id", "gateway", "interface"}
)  # fmt: skip
_TIMES = frozenset({"started_at", "ended_at", "last_seen_at"})
_STARTED_AT = CSV_COLUMNS.index("started_at")

PAGE_SIZE = 5000


def _sqlite_cell(name: str) -> str:
    """SQL rendering column `name` as its CSV cell on SQLite (NULL stays NULL: an empty cell).

    SQLite keeps times as fixed-width naive UTC text "2026-11-23 10:40:45.123456" and UUIDs as
    32 hex digits (models.UtcDateTime, sqlalchemy.Uuid), so cells are cut from that text in
    SQL and Python's per-row work is only the csv module's quoting (3x faster than formatting
    SessionRecord objects in Python).
    """
    if name == "session_id":
        groups = [f"substr(id, {a}, {n})" for a, n in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))]
        return "(" + " || '-' || ".join(groups) + ")"
    if name == "started_at_unix":
        # whole seconds only: SQLite's date functions round to milliseconds (.9995 -> +1 s)
        return "(strftime('%s', substr(started_at, 1, 19)) || substr(started_at, 20))"
    if name in _TIMES:
        return f"(substr({name}, 1, 10) || 'T' || substr({name}, 12) || 'Z')"
    if name == "duration_s":
        return "printf('%.6f', duration_s)"  # microsecond resolution, never 1e-05 notation
    if name == "midstream":
        return "(CASE WHEN midstream THEN 'true' ELSE 'false' END)"
    if name in _GUARDED:
        firsts = ", ".join(f"char({ord(p)})" for p in FORMULA_PREFIXES)
        quoted = f"'''' || {name}"
        return f"(CASE WHEN substr({name}, 1, 1) IN ({firsts}) THEN {quoted} ELSE {name} END)"
    return name


def _cells(dialect: str) -> list[ColumnElement[Any]]:
    """The CSV_COLUMNS cells as SQL expressions for `dialect`."""
    if dialect != "sqlite":
        raise StoreError(f"CSV export from {dialect} is not supported yet: use SQLite")
    return [literal_column(_sqlite_cell(name), String).label(name) for name in CSV_COLUMNS]


def _encode(rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue()


async def csv_pages(
    engine: AsyncEngine,
    org_id: str,
    *,
    where: ColumnElement[bool] | None = None,
    page_size: int = PAGE_SIZE,
) -> AsyncIterator[tuple[str, int]]:
    """Yield the CSV of `org_id`'s sessions as (text, rows) chunks: the header, then a page each.

    Keyset pages on (started_at, id), each its own short read, so memory stays constant however
    many rows there are and a long export never pins old database versions. The next page is
    read while the csv module quotes this one in a thread, off the event loop.
    """
    table = table_of(SessionRecord)
    select_cells = select(*_cells(engine.dialect.name)).select_from(table)

    async def read(after: tuple[datetime, uuid.UUID] | None) -> Sequence[Any]:
        stmt = select_cells.where(table.c.org_id == org_id)
        if where is not None:
            stmt = stmt.where(where)
        if after is not None:
            stmt = stmt.where(tuple_(table.c.started_at, table.c.id) > after)
        stmt = stmt.order_by(table.c.started_at, table.c.id).limit(page_size)
        async with engine.connect() as conn:
            return (await conn.execute(stmt)).all()

    yield _encode([CSV_COLUMNS]), 0
    rows = await read(None)
    while rows:
        following: asyncio.Task[Sequence[Any]] | None = None
        if len(rows) == page_size:
            last = rows[-1]
            after = (datetime.fromisoformat(last[_STARTED_AT]), uuid.UUID(last[0]))
            following = asyncio.create_task(read(after))
        try:
            yield await asyncio.to_thread(_encode, rows), len(rows)
        except BaseException:
            if following is not None:
                following.cancel()  # the consumer stopped or failed: leave no read behind
            raise
        rows = await following if following is not None else []


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with microseconds: 2026-11-23T10:40:45.123456Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_fields(record: SessionRecord) -> dict[str, object]:
    """One session record as JSON-ready values under the CSV's names, in its order.

    Numbers stay numbers, times are RFC 3339 strings, NULLs None; no formula guard (not CSV).
    """
    out: dict[str, object] = {}
    for name, attr in zip(CSV_COLUMNS, _ATTRS, strict=True):
        if name == "started_at_unix":
            out[name] = unix_time(record.started_at)
            continue
        out[name] = json_value(getattr(record, attr))
    return out


def json_value(value: object) -> object:
    """A column value for JSON: times as RFC 3339 strings, UUIDs as text, the rest as is."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def unix_time(value: datetime) -> str:
    """Epoch seconds with microseconds, from integer microseconds (no float rounding)."""
    us = round((value - _EPOCH) / timedelta(microseconds=1))
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def export_org_csv(
    engine: AsyncEngine,
    org_id: str,
    out: TextIO,
    *,
    page_size: int = PAGE_SIZE,
    flt: Filter | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the header and every session of `org_id` (matching `flt`) as CSV; return the rows.

    `progress(rows_so_far)` is called after each page.
    """
    where = filter_clause(flt, table_of(SessionRecord)) if flt is not None else None
    count = 0
    async for text, rows in csv_pages(engine, org_id, where=where, page_size=page_size):
        out.write(text)
        count += rows
        if rows and progress is not None:
            progress(count)
    return count


def export_org(
    config: Config,
    org_id: str,
    out: TextIO,
    *,
    flt: Filter | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Blocking `export_org_csv` against the configured store (for the CLI); returns rows."""

    async def export() -> int:
        engine = make_engine(config.database.url)
        try:
            await check_schema(engine)
            known = {o.id for o in config.orgs} | {config.default_org}
            known |= await stored_org_ids(engine)
            if org_id not in known:
                raise UnknownOrgError(org_id, sorted(known))
            return await export_org_csv(engine, org_id, out, flt=flt, progress=progress)
        finally:
            await engine.dispose()

    return asyncio.run(export())
