"""Sessions from flow records (issue 20) in the store and its readers: payloads NULL (not 0),
`estimated` and `incomplete`, and the exporter's gateway, written by the real writer and read
back raw, through the model, the API's JSON, its CSV (parsed by Python's csv module) and the
filter terms; and migration 0013 on stores with rows, SQLite partitions included.

On SQLite and PostgreSQL (`store_engine`), but for the migration tests, one per engine."""

from __future__ import annotations

import asyncio
import csv
import io
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, insert, pool, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.helpers.layout0012 import (
    COLUMNS_0012,
    FLAG_COLUMNS,
    PAYLOAD_COLUMNS,
    create_partitions_0012,
    fill_0012,
    partition_made_now,
)
from tests.helpers.pg import add_partitions, fresh_database, read_rows
from tests.helpers.stores import alembic_to
from tests.helpers.stores import query as raw_query
from tests.helpers.waiting import WAIT_S
from tests.test_writer import T0
from tests.test_writer import event as writer_event
from tunnelacct.config.model import WriterConfig
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.query.records import CSV_COLUMNS
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.store.engine import make_engine, sync_url
from tunnelacct.store.models import Org, SessionRecord, table_of
from tunnelacct.store.ongoing import ongoing_sessions
from tunnelacct.store.postgres.partitions import ensure_partitions
from tunnelacct.store.rows import ROW_COLUMNS, event_row
from tunnelacct.store.sqlite.layout import partition_name
from tunnelacct.store.writer import SessionWriter
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token

OWN_GATEWAY = "gw-own"  # the writer's [gateway] name
EXPORTER = "exporter-1"  # the flow exporter's gateway, carried by its sessions' events
FLOW_ID = uuid.UUID("0196a0c0-0000-7000-8000-00000000f10a")
CAPTURED_ID = uuid.UUID("0196a0c0-0000-7000-8000-00000000ca9e")
LOSSY_ID = uuid.UUID("0196a0c0-0000-7000-8000-000000001055")


def captured(kind: EventKind, session_id: uuid.UUID = CAPTURED_ID, n: int = 1) -> SessionEvent:
    """A session event of a capture: payload figures, no flags, the writer's gateway (the
    writer tests' event, at T0 + n)."""
    return writer_event(kind, session_id, n=n, last_ts=T0 + n)


def from_flows(
    kind: EventKind,
    session_id: uuid.UUID = FLOW_ID,
    n: int = 1,
    *,
    estimated: bool = True,
    incomplete: bool = False,
) -> SessionEvent:
    """A session event built from flow records: no payload figures, the exporter's gateway."""
    event = replace(
        captured(kind, session_id, n),
        proto=IpProto.UDP,
        src_port=51000,
        dst_port=53,
        payload_bytes_tx=None,
        payload_bytes_rx=None,
        estimated=estimated,
        incomplete=incomplete,
        gateway=EXPORTER,
        interface="ipfix:10.0.0.9",
    )
    if kind is EventKind.CLOSED:
        event = replace(event, close_reason=CloseReason.EXPORTER_FORCED)
    return event


async def write(engine: AsyncEngine, *batches: list[SessionEvent]) -> None:
    """Write each batch of events in turn, each written before the next is submitted (so every
    snapshot is an upsert of its own), with one writer of OWN_GATEWAY."""
    writer = SessionWriter(engine, WriterConfig(flush_interval_s=0.01), gateway=OWN_GATEWAY)
    task = asyncio.create_task(writer.run())
    try:
        for batch in batches:
            await writer.submit(batch)
            async with asyncio.timeout(WAIT_S):
                while writer.pending:
                    await asyncio.sleep(0.005)
        await writer.close()
        await asyncio.wait_for(task, WAIT_S)
    finally:
        if not task.done():  # the test failed: stop the writer before the engine goes
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def write_three(engine: AsyncEngine) -> None:
    """A flow session opened complete and estimated, turning incomplete at a checkpoint and
    closed by its exporter; one that stays complete and is not sampled; a captured one."""
    await write(
        engine,
        [from_flows(EventKind.OPENED), captured(EventKind.OPENED)],
        [from_flows(EventKind.CHECKPOINT, n=2, incomplete=True)],
        [
            from_flows(EventKind.CLOSED, n=3, incomplete=True),
            from_flows(EventKind.CLOSED, LOSSY_ID, n=4, estimated=False),
            captured(EventKind.CLOSED, n=5),
        ],
    )


