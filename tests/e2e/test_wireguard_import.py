"""End to end: real traffic through a real WireGuard tunnel, captured twice, imported, exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.accuracy import check_import, facts
from tests.helpers.netlab import WireguardLab

CONFIG = Path(__file__).parents[1] / "data" / "wg-small.toml"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.usefixtures("require_lab", "require_tshark"),  # skip, or under CI fail
]


def test_tunnel_traffic_imports_exactly_from_full_and_headers_only_captures(
    tmp_path: Path,
) -> None:
    full, s96 = tmp_path / "full.pcap", tmp_path / "s96.pcap"
    with WireguardLab() as lab:
        with lab.capture({full: 0, s96: 96}) as stats:
            ran = lab.run_standard_traffic(scale=1.0)
        assert stats.problems() == []
        assert all(d == 0 for d in stats.drops.values()), stats.drops
    rows_full = check_import(full, CONFIG, tmp_path / "full.db")
    rows_s96 = check_import(s96, CONFIG, tmp_path / "s96.db")
    assert facts(rows_full) == facts(rows_s96)
    http = [r for r in rows_full if r["dst_port"] == ran["http_port"]]
    assert len(http) == sum(ran["http_connections"].values()) + 1  # + one over IPv6
    assert any(
        r["close_reason"] == "rst" and r["dst_port"] == ran["refused"]["port"] for r in rows_full
    )
    assert {r["protocol"] for r in rows_full} == {"tcp", "udp"}
    assert any(":" in r["src_addr"] for r in rows_full)
