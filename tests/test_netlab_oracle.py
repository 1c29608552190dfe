"""The test helpers themselves: the WireGuard lab, the tshark oracle and compare_sessions, and
the rule for tests the machine cannot run (skipped loudly, under CI failed)."""

from __future__ import annotations

import dataclasses
import sqlite3
import struct
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.needs import missing_tools, not_root, require
from tests.helpers.netlab import ECHO_PORT, HTTP_PORT, REQUIRED_TOOLS, RES_V4, WireguardLab
from tests.helpers.oracle import (
    COUNTERS,
    SESSION_COLUMNS,
    OracleSession,
    compare_sessions,
    read_session_rows,
    tshark_sessions,
)

DATA = Path(__file__).parent / "data"
FULL_PCAP = DATA / "wg-small.pcap"
S96_PCAP = DATA / "wg-small-s96.pcap"
LINKTYPE_RAW = 101  # what tcpdump records for a TUN device such as wg0
WG_OVERHEAD_BYTES = 32  # data message header (16) + Poly1305 tag (16); padding comes on top
WG_MAX_PADDING_BYTES = 15

# each skips when the machine lacks it, or under CI fails (tests/helpers/needs.py)
needs_lab = pytest.mark.usefixtures("require_lab")
needs_tshark = pytest.mark.usefixtures("require_tshark")


@pytest.mark.parametrize(
    ("unavailable", "named"),
    [
        ({"tun_device": Path("/nonexistent/net/tun")}, "no /nonexistent/net/tun"),
        ({"tools": (*REQUIRED_TOOLS, "wireguard-go-nonexistent")}, "wireguard-go-nonexistent"),
        ({"euid": 1000}, "needs root for network namespaces (euid=1000)"),
    ],
)
def test_a_missing_lab_fails_under_ci_and_elsewhere_skips_naming_why(
    unavailable: dict[str, Any], named: str
) -> None:
    """Issue 15, item 20: a CI machine without /dev/net/tun (or root, or wireguard-go) used
    to pass with every lab test skipped."""
    ok, why = WireguardLab.available(**unavailable)
    assert not ok and named in why
    with pytest.raises(pytest.fail.Exception, match="^WireGuard lab tests cannot run: ") as failed:
        require(why, "WireGuard lab tests", environ={"CI": "true"})
    assert why in str(failed.value) and "CI is set" in str(failed.value)
    for outside_ci in ({}, {"CI": ""}, {"CI": "0"}, {"CI": "false"}, {"CI": "FALSE"}):
        with pytest.raises(pytest.skip.Exception, match="^WIREGUARD LAB TESTS NOT RUN: ") as skip:
            require(why, "WireGuard lab tests", environ=outside_ci)
        assert why in str(skip.value)


def test_what_is_there_is_no_reason_and_what_is_not_is_named(tmp_path: Path) -> None:
    (tmp_path / "tshark").touch(mode=0o755)  # a tool on this PATH
    assert missing_tools("tshark", path=str(tmp_path)) is None
    assert missing_tools("tshark", "editcap", path=str(tmp_path)) == "missing editcap"
    assert not_root(0) is None and not_root(1000) == "needs root (euid=1000)"
    require(None, "anything", environ={"CI": "true"})  # nothing missing: it runs, CI or not
    with pytest.raises(pytest.fail.Exception, match=r"^tshark oracle tests cannot run: missing"):
        require(missing_tools("tshark", path=""), "tshark oracle tests", environ={"CI": "1"})


def _pcap_header(path: Path) -> tuple[int, int]:
    """(snaplen, linktype) from a little- or big-endian pcap global header."""
    head = path.read_bytes()[:24]
    order = "<" if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    _, _, _, _, _, snaplen, linktype = struct.unpack(order + "IHHiIII", head)
    return snaplen, linktype


def _as_row(session: OracleSession, row_id: int) -> dict[str, Any]:
    """A session row as the store would hold it, built from an oracle session."""
    row: dict[str, Any] = {
        name: getattr(session, name)
        for name in ("protocol", "src_addr", "src_port", "dst_addr", "dst_port", *COUNTERS)
    }
    row["id"] = row_id
    row["started_at"] = datetime.fromtimestamp(session.first_ts, UTC)
    return row