ROW_SQL = (
    "SELECT id, payload_bytes_tx, payload_bytes_rx, estimated, incomplete, gateway, bytes_tx,"
    " close_reason FROM sessions ORDER BY id"
)


async def test_a_flow_session_is_stored_with_null_payloads_its_flags_and_its_gateway(
    store_engine: AsyncEngine, store_url: str
) -> None:
    await write_three(store_engine)
    # read back without tunnelacct's types: NULL is None, booleans 0/1 on both engines
    assert raw_query(store_url, ROW_SQL) == [
        (LOSSY_ID.hex, None, None, 0, 0, EXPORTER, 400, "exporter_forced"),
        (CAPTURED_ID.hex, 300, 4800, 0, 0, OWN_GATEWAY, 500, "fin"),
        (FLOW_ID.hex, None, None, 1, 1, EXPORTER, 300, "exporter_forced"),
    ]
    async with AsyncSession(store_engine) as db:
        flow = await db.get(SessionRecord, FLOW_ID)
    assert flow is not None
    assert (flow.payload_bytes_tx, flow.payload_bytes_rx) == (None, None)
    assert (flow.estimated, flow.incomplete, flow.gateway) == (True, True, EXPORTER)


async def test_a_checkpoint_turns_a_session_incomplete_and_a_late_one_changes_nothing(
    store_engine: AsyncEngine, store_url: str
) -> None:
    flags = "SELECT estimated, incomplete, status FROM sessions"
    await write(store_engine, [from_flows(EventKind.OPENED)])
    assert raw_query(store_url, flags) == [(1, 0, "ongoing")]
    await write(store_engine, [from_flows(EventKind.CHECKPOINT, n=2, incomplete=True)])
    assert raw_query(store_url, flags) == [(1, 1, "ongoing")]
    await write(store_engine, [from_flows(EventKind.CLOSED, n=3, incomplete=True)])
    # closed is final: a late checkpoint (complete, not estimated) does not rewrite it
    late = from_flows(EventKind.CHECKPOINT, n=2, estimated=False, incomplete=False)
    await write(store_engine, [late])
    assert raw_query(store_url, flags) == [(1, 1, "completed")]


async def test_the_usage_rollup_groups_a_flow_session_under_its_exporter(
    store_engine: AsyncEngine, store_url: str
) -> None:
    await write_three(store_engine)
    rows = raw_query(
        store_url,
        "SELECT gateway, SUM(bytes_tx), SUM(sessions_started), SUM(sessions_completed)"
        " FROM usage_days GROUP BY gateway ORDER BY gateway",
    )
    # the oracle: the events' own counters (flow sessions 300 + 400 bytes, the captured 500)
    assert [tuple(int(str(v)) if i else v for i, v in enumerate(row)) for row in rows] == [
        (EXPORTER, 700, 2, 2),
        (OWN_GATEWAY, 500, 1, 1),
    ]


def select_all_with_types(url: str) -> list[tuple[object, ...]]:
    """Every row, each value followed by its type as the engine states it."""
    typeof = "pg_typeof({})::text" if url.startswith("postgresql") else "typeof({})"
    types = ", ".join(typeof.format(c) for c in ROW_COLUMNS)
    return read_rows(url, f"SELECT *, {types} FROM sessions ORDER BY id")


