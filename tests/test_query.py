"""Filter language: parsing, error messages, and SQL that selects what a brute-force oracle does.

The SQL tests run `select(id).where(filter_clause(...))` on real stores, SQLite and PostgreSQL
(one filled by importing tests/data/wg-small.pcap with the CLI, one with tricky address
spellings; one store per engine and module, as these tests only read) and compare the ids with a
plain-Python predicate evaluated over every row read back without tunnelacct's types.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Dialect, Engine, create_engine, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

from tests.helpers.pg import add_partitions
from tests.helpers.stores import ENGINES, imported_store, migrated_store, session_rows
from tunnelacct.errors import FilterError, TunnelacctError
from tunnelacct.query.filters import (
    Compare,
    Filter,
    Flag,
    InNetwork,
    Match,
    PortIn,
    StartedAt,
    filter_clause,
    parse_bytes,
    parse_filter,
)
from tunnelacct.query.pages import capped_count, page_before
from tunnelacct.store.engine import make_engine, sync_url
from tunnelacct.store.models import SessionRecord, table_of

DATA = Path(__file__).resolve().parent / "data"
TABLE = table_of(SessionRecord)
Row = dict[str, Any]

# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("protocol:tcp", Match("protocol", "tcp")),
        ("protocol:UDP", Match("protocol", "udp")),
        ("client:alice-laptop", Match("client", "alice-laptop")),
        ('client:"bob laptop"', Match("client", "bob laptop")),
        ('"client:bob laptop"', Match("client", "bob laptop")),
        ('user:"a:b"', Match("user", "a:b")),
        ("resource:intranet-web", Match("resource", "intranet-web")),
        ("status:ongoing", Match("status", "ongoing")),
        ("status:completed", Match("status", "completed")),
        ("close_reason:end_of_capture", Match("close_reason", "end_of_capture")),
        ("close_reason:rst", Match("close_reason", "rst")),
        ("close_reason:exporter_forced", Match("close_reason", "exporter_forced")),
        ("estimated:true", Flag("estimated", True)),
        ("estimated:FALSE", Flag("estimated", False)),
        ("-incomplete:true", Flag("incomplete", True, negated=True)),
        ("src:100.64.0.2", InNetwork("src", ipaddress.ip_network("100.64.0.2/32"))),
        ("src:100.64.0.0/10", InNetwork("src", ipaddress.ip_network("100.64.0.0/10"))),
        ("dst:10.99.0.5/24", InNetwork("dst", ipaddress.ip_network("10.99.0.0/24"))),
        ("dst:fd00:99::5", InNetwork("dst", ipaddress.ip_network("fd00:99::5/128"))),
        ("dst:FD00:99::/48", InNetwork("dst", ipaddress.ip_network("fd00:99::/48"))),
        ("src:::ffff:10.0.0.0/104", InNetwork("src", ipaddress.ip_network("::ffff:a00:0/104"))),
        ("sport:0", PortIn("sport", 0, 0)),
        ("dport:65535", PortIn("dport", 65535, 65535)),
        ("dport:8000-8100", PortIn("dport", 8000, 8100)),
        ("dport:22-22", PortIn("dport", 22, 22)),
        (
            "started_after:2026-11-23",
            StartedAt("started_after", datetime(2026, 11, 23, tzinfo=UTC)),
        ),
        (
            "started_before:2026-11-23T11:54:14.25+01:00",
            StartedAt("started_before", datetime(2026, 11, 23, 10, 54, 14, 250000, tzinfo=UTC)),
        ),
        (
            "started_after:2026-11-23t23:30:00-02:30",
            StartedAt("started_after", datetime(2026, 11, 24, 2, 0, tzinfo=UTC)),
        ),
        (
            "started_after:2026-11-23T10:54:14Z",
            StartedAt("started_after", datetime(2026, 11, 23, 10, 54, 14, tzinfo=UTC)),
        ),
        ("bytes>1500", Compare("bytes", ">", 1500)),
        ("bytes<10k", Compare("bytes", "<", 10_000)),
        ("duration>30", Compare("duration", ">", 30.0)),
        ("duration<0.005", Compare("duration", "<", 0.005)),
        ("-protocol:udp", Match("protocol", "udp", negated=True)),
        ("-dst:10.0.0.0/8", InNetwork("dst", ipaddress.ip_network("10.0.0.0/8"), negated=True)),
        ("-dport:1-1023", PortIn("dport", 1, 1023, negated=True)),
        ("-bytes>5k", Compare("bytes", ">", 5000, negated=True)),
        ('-client:"x y"', Match("client", "x y", negated=True)),
    ],
)
def test_each_key_parses_to_its_term(text: str, term: object) -> None:
    assert parse_filter(text) == Filter((term,))  # type: ignore[arg-type]


def test_terms_are_split_on_whitespace_outside_quotes_and_kept_in_order() -> None:
    flt = parse_filter('  protocol:tcp\tclient:"bob  laptop"\n -dport:53 ')
    assert flt.terms == (
        Match("protocol", "tcp"),
        Match("client", "bob  laptop"),
        PortIn("dport", 53, 53, negated=True),
    )


def test_empty_filter_has_no_terms() -> None:
    assert parse_filter("   ") == Filter(())


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1500", 1500),
        ("1k", 1000),
        ("1.5k", 1500),
        ("2.5M", 2_500_000),
        ("1G", 1_000_000_000),
        ("3T", 3 * 10**12),
        ("1Ki", 1024),
        ("4Mi", 4 * 1024**2),
        ("1Gi", 2**30),
        ("1.5Ki", 1536),
    ],
)
def test_byte_suffixes_are_decimal_and_binary_ones_are_spelled_ki_mi_gi(
    text: str, value: int
) -> None:
    assert parse_bytes(text) == value
    assert parse_filter(f"bytes>{text}") == Filter((Compare("bytes", ">", value),))


BYTES_EXPECTED = "a byte count such as 1500, 10k, 2.5M, 1G or 4Mi"
DATE_EXPECTED = "an RFC 3339 time with offset or a date YYYY-MM-DD"
KEYS_EXPECTED = (
    "one of the keys protocol:, client:, user:, resource:, gateway:, src:, dst:, sport:, dport:, "
    "status:, close_reason:, started_after:, started_before:, bytes>, bytes<, duration>, "
    "duration<, estimated:, incomplete:"
)


@pytest.mark.parametrize(
    ("text", "token", "expected"),
    [
        ("dport:70000", "dport:70000", "a port 0-65535 or a range a-b"),
        ("protocol:tcp sport:9-", "sport:9-", "a port 0-65535 or a range a-b"),
        ("sport:20-10", "sport:20-10", "a port 0-65535 or a range a-b"),
        ("dport:http", "dport:http", "a port 0-65535 or a range a-b"),
        ("dport:", "dport:", "a port 0-65535 or a range a-b"),
        ("protocol:icmp", "protocol:icmp", "tcp or udp"),
        ("status:open", "status:open", "ongoing or completed"),
        (
            "close_reason:timeout",
            "close_reason:timeout",
            "one of fin, rst, idle, shutdown, end_of_capture, evicted, exporter_forced",
        ),
        ("estimated:yes", "estimated:yes", "true or false"),
        ("incomplete:1", "incomplete:1", "true or false"),
        ("estimated:", "estimated:", "true or false"),
        ("incomplete>0", "incomplete>0", "incomplete:VALUE with true or false"),
        ("client:", "client:", "a client id"),
        ('user:""', 'user:""', "a user id"),
        ("src:10.0.0.256", "src:10.0.0.256", "an IPv4/IPv6 address or CIDR"),
        ("dst:10.0.0.0/33", "dst:10.0.0.0/33", "an IPv4/IPv6 address or CIDR"),
        ("dst:fe80::1%wg0", "dst:fe80::1%wg0", "an IPv4/IPv6 address or CIDR"),
        ("started_after:2026-11-23T10:00:00", "started_after:2026-11-23T10:00:00", DATE_EXPECTED),
        ("started_before:2026-02-30", "started_before:2026-02-30", DATE_EXPECTED),
        ("started_before:yesterday", "started_before:yesterday", DATE_EXPECTED),
        ("bytes>1K", "bytes>1K", BYTES_EXPECTED),
        ("bytes>1m", "bytes>1m", BYTES_EXPECTED),
        ("bytes<1.0005k", "bytes<1.0005k", BYTES_EXPECTED),
        ("bytes>-5", "bytes>-5", BYTES_EXPECTED),
        ("bytes>10000000000T", "bytes>10000000000T", BYTES_EXPECTED),
        ("duration>1h", "duration>1h", "a number of seconds such as 30 or 0.5"),
        ("bytes:5", "bytes:5", f"bytes>VALUE or bytes<VALUE with {BYTES_EXPECTED}"),
        ("dport>1024", "dport>1024", "dport:VALUE with a port 0-65535 or a range a-b"),
        ("port:22", "port:22", KEYS_EXPECTED),
        ("Protocol:tcp", "Protocol:tcp", KEYS_EXPECTED),
        ("tcp", "tcp", KEYS_EXPECTED),
        ('"bob laptop"', '"bob laptop"', KEYS_EXPECTED),
        ('client:"bob laptop', 'client:"bob laptop', "a closing double quote"),
        ('dport:22 user:"x', 'user:"x', "a closing double quote"),
        # year 1 at +01:00 is year 0 in UTC, and 9999-12-31 at -01:00 is year 10000
        (
            "started_after:0001-01-01T00:00:00+01:00",
            "started_after:0001-01-01T00:00:00+01:00",
            DATE_EXPECTED,
        ),
        (
            "started_before:9999-12-31T23:59:59-01:00",
            "started_before:9999-12-31T23:59:59-01:00",
            DATE_EXPECTED,
        ),
        (" ".join(f"sport:{n}" for n in range(33)), "sport:32", "at most 32 terms"),
        (
            " ".join(f"dst:10.0.0.{n}/31" for n in range(9)),
            "dst:10.0.0.8/31",
            "at most 8 src:/dst: terms",
        ),
    ],
)
def test_bad_term_error_names_the_token_and_what_was_expected(
    text: str, token: str, expected: str
) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert (caught.value.token, caught.value.expected) == (token, expected)
    assert str(caught.value) == f"bad filter term {token!r}: expected {expected}"
    assert isinstance(caught.value, TunnelacctError)


def test_port_error_message_matches_the_house_example() -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter("dport:70000")
    assert str(caught.value) == (
        "bad filter term 'dport:70000': expected a port 0-65535 or a range a-b"
    )


# --- SQL against an imported capture ------------------------------------------------------------


def selected(engine: Engine, text: str) -> set[uuid.UUID]:
    """Ids the database returns for the filter `text`."""
    stmt = select(TABLE.c.id).where(filter_clause(parse_filter(text), TABLE))
    with engine.connect() as db:
        return set(db.scalars(stmt))


@pytest.fixture(scope="module", params=ENGINES)
def capture_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, list[Row]]]:
    """wg-small.pcap imported by the real CLI into a fresh store of each engine, and its rows."""
    with imported_store(request.param, tmp_path_factory.mktemp("query")) as url:
        engine = create_engine(sync_url(url))
        yield engine, session_rows(url)
        engine.dispose()


def net(text: str) -> Callable[[str], bool]:
    network = ipaddress.ip_network(text)
    return lambda addr: ipaddress.ip_address(addr) in network


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


Predicate = Callable[[Row], bool]
MIB = 1024**2

# (filter, oracle); every case selects a non-empty strict subset of the capture's sessions.
CAPTURE_CASES: list[tuple[str, Predicate]] = [
    ("protocol:udp", lambda r: r["protocol"] == "udp"),
    ("-protocol:udp", lambda r: r["protocol"] != "udp"),
    ("client:bob-desktop", lambda r: r["client_id"] == "bob-desktop"),
    ("user:alice", lambda r: r["user_id"] == "alice"),
    ("resource:bulk-transfer", lambda r: r["resource_id"] == "bulk-transfer"),
    ("-resource:intranet-web", lambda r: r["resource_id"] != "intranet-web"),  # NULLs kept
    ("close_reason:end_of_capture", lambda r: r["close_reason"] == "end_of_capture"),
    ("-close_reason:fin", lambda r: r["close_reason"] != "fin"),
    ("src:100.64.0.3", lambda r: r["src_addr"] == "100.64.0.3"),
    ("src:100.64.0.2/31", lambda r: net("100.64.0.2/31")(r["src_addr"])),
    ("src:100.64.0.0/10", lambda r: net("100.64.0.0/10")(r["src_addr"])),
    ("dst:10.99.0.0/20", lambda r: net("10.99.0.0/20")(r["dst_addr"])),
    ("-dst:10.0.0.0/8", lambda r: not net("10.0.0.0/8")(r["dst_addr"])),
    ("src:fd00:64::3", lambda r: r["src_addr"] == "fd00:64::3"),
    ("src:fd00:64::/64", lambda r: net("fd00:64::/64")(r["src_addr"])),
    ("src:fd00:64::2/127", lambda r: net("fd00:64::2/127")(r["src_addr"])),
    ("dst:fd00:99::/33", lambda r: net("fd00:99::/33")(r["dst_addr"])),
    ("dst:fd00::/8", lambda r: net("fd00::/8")(r["dst_addr"])),
    ("dst:fc00::/7", lambda r: net("fc00::/7")(r["dst_addr"])),
    ("dst:fd00:99::/44", lambda r: net("fd00:99::/44")(r["dst_addr"])),
    ("dport:5353", lambda r: r["dst_port"] == 5353),
    ("dport:5000-5999", lambda r: 5000 <= r["dst_port"] <= 5999),
    ("-dport:8080", lambda r: r["dst_port"] != 8080),
    ("sport:43000-44000", lambda r: 43000 <= r["src_port"] <= 44000),
    (
        "started_after:2026-11-23T10:54:14Z",
        lambda r: r["started_at"] >= at("2026-11-23T10:54:14+00:00"),
    ),
    (
        "started_before:2026-11-23T11:54:14.2+01:00",
        lambda r: r["started_at"] < at("2026-11-23T10:54:14.2+00:00"),
    ),
    (
        "-started_after:2026-11-23T10:54:14.143041Z",
        lambda r: not r["started_at"] >= at("2026-11-23T10:54:14.143041+00:00"),
    ),
    ("bytes>5k", lambda r: r["bytes_tx"] + r["bytes_rx"] > 5000),
    ("bytes<1k", lambda r: r["bytes_tx"] + r["bytes_rx"] < 1000),
    ("bytes>400Ki", lambda r: r["bytes_tx"] + r["bytes_rx"] > 400 * 1024),
    ("bytes>0.4M", lambda r: r["bytes_tx"] + r["bytes_rx"] > 400_000),
    ("-bytes<5.3k", lambda r: not r["bytes_tx"] + r["bytes_rx"] < 5300),
    ("duration>0.01", lambda r: r["duration_s"] > 0.01),
    ("duration<0.002", lambda r: r["duration_s"] < 0.002),
    (
        "protocol:tcp dst:10.99.0.5 -client:alice-laptop bytes<3k",
        lambda r: (
            r["protocol"] == "tcp"
            and r["dst_addr"] == "10.99.0.5"
            and r["client_id"] != "alice-laptop"
            and r["bytes_tx"] + r["bytes_rx"] < 3000
        ),
    ),
    (
        'user:"bob" -resource:"bulk-transfer" started_after:2026-11-23',
        lambda r: r["user_id"] == "bob" and r["resource_id"] != "bulk-transfer",
    ),
]

# Values that would change the query if they were pasted into SQL: they must select nothing.
INJECTIONS = [
    """client:"x' OR 1=1 --\"""",
    """resource:"'; DROP TABLE sessions; --\"""",
    """user:"alice' OR 'a'='a\"""",
    """client:"%\"""",
    """client:"alice-lapto_\"""",
]


