"""End to end: `tunnelacct serve` capturing live on a real WireGuard gateway (wireguard-go in
network namespaces), checked against a simultaneous tcpdump (tshark's sessions), `wg show
transfer` and `tunnelacct import` of the same packets."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.accuracy import expected_attribution, import_file
from tests.helpers.netlab import IPERF_PORT, RES_V4, WireguardLab
from tests.helpers.oracle import (
    OracleSession,
    compare_sessions,
    rows_by_session,
    tshark_sessions,
)
from tests.helpers.serving import Serve, write_config
from tests.helpers.waiting import WAIT_S, wait_until

BASE = Path(__file__).parents[1] / "data" / "wg-small.toml"
WG_OVERHEAD_BYTES = 32  # WireGuard data message: 16-byte header + 16-byte Poly1305 tag
FAST = {  # short timeouts so every session of the test completes while it runs
    "timeouts": {"udp_idle": 3, "tcp_linger": 0.5, "checkpoint": 1},
    "writer": {"flush_interval": 0.2},
    "service": {"status_interval": 1},
}
LIVE = [{"interface": "wg0"}]

pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.usefixtures("require_lab", "require_tshark"),  # skip, or under CI fail
]


def all_rows(db: Path) -> list[dict[str, Any]]:
    """Every column of every session row, read with the stdlib sqlite3 module."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM sessions ORDER BY started_at, id")]


def expected_reason(o: OracleSession) -> str:
    """The close reason the rules give a session that ended while serve ran."""
    if o.protocol == "udp":
        return "idle"
    if o.rst:
        return "rst"
    assert o.fin_both, o
    return "fin"