async def test_the_writer_stores_a_flow_session_exactly_as_a_sqlalchemy_insert(
    store_engine: AsyncEngine, store_url: str
) -> None:
    events = [
        from_flows(EventKind.CLOSED, n=3, incomplete=True),
        from_flows(EventKind.CHECKPOINT, LOSSY_ID, estimated=False),
        captured(EventKind.CLOSED),
    ]
    rows = [event_row(e, OWN_GATEWAY) for e in events]
    assert [row["gateway"] for row in rows] == [EXPORTER, EXPORTER, OWN_GATEWAY]
    await ensure_partitions(store_engine, {row["started_at"].date() for row in rows})
    async with store_engine.begin() as conn:
        await conn.execute(insert(table_of(SessionRecord)), rows)
    by_sqlalchemy = select_all_with_types(store_url)
    async with store_engine.begin() as conn:
        await conn.execute(table_of(SessionRecord).delete())
    await write(store_engine, events)
    assert select_all_with_types(store_url) == by_sqlalchemy


async def test_ongoing_flow_sessions_resume_with_null_payloads_flags_and_their_gateway(
    store_engine: AsyncEngine,
) -> None:
    written = from_flows(EventKind.CHECKPOINT, n=2, incomplete=True)
    await write(store_engine, [written, captured(EventKind.CHECKPOINT)])
    (resumed,) = await ongoing_sessions(store_engine, EXPORTER)
    assert resumed.last_ts == pytest.approx(written.last_ts, abs=1e-6)
    assert replace(resumed, last_ts=0.0, started_ts=0.0) == replace(
        written, last_ts=0.0, started_ts=0.0
    )
    (own,) = await ongoing_sessions(store_engine, OWN_GATEWAY)
    assert (own.session_id, own.gateway, own.payload_bytes_tx) == (CAPTURED_ID, OWN_GATEWAY, 60)


# --- the API: JSON, CSV, filter terms --------------------------------------------------------


@pytest.fixture
async def api(store_engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """An API client (admin token) on a store holding write_three()'s sessions."""
    await write_three(store_engine)
    async with AsyncSession(store_engine) as db:
        db.add(Org(id="acme", name="Acme", updated_at=datetime(2026, 11, 20, tzinfo=UTC)))
        await db.commit()
    token, _row = await create_token(store_engine, Role.ADMIN)
    app = create_app(ApiContext(store_engine))
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        yield c


async def test_the_json_gives_null_payloads_and_the_flags(api: httpx.AsyncClient) -> None:
    r = await api.get("/api/v1/orgs/acme/sessions")
    assert r.status_code == 200, r.text
    by_id = {s["session_id"]: s for s in r.json()["sessions"]}
    flow = by_id[str(FLOW_ID)]
    assert list(flow) == list(CSV_COLUMNS)
    assert (flow["payload_bytes_tx"], flow["payload_bytes_rx"]) == (None, None)
    assert (flow["estimated"], flow["incomplete"]) == (True, True)
    assert (flow["gateway"], flow["close_reason"]) == (EXPORTER, "exporter_forced")
    own = by_id[str(CAPTURED_ID)]
    assert (own["payload_bytes_tx"], own["payload_bytes_rx"]) == (300, 4800)
    assert (own["estimated"], own["incomplete"], own["gateway"]) == (False, False, OWN_GATEWAY)


async def test_the_csv_appends_the_flags_and_leaves_null_payloads_empty(
    api: httpx.AsyncClient,
) -> None:
    r = await api.get("/api/v1/orgs/acme/sessions.csv")
    assert r.status_code == 200, r.text
    header, *rows = list(csv.reader(io.StringIO(r.content.decode("utf-8"), newline="")))
    # the columns of before 0013 keep their places; the two new ones come last
    assert header[-2:] == ["estimated", "incomplete"]
    assert header[:-2][: header.index("interface") + 1] == header[:-2]
    by_id = {row[0]: dict(zip(header, row, strict=True)) for row in rows}
    flow = by_id[str(FLOW_ID)]
    assert (flow["payload_bytes_tx"], flow["payload_bytes_rx"]) == ("", "")
    assert (flow["estimated"], flow["incomplete"], flow["gateway"]) == ("true", "true", EXPORTER)
    assert flow["close_reason"] == "exporter_forced"
    own = by_id[str(CAPTURED_ID)]
    assert (own["payload_bytes_tx"], own["payload_bytes_rx"]) == ("300", "4800")
    assert (own["estimated"], own["incomplete"], own["gateway"]) == ("false", "false", OWN_GATEWAY)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("estimated:true", {FLOW_ID}),
        ("estimated:false", {LOSSY_ID, CAPTURED_ID}),
        ("-estimated:true", {LOSSY_ID, CAPTURED_ID}),
        ("incomplete:TRUE", {FLOW_ID}),
        ("-incomplete:false", {FLOW_ID}),
        ("incomplete:false gateway:exporter-1", {LOSSY_ID}),
        ("estimated:false incomplete:false", {LOSSY_ID, CAPTURED_ID}),
        ("close_reason:exporter_forced", {FLOW_ID, LOSSY_ID}),
    ],
)
async def test_flag_terms_select_sessions_in_the_json_and_the_csv(
    api: httpx.AsyncClient, q: str, expected: set[uuid.UUID]
) -> None:
    page = await api.get("/api/v1/orgs/acme/sessions", params={"q": q})
    assert page.status_code == 200, page.text
    assert {uuid.UUID(s["session_id"]) for s in page.json()["sessions"]} == expected
    exported = await api.get("/api/v1/orgs/acme/sessions.csv", params={"q": q})
    rows = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8"), newline="")))
    assert {uuid.UUID(row["session_id"]) for row in rows} == expected


