"""`tunnelacct import` of captures recorded through a real WireGuard tunnel (tests/data)."""

from __future__ import annotations

import shutil
import struct
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
