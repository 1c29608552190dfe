"""Session addresses: `inet` on PostgreSQL (migration 0005), text on SQLite, and the same
inet_ntop text (the writer's, flowkey.addr_text) read back on both, through the model, resume,
CSV, the API and filters; PostgreSQL's own printing checked against socket.inet_ntop."""

from __future__ import annotations

import csv
import io
import ipaddress
import random
import socket
import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.helpers.pg import add_partitions, fresh_database, read_rows
from tests.helpers.stores import alembic_to, execute
from tunnelacct.config.model import Config, OrgConfig, WriterConfig
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.query.export import export_org_csv
from tunnelacct.query.filters import filter_clause, parse_filter
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.store.inventory import sync_inventory
from tunnelacct.store.migrate import migrate
from tunnelacct.store.models import SessionRecord
from tunnelacct.store.ongoing import ongoing_sessions
from tunnelacct.store.writer import SessionWriter
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token

T0 = 1_795_430_445.123456  # 2026-11-23T10:40:45.123456Z
GATEWAY = "gw-inet"


def ntop(packed: bytes) -> str:
    """The oracle: the C library's inet_ntop, as the writer prints addresses."""
    return socket.inet_ntop(socket.AF_INET if len(packed) == 4 else socket.AF_INET6, packed)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def v6(*groups: int) -> bytes:
    return b"".join(g.to_bytes(2, "big") for g in groups)


# Every spelling inet_ntop has: dotted quads, `::` alone, at either end, in the middle, the
# first of two equal zero runs, a lone zero group (never `::`, RFC 5952), IPv4-mapped
# (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) tails, and the longest texts.
TRICKY = [
    ntop(bytes(4)),
    ntop(b"\xff" * 4),
    ntop(bytes([10, 0, 0, 1])),
    ntop(bytes([100, 64, 0, 2])),
    ntop(bytes(16)),
    ntop(v6(0, 0, 0, 0, 0, 0, 0, 1)),
    ntop(v6(1, 0, 0, 0, 0, 0, 0, 0)),
    ntop(v6(0, 0, 0, 0, 0, 0xFFFF, 0x0102, 0x0304)),
    ntop(v6(0, 0, 0, 0, 0, 0xFFFF, 0, 0)),
    ntop(v6(0, 0, 0, 0, 0, 0, 0x0102, 0x0304)),
    ntop(v6(0, 0, 0, 0, 0, 0, 1, 2)),
    ntop(v6(0, 0, 0, 0, 0, 0, 0, 0xFFFF)),
    ntop(v6(0, 0, 0, 0, 0xFFFF, 0, 0x0102, 0x0304)),
    ntop(v6(0x64, 0xFF9B, 0, 0, 0, 0, 0x0102, 0x0304)),
    ntop(v6(1, 0, 0, 1, 0, 0, 0, 0)),
    ntop(v6(1, 0, 0, 1, 0, 0, 1, 1)),
    ntop(v6(1, 0, 2, 3, 4, 5, 6, 7)),
    ntop(v6(0xFD00, 0x64, 0, 0, 0, 0, 0, 2)),
    ntop(v6(0x2001, 0xDB8, 0, 0, 1, 0, 0, 5)),
    ntop(v6(*[0xFFFF] * 8)),
    ntop(v6(0xFE80, 0, 0, 0, 0xAB, 0xCDEF, 0, 0x0A)),
]


def test_tricky_addresses_cover_the_special_spellings() -> None:
    wanted = {
        "0.0.0.0",
        "::",
        "::1",
        "1::",
        "::ffff:1.2.3.4",
        "::ffff:0.0.0.0",
        "::1.2.3.4",
        "::0.1.0.2",
        "::ffff",
        "::ffff:0:102:304",
        "1:0:0:1::",
        "1::1:0:0:1:1",
        "1:0:2:3:4:5:6:7",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    }
    assert wanted <= set(TRICKY) and len(set(TRICKY)) == len(TRICKY)


# --- PostgreSQL's schema and printing -----------------------------------------------------------

PG_ADDRESS_TYPES = (
    "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
    " JOIN pg_class c ON c.oid = a.attrelid WHERE a.attname IN ('src_addr', 'dst_addr')"
    " AND (c.relname = 'sessions' OR c.relname LIKE 'sessions_p%') AND NOT a.attisdropped"
)


def address_types(url: str) -> dict[tuple[str, str], str]:
    return {(str(t), str(c)): str(d) for t, c, d in read_rows(url, PG_ADDRESS_TYPES)}


def test_postgresql_address_columns_are_inet_on_the_parent_and_new_partitions() -> None:
    with fresh_database() as url:
        migrate(url)
        add_partitions(url, [datetime(2026, 11, 23, tzinfo=UTC)])  # as the writer does
        schema = read_rows(
            url,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'sessions' AND column_name LIKE '%_addr'",
        )
        types = address_types(url)
    assert sorted(schema) == [("dst_addr", "inet"), ("src_addr", "inet")]
    assert types == {
        (t, c): "inet" for t in ("sessions", "sessions_p20261123") for c in ("src_addr", "dst_addr")
    }