def _without_times(sessions: list[OracleSession]) -> list[OracleSession]:
    return [dataclasses.replace(s, first_ts=0.0, last_ts=0.0) for s in sessions]


@pytest.fixture(scope="module")
def small_sessions() -> list[OracleSession]:
    """The oracle's view of the committed full-size capture."""
    return tshark_sessions(FULL_PCAP)


@pytest.mark.netns
@needs_lab
@needs_tshark
def test_lab_tiny_traffic_gives_exactly_the_expected_sessions(tmp_path: Path) -> None:
    pcap = tmp_path / "tiny.pcap"
    with WireguardLab() as lab:
        before = lab.wg_transfer()
        with lab.capture({pcap: 0}) as stats:
            lab.http_get("alice", RES_V4)
            lab.http_get("bob", RES_V4)
            lab.udp_echo("alice", RES_V4, 3)
        after = lab.wg_transfer()

    assert stats.problems() == []
    assert stats.drops == {pcap: 0}
    assert _pcap_header(pcap)[1] == LINKTYPE_RAW
    sessions = tshark_sessions(pcap)
    assert sorted((s.protocol, s.src_addr, s.dst_addr, s.dst_port) for s in sessions) == [
        ("tcp", "100.64.0.2", RES_V4, HTTP_PORT),
        ("tcp", "100.64.0.3", RES_V4, HTTP_PORT),
        ("udp", "100.64.0.2", RES_V4, ECHO_PORT),
    ]
    for s in sessions:
        if s.protocol == "tcp":
            assert (s.saw_syn, s.fin_both, s.rst) == (True, True, False), s
            assert s.packets_tx >= 4 and s.packets_rx >= 4, s  # SYN, request, FIN, ACKs
            assert s.payload_bytes_rx > 4096, s  # the 4 KiB page plus headers
        else:
            assert (s.packets_tx, s.packets_rx) == (3, 3), s
            assert s.payload_bytes_tx == s.payload_bytes_rx == len(b"echo 0") * 3, s
    # wg's per-peer counters (ciphertext bytes on gw) moved by the IP bytes plus WireGuard's
    # per-packet overhead: an oracle for the traffic that shares nothing with tshark.
    for client, tunnel_addr in (("alice", "100.64.0.2"), ("bob", "100.64.0.3")):
        mine = [s for s in sessions if s.src_addr == tunnel_addr]
        rx_moved, tx_moved = (after[client][i] - before[client][i] for i in (0, 1))
        for moved, ip_bytes, packets in (
            (rx_moved, sum(s.bytes_tx for s in mine), sum(s.packets_tx for s in mine)),
            (tx_moved, sum(s.bytes_rx for s in mine), sum(s.packets_rx for s in mine)),
        ):
            low = ip_bytes + WG_OVERHEAD_BYTES * packets
            assert low <= moved <= low + WG_MAX_PADDING_BYTES * packets, (client, moved, low)


@needs_tshark
def test_headers_only_capture_gives_same_sessions_as_full_capture(
    small_sessions: list[OracleSession],
) -> None:
    assert _pcap_header(FULL_PCAP) == (262144, LINKTYPE_RAW)
    assert _pcap_header(S96_PCAP) == (96, LINKTYPE_RAW)
    assert S96_PCAP.stat().st_size * 4 < FULL_PCAP.stat().st_size  # really truncated
    s96 = tshark_sessions(S96_PCAP)
    # Keys, counters and flags agree: both are IP-header lengths, not captured lengths.
    assert _without_times(s96) == _without_times(small_sessions)
    # Two tcpdumps stamp each packet separately, a few microseconds apart.
    for full, short in zip(small_sessions, s96, strict=True):
        assert abs(full.first_ts - short.first_ts) < 1e-3


