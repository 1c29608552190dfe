"""CSV export of session records: column order, cell formatting and the formula guard.

Format: RFC 4180 (comma-separated, `"`-quoted when needed, CRLF line ends), one header row
with CSV_COLUMNS, then one row per session ordered by (started_at, id).
"""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config import Config
from tunnelacct.errors import UnknownOrgError
from tunnelacct.models import SessionRecord
from tunnelacct.query import Filter, filter_clause
from tunnelacct.schema import check_schema
from tunnelacct.store import iter_org_sessions, make_engine, stored_org_ids, table_of

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
_UNIX_AT = CSV_COLUMNS.index("started_at_unix")

# Spreadsheets run a cell starting with one of these as a formula (CSV injection, OWASP); a
# leading single quote makes them show it as text. No numeric cell is ever negative, so a
# leading "-" only ever comes from text such as a client name.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

PAGE_SIZE = 5000


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with microseconds: 2026-11-23T10:40:45.123456Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def format_cell(value: object) -> str:
    """One cell: "" for None, true/false, RFC 3339 times, text with the formula guard."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, float):
        return f"{value:.6f}"  # times have microsecond resolution; never 1e-05 notation
    text = str(value)
    if text.startswith(FORMULA_PREFIXES):
        return "'" + text
    return text


def format_row(record: SessionRecord) -> list[str]:
    """The CSV cells of one session record, in CSV_COLUMNS order."""
    cells = [
        format_cell(getattr(record, attr)) if i != _UNIX_AT else "" for i, attr in enumerate(_ATTRS)
    ]
    cells[_UNIX_AT] = unix_time(record.started_at)
    return cells


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

    Reads keyset pages of `page_size` rows, so memory stays constant however large the org.
    `progress(rows_so_far)` is called after each page.
    """
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    where = filter_clause(flt, table_of(SessionRecord)) if flt is not None else None
    pages = iter_org_sessions(engine, org_id, page_size=page_size, where=where)
    async for page in pages:
        writer.writerows(format_row(record) for record in page)
        count += len(page)
        if progress is not None:
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