@pytest.mark.parametrize("term", ["estimated:yes", "incomplete:1", "estimated:", "incomplete>0"])
async def test_a_bad_flag_term_is_a_400_naming_it(api: httpx.AsyncClient, term: str) -> None:
    for path in ("/api/v1/orgs/acme/sessions", "/api/v1/orgs/acme/sessions.csv"):
        r = await api.get(path, params={"q": f"protocol:udp {term}"})
        assert r.status_code == 400, r.text
        body = r.json()
        assert (body["parameter"], body["token"]) == ("q", term)
        assert "true or false" in body["expected"]


# --- migration 0013 --------------------------------------------------------------------------

DAYS = [date(2026, 11, 22), date(2026, 11, 23)]  # the partitions made at 0012


def sqlite_store_at_0012(path: Path) -> tuple[str, list[str]]:
    """A SQLite store at 0012: acme kept 30 days, a partition for each of DAYS holding 40
    sessions, 30 in sessions_default (the day before); returns its URL and the partitions."""
    url = f"sqlite:///{path}"
    alembic_to(url, "0012")
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO orgs (id, name, retention_days, updated_at, logging) "
                "VALUES ('acme', 'Acme', 30, '2026-11-20 00:00:00.000000', 1)"
            )
            names = create_partitions_0012(conn, "acme", DAYS)
            fill_0012(conn, "sessions_default", "acme", DAYS[0] - timedelta(days=1), 1, 30)
            for number, (name, day) in enumerate(zip(names, DAYS, strict=True)):
                fill_0012(conn, name, "acme", day, 100 + 100 * number, 40)
    finally:
        engine.dispose()
    return url, names


def sqlite_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


def table_info(path: Path, table: str) -> dict[str, tuple[object, ...]]:
    """Column -> (type, notnull, default) of `table`, as SQLite states them."""
    rows = sqlite_rows(path, f"PRAGMA table_info({table})")
    return {str(name): (kind, notnull, default) for _cid, name, kind, notnull, default, _pk in rows}


def root_pages(path: Path) -> dict[str, int]:
    """Table -> its first page: a table rebuilt (copied) gets another."""
    rows = sqlite_rows(path, "SELECT name, rootpage FROM sqlite_master WHERE type = 'table'")
    return {str(name): int(page) for name, page in rows}


async def write_flow_at(url: str, day: date, session_id: uuid.UUID) -> None:
    """One closed flow session of acme started at 12:00 UTC on `day`, through the writer."""
    engine = make_engine(url)
    try:
        start = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
        event = replace(from_flows(EventKind.CLOSED, session_id), started_ts=start)
        await write(engine, [replace(event, last_ts=start + 5, ended_ts=start + 5)])
    finally:
        await engine.dispose()


