"""Shared checks of imported sessions against the tshark oracle and an independent attributor."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from tests.helpers.oracle import compare_sessions, read_session_rows, tshark_sessions

SESSION_FACTS = (
    "protocol",
    "src_addr",
    "src_port",
    "dst_addr",
    "dst_port",
    "packets_tx",
    "packets_rx",
    "bytes_tx",
    "bytes_rx",
    "payload_bytes_tx",
    "payload_bytes_rx",
    "org_id",
    "client_id",
    "user_id",
    "resource_id",
    "status",
    "close_reason",
)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `tunnelacct` CLI in a subprocess (no stdin); fails loudly on non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-m", "tunnelacct", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, f"tunnelacct {args} exited {done.returncode}:\n{done.stderr}"
    return done


def import_file(pcap: Path, config: Path, db: Path) -> list[dict[str, Any]]:
    """Import `pcap` with the CLI into a fresh SQLite file and return every session row."""
    run_cli(
        "import",
        "--config",
        str(config),
        str(pcap),
        env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"},
    )
    return read_session_rows(db)


def expected_attribution(config: Path, row: dict[str, Any]) -> dict[str, str | None]:
    """Attribution by brute force over the TOML with the ipaddress module (not tunnelacct's)."""
    cfg = tomllib.loads(config.read_text())
    src, dst = ipaddress.ip_address(row["src_addr"]), ipaddress.ip_address(row["dst_addr"])

    def best_client(addr: Any) -> dict[str, Any] | None:
        hits = [
            (ipaddress.ip_network(c, strict=False).prefixlen, client)
            for client in cfg.get("clients", [])
            for c in client["addresses"]
            if addr in ipaddress.ip_network(c, strict=False)
        ]
        return max(hits, key=lambda h: h[0])[1] if hits else None

    def port_width(ports: Any, port: int) -> int | None:
        if ports is None:
            return 65536
        for part in str(ports).split(","):
            lo, _, hi = part.strip().partition("-")
            if int(lo) <= port <= int(hi or lo):
                return int(hi or lo) - int(lo) + 1
        return None

    candidates = []
    for order, r in enumerate(cfg.get("resources", [])):
        net = ipaddress.ip_network(r["address"], strict=False)
        width = port_width(r.get("ports"), row["dst_port"])
        if (
            dst in net
            and width is not None
            and row["protocol"] in r.get("protocols", ["tcp", "udp"])
        ):
            candidates.append((-net.prefixlen, width, order, r))
    resource = min(candidates, key=lambda c: c[:3])[3] if candidates else None
    client = best_client(src) or best_client(dst)
    org = resource["org"] if resource else client["org"] if client else "unattributed"
    return {
        "org_id": org,
        "client_id": client["id"] if client else None,
        "user_id": client.get("user") if client else None,
        "resource_id": resource["id"] if resource else None,
    }


def check_import(pcap: Path, config: Path, db: Path) -> list[dict[str, Any]]:
    """Import `pcap` and assert: exact agreement with tshark, attribution, close reasons."""
    rows = import_file(pcap, config, db)
    oracle = tshark_sessions(pcap)
    assert oracle, f"tshark found no sessions in {pcap}"
    problems = compare_sessions(oracle, rows)
    assert problems == [], "\n".join(problems)
    by_key = {
        (o.protocol, o.src_addr, o.src_port, o.dst_addr, o.dst_port, round(o.first_ts, 6)): o
        for o in oracle
    }
    for row in rows:
        assert {k: row[k] for k in ("org_id", "client_id", "user_id", "resource_id")} == (
            expected_attribution(config, row)
        ), row
        assert row["status"] == "completed"
        o = next(
            o
            for k, o in by_key.items()
            if k[:5]
            == (
                row["protocol"],
                str(ipaddress.ip_address(row["src_addr"])),
                row["src_port"],
                str(ipaddress.ip_address(row["dst_addr"])),
                row["dst_port"],
            )
        )
        if o.protocol == "tcp" and o.rst and not o.fin_both:
            assert row["close_reason"] == "rst", row
        elif o.protocol == "tcp" and o.fin_both and not o.rst:
            assert row["close_reason"] == "fin", row
        elif o.protocol == "udp":
            assert row["close_reason"] in ("end_of_capture", "idle"), row
    return rows


def facts(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows without ids and times, sorted: what two captures of the same traffic must share."""
    return sorted(tuple(r[k] for k in SESSION_FACTS) for r in rows)