def random_addresses(rng: random.Random, count: int) -> list[bytes]:
    """IPv6 addresses with many zero groups (runs of every length and place), and IPv4."""
    found = []
    for _ in range(count):
        zero_share = rng.choice((0.2, 0.5, 0.8))
        groups = [
            0
            if rng.random() < zero_share
            else rng.choice((1, 0xFFFF, rng.randrange(16), rng.randrange(65536)))
            for _ in range(8)
        ]
        found.append(v6(*groups))
    for start in range(8):  # a zero run of every place and length, between nonzero groups
        for length in range(1, 9 - start):
            found.append(v6(*[0 if start <= i < start + length else i + 1 for i in range(8)]))
    found += [v6(0, 0, 0, 0, 0, 0xFFFF, *divmod(rng.randrange(2**32), 65536)) for _ in range(200)]
    found += [v6(0, 0, 0, 0, 0, 0, *divmod(rng.randrange(2**32), 65536)) for _ in range(200)]
    found += [rng.randrange(2**32).to_bytes(4, "big") for _ in range(500)]
    return found


def test_postgresql_prints_inet_as_inet_ntop_does() -> None:
    """host() (the CSV export) and inet's output function (what a driver reading text gets)
    print an address as inet_ntop does, whatever spelling it was given: the oracle's input is
    each address written out in full (0000:0000:...), so PostgreSQL must compress it itself."""
    packed = random_addresses(random.Random(7), 4000) + [
        socket.inet_pton(socket.AF_INET6 if ":" in t else socket.AF_INET, t) for t in TRICKY
    ]
    assert sum(1 for p in packed if len(p) == 16 and p.count(b"\0\0") >= 2) > 2000
    exploded = [str(ipaddress.ip_address(p).exploded) for p in packed]
    with fresh_database() as url:
        rows = read_rows(
            url,
            "SELECT host(CAST(t AS inet)), format('%s', CAST(t AS inet)),"
            " CAST(CAST(t AS inet) AS text) FROM unnest(CAST(:t AS text[])) WITH ORDINALITY"
            " AS u(t, n) ORDER BY n",
            {"t": exploded},
        )
    assert len(rows) == len(packed)
    wrong = [(ntop(p), r) for p, r in zip(packed, rows, strict=True) if r[:2] != (ntop(p),) * 2]
    assert wrong == []
    # ... and a text cast is no way to read it: it appends the mask.
    assert {str(r[2]).rsplit("/", 1)[1] for r in rows} == {"32", "128"}


# --- through the writer and every reader, on both engines ---------------------------------------


def event(i: int, src: str, dst: str, kind: EventKind) -> SessionEvent:
    closed = kind is EventKind.CLOSED
    return SessionEvent(
        kind=kind,
        session_id=uuid.UUID(int=(i + 1) << 80 | 0x8000 << 48),
        proto=IpProto.UDP,
        family=6 if ":" in src else 4,
        src_addr=src,
        src_port=1000 + i,
        dst_addr=dst,
        dst_port=53,
        started_ts=T0 + i,
        last_ts=T0 + i + 1,
        ended_ts=T0 + i + 1 if closed else None,
        bytes_tx=1,
        bytes_rx=2,
        packets_tx=1,
        packets_rx=1,
        payload_bytes_tx=0,
        payload_bytes_rx=0,
        close_reason=CloseReason.IDLE if closed else None,
        midstream=False,
        community_id="1:x=",
        attribution=Attribution("acme"),
        interface="wg0",
    )


def tricky_events() -> list[SessionEvent]:
    """One session per tricky address as src, paired with another of its family as dst."""
    v4 = [a for a in TRICKY if ":" not in a]
    v6_ = [a for a in TRICKY if ":" in a]
    pairs = [(a, v4[-1 - i % len(v4)]) for i, a in enumerate(v4)]
    pairs += [(a, v6_[-1 - i]) for i, a in enumerate(v6_)]
    return [
        event(i, s, d, (EventKind.CHECKPOINT, EventKind.CLOSED)[i % 2])
        for i, (s, d) in enumerate(pairs)
    ]