async def test_0013_on_sqlite_keeps_rows_edits_no_table_and_downgrades(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    url, partitions = sqlite_store_at_0012(path)
    tables = ["sessions_default", *partitions]
    everything = "SELECT * FROM sessions ORDER BY id"
    before = sqlite_rows(path, everything)
    assert len(before) == 110
    pages_before = root_pages(path)

    alembic_to(url, "0013")
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    # every row as it was, payloads included, and the two flags false; no table was copied
    assert sqlite_rows(path, everything) == [(*row, 0, 0) for row in before]
    assert root_pages(path) == pages_before
    for table in tables:
        columns = table_info(path, table)
        assert [columns[c] for c in PAYLOAD_COLUMNS] == [("BIGINT", 0, None)] * 2, table
        assert [columns[c] for c in FLAG_COLUMNS] == [("BOOLEAN", 1, "0")] * 2, table
        assert list(columns)[: len(COLUMNS_0012)] == COLUMNS_0012
    # a partition made now, from the model, is shaped as the upgraded ones
    made = partition_made_now(url, "acme", date(2026, 11, 24))
    assert table_info(path, made) == table_info(path, partitions[0])
    # the writer stores NULL payloads into an upgraded partition and into the new one
    for day, session_id in ((DAYS[1], FLOW_ID), (date(2026, 11, 24), LOSSY_ID)):
        await write_flow_at(url, day, session_id)
        home = partition_name("acme", day)
        assert sqlite_rows(
            path,
            f"SELECT id, payload_bytes_tx, payload_bytes_rx, estimated, gateway FROM {home}"
            f" WHERE id = '{session_id.hex}'",
        ) == [(session_id.hex, None, None, 1, EXPORTER)]
    # and by hand: a copy of a row under a new id, its payloads NULL, into a partition
    by_hand = "ab" * 16
    copied = ", ".join(
        f"'{by_hand}'" if c == "id" else "NULL" if c in PAYLOAD_COLUMNS else c for c in COLUMNS_0012
    )
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            f"INSERT INTO {partitions[0]} ({', '.join(COLUMNS_0012)}) SELECT {copied}"
            f" FROM {partitions[0]} LIMIT 1"
        )
    assert sqlite_rows(
        path,
        f"SELECT payload_bytes_tx, payload_bytes_rx, estimated FROM sessions"
        f" WHERE id = '{by_hand}'",
    ) == [(None, None, 0)]
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]

    alembic_to(url, "0012", down=True)
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    after = sqlite_rows(path, everything)
    assert [row for row in after if row[0] in {r[0] for r in before}] == before
    written = [row for row in after if row[0] in {FLOW_ID.hex, LOSSY_ID.hex, by_hand}]
    payloads = [COLUMNS_0012.index(c) for c in PAYLOAD_COLUMNS]
    assert [[row[i] for i in payloads] for row in written] == [[0, 0]] * 3  # NULL -> 0
    for table in [*tables, made]:
        columns = table_info(path, table)
        assert list(columns) == COLUMNS_0012, table
        assert [columns[c][1] for c in PAYLOAD_COLUMNS] == [1, 1], table
    alembic_to(url, "head")  # and up again
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]


def test_0013_on_sqlite_changes_nothing_when_a_table_is_not_as_tunnelacct_made_it(
    tmp_path: Path,
) -> None:
    """A partition whose payloads are defined otherwise (made by hand: CREATE TABLE ... AS
    gives them no NOT NULL) fails the revision before its commit: the tables, views and
    triggers are as they were, and the store stays at 0012."""
    path = tmp_path / "store.db"
    url, _partitions = sqlite_store_at_0012(path)
    odd = partition_name("acme", date(2026, 11, 25))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(f"CREATE TABLE {odd} AS SELECT * FROM sessions_default WHERE 0")
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
    before = sqlite_rows(path, schema)
    with pytest.raises(RuntimeError, match=f"the definition of {odd}.payload_bytes_tx"):
        alembic_to(url, "0013")
    assert sqlite_rows(path, schema) == before
    assert sqlite_rows(path, "SELECT version_num FROM alembic_version") == [("0012",)]
    assert sqlite_rows(path, "PRAGMA integrity_check") == [("ok",)]
    assert sqlite_rows(path, "SELECT count(*) FROM sessions") == [(110,)]