@pytest.mark.parametrize(("text", "oracle"), CAPTURE_CASES, ids=[c[0] for c in CAPTURE_CASES])
def test_sql_selects_exactly_the_sessions_the_oracle_selects(
    capture_db: tuple[Engine, list[Row]], text: str, oracle: Predicate
) -> None:
    engine, rows = capture_db
    expected = {r["id"] for r in rows if oracle(r)}
    assert 0 < len(expected) < len(rows), f"{text!r} does not split the capture's sessions"
    assert selected(engine, text) == expected


async def test_the_async_drivers_select_what_the_oracle_selects(
    capture_db: tuple[Engine, list[Row]],
) -> None:
    # The API and in-process exports filter through asyncpg/aiosqlite, whose parameter binding
    # differs from the sync drivers' above (e.g. asyncpg's typed parameters).
    engine, rows = capture_db
    async_engine = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        for text, oracle in CAPTURE_CASES:
            stmt = select(TABLE.c.id).where(filter_clause(parse_filter(text), TABLE))
            async with async_engine.connect() as db:
                got = set(await db.scalars(stmt))
            assert got == {r["id"] for r in rows if oracle(r)}, text
    finally:
        await async_engine.dispose()


def test_status_terms_select_by_status(capture_db: tuple[Engine, list[Row]]) -> None:
    # An import completes every session, so here the split is all/none (see the synthetic
    # store below for ongoing sessions).
    engine, rows = capture_db
    assert {r["status"] for r in rows} == {"completed"}
    assert selected(engine, "status:completed") == {r["id"] for r in rows}
    assert selected(engine, "status:ongoing") == set()
    assert selected(engine, "-status:ongoing") == {r["id"] for r in rows}


