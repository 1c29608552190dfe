"""CSV export: header, cell formats, formula guard, RFC 4180 quoting, keyset paging, org scope;
each on SQLite and PostgreSQL (a fresh database per test, or per module for property tests)."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.helpers.stores import ENGINES, empty_store, execute, migrated_store
from tunnelacct.config.model import Config, DatabaseConfig, OrgConfig
from tunnelacct.errors import StoreError
from tunnelacct.query.export import ExportWorkers, csv_pages, export_org, export_org_csv
from tunnelacct.query.filters import parse_filter
from tunnelacct.query.records import CSV_COLUMNS
from tunnelacct.store.engine import make_engine
from tunnelacct.store.models import SessionRecord
from tunnelacct.store.postgres.partitions import ensure_partitions

BASE = datetime(2026, 11, 23, 10, 40, 45, 123456, tzinfo=UTC)


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_store(request.param, tmp_path) as url:
        yield url


@pytest.fixture(scope="module", params=ENGINES)
def shared_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated store per engine for property tests, emptied by each example."""
    with migrated_store(request.param, tmp_path_factory.mktemp("export")) as url:
        yield url


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
    records = list(records)
    # PostgreSQL: the writer creates the day partitions of what it writes; rows added directly
    # need them too
    await ensure_partitions(engine, {r.started_at.astimezone(UTC).date() for r in records})
    async with AsyncSession(engine) as db:
        db.add_all(records)
        await db.commit()


async def export(engine: AsyncEngine, org_id: str = "acme", **kwargs: Any) -> tuple[str, int]:
    out = io.BytesIO()
    count = await export_org_csv(engine, org_id, out, **kwargs)
    return out.getvalue().decode(), count


