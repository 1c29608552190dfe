"""How a session record is shown: the columns of the CSV and of the API's JSON, in order, and
their values as JSON gives them (times RFC 3339 UTC, durations to the microsecond)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from tunnelacct.store.models import SessionRecord

# The header, in order. Times are RFC 3339 UTC with microseconds; counters are integers; tx is
# initiator -> responder, rx the reverse; empty cells are NULLs (e.g. ended_at of an ongoing
# session, the payloads of a session from flow records); midstream, estimated and incomplete
# are true/false. Columns added later go at the end (estimated, incomplete: migration 0013), so
# that scripts reading cells by position keep working.
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
    "estimated",
    "incomplete",
)

# Model attribute behind each column (session_id is the id; started_at_unix is computed).
RECORD_ATTRS = tuple("id" if name == "session_id" else name for name in CSV_COLUMNS)


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with microseconds: 2026-11-23T10:40:45.123456Z."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_duration(duration_s: float) -> float:
    """A duration in seconds as JSON gives it: the value of the CSV's "%.6f" cell (rounded to
    the microsecond), so that one field has one value wherever it is read (issue 15)."""
    return float(f"{duration_s:.6f}")


def record_fields(record: SessionRecord) -> dict[str, object]:
    """One session record as JSON-ready values under the CSV's names, in its order.

    Numbers stay numbers, times are RFC 3339 strings, NULLs None; no formula guard (not CSV).
    duration_s is the CSV's cell as a number (rounded to the microsecond), not the stored double.
    """
    out: dict[str, object] = {}
    for name, attr in zip(CSV_COLUMNS, RECORD_ATTRS, strict=True):
        if name == "started_at_unix":
            out[name] = unix_time(record.started_at)
        elif name == "duration_s":
            out[name] = json_duration(record.duration_s)
        else:
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