def test_empty_filter_selects_every_session(capture_db: tuple[Engine, list[Row]]) -> None:
    engine, rows = capture_db
    assert selected(engine, "") == {r["id"] for r in rows}


@pytest.mark.parametrize("text", INJECTIONS)
def test_sql_looking_values_are_data(capture_db: tuple[Engine, list[Row]], text: str) -> None:
    engine, rows = capture_db
    assert selected(engine, text) == set()
    assert len(selected(engine, "")) == len(rows)  # the table is still there, untouched


PG_DIALECT: Dialect = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("dialect", "bound"), [(PG_DIALECT, "10.0.0.0/20"), (sqlite.dialect(), "10.0.15.%")]
)
def test_sql_binds_user_values_as_parameters(dialect: Dialect, bound: str) -> None:
    # PostgreSQL tests a prefix with one inet comparison, SQLite with LIKE patterns.
    evil = "x' OR 1=1 --"
    flt = parse_filter(f'client:"{evil}" dst:fd00:64::/60 src:10.0.0.0/20 bytes>1k')
    compiled = select(TABLE.c.id).where(filter_clause(flt, TABLE)).compile(dialect=dialect)
    assert evil not in str(compiled) and "10." not in str(compiled)
    assert evil in compiled.params.values()
    assert bound in compiled.params.values()