def parse(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_header_is_the_documented_column_order() -> None:
    assert CSV_COLUMNS == (
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


async def test_export_writes_header_then_rows_with_crlf_line_ends(engine: AsyncEngine) -> None:
    await store(engine, [record()])
    text, count = await export(engine)
    assert count == 1
    assert text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    assert text.count("\r\n") == 2 and text.endswith("\r\n")


async def exported_row(engine: AsyncEngine, rec: SessionRecord) -> dict[str, str]:
    """The CSV row the real export writes for `rec`, stored alone."""
    org_id = rec.org_id
    await store(engine, [rec])
    text, _ = await export(engine, org_id)
    (row,) = parse(text)
    return row


def alone_in_store(url: str, rec: SessionRecord) -> dict[str, str]:
    """The exported row of `rec` once it is the only session in the store at `url`
    (blocking: for hypothesis tests, which cannot take async function-scoped fixtures)."""

    async def run() -> dict[str, str]:
        engine = make_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(delete(SessionRecord))
            return await exported_row(engine, rec)
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def test_cells_format_times_as_rfc3339_utc_with_microseconds(engine: AsyncEngine) -> None:
    sid = uuid.UUID("0b5f7c1e-2f55-4a8e-9d43-6f3b8e0c2a11")
    ended = datetime(2026, 11, 23, 10, 41, 0, 0, tzinfo=UTC)
    rec = record(id=sid, ended_at=ended, status="completed", close_reason="fin", duration_s=14.5)
    row = await exported_row(engine, rec)
    assert row["session_id"] == "0b5f7c1e-2f55-4a8e-9d43-6f3b8e0c2a11"
    assert row["started_at"] == "2026-11-23T10:40:45.123456Z"
    # the same instant as epoch seconds: 2026-11-23T10:40:45Z is 1795430445 (date(1))
    assert row["started_at_unix"] == "1795430445.123456"
    assert row["ended_at"] == "2026-11-23T10:41:00.000000Z"
    rfc3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    assert all(rfc3339.match(row[c]) for c in ("started_at", "ended_at", "last_seen_at"))
    assert (row["bytes_tx"], row["duration_s"]) == ("1099511627779", "14.500000")
    assert (row["midstream"], row["user_id"], row["close_reason"]) == ("true", "", "fin")
    assert row["src_addr"] == "fd00::2"


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    st.floats(min_value=0, max_value=1e7, allow_nan=False),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_time_and_duration_cells_match_python_formatting(
    shared_url: str, when: datetime, dur: float
) -> None:
    # Oracle: Python's own RFC 3339 formatting, integer epoch microseconds and f"{x:.6f}".
    row = alone_in_store(shared_url, record(started_at=when, duration_s=dur))
    us = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    assert row["started_at"] == when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert row["started_at_unix"] == f"{us // 10**6}.{us % 10**6:06d}"
    assert row["duration_s"] == f"{dur:.6f}"


async def test_ongoing_session_has_empty_ended_at_and_false_booleans(engine: AsyncEngine) -> None:
    row = await exported_row(engine, record(midstream=False))
    assert (row["ended_at"], row["midstream"], row["status"]) == ("", "false", "ongoing")


GUARDED = [
    "client_id",
    "client_name",
    "user_id",
    "resource_id",
    "resource_name",
    "gateway",
    "interface",
    "community_id",
]


FORMULA_LIKE = [
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-2+3",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "\n=1+1",
    " =1+1",
    "\uff1d1+1",
    "\uff0b1",
    "\uff0d1",
    "\uff20SUM(A1)",
]


@pytest.mark.parametrize("name", FORMULA_LIKE)
async def test_formula_like_text_is_neutralised_with_a_leading_quote(
    engine: AsyncEngine, name: str
) -> None:
    row = await exported_row(engine, record(**dict.fromkeys(GUARDED, name)))
    assert {row[c] for c in GUARDED} == {"'" + name}
    # an org id is free text too (ids from other gateways are not validated here)
    row = await exported_row(engine, record(org_id=name))
    assert row["org_id"] == "'" + name


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_name_reads_back_intact_or_guarded(shared_url: str, name: str) -> None:
    # Oracle: the csv module's reader, and the guard rule stated in the README.
    # PostgreSQL text cannot hold NUL at all (storing it fails, as for any text column).
    assume(not shared_url.startswith("postgresql") or "\x00" not in name)
    row = alone_in_store(shared_url, record(client_name=name, resource_name=name))
    expected = "'" + name if name[0] in "=+-@\t\r\n \uff1d\uff0b\uff0d\uff20" else name
    assert (row["client_name"], row["resource_name"]) == (expected, expected)


def _unquoted_text(line: str) -> str:
    """What of a CSV line is outside RFC 4180 quotes (a doubled quote toggles twice)."""
    outside = []
    quoted = False
    for char in line:
        if char == '"':
            quoted = not quoted
        elif not quoted:
            outside.append(char)
    return "".join(outside)


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
async def test_a_name_holding_another_delimiter_is_inside_quotes(
    engine: AsyncEngine, delimiter: str
) -> None:
    # A spreadsheet of a ";" locale splits at ";": every text cell is quoted, so a reader that
    # honours RFC 4180 quotes, whatever its delimiter, keeps "a;=1+1" one cell and runs nothing.
    # Oracle: the line's characters outside quotes, and the csv module's reader.
    name = f"a{delimiter}=1+1{delimiter}@SUM(A1)"
    await store(engine, [record(client_name=name, resource_name=name)])
    text, _ = await export(engine)
    row_line = text.split("\r\n")[1]
    assert delimiter not in _unquoted_text(row_line)
    assert "=" not in _unquoted_text(row_line)
    (row,) = parse(text)
    assert row["client_name"] == row["resource_name"] == name


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


@pytest.fixture(scope="module")
def workers() -> Iterator[ExportWorkers]:
    pool = ExportWorkers(2)
    yield pool
    pool.close()


async def test_worker_processes_write_the_same_bytes_as_one_process(
    engine: AsyncEngine, workers: ExportWorkers
) -> None:
    # ties in started_at across range boundaries, another org in between, and a filter
    records = [
        record(started_at=BASE + timedelta(microseconds=i % 10), dst_port=400 + i % 3)
        for i in range(120)
    ]
    others = [
        record(org_id="globex", started_at=BASE + timedelta(microseconds=i)) for i in range(9)
    ]
    await store(engine, records + others)
    for q, matches in ((None, 120), ("dport:401", 40), ("dport:9", 0)):
        flt = parse_filter(q) if q else None
        alone, n_alone = await export(engine, flt=flt, page_size=11)
        spread, n_spread = await export(engine, flt=flt, page_size=11, workers=workers)
        assert (spread, n_spread) == (alone, n_alone)
        assert n_alone == len(parse(alone)) == matches


async def test_a_consumer_that_stops_leaves_no_work_behind(
    engine: AsyncEngine, workers: ExportWorkers
) -> None:
    await store(engine, [record(started_at=BASE + timedelta(seconds=i)) for i in range(100)])
    pages = csv_pages(engine, "acme", page_size=5, workers=workers)
    seen = [await anext(pages), await anext(pages)]
    await pages.aclose()  # e.g. the HTTP client went away
    assert seen[0][1] == 0 and seen[1][1] == 5
    # the pool is free again: a new export runs to the end
    assert (await export(engine, page_size=50, workers=workers))[1] == 100


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
    out = io.BytesIO()
    config = Config(database=DatabaseConfig(db_url), orgs=(OrgConfig("acme", "Acme"),))
    assert export_org(config, "acme", out) == 3
    assert len(parse(out.getvalue().decode())) == 3


@pytest.mark.parametrize("kind", ENGINES)
def test_blocking_export_org_refuses_an_unmigrated_store(kind: str, tmp_path: Path) -> None:
    with empty_store(kind, tmp_path) as url:
        config = Config(database=DatabaseConfig(url))
        with pytest.raises(StoreError, match="not migrated"):
            export_org(config, "acme", io.BytesIO())


# Doubles next to a rounding boundary of "%.6f": a tie (0.0078125 = 1/128, to even), and
# values whose 16- or 15-digit decimal rounds the other way than the double itself.
NEAR_TIES = [0.0078125, 0.5000005, 5e-07, 7278558.884838498, 2188789.5800754996, 1e7, 0.0]


@pytest.mark.parametrize("kind", ENGINES)
async def test_durations_next_to_a_rounding_boundary_round_as_python_does(
    kind: str, tmp_path: Path
) -> None:
    # Oracle: Python's f"{x:.6f}" (correctly rounded, as C's printf).
    with migrated_store(kind, tmp_path) as url:
        engine = make_engine(url)
        try:
            await store(engine, [record(duration_s=d) for d in NEAR_TIES])
            cells = {r["duration_s"] for r in parse((await export(engine))[0])}
        finally:
            await engine.dispose()
    assert cells == {f"{d:.6f}" for d in NEAR_TIES}


def odd_records() -> list[SessionRecord]:
    """Sessions with every kind of cell: NULLs, guarded and quoted text, far times, IPv4."""
    names = ["=1+1", "-x", "a,b", 'q"q', "line\nbreak", "Ærø 東京", "\tx", "@", "plain"]
    records = [
        record(
            id=uuid.UUID(int=i + 1),
            client_name=name,
            resource_name=name[::-1],
            user_id=name if i % 2 else None,
            started_at=BASE + timedelta(days=300 * i, microseconds=999_999 * (i % 2)),
            ended_at=BASE + timedelta(days=300 * i, seconds=1) if i % 3 else None,
            duration_s=NEAR_TIES[i % len(NEAR_TIES)] + i,
            midstream=i % 2 == 0,
            ip_version=4,
            src_addr=f"100.64.0.{i}",
            dst_addr="10.99.0.5",
            bytes_tx=2**62 + i,
            close_reason="fin" if i % 3 else None,
            status="completed" if i % 3 else "ongoing",
        )
        for i, name in enumerate(names)
    ]
    far = (datetime(1970, 1, 2, tzinfo=UTC), datetime(2199, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    records += [record(id=uuid.UUID(int=100 + i), started_at=t) for i, t in enumerate(far)]
    return records


async def test_sqlite_and_postgresql_export_the_same_bytes(tmp_path: Path) -> None:
    # Oracle: the other engine (issue 7), for the same rows, inline and through workers.
    texts = []
    for kind in ENGINES:
        (tmp_path / kind).mkdir()
        with migrated_store(kind, tmp_path / kind) as url:
            if kind == "postgresql":
                # a server whose TimeZone is not UTC (+05:45) must not shift any time cell
                name = make_url(url).database
                execute(url, f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Kathmandu'")
            engine = make_engine(url)
            workers = ExportWorkers(1)
            try:
                await store(engine, odd_records())
                inline = await export(engine, page_size=4)
                spread = await export(engine, page_size=4, workers=workers)
            finally:
                await asyncio.to_thread(workers.close)
                await engine.dispose()
        assert spread == inline and inline[1] == len(odd_records())
        texts.append(inline[0])
    assert texts[0] == texts[1]