def wire_sizes(pcap: Path) -> list[tuple[str, str, int]]:
    """(src, dst, IP total length) of every packet in `pcap`, read by tshark."""
    fields = ["ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "ip.len", "ipv6.plen"]
    argv = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|"]
    for f in fields:
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    sizes = []
    for line in out.splitlines():
        s4, s6, d4, d6, len4, plen6 = line.split("|")
        size = int(len4) if len4 else int(plen6) + 40
        sizes.append((s4 or s6, d4 or d6, size))
    return sizes


def wg_data_bytes(ip_bytes: int, mtu: int) -> int:
    """Bytes WireGuard counts for one IP packet: 32 + the packet padded to 16 (at most MTU)."""
    return WG_OVERHEAD_BYTES + min(-(-ip_bytes // 16) * 16, max(mtu, ip_bytes))


@contextlib.contextmanager
def background(fn: Any, *args: Any) -> Iterator[threading.Thread]:
    """Run fn(*args) in a thread while the block runs; re-raise its error at the end."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield thread
    thread.join(WAIT_S)
    assert not thread.is_alive(), f"{fn} still running"
    if errors:
        raise errors[0]


def test_serve_records_live_tunnel_traffic_exactly_as_tcpdump_and_wg_see_it(
    tmp_path: Path,
) -> None:
    pcap = tmp_path / "oracle.pcap"
    db = tmp_path / "live.db"
    with WireguardLab() as lab:
        # bob is declared by his WireGuard key alone: his addresses come from `wg show dump`
        config = write_config(
            BASE,
            tmp_path / "serve.toml",
            FAST,
            captures=LIVE,
            client_keys={"bob-desktop": lab.public_keys["bob"]},
            wireguard=["wg0"],
        )
        assert "100.64.0.3" not in config.read_text()
        mtu = int(lab.run("gw", ["cat", "/sys/class/net/wg0/mtu"]).stdout)
        before = lab.wg_transfer()
        with lab.capture({pcap: 0}) as stats, Serve(lab, config, db, tmp_path) as serve:
            serve.start()
            ran = lab.run_standard_traffic(scale=1.0)
            # UDP idle (3 s) + the expiry lag (2 s) + a tick: every session has ended
            final = serve.wait(
                lambda s: s["captures"][0]["open_sessions"] == 0 and s["writer"]["pending"] == 0,
                WAIT_S,
                "all sessions closed and written",
            )
            assert serve.stop() == 0, serve.log()
        after = lab.wg_transfer()

    assert stats.problems() == [] and stats.drops == {pcap: 0}, stats
    capture = final["captures"][0]
    assert (capture["kernel_drops"], capture["queue_drops"]) == (0, 0), capture
    assert capture["decode_errors"] == {}, capture
    oracle = tshark_sessions(pcap)
    rows = all_rows(db)
    problems = compare_sessions(oracle, rows)
    assert problems == [], "\n".join(problems)
    assert len(rows) == len(oracle) == len({r["id"] for r in rows})
    for row in rows:
        (o,) = [
            o
            for o in oracle
            if o.key == _row_key(row) and abs(o.first_ts - _epoch(row["started_at"])) < 1e-3
        ]
        assert row["status"] == "completed", row
        assert row["close_reason"] == expected_reason(o), (row, o)
        assert row["interface"] == "wg0"
        attribution = {k: row[k] for k in ("org_id", "client_id", "user_id", "resource_id")}
        assert attribution == expected_attribution(BASE, row), row
    assert any(r["client_id"] == "bob-desktop" for r in rows)
    http = [r for r in rows if r["dst_port"] == ran["http_port"]]
    assert len(http) == sum(ran["http_connections"].values()) + 1
    assert {r["protocol"] for r in rows} == {"tcp", "udp"}
    assert any(":" in r["src_addr"] for r in rows)
    assert any(r["close_reason"] == "rst" for r in rows)

    # The live path and the import path give the same rows for the same packets (the import
    # names the file as interface, and ends the UDP sessions with the capture).
    import_file(pcap, BASE, tmp_path / "import.db")
    imported = rows_by_session(all_rows(tmp_path / "import.db"))
    served = rows_by_session(rows)
    assert set(imported) == set(served)
    for key, row in served.items():
        other = dict(imported[key])
        assert other.pop("interface") == pcap.name
        if row["protocol"] == "udp":
            assert other.pop("close_reason") == "end_of_capture"
            row = {k: v for k, v in row.items() if k != "close_reason"}
        assert {k: v for k, v in row.items() if k != "interface"} == other

    # WireGuard's own per-peer byte counters (ciphertext on gw) against the rows and the packets
    for client, v4, v6 in (
        ("alice", "100.64.0.2", "fd00:64::2"),
        ("bob", "100.64.0.3", "fd00:64::3"),
    ):
        mine = [r for r in rows if r["src_addr"] in (v4, v6)]
        rx_moved, tx_moved = (after[client][i] - before[client][i] for i in (0, 1))
        sizes = wire_sizes(pcap)
        sent = [n for s, _d, n in sizes if s in (v4, v6)]
        received = [n for _s, d, n in sizes if d in (v4, v6)]
        for moved, packets in ((rx_moved, sent), (tx_moved, received)):
            # beyond the IP packets, only keepalives: empty data messages of 32 bytes
            keepalive_bytes = moved - sum(wg_data_bytes(n, mtu) for n in packets)
            assert keepalive_bytes % WG_OVERHEAD_BYTES == 0, (client, keepalive_bytes)
            assert 0 <= keepalive_bytes <= 4 * WG_OVERHEAD_BYTES, (client, keepalive_bytes)
        for moved, key in ((rx_moved, "tx"), (tx_moved, "rx")):
            ip_bytes = sum(r[f"bytes_{key}"] for r in mine)
            packets = sum(r[f"packets_{key}"] for r in mine)
            low = ip_bytes + WG_OVERHEAD_BYTES * packets
            keepalives = 4 * WG_OVERHEAD_BYTES
            assert low <= moved <= low + 15 * packets + keepalives, (client, key, moved, low)


def _epoch(text: str) -> float:
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_kill_9_loses_no_completed_session_and_at_most_one_checkpoint_of_counts(
    tmp_path: Path,
) -> None:
    pcap = tmp_path / "oracle.pcap"
    db = tmp_path / "live.db"
    checkpoint_s, flush_s = 1.0, 0.2
    settings = {**FAST, "timeouts": {**FAST["timeouts"], "udp_idle": 30}}
    with WireguardLab() as lab:
        config = write_config(BASE, tmp_path / "serve.toml", settings, captures=LIVE)
        with (
            lab.capture({pcap: 0}) as stats,
            Serve(lab, config, db, tmp_path, "first") as first,
            Serve(lab, config, db, tmp_path, "second") as second,
        ):
            first.start()
            lab.http_get("alice", RES_V4, 10)
            lab.udp_echo("bob", RES_V4, 5)
            # a long TCP session (and its control connection), until the test ends it
            argv = ["iperf3", "-c", RES_V4, "-p", str(IPERF_PORT), "-t", "0", "-b", "20M"]
            transfer = lab.popen("alice", argv)
            try:
                # mid-way: both connections began over 2 s ago and have checkpointed counts
                wait_until(lambda: _iperf_rows(db, older_than_s=2.0), "iperf3 sessions stored")
                capture_children = _children(first.proc.pid)
                assert capture_children, "serve captures in a child process"
                first.kill()
                killed_ts = time.time()
                second.start()
                resumed = second.status()
                lab.http_get("bob", RES_V4, 5)
                # the transfer goes on after the restart, counted in the rows it resumed
                wait_until(lambda: _iperf_rows(db, seen_after_ts=second.ready_ts), "iperf3 resumed")
            finally:
                transfer.send_signal(signal.SIGINT)  # iperf3 ends its test and connections
                transfer.wait(WAIT_S)

            def tcp_completed(status: dict[str, Any]) -> bool:
                # after linger (0.5 s), the expiry lag (2 s) and a tick
                tcp = [r for r in all_rows(db) if r["protocol"] == "tcp"]
                return status["writer"]["pending"] == 0 and all(
                    r["status"] == "completed" for r in tcp
                )

            second.wait(tcp_completed, WAIT_S, "every TCP session completed")
            assert second.stop() == 0, second.log()
    assert stats.problems() == [] and stats.drops == {pcap: 0}, stats
    assert resumed is not None and resumed["resumed_sessions"] >= 2, resumed
    # the capture process died with the service: no orphan keeps the old ring
    assert not [pid for pid in capture_children if _alive(pid)]

    oracle = tshark_sessions(pcap)
    rows = all_rows(db)
    times = _packet_times(pcap)
    # counts the crashed process may not have checkpointed yet (a checkpoint interval, a
    # flush, a tick of slack), and packets while no serve was running
    unsaved_from = killed_ts - checkpoint_s - flush_s - 1.2
    spanning = 0
    for o in oracle:
        label = f"{o.key} started {o.first_ts:.6f}"
        mine = [
            r
            for r in rows
            if _row_key(r) == o.key and abs(_epoch(r["started_at"]) - o.first_ts) < 1e-3
        ]
        unsaved = sum(1 for k, t in times if k == o.key and unsaved_from <= t <= second.ready_ts)
        if not mine:
            # only a session that began and ended while its opening was not yet durable
            assert o.first_ts >= unsaved_from and o.last_ts <= second.ready_ts, label
            continue
        assert len(mine) == 1, f"{label} recorded {len(mine)} times"
        row = mine[0]
        total, got = o.packets_tx + o.packets_rx, row["packets_tx"] + row["packets_rx"]
        assert total - unsaved <= got <= total, (label, total, got, unsaved)
        # UDP sessions are within their idle timeout (30 s) at the stop: checkpointed, ongoing
        assert row["status"] == ("completed" if o.protocol == "tcp" else "ongoing"), row
        if o.last_ts < unsaved_from - 2.0 or o.first_ts > second.ready_ts:
            # ended well before the kill, or began after the restart: exact
            assert compare_sessions([o], [row]) == [], (o, row)
            assert row["close_reason"] == expected_reason(o) if o.protocol == "tcp" else True
        if o.first_ts < killed_ts - 1 and o.last_ts > second.ready_ts:
            spanning += 1  # counters continued in the same row after the restart
            assert got > 0 and row["close_reason"] == expected_reason(o), (o, row)
    assert spanning >= 2, "iperf3's data and control connections span the kill"
    assert len(rows) == len({(_row_key(r), r["started_at"]) for r in rows})


def _iperf_rows(db: Path, *, older_than_s: float = 0.0, seen_after_ts: float = 0.0) -> bool:
    """True once both iperf3 connections (control and data) are stored as ongoing with
    checkpointed counts, began over `older_than_s` ago, and one was last seen after
    `seen_after_ts` (epoch seconds)."""
    rows = [
        r
        for r in all_rows(db)
        if r["dst_port"] == IPERF_PORT
        and r["status"] == "ongoing"
        and r["packets_tx"] + r["packets_rx"] > 3
    ]
    return (
        len(rows) >= 2
        and all(_epoch(r["started_at"]) < time.time() - older_than_s for r in rows)
        and any(_epoch(r["last_seen_at"]) > seen_after_ts for r in rows)
    )


def _children(pid: int) -> list[int]:
    """PIDs of the direct children of `pid`."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _row_key(r: dict[str, Any]) -> tuple[str, str, int, str, int]:
    return (r["protocol"], r["src_addr"], r["src_port"], r["dst_addr"], r["dst_port"])


def _packet_times(pcap: Path) -> list[tuple[tuple[str, str, int, str, int], float]]:
    """(session key as the initiator wrote it, time) per TCP/UDP packet, both directions."""
    argv = ["tshark", "-r", str(pcap), "-T", "fields", "-E", "separator=|"]
    for f in (
        "frame.time_epoch",
        "ip.src",
        "ipv6.src",
        "ip.dst",
        "ipv6.dst",
        "tcp.srcport",
        "tcp.dstport",
        "udp.srcport",
        "udp.dstport",
    ):
        argv += ["-e", f]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    result = []
    for line in out.splitlines():
        ts, s4, s6, d4, d6, ts1, td1, us1, ud1 = line.split("|")
        proto = "tcp" if ts1 else "udp" if us1 else ""
        if not proto:
            continue
        src, dst = s4 or s6, d4 or d6
        sport, dport = (int(ts1), int(td1)) if ts1 else (int(us1), int(ud1))
        result.append(((proto, src, sport, dst, dport), float(ts)))
        result.append(((proto, dst, dport, src, sport), float(ts)))
    return result


def test_a_locked_store_loses_nothing_and_recovers(tmp_path: Path) -> None:
    pcap = tmp_path / "oracle.pcap"
    db = tmp_path / "live.db"
    lock_s = 8.0  # > checkpoint (1 s) and > the writer's busy timeout (5 s) + a status write
    stalled: dict[str, Any] = {}
    with WireguardLab() as lab:
        config = write_config(BASE, tmp_path / "serve.toml", FAST, captures=LIVE)
        with lab.capture({pcap: 0}) as stats, Serve(lab, config, db, tmp_path) as serve:
            serve.start()
            rss_before = serve.rss_bytes()
            peak_pending = peak_rss = 0
            with contextlib.closing(sqlite3.connect(db, timeout=30)) as other:
                other.execute("BEGIN EXCLUSIVE")  # WAL: every other writer waits
                locked = time.monotonic()
                with background(lab.run_standard_traffic, 0.5):
                    # held lock_s, and until a flush has failed on it (a loaded machine may
                    # start the first flush late)
                    while time.monotonic() - locked < lock_s or not stalled:
                        status = serve.status() or {}
                        writer = status.get("writer") or {}
                        peak_pending = max(peak_pending, writer.get("pending", 0))
                        peak_rss = max(peak_rss, serve.rss_bytes())
                        if writer.get("failed_flushes", 0) >= 1:
                            stalled = status
                        elapsed_s = time.monotonic() - locked
                        assert stalled or elapsed_s < WAIT_S, f"no failed flush: {status}"
                        time.sleep(0.2)
                    other.rollback()
            final = serve.wait(
                lambda s: s["captures"][0]["open_sessions"] == 0 and s["writer"]["pending"] == 0,
                WAIT_S,
                "all sessions written after the stall",
            )
            assert serve.stop() == 0, serve.log()
    assert stats.problems() == [] and stats.drops == {pcap: 0}, stats
    assert stalled["writer"]["failed_flushes"] >= 1, stalled
    assert peak_pending > 0  # sessions waited in memory while the file was locked
    assert peak_rss - rss_before < 64 << 20, (rss_before, peak_rss)
    capture = final["captures"][0]
    assert (capture["kernel_drops"], capture["queue_drops"]) == (0, 0), capture
    assert "store not writable" in serve.log()
    problems = compare_sessions(tshark_sessions(pcap), all_rows(db))
    assert problems == [], "\n".join(problems)


def test_a_store_stalled_beyond_its_bounds_drops_only_counted_packets(tmp_path: Path) -> None:
    pcap = tmp_path / "oracle.pcap"
    db = tmp_path / "live.db"
    tight = {
        **FAST,
        "writer": {"flush_interval": 0.2, "max_pending": 2},
        "service": {"status_interval": 1, "queue_packets": 64},
    }
    # a 1 MiB ring: the stalled pipeline's backlog overflows it, and the kernel counts drops
    captures = [{"interface": "wg0", "ring_mib": 1}]
    with WireguardLab() as lab:
        config = write_config(BASE, tmp_path / "serve.toml", tight, captures=captures)
        with lab.capture({pcap: 0}) as stats, Serve(lab, config, db, tmp_path) as serve:
            serve.start()
            with contextlib.closing(sqlite3.connect(db, timeout=30)) as other:
                other.execute("BEGIN EXCLUSIVE")
                lab.run_standard_traffic(scale=0.3)
                lab.iperf("alice", ["-n", "20M", "-b", "200M"])
                stalled = serve.wait(
                    lambda s: s["captures"][0]["kernel_drops"] > 0, WAIT_S, "drops"
                )
                # logged at the next status interval (1 s)
                wait_until(lambda: "the kernel dropped" in serve.log(), "a log line of drops")
                other.rollback()
            # sessions whose FIN was dropped stay open: the stop checkpoints them
            assert serve.stop() == 0, serve.log()
            final = serve.status()
    assert stats.problems() == [] and stats.drops == {pcap: 0}, stats
    assert final is not None and final["state"] == "stopped"
    capture = final["captures"][0]
    # what the writer process holds is bounded by [writer] max_pending; `pending` also counts
    # the events on their way to it (one message, which it reads once it has room)
    held_by_the_writer = stalled["writer"]["pending"] - stalled["writer"]["in_flight"]
    assert 0 <= held_by_the_writer <= 2, stalled["writer"]
    assert "the kernel dropped" in serve.log()
    # every packet tcpdump saw was either accounted in a row or counted as dropped
    rows = all_rows(db)
    accounted = sum(r["packets_tx"] + r["packets_rx"] for r in rows)
    not_sessions = sum(capture["skipped"].values()) + sum(capture["decode_errors"].values())
    assert capture["queue_drops"] == 0
    assert accounted + not_sessions == capture["packets"]
    assert capture["kernel_packets"] == capture["packets"] + capture["kernel_drops"]
    seen_by_tcpdump = sum(o.packets_tx + o.packets_rx for o in tshark_sessions(pcap))
    assert seen_by_tcpdump + not_sessions == capture["packets"] + capture["kernel_drops"]
    assert capture["kernel_drops"] > 0


def test_wireguard_peers_are_reread_and_new_allowed_ips_attribute_new_sessions(
    tmp_path: Path,
) -> None:
    db = tmp_path / "live.db"
    extra_v4 = "100.64.0.33"  # an address bob's peer gets while serve runs
    with WireguardLab() as lab:
        settings = {**FAST, "wireguard": {"refresh": 1}}
        config = write_config(
            BASE,
            tmp_path / "serve.toml",
            settings,
            captures=LIVE,
            client_keys={"bob-desktop": lab.public_keys["bob"]},
            wireguard=["wg0"],
        )
        with Serve(lab, config, db, tmp_path) as serve:
            serve.start()
            assert _stored_addresses(db, "bob-desktop") == ["100.64.0.3/32", "fd00:64::3/128"]
            allowed = f"100.64.0.3/32,fd00:64::3/128,{extra_v4}/32"
            lab.wg("gw", ["set", "wg0", "peer", lab.public_keys["bob"], "allowed-ips", allowed])
            deadline = time.monotonic() + WAIT_S
            while extra_v4 + "/32" not in _stored_addresses(db, "bob-desktop"):
                assert time.monotonic() < deadline, serve.log()
                time.sleep(0.2)
            # bob sends from the new address: the session is his
            lab.run("bob", ["ip", "addr", "add", f"{extra_v4}/32", "dev", "wg0"])
            lab.run("bob", ["python3", "-c", _UDP_FROM.format(src=extra_v4, dst=RES_V4)])
            serve.wait(lambda s: s["captures"][0]["sessions_opened"] >= 1, WAIT_S, "a session")
            assert serve.stop() == 0, serve.log()
    (row,) = [r for r in all_rows(db) if r["src_addr"] == extra_v4]
    assert (row["client_id"], row["user_id"]) == ("bob-desktop", "bob"), row
    assert "clients with addresses from wireguard peers: bob-desktop" in serve.log()


_UDP_FROM = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{src}", 0))
s.sendto(b"hello", ("{dst}", 5353))
"""


def _stored_addresses(db: Path, client_id: str) -> list[str]:
    import json

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        row = conn.execute("SELECT addresses FROM clients WHERE id = ?", (client_id,)).fetchone()
    return list(json.loads(row[0])) if row else []