def pg_columns(url: str, table: str) -> dict[str, tuple[object, ...]]:
    """Column -> (data type, is_nullable, default) of `table`, from information_schema."""
    rows = read_rows(
        url,
        "SELECT column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_name = :table ORDER BY ordinal_position",
        {"table": table},
    )
    return {str(name): (kind, nullable, default) for name, kind, nullable, default in rows}


def pg_file_nodes(url: str) -> dict[str, int]:
    """Table -> its file (relfilenode): a table rewritten gets another."""
    rows = read_rows(
        url,
        "SELECT relname, relfilenode FROM pg_class"
        " WHERE relkind = 'r' AND relname LIKE 'sessions_p%'",
    )
    return {str(name): int(str(node)) for name, node in rows}


async def test_0013_on_postgresql_keeps_rows_rewrites_no_partition_and_downgrades() -> None:
    with fresh_database() as url:
        alembic_to(url, "0012")
        starts = [datetime(2026, 11, 22, 23, 59, tzinfo=UTC), datetime(2026, 11, 23, 1, tzinfo=UTC)]
        add_partitions(url, starts)
        insert_0012 = text(
            f"INSERT INTO sessions ({', '.join(COLUMNS_0012)})"
            f" VALUES ({', '.join(f':{c}' for c in COLUMNS_0012)})"
        )
        engine = create_engine(sync_url(url), poolclass=pool.NullPool)
        try:
            with engine.begin() as conn:
                for number, start in enumerate(starts, 1):
                    row = event_row(captured(EventKind.CLOSED, uuid.uuid4(), n=number), "gw-a")
                    row.update(started_at=start, last_seen_at=start, ended_at=start)
                    conn.execute(insert_0012, {c: row[c] for c in COLUMNS_0012})
        finally:
            engine.dispose()
        everything = "SELECT * FROM sessions ORDER BY id"
        before = read_rows(url, everything)
        nodes = pg_file_nodes(url)
        assert len(before) == 2 and len(nodes) == 2

        alembic_to(url, "0013")
        assert read_rows(url, everything) == [(*row, 0, 0) for row in before]
        assert pg_file_nodes(url) == nodes  # no partition was rewritten
        for table in ["sessions", *nodes]:
            shape = pg_columns(url, table)
            assert [shape[c][:2] for c in PAYLOAD_COLUMNS] == [("bigint", "YES")] * 2, table
            assert [shape[c] for c in FLAG_COLUMNS] == [("boolean", "NO", "false")] * 2, table
        # the writer stores NULL payloads into an existing partition and a new day's
        await write_flow_at(url, date(2026, 11, 23), FLOW_ID)
        await write_flow_at(url, date(2026, 11, 24), LOSSY_ID)
        new_partition = "sessions_p20261124"
        assert pg_columns(url, new_partition) == pg_columns(url, "sessions_p20261123")
        flows = "SELECT id, payload_bytes_tx, payload_bytes_rx, estimated, gateway FROM {}"
        assert read_rows(url, flows.format("sessions_p20261123") + " WHERE bytes_tx = 100") == [
            (FLOW_ID.hex, None, None, 1, EXPORTER)
        ]
        assert read_rows(url, flows.format(new_partition)) == [
            (LOSSY_ID.hex, None, None, 1, EXPORTER)
        ]

        alembic_to(url, "0012", down=True)
        after = read_rows(url, everything)
        assert [row for row in after if row in before] == before
        payloads = [COLUMNS_0012.index(c) for c in PAYLOAD_COLUMNS]
        written = [row for row in after if row not in before]
        assert [[row[i] for i in payloads] for row in written] == [[0, 0]] * 2  # NULL -> 0
        for table in ["sessions", *nodes, new_partition]:
            shape = pg_columns(url, table)
            assert list(shape) == COLUMNS_0012, table
            assert [shape[c][1] for c in PAYLOAD_COLUMNS] == ["NO", "NO"], table
        alembic_to(url, "head")  # and up again