async def test_addresses_read_back_as_the_text_the_writer_wrote(
    store_engine: AsyncEngine, store_url: str
) -> None:
    events = tricky_events()
    want = {e.session_id: (e.src_addr, e.dst_addr) for e in events}
    writer = SessionWriter(store_engine, WriterConfig(), gateway=GATEWAY)
    await writer.submit(events)
    await writer.close()
    # the model (what the API and resume read)
    async with AsyncSession(store_engine) as db:
        records = (await db.scalars(select(SessionRecord))).all()
    assert {r.id: (r.src_addr, r.dst_addr) for r in records} == want
    # resume: the ongoing ones, as the flow table gets them back
    resumed = await ongoing_sessions(store_engine, GATEWAY)
    assert {e.session_id: (e.src_addr, e.dst_addr) for e in resumed} == {
        e.session_id: want[e.session_id] for e in events if e.kind is EventKind.CHECKPOINT
    }
    # the CSV export (byte-identical across engines: the same text on both)
    out = io.BytesIO()
    assert await export_org_csv(store_engine, "acme", out) == len(events)
    cells = {
        uuid.UUID(r["session_id"]): (r["src_addr"], r["dst_addr"])
        for r in csv.DictReader(io.StringIO(out.getvalue().decode()))
    }
    assert cells == want
    # the REST API's JSON
    await sync_inventory(store_engine, Config(orgs=(OrgConfig(id="acme", name="Acme"),)))
    token, _ = await create_token(store_engine, Role.ADMIN)
    app = create_app(ApiContext(store_engine))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.get(
            "/api/v1/orgs/acme/sessions",
            params={"limit": 1000},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 200
    assert {
        uuid.UUID(s["session_id"]): (s["src_addr"], s["dst_addr"]) for s in r.json()["sessions"]
    } == want
    # filters: each address as a bare term (/32, /128: equality) and in its /31 or /127
    # (PostgreSQL: inet <<=), against ipaddress
    table = SessionRecord.__table__  # type: ignore[attr-defined]
    async with store_engine.connect() as db:
        for src, _dst in want.values():
            for prefix in (0, 1):
                bits = (32 if "." in src and ":" not in src else 128) - prefix
                network = ipaddress.ip_network(f"{src}/{bits}", strict=False)
                term = f"src:{src}" if prefix == 0 else f"src:{network}"
                where = filter_clause(parse_filter(term), table)
                got = set((await db.scalars(select(table.c.id).where(where))).all())
                assert got == {i for i, (s, _d) in want.items() if ip(s) in network}, term
    # the raw rows say the same
    raw = read_rows(store_url, "SELECT id, src_addr, dst_addr FROM sessions")
    assert {uuid.UUID(hex=str(i)): (s, d) for i, s, d in raw} == want


# --- migration 0005 -----------------------------------------------------------------------------


def test_migration_0005_up_down_up_keeps_every_address_text(database_url: str) -> None:
    """0004 -> 0005 -> 0004 -> 0005 with rows of two days (two partitions on PostgreSQL): the
    address text read back is the same at every step; PostgreSQL's columns are inet at 0005
    and varchar(45) again at 0004, on the parent and on the partitions. SQLite: no change."""
    alembic_to(database_url, "0004")
    days = [datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 24, tzinfo=UTC)]
    add_partitions(database_url, days)
    for i, addr in enumerate(TRICKY):
        execute(
            database_url,
            "INSERT INTO sessions (id, org_id, protocol, ip_version, src_addr, dst_addr,"
            " src_port, dst_port, started_at, last_seen_at, duration_s, bytes_tx, bytes_rx,"
            " packets_tx, packets_rx, payload_bytes_tx, payload_bytes_rx, status, midstream,"
            " community_id, gateway, interface) VALUES (?, 'acme', 'tcp', ?, ?, ?, 1, 2, ?, ?,"
            " 0, 0, 0, 0, 0, 0, 0, 'ongoing', false, '', 'gw', 'wg0')",
            uuid.UUID(int=i + 1).hex,
            6 if ":" in addr else 4,
            addr,
            TRICKY[-1 - i],
            days[i % 2],
            days[i % 2],
        )
    want = sorted((uuid.UUID(int=i + 1).hex, a, TRICKY[-1 - i]) for i, a in enumerate(TRICKY))
    postgresql = database_url.startswith("postgresql")
    partitions = ("sessions", "sessions_p20261123", "sessions_p20261124")

    def check(revision: str) -> None:
        rows = read_rows(database_url, "SELECT id, src_addr, dst_addr FROM sessions")
        assert sorted(rows) == want, revision
        if not postgresql:
            return
        sql_type = {"0004": "character varying(45)", "0005": "inet"}[revision]
        assert address_types(database_url) == {
            (t, c): sql_type for t in partitions for c in ("src_addr", "dst_addr")
        }
        if revision == "0005":  # independent of the driver: PostgreSQL's own text
            hosts = read_rows(
                database_url, "SELECT id, host(src_addr), host(dst_addr) FROM sessions"
            )
            assert sorted(hosts) == want
        else:  # plain text again, as stored before 0005
            texts = read_rows(database_url, "SELECT id, src_addr || '', dst_addr FROM sessions")
            assert sorted(texts) == want

    check("0004")
    alembic_to(database_url, "0005")
    check("0005")
    alembic_to(database_url, "0004", down=True)
    check("0004")
    alembic_to(database_url, "0005")
    check("0005")