@needs_tshark
def test_recorded_capture_holds_the_standard_traffic(small_sessions: list[OracleSession]) -> None:
    kinds = Counter((s.protocol, s.dst_addr, s.dst_port) for s in small_sessions)
    assert kinds[("tcp", "10.99.0.5", 8080)] == 10  # 5 HTTP connections per client
    assert kinds[("tcp", "fd00:99::5", 8080)] == 1
    assert kinds[("udp", "10.99.0.5", 5353)] == 2
    assert kinds[("udp", "fd00:99::5", 5353)] == 1
    assert kinds[("udp", "10.99.0.5", 5201)] == 1
    assert kinds[("tcp", "10.99.0.5", 5201)] >= 5  # 3 iperf3 control + 2 TCP data connections
    (refused,) = [s for s in small_sessions if s.dst_port == 9]
    assert (refused.packets_tx, refused.packets_rx, refused.rst) == (1, 1, True)
    assert (refused.bytes_rx, refused.payload_bytes_rx) == (40, 0)  # a bare IPv4+TCP RST
    for s in small_sessions:
        if s.dst_port in (8080, 5353):
            assert s.packets_tx > 0 and s.packets_rx > 0, s


@needs_tshark
def test_compare_sessions_accepts_exact_rows(small_sessions: list[OracleSession]) -> None:
    rows = [_as_row(s, i) for i, s in enumerate(small_sessions)]
    assert compare_sessions(small_sessions, rows) == []
    # Row text forms the store may produce: expanded IPv6, ISO strings, naive UTC times.
    for row in rows:
        row["src_addr"] = str(row["src_addr"]).replace("::", ":0:0:0:0:0:")
        row["started_at"] = row["started_at"].replace(tzinfo=None).isoformat(sep=" ")
    assert compare_sessions(small_sessions, rows) == []


@needs_tshark
def test_compare_sessions_reports_a_changed_counter(small_sessions: list[OracleSession]) -> None:
    rows = [_as_row(s, i) for i, s in enumerate(small_sessions)]
    rows[3]["bytes_rx"] += 1
    (problem,) = compare_sessions(small_sessions, rows)
    expected = small_sessions[3].bytes_rx
    assert f"bytes_rx oracle={expected} row={expected + 1}" in problem
    assert f":{small_sessions[3].src_port} ->" in problem


@needs_tshark
def test_compare_sessions_reports_missing_duplicate_and_extra_rows(
    small_sessions: list[OracleSession],
) -> None:
    rows = [_as_row(s, i) for i, s in enumerate(small_sessions)]
    missing = rows.pop(0)
    rows.append(dict(rows[0], id=1000))  # the same session twice
    rows.append(dict(rows[1], id=1001, dst_port=7))  # a session the oracle never saw
    problems = compare_sessions(small_sessions, rows)
    assert len(problems) == 3, problems
    assert problems[0].startswith("missing: ") and f":{missing['src_port']} " in problems[0]
    assert problems[1].startswith("duplicated: ") and "ids 1, 1000" in problems[1]
    assert problems[2].startswith("extra row 1001: ")


@needs_tshark
def test_compare_sessions_needs_the_start_within_microseconds(
    small_sessions: list[OracleSession],
) -> None:
    rows = [_as_row(s, i) for i, s in enumerate(small_sessions)]
    rows[0]["started_at"] = datetime.fromtimestamp(small_sessions[0].first_ts + 10e-6, UTC)
    problems = compare_sessions(small_sessions, rows)
    assert [p.split(":")[0] for p in problems] == ["missing", "extra row 0"]


@needs_tshark
def test_read_session_rows_reads_a_sessions_table(
    tmp_path: Path, small_sessions: list[OracleSession]
) -> None:
    db_path = tmp_path / "sessions.db"
    rows = [_as_row(s, i + 1) for i, s in enumerate(small_sessions)]
    with sqlite3.connect(db_path) as db:
        db.execute(f"CREATE TABLE sessions ({', '.join(SESSION_COLUMNS)}, extra_column)")
        for row in rows:
            stored = dict.fromkeys(SESSION_COLUMNS) | row
            stored["started_at"] = row["started_at"].replace(tzinfo=None).isoformat(sep=" ")
            names = ", ".join(stored)
            marks = ", ".join("?" * len(stored))
            db.execute(f"INSERT INTO sessions ({names}) VALUES ({marks})", list(stored.values()))
    db.close()
    read = read_session_rows(db_path)
    assert len(read) == len(rows) and set(read[0]) == set(SESSION_COLUMNS)
    assert compare_sessions(small_sessions, read) == []