# --- SQL against tricky address spellings -------------------------------------------------------

PREFIXES = [
    "10.0.0.0/8",
    "10.99.0.0/20",
    "10.99.0.0/24",
    "10.99.0.4/30",
    "10.99.0.5/32",
    "10.99.0.128/25",
    "2.0.0.0/7",
    "0.0.0.0/0",
    "100.64.0.0/10",
    "192.168.1.0/31",
    "::/0",
    "::/96",
    "::/64",
    "::ffff:0:0/96",
    "::ffff:10.0.0.0/104",
    "::ffff:10.99.0.5/128",
    "::ffff:10.99.0.0/118",
    "::1:0/112",
    "::/127",
    "fd00::/8",
    "fd00:64::/64",
    "fd00:64::/63",
    "fd00:64::/65",
    "fd00:64::/49",
    "fd00:64:0:ab00::/56",
    "fd00:64:0:a000::/52",
    "fd00:64:0:0:1::/80",
    "fd00:64::1:0:0:0/81",
    "2001:db8::/32",
    "2001:db8:f::/48",
    "2001:db8::/29",
    "fe80::/10",
    "fd00:64::2/128",
    "fd00:64::8/125",
    "fd00:64:0:a000::/51",
    "fd00:64:0:a8::/62",
    "fd00:64::/79",
]


