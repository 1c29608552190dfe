"""CSV export: header, cell formats, formula guard, RFC 4180 quoting, keyset paging, org scope."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tunnelacct.config import Config, DatabaseConfig, OrgConfig
from tunnelacct.errors import StoreError
from tunnelacct.export import CSV_COLUMNS, export_org, export_org_csv, format_row
from tunnelacct.models import SessionRecord
from tunnelacct.schema import migrate
from tunnelacct.store import make_engine

BASE = datetime(2026, 11, 23, 10, 40, 45, 123456, tzinfo=UTC)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'export.db'}"
    migrate(url)
    return url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(db_url)
    yield engine
    await engine.dispose()


def record(**overrides: Any) -> SessionRecord:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "org_id": "acme",
        "client_id": "c1",
        "client_name": "laptop",
        "user_id": None,
        "resource_id": "r1",
        "resource_name": "web",
        "protocol": "tcp",
        "ip_version": 6,
        "src_addr": "fd00::2",
        "dst_addr": "2001:db8::5",
        "src_port": 40000,
        "dst_port": 443,
        "started_at": BASE,
        "ended_at": None,
        "last_seen_at": BASE + timedelta(seconds=2),
        "duration_s": 2.0,
        "bytes_tx": 2**40 + 3,
        "bytes_rx": 2,
        "packets_tx": 3,
        "packets_rx": 4,
        "payload_bytes_tx": 5,
        "payload_bytes_rx": 6,
        "status": "ongoing",
        "close_reason": None,
        "midstream": True,
        "community_id": "1:hO+sN4H+MG5MY/8hIrXPqc4ZQz0=",
        "gateway": "gw1",
        "interface": "wg0",
    }
    values.update(overrides)
    return SessionRecord(**values)


async def store(engine: AsyncEngine, records: Iterable[SessionRecord]) -> None:
    async with AsyncSession(engine) as db:
        db.add_all(list(records))
        await db.commit()


async def export(engine: AsyncEngine, org_id: str = "acme", **kwargs: int) -> tuple[str, int]:
    out = io.StringIO(newline="")
    count = await export_org_csv(engine, org_id, out, **kwargs)
    return out.getvalue(), count


def parse(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_header_is_the_documented_column_order() -> None:
    assert CSV_COLUMNS == (
        "session_id", "org_id", "client_id", "client_name", "user_id", "resource_id",
        "resource_name", "protocol", "ip_version", "src_addr", "src_port", "dst_addr",
        "dst_port", "started_at", "started_at_unix", "ended_at", "last_seen_at", "duration_s",
        "bytes_tx",
        "bytes_rx", "packets_tx", "packets_rx", "payload_bytes_tx", "payload_bytes_rx",
        "status", "close_reason", "midstream", "community_id", "gateway", "interface",
    )  # fmt: skip


async def test_export_writes_header_then_rows_with_crlf_line_ends(engine: AsyncEngine) -> None:
    await store(engine, [record()])
    text, count = await export(engine)
    assert count == 1
    assert text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    assert text.count("\r\n") == 2 and text.endswith("\r\n")


def test_cells_format_times_as_rfc3339_utc_with_microseconds() -> None:
    sid = uuid.UUID("0b5f7c1e-2f55-4a8e-9d43-6f3b8e0c2a11")
    ended = datetime(2026, 11, 23, 10, 41, 0, 0, tzinfo=UTC)
    row = dict(
        zip(
            CSV_COLUMNS,
            format_row(record(id=sid, ended_at=ended, status="completed", close_reason="fin")),
            strict=True,
        )
    )
    assert row["session_id"] == "0b5f7c1e-2f55-4a8e-9d43-6f3b8e0c2a11"
    assert row["started_at"] == "2026-11-23T10:40:45.123456Z"
    # the same instant as epoch seconds: 2026-11-23T10:40:45Z is 1795430445 (date(1))
    assert row["started_at_unix"] == "1795430445.123456"
    assert row["ended_at"] == "2026-11-23T10:41:00.000000Z"
    rfc3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    assert all(rfc3339.match(row[c]) for c in ("started_at", "ended_at", "last_seen_at"))
    assert row["bytes_tx"] == "1099511627779"
    assert (row["midstream"], row["user_id"], row["close_reason"]) == ("true", "", "fin")
    assert row["src_addr"] == "fd00::2"


def test_ongoing_session_has_empty_ended_at_and_false_booleans() -> None:
    row = dict(zip(CSV_COLUMNS, format_row(record(midstream=False)), strict=True))
    assert (row["ended_at"], row["midstream"], row["status"]) == ("", "false", "ongoing")


@pytest.mark.parametrize(
    "name",
    ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"],
)
def test_formula_like_text_is_neutralised_with_a_leading_quote(name: str) -> None:
    row = dict(zip(CSV_COLUMNS, format_row(record(client_name=name)), strict=True))
    assert row["client_name"] == "'" + name


async def test_names_with_comma_quote_and_newline_read_back_intact(engine: AsyncEngine) -> None:
    name = 'Bob, "the builder"\nsecond line'
    await store(engine, [record(client_name=name, resource_name="a;b")])
    text, _ = await export(engine)
    rows = parse(text)
    assert [(r["client_name"], r["resource_name"]) for r in rows] == [(name, "a;b")]


async def test_exports_more_rows_than_a_page_in_started_at_then_id_order(
    engine: AsyncEngine,
) -> None:
    # 53 sessions over 10 start times: ties in started_at must be broken by id across pages.
    records = [record(started_at=BASE + timedelta(microseconds=i % 10)) for i in range(53)]
    expected = [str(sid) for _, sid in sorted((r.started_at, r.id) for r in records)]
    await store(engine, records)
    text, count = await export(engine, page_size=7)
    assert count == 53
    assert [r["session_id"] for r in parse(text)] == expected


async def test_exports_only_the_requested_org(engine: AsyncEngine) -> None:
    await store(engine, [record(org_id="acme") for _ in range(3)])
    await store(engine, [record(org_id="globex") for _ in range(4)])
    text, count = await export(engine, "globex")
    assert count == 4
    assert {r["org_id"] for r in parse(text)} == {"globex"}
    text, count = await export(engine, "nobody")
    assert (count, parse(text)) == (0, [])


def test_blocking_export_org_reads_the_configured_store(db_url: str) -> None:
    async def seed() -> None:
        engine = make_engine(db_url)
        try:
            await store(engine, [record() for _ in range(3)])
        finally:
            await engine.dispose()

    asyncio.run(seed())
    out = io.StringIO(newline="")
    config = Config(database=DatabaseConfig(db_url), orgs=(OrgConfig("acme", "Acme"),))
    assert export_org(config, "acme", out) == 3
    assert len(parse(out.getvalue())) == 3


def test_blocking_export_org_refuses_an_unmigrated_store(tmp_path: Path) -> None:
    config = Config(database=DatabaseConfig(f"sqlite:///{tmp_path / 'new.db'}"))
    with pytest.raises(StoreError, match="not migrated"):
        export_org(config, "acme", io.StringIO())
