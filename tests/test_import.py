"""`tunnelacct import` of captures recorded through a real WireGuard tunnel (tests/data)."""

from __future__ import annotations

import shutil
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.helpers.accuracy import check_import, facts, run_cli
from tests.helpers.oracle import read_session_rows

DATA = Path(__file__).parent / "data"
CONFIG = DATA / "wg-small.toml"
needs_tshark = pytest.mark.skipif(
    shutil.which("tshark") is None, reason="tshark missing: run scripts/install-system-deps.sh"
)


@needs_tshark
def test_full_capture_matches_tshark_exactly(tmp_path: Path) -> None:
    rows = check_import(DATA / "wg-small.pcap", CONFIG, tmp_path / "full.db")  # asserts inside
    assert len(rows) == len({r["id"] for r in rows}) > 0


@needs_tshark
def test_headers_only_capture_counts_same_ip_bytes(tmp_path: Path) -> None:
    full = check_import(DATA / "wg-small.pcap", CONFIG, tmp_path / "full.db")
    s96 = check_import(DATA / "wg-small-s96.pcap", CONFIG, tmp_path / "s96.db")
    assert facts(full) == facts(s96)


def test_reimporting_a_file_updates_instead_of_duplicating(tmp_path: Path) -> None:
    db = tmp_path / "again.db"
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    run_cli("import", "--config", str(CONFIG), str(DATA / "wg-small.pcap"), env=env)
    first = read_session_rows(db)
    run_cli("import", "--config", str(CONFIG), str(DATA / "wg-small.pcap"), env=env)
    assert sorted(r["id"] for r in read_session_rows(db)) == sorted(r["id"] for r in first)


def test_session_ids_begin_with_the_start_in_unix_milliseconds(tmp_path: Path) -> None:
    # Time-ordered ids keep the primary key index in start order (appends, range purges).
    db = tmp_path / "ids.db"
    run_cli("import", "--config", str(CONFIG), str(DATA / "wg-small.pcap"),
            env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"})  # fmt: skip
    rows = read_session_rows(db)
    assert len(rows) > 10
    for row in rows:
        started = datetime.fromisoformat(row["started_at"]).replace(tzinfo=UTC)
        ms = (started - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        assert int(row["id"][:12], 16) == ms, row
        assert row["id"][12] == "8"  # RFC 9562 version 8
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
    out = run_cli("import", "--config", str(CONFIG), str(pcap),
                  env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}).stdout  # fmt: skip
    assert f"{_pcap_records(pcap):,} packets in" in out
    assert f"sessions: {len(read_session_rows(db)):,} " in out
    assert "packets/s" in out and "decode errors: none" in out