def spelled(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The address as inet_ntop writes it (the writer's spelling, ::ffff:a.b.c.d included)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return socket.inet_ntop(family, address.packed)


def tricky_addresses() -> list[str]:
    """Both ends of every prefix and their outside neighbours, plus spelling corner cases."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for text in PREFIXES:
        network = ipaddress.ip_network(text)
        top = 2**network.max_prefixlen - 1
        for value in (
            int(network.network_address) - 1,
            int(network.network_address),
            int(network.network_address) + 1,
            int(network.broadcast_address) - 1,
            int(network.broadcast_address),
            int(network.broadcast_address) + 1,
        ):
            if 0 <= value <= top:
                kind = ipaddress.IPv4Address if network.version == 4 else ipaddress.IPv6Address
                found.add(kind(value))
    for text in (
        "::",
        "::1",
        "::2",
        "::1:2",
        "1::",
        "::ffff:0.0.0.0",
        "10.99.0.50",
        "10.99.0.55",
        "110.99.0.5",
        "100.64.0.23",
        "fd00:64::1:0:0:2",
        "fd00:64:0:0:1::",
        "fd0:64::1",
        "fd00:640::1",
        "fd00:64:0:abcd::1",
        "fd00:64:0:ab::1",
        "fd00:64:0:a::1",
        "fd00:64:0:fff::1",
        "1:2:3:4:5:6:7:8",
        "fd00:64::ab00:0:0:1",
        "2001:db8:f:0:0:0:0:1",
    ):
        found.add(ipaddress.ip_address(text))
    return sorted({spelled(a) for a in found})


@pytest.fixture(scope="module", params=ENGINES)
def address_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Engine, list[Row]]]:
    """A migrated store of each engine with one session per tricky address (as src and dst),
    half ongoing."""
    with migrated_store(request.param, tmp_path_factory.mktemp("query")) as url:
        rows = address_rows()
        add_partitions(url, (row["started_at"] for row in rows))
        engine = create_engine(sync_url(url))
        with engine.begin() as conn:
            conn.execute(insert(TABLE), rows)
        yield engine, session_rows(url)
        engine.dispose()


def address_rows() -> list[Row]:
    """One session row per tricky address (as src and dst), half ongoing; a third from flow
    records (payloads NULL, estimated), a quarter incomplete."""
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    rows = []
    for i, addr in enumerate(tricky_addresses()):
        ongoing = i % 2 == 0
        from_flows = i % 3 == 0
        rows.append(
            {
                "id": uuid.uuid4(),
                "org_id": "acme",
                "client_id": None,
                "client_name": None,
                "user_id": None,
                "resource_id": None,
                "resource_name": None,
                "protocol": "udp",
                "ip_version": ipaddress.ip_address(addr).version,
                "src_addr": addr,
                "dst_addr": addr,
                "src_port": 1,
                "dst_port": 2,
                "started_at": start + timedelta(seconds=i),
                "ended_at": None if ongoing else start,
                "last_seen_at": start,
                "duration_s": 0.0,
                "bytes_tx": 0,
                "bytes_rx": 0,
                "packets_tx": 0,
                "packets_rx": 0,
                "payload_bytes_tx": None if from_flows else 0,
                "payload_bytes_rx": None if from_flows else 0,
                "status": "ongoing" if ongoing else "completed",
                "close_reason": None if ongoing else "idle",
                "midstream": False,
                "community_id": "",
                "gateway": "gw",
                "interface": "wg0",
                "estimated": from_flows,
                "incomplete": i % 4 == 1,
            }
        )
    return rows


def test_tricky_addresses_include_every_spelling_form() -> None:
    spellings = tricky_addresses()
    assert {"::", "::1", "::0.1.0.2", "::ffff:10.99.0.5", "1::", "fd00:64::1:0:0:2"} <= set(
        spellings
    )


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("key", ["src", "dst"])
def test_cidr_terms_select_exactly_the_addresses_ipaddress_puts_in_the_network(
    address_db: tuple[Engine, list[Row]], prefix: str, key: str
) -> None:
    engine, rows = address_db
    network = ipaddress.ip_network(prefix)
    inside = {r["id"] for r in rows if ipaddress.ip_address(r[f"{key}_addr"]) in network}
    everything = {r["id"] for r in rows}
    if prefix not in ("0.0.0.0/0", "::/0"):
        assert 0 < len(inside) < len(rows)
    assert selected(engine, f"{key}:{prefix}") == inside
    assert selected(engine, f"-{key}:{prefix}") == everything - inside


@pytest.mark.parametrize(
    ("text", "oracle"),
    [
        ("status:ongoing", lambda r: r["status"] == "ongoing"),
        ("-status:ongoing", lambda r: r["status"] != "ongoing"),
        ("status:completed", lambda r: r["status"] == "completed"),
        ("close_reason:idle", lambda r: r["close_reason"] == "idle"),
        ("-close_reason:idle", lambda r: r["close_reason"] != "idle"),  # NULLs kept
        ("-client:x", lambda r: r["client_id"] != "x"),  # every client_id is NULL
        ("estimated:true", lambda r: r["estimated"] == 1),
        ("-estimated:true", lambda r: r["estimated"] == 0),
        ("incomplete:false", lambda r: r["incomplete"] == 0),
        ("-incomplete:false", lambda r: r["incomplete"] == 1),
        (
            "estimated:true incomplete:true status:completed",
            lambda r: r["estimated"] == r["incomplete"] == 1 and r["status"] == "completed",
        ),
        (
            "status:ongoing src:::/64",
            lambda r: r["status"] == "ongoing" and net("::/64")(r["src_addr"]),
        ),
    ],
)
def test_status_flag_and_nullable_terms_select_what_the_oracle_selects(
    address_db: tuple[Engine, list[Row]], text: str, oracle: Predicate
) -> None:
    engine, rows = address_db
    expected = {r["id"] for r in rows if oracle(r)}
    assert 0 < len(expected) <= len(rows)
    assert selected(engine, text) == expected


@pytest.mark.parametrize("kind", ENGINES)
def test_the_live_logs_filter_reads_the_partial_index_of_ongoing_sessions(
    kind: str, tmp_path: Path
) -> None:
    """`status:ongoing` must reach the database as the literal the partial index states: as a
    parameter, a generic plan of PostgreSQL cannot prove the index's WHERE and walks every
    session of the org (SQLite: 454 ms against 16 ms a page on 10M sessions, bench_ui.py)."""
    flt = parse_filter("status:ongoing")
    statements = (page_before("acme", flt, None, 50), capped_count("acme", flt, 10_000))
    with imported_store(kind, tmp_path) as url:
        for stmt in statements:
            details = _plan(url, stmt)
            if kind == "sqlite":
                assert "org_id_started_at_id_ongoing" in details, details
            else:  # a partition's index has a name of PostgreSQL's: no filter on status left
                assert "Index" in details and "status" not in details, details


def _plan(url: str, stmt: Any) -> str:
    """The plan of `stmt` as the service's driver runs it: SQLite's EXPLAIN QUERY PLAN, or
    PostgreSQL's of a prepared statement with a generic plan (no sequential scans, which a
    tiny table would prefer)."""
    if not url.startswith("postgresql"):
        engine = create_engine(sync_url(url))
        try:
            compiled = stmt.compile(dialect=engine.dialect)
            with engine.connect() as conn:
                plan = conn.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN {compiled}", tuple(compiled.params.values())
                ).all()
        finally:
            engine.dispose()
        return " | ".join(str(row[-1]) for row in plan)
    compiled = stmt.compile(dialect=pg_asyncpg.dialect())  # $1, $2: as asyncpg sends it
    values = ", ".join(f"'{compiled.params[name]}'" for name in compiled.positiontup)
    with psycopg.connect(str(sync_url(url)).replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET enable_seqscan = off")
        conn.execute(f"PREPARE live AS {compiled}")
        plan = conn.execute(f"EXPLAIN EXECUTE live({values})").fetchall()
    return " | ".join(str(row[0]) for row in plan)
