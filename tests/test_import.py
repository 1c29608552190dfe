"""`tunnelacct import` of captures recorded through a real WireGuard tunnel (tests/data)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from tests.helpers.accuracy import check_import, facts, run_cli
from tests.helpers.oracle import (
    SESSION_COLUMNS,
    compare_sessions,
    read_session_rows,
    tshark_sessions,
)
from tests.helpers.pcapwrite import write_pcap
from tests.helpers.pg import read_rows

DATA = Path(__file__).parent / "data"
CONFIG = DATA / "wg-small.toml"
needs_tshark = pytest.mark.usefixtures("require_tshark")  # skips, or under CI fails


@needs_tshark
def test_full_capture_matches_tshark_exactly(tmp_path: Path) -> None:
    rows = check_import(DATA / "wg-small.pcap", CONFIG, tmp_path / "full.db")  # asserts inside
    assert len(rows) == len({r["id"] for r in rows}) > 0


@needs_tshark
def test_headers_only_capture_counts_same_ip_bytes(tmp_path: Path) -> None:
    full = check_import(DATA / "wg-small.pcap", CONFIG, tmp_path / "full.db")
    s96 = check_import(DATA / "wg-small-s96.pcap", CONFIG, tmp_path / "s96.db")
    assert facts(full) == facts(s96)


def _store_rows(url: str) -> list[dict[str, Any]]:
    """Every session row of the store at `url` (SQLite or PostgreSQL), values as SQLite holds
    them."""
    sql = f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions ORDER BY started_at, id"
    return [dict(zip(SESSION_COLUMNS, row, strict=True)) for row in read_rows(url, sql)]


def _import(url: str, *pcaps: Path) -> str:
    """`tunnelacct import` of `pcaps` into the store at `url`; its summary."""
    env = {"TUNNELACCT_DATABASE_URL": url}
    return run_cli("import", "--config", str(CONFIG), *map(str, pcaps), env=env).stdout


def _summary_figure(summary: str, pattern: str) -> int:
    found = re.search(pattern, summary)
    assert found is not None, f"{pattern!r} not in the summary:\n{summary}"
    return int(found.group(1).replace(",", ""))


def _pcap_records_raw(path: Path) -> tuple[int, list[tuple[Decimal, bytes]]]:
    """(linktype, [(time, data)]) of a little-endian microsecond pcap, read with struct."""
    data = path.read_bytes()
    magic, _major, _minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack_from(
        "<IHHiIII", data
    )
    assert magic == 0xA1B2C3D4, "a little-endian microsecond pcap"
    records, off = [], 24
    while off + 16 <= len(data):
        sec, usec, caplen, _wirelen = struct.unpack_from("<IIII", data, off)
        records.append((Decimal(sec) + Decimal(usec) / 10**6, data[off + 16 : off + 16 + caplen]))
        off += 16 + caplen
    return linktype, records


def _thinned(src: Path, dst: Path) -> Path:
    """`src` without every third TCP packet that carries data and no SYN, FIN or RST: the same
    sessions (same starts and ends) with other counters."""
    linktype, records = _pcap_records_raw(src)
    kept, candidates = [], 0
    for ts, data in records:
        packet = IP(data) if data[0] >> 4 == 4 else IPv6(data)
        tcp = packet.getlayer(TCP)
        if tcp is not None and len(tcp.payload) and not int(tcp.flags) & 0x07:
            candidates += 1
            if candidates % 3 == 0:
                continue
        kept.append((ts, data))
    assert candidates >= 30, "wg-small.pcap holds TCP data to drop"
    return write_pcap(dst, kept, linktype)


def test_captures_merged_into_one_import_store_every_session_the_summary_counts(
    tmp_path: Path, database_url: str
) -> None:
    # Issue 15: the two captures of the same traffic in one import are one stream whose
    # sessions partly repeat each other with the same 5-tuple and start; each must be a row.
    pcaps = (DATA / "wg-small.pcap", DATA / "wg-small-s96.pcap")
    summary = _import(database_url, *pcaps)
    rows = _store_rows(database_url)
    sessions = _summary_figure(summary, r"sessions: ([\d,]+)")
    ip_bytes = _summary_figure(summary, r"TCP/UDP packets, ([\d,]+) IP bytes")
    oracle = [s for pcap in pcaps for s in tshark_sessions(pcap)]
    assert ip_bytes == sum(s.bytes_tx + s.bytes_rx for s in oracle)  # tshark's ip.len
    assert len(rows) == sessions > len(oracle) // 2
    assert len({r["id"] for r in rows}) == len(rows)
    assert sum(r["bytes_tx"] + r["bytes_rx"] for r in rows) == ip_bytes
    assert sum(r["packets_tx"] + r["packets_rx"] for r in rows) == sum(
        s.packets_tx + s.packets_rx for s in oracle
    )


def test_a_capture_imported_twice_in_one_import_is_stored_twice(
    tmp_path: Path, database_url: str
) -> None:
    # A copy under another name is another file (only the same file twice is read once): its
    # packets are counted again, so are its sessions, none overwriting another.
    copy = tmp_path / "copy.pcap"
    shutil.copyfile(DATA / "wg-small.pcap", copy)
    summary = _import(database_url, DATA / "wg-small.pcap", copy)
    rows = _store_rows(database_url)
    oracle = tshark_sessions(DATA / "wg-small.pcap")
    assert len(rows) == _summary_figure(summary, r"sessions: ([\d,]+)")
    assert sum(r["bytes_tx"] + r["bytes_rx"] for r in rows) == 2 * sum(
        s.bytes_tx + s.bytes_rx for s in oracle
    )


@needs_tshark
@pytest.mark.parametrize("first", ["wg-small.pcap", "wg-small-s96.pcap"])
def test_a_second_capture_of_the_same_traffic_replaces_the_first(
    tmp_path: Path, database_url: str, first: str
) -> None:
    # Issue 15: the full and the headers-only capture differ by 1-2 us in some start times.
    # Imported one after the other, in either order, then both again, the store holds the
    # sessions of one capture each time, exactly as tshark counts the last one.
    second = "wg-small-s96.pcap" if first == "wg-small.pcap" else "wg-small.pcap"
    for step, name in enumerate((first, second, first, second)):
        summary = _import(database_url, DATA / name)
        oracle = tshark_sessions(DATA / name)
        problems = compare_sessions(oracle, _store_rows(database_url))
        assert problems == [], f"after importing {name}:\n" + "\n".join(problems)
        replaced = _summary_figure(summary, r"replaced ([\d,]+)")
        assert replaced == (0 if step == 0 else len(oracle)), summary


@needs_tshark
def test_a_reimport_keeps_the_counters_of_the_last_capture(
    tmp_path: Path, database_url: str
) -> None:
    # Issue 15, item 18: the same sessions with other counters (a thinned capture) replace the
    # stored ones; the stored counters are never the sum of both, nor the earlier ones.
    thin = _thinned(DATA / "wg-small.pcap", tmp_path / "thin.pcap")
    full_oracle = tshark_sessions(DATA / "wg-small.pcap")
    thin_oracle = tshark_sessions(thin)
    assert sorted(s.key for s in thin_oracle) == sorted(s.key for s in full_oracle)
    assert [s.bytes_tx for s in thin_oracle] != [s.bytes_tx for s in full_oracle]
    steps = [
        (DATA / "wg-small.pcap", full_oracle),
        (thin, thin_oracle),
        (thin, thin_oracle),
        (DATA / "wg-small.pcap", full_oracle),
    ]
    for pcap, oracle in steps:
        summary = _import(database_url, pcap)
        problems = compare_sessions(oracle, _store_rows(database_url))
        assert problems == [], f"after importing {pcap.name}:\n" + "\n".join(problems)
    assert _summary_figure(summary, r"replaced ([\d,]+)") == len(full_oracle)


def test_session_ids_begin_with_the_start_in_unix_milliseconds(tmp_path: Path) -> None:
    # Time-ordered ids keep the primary key index in start order (appends, range purges).
    db = tmp_path / "ids.db"
    run_cli(
        "import",
        "--config",
        str(CONFIG),
        str(DATA / "wg-small.pcap"),
        env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"},
    )
    rows = read_session_rows(db)
    assert len(rows) > 10
    for row in rows:
        started = datetime.fromisoformat(row["started_at"]).replace(tzinfo=UTC)
        ms = (started - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        assert int(row["id"][:12], 16) == ms, row
        assert row["id"][12] == "7"  # RFC 9562 version 7
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)  # distinct ms here


def _pcap_records(path: Path) -> int:
    data = path.read_bytes()
    off, n = 24, 0
    while off + 16 <= len(data):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
        n += 1
    return n


def test_import_summary_reports_packets_sessions_and_rate(tmp_path: Path) -> None:
    pcap = DATA / "wg-small.pcap"
    db = tmp_path / "s.db"
    out = run_cli(
        "import",
        "--config",
        str(CONFIG),
        str(pcap),
        env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"},
    ).stdout
    assert f"{_pcap_records(pcap):,} packets in" in out
    assert f"sessions: {len(read_session_rows(db)):,} " in out
    assert "packets/s" in out and "decode errors: none" in out


@needs_tshark
@pytest.mark.parametrize("cut", ["inside-data", "inside-record-header"])
def test_a_capture_cut_inside_a_record_exits_1_naming_it_after_importing_what_precedes(
    tmp_path: Path, cut: str
) -> None:
    # Issue 15: a truncated capture warned and exited 0 although the README says exit 1.
    linktype, records = _pcap_records_raw(DATA / "wg-small.pcap")
    whole = records[: len(records) // 2]
    complete = write_pcap(tmp_path / "complete.pcap", whole, linktype)
    partial = 10 if cut == "inside-data" else -6  # into the next record's data, or its header
    next_record = 16 + len(records[len(whole)][1])
    keep = complete.stat().st_size + (partial if partial > 0 else 16 + partial)
    assert keep < complete.stat().st_size + next_record
    cut_file = tmp_path / "cut.pcap"
    data = write_pcap(tmp_path / "more.pcap", records[: len(whole) + 1], linktype).read_bytes()
    cut_file.write_bytes(data[:keep])
    db = tmp_path / "cut.db"
    done = subprocess.run(
        [sys.executable, "-m", "tunnelacct", "import", "--config", str(CONFIG), str(cut_file)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"},
        timeout=600,
    )
    assert done.returncode == 1, done.stderr
    assert f"error: {cut_file}: truncated" in done.stderr
    assert f"the {len(whole):,} packets before it were imported" in done.stderr
    problems = compare_sessions(tshark_sessions(complete), read_session_rows(db))
    assert problems == [], "\n".join(problems)


@needs_tshark
def test_a_capture_damaged_mid_file_keeps_every_packet_before_the_damage(tmp_path: Path) -> None:
    # Issue 16: a record claiming 0x7FFFFFFF bytes halfway through: the records before it in
    # the same read chunk were lost (0 rows), though the import said they were imported.
    linktype, records = _pcap_records_raw(DATA / "wg-small.pcap")
    whole = records[: len(records) // 2]
    complete = write_pcap(tmp_path / "complete.pcap", whole, linktype)
    damaged = tmp_path / "damaged.pcap"
    bad_header = struct.pack("<IIII", 1_700_000_000, 0, 0x7FFF_FFFF, 0x7FFF_FFFF)
    tail = write_pcap(tmp_path / "tail.pcap", records[len(whole) :], linktype).read_bytes()[24:]
    damaged.write_bytes(complete.read_bytes() + bad_header + tail)
    db = tmp_path / "damaged.db"
    done = subprocess.run(
        [sys.executable, "-m", "tunnelacct", "import", "--config", str(CONFIG), str(damaged)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"},
        timeout=600,
    )
    assert done.returncode == 1, done.stderr
    assert f"claims {0x7FFF_FFFF} captured bytes" in done.stderr
    assert f"the {len(whole):,} packets before it were imported" in done.stderr
    problems = compare_sessions(tshark_sessions(complete), read_session_rows(db))
    assert problems == [], "\n".join(problems)


@needs_tshark
def test_a_record_dated_far_in_the_future_is_refused_and_closes_no_session(
    tmp_path: Path,
) -> None:
    # Issue 16: one record from 2106 moved packet time on 80 years: the open sessions closed
    # as idle and the rest of the capture opened them again, split.
    linktype, records = _pcap_records_raw(DATA / "wg-small.pcap")
    middle = len(records) // 2
    stray = (Decimal(4_290_000_000), records[middle][1])  # 2105-12-11 (pcap seconds are 32-bit)
    clean = write_pcap(tmp_path / "clean.pcap", records[:middle] + records[middle + 1 :], linktype)
    dated = write_pcap(
        tmp_path / "2106.pcap", records[:middle] + [stray] + records[middle + 1 :], linktype
    )
    db = tmp_path / "dated.db"
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    summary = run_cli("import", "--config", str(CONFIG), str(dated), env=env).stdout
    assert "decode errors: bad_timestamp 1" in summary
    problems = compare_sessions(tshark_sessions(clean), read_session_rows(db))
    assert problems == [], "\n".join(problems)


def test_captures_merged_into_one_import_count_their_late_packets(tmp_path: Path) -> None:
    # two captures of the same traffic, its 0.5 s stretched to 5 s so that the second one's
    # packets go back by seconds; the import orders files by their first packet
    linktype, records = _pcap_records_raw(DATA / "wg-small.pcap")
    start = records[0][0]
    stretched = [(start + (t - start) * 10, data) for t, data in records]
    shifted = [(t + Decimal("0.001"), data) for t, data in stretched]
    first = write_pcap(tmp_path / "a.pcap", stretched, linktype)
    second = write_pcap(tmp_path / "b.pcap", shifted, linktype)
    summary = _import(f"sqlite:///{tmp_path / 'merged.db'}", second, first)
    newest, late = Decimal("-Infinity"), 0
    for t, data in stretched + shifted:
        packet = IP(data) if data[0] >> 4 == 4 else IPv6(data)
        if TCP not in packet and UDP not in packet:
            continue  # not sessionized, so neither late nor newest
        late += t < newest - 1
        newest = max(newest, t)
    assert late > 0
    assert _summary_figure(summary, r"late: ([\d,]+) packets") == late
