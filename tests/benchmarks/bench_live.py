"""Benchmark: the live service `tunnelacct serve`, on a veth and on a real WireGuard tunnel.

1. inject: serve captures one end of a veth pair (namespaces of its own) while tcpreplay sends
   a generated pcap of Ethernet frames (complete TCP sessions, bulk and short) into the other
   end at rising --pps rates, a fixed packet count per step, a fresh SQLite file each. Per step:
   the rate tcpreplay achieved, packets serve read vs sent, kernel and queue drops, serve's CPU,
   and, after SIGTERM, whether the rows' packets add up to the packets sent.
2. latency: sequential TCP connections across the veth (a server of ours in the capture
   namespace); for each, the time from the client's close() to a `completed` row for its
   5-tuple in SQLite (polled every 10 ms, read-only), with [timeouts] tcp_linger = 0.5.
3. tunnel: tests/helpers/netlab.py's WireguardLab, serve on gw's wg0, unlimited iperf3 TCP
   from alice: throughput without and with serve, wg0 packets/s, serve's CPU, drops.

CPU is utime + stime of the serve process (all threads) over the step's wall time, as % of one
core. Prints its figures and asserts nothing about time (exit 1 only when rows and packets
disagree in a step without drops).

    .venv/bin/python tests/benchmarks/bench_live.py [--rates 100k,200k,top] [--packets 10000000]
        [--skip-lab] [--latency-count 50] [--pin]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.liveserve import (  # noqa: E402
    ROOT,
    BenchError,
    PcapFacts,
    ServeProcess,
    VethPair,
    busy_pct,
    db_totals,
    ensure_tcpreplay,
    machine_busy,
    serve_config,
    started,
    synth_ethernet_pcap,
)
from tests.benchmarks.machine import machine  # noqa: E402
from tests.benchmarks.synth_sessions import session_records  # noqa: E402

LAB_CONFIG = ROOT / "tests" / "data" / "wg-small.toml"
LATENCY_PORT = 8080
LATENCY_LINGER_S = 0.5
STATUS_EVERY_S = 1.0  # serve rewrites its status file this often
# How long a step waits, once serve has read what the kernel kept, for its writer to have
# nothing pending before it stops serve. Stopped with the writer still at [writer] max_pending
# (session-heavy mix, 150k packets/s, 2026-12-07 11:17-11:58 UTC: 4 runs of 6), the stop had
# the queue, the checkpoints of ~250,000 open sessions and 100,000 pending rows to write, and
# ran past [service] shutdown_timeout; the benchmark measures the capture, not that bound.
CATCH_UP_WAIT_S = 180.0  # after the send: at most this long for serve to read and sessionize
WRITER_DRAIN_WAIT_S = 180.0

# In the capture namespace: accept, read the request, answer 4 KiB and close first (HTTP/1.0).
SERVER = """
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=64)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.recv(4096)
        conn.sendall(b"x" * 4096)
"""
# In the sender namespace: one connection at a time; prints its local port and the wall time
# right after close(), then waits for a line on stdin (isolated) or sleeps (paced).
CLIENT = """
import json, socket, sys, time
host, port, count, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
for _ in range(count):
    s = socket.create_connection((host, port), timeout=10)
    local_port = s.getsockname()[1]
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    while s.recv(65536):
        pass
    s.close()
    print(json.dumps([local_port, time.time()]), flush=True)
    if gap < 0:
        sys.stdin.readline()
    else:
        time.sleep(gap)
"""


# -- 1. injection ------------------------------------------------------------------------------


@dataclass
class Step:
    """One tcpreplay rate step and what serve saw of it."""

    label: str
    sent: int = 0
    send_s: float = 0.0
    achieved_pps: float = 0.0
    seen: int = 0
    kernel_packets: int = 0
    kernel_drops: int = 0
    queue_drops: int = 0
    cpu_send_pct: float = 0.0
    cpu_us_per_packet: float = 0.0
    machine_pct: float = 0.0
    catch_up_s: float = 0.0
    drain_s: float = 0.0  # after catching up, until the writer had nothing pending
    max_pending: int = 0
    max_queued: int = 0  # the most packets seen waiting for serve's flow table
    background_pct: float = 0.0
    sessions: int = 0
    rows: int = 0
    row_packets: int = 0
    completed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def zero_drop(self) -> bool:
        return self.kernel_drops == 0 and self.queue_drops == 0 and self.seen == self.sent


def parse_rate(text: str) -> int | None:
    """'300k' -> 300000, '1.2M' -> 1200000, 'top' -> None (tcpreplay --topspeed)."""
    text = text.strip().lower()
    if text in ("top", "topspeed"):
        return None
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def cpu_split(pin: bool) -> tuple[list[str], str | None]:
    """(taskset prefix of tcpreplay, CPUs of serve): CPU 0 sends, the others capture."""
    n = os.cpu_count() or 1
    if not pin or n < 2:
        return [], None
    return ["taskset", "-c", "0"], f"1-{n - 1}"


def inject_step(
    pair: VethPair, pcap: Path, workdir: Path, rate: int | None, index: int, a: argparse.Namespace
) -> Step:
    """One rate: fresh serve and DB, tcpreplay `packets` packets, wait for serve to catch up
    and its writer to drain, SIGTERM, count rows."""
    label = "topspeed" if rate is None else f"{rate:,} pps"
    step = Step(label)
    packets = a.packets
    config = serve_config(
        workdir / f"inject-{index}.toml", pair.receiver_if, first_write_s=a.first_write
    )
    pin_sender, serve_cpus = cpu_split(a.pin)
    with ServeProcess(pair.receiver, config, workdir, f"inject-{index}", cpus=serve_cpus) as serve:
        serve.wait_running()
        # Serve is idle now: whatever keeps the machine busy is someone else's load.
        step.background_pct = busy_pct(STATUS_EVERY_S + 0.2)  # also: a status after start
        if step.background_pct > 5:
            step.notes.append(f"machine {step.background_pct:.0f}% busy before the step")
        before = serve.capture()
        pace = ["--topspeed"] if rate is None else ["--pps", str(rate)]
        replay = ["tcpreplay", "-i", pair.sender_if, "-K", *pace, "--loop", "100000"]
        if a.mix == "sessions":
            replay.append("--unique-ip")  # each loop's sessions are new ones
        argv = pin_sender + pair.exec_argv(
            pair.sender, [*replay, "--limit", str(packets), str(pcap)]
        )
        cpu0, busy0 = serve.cpu_s(), machine_busy()
        with started(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as tr:
            while tr.poll() is None:
                status = serve.status()
                step.max_pending = max(
                    step.max_pending, (status.get("writer") or {}).get("pending", 0)
                )
                captures = status.get("captures") or [{}]
                step.max_queued = max(step.max_queued, captures[0].get("queued_packets", 0))
                time.sleep(0.2)
            out = tr.stdout.read() if tr.stdout else ""
        t1 = time.monotonic()
        cpu1, busy1 = serve.cpu_s(), machine_busy()
        if tr.returncode:
            raise BenchError(f"tcpreplay exited {tr.returncode}: {out}")
        sent = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", out)
        pps = re.search(r"Rated: .*?([\d.]+) pps", out)
        if sent is None or pps is None:
            raise BenchError(f"cannot read tcpreplay's summary: {out}")
        step.sent, step.send_s = int(sent.group(1)), float(sent.group(2))
        step.achieved_pps = float(pps.group(1))
        failed = re.search(r"Failed packets:\s+(\d+)", out)
        if failed and int(failed.group(1)):
            step.notes.append(f"tcpreplay failed to send {failed.group(1)} packets")
        # Caught up: the kernel's count covers every packet sent, serve read all it kept and
        # its flow table has all it read (queued_packets: not on the status file before it)
        deadline = time.monotonic() + CATCH_UP_WAIT_S
        while time.monotonic() < deadline:
            c = serve.capture()
            if (
                c["kernel_packets"] - before["kernel_packets"] >= step.sent
                and c["packets"] + c["kernel_drops"] >= c["kernel_packets"]
                and c.get("queued_packets", 0) == 0
            ):
                break
            time.sleep(0.1)
        else:
            step.notes.append(f"serve had not caught up {CATCH_UP_WAIT_S:g} s after the send")
        t2 = time.monotonic()
        cpu2 = serve.cpu_s()
        step.catch_up_s = max(0.0, t2 - t1 - STATUS_EVERY_S)  # status is up to 1 s old
        # tcpreplay first loads the pcap (-K, serve idles meanwhile): divide by its send time
        step.cpu_send_pct = 100 * (cpu1 - cpu0) / max(step.send_s, 1e-3)
        step.cpu_us_per_packet = 1e6 * (cpu2 - cpu0) / max(step.sent, 1)
        step.machine_pct = 100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
        step.drain_s = wait_writer_drained(serve, step)
        final = serve.stop()
    c = final["captures"][0]
    step.seen = c["packets"] - before["packets"]
    step.kernel_packets = c["kernel_packets"] - before["kernel_packets"]
    step.kernel_drops = c["kernel_drops"] - before["kernel_drops"]
    step.queue_drops = c["queue_drops"] - before["queue_drops"]
    step.sessions = c["sessions_opened"]
    if c.get("decode_errors") or c.get("skipped"):
        step.notes.append(f"decode errors {c['decode_errors']}, skipped {c['skipped']}")
    step.rows, step.row_packets, step.completed = db_totals(serve.db)
    if before["packets"]:
        step.notes.append(f"{before['packets']} packets before the step (not ours)")
    return step


def wait_writer_drained(serve: ServeProcess, step: Step) -> float:
    """Seconds until two status files in a row say serve's writer has nothing pending (at most
    WRITER_DRAIN_WAIT_S; a note says when it never drained)."""
    started_at = time.monotonic()
    empty_since: float | None = None
    while time.monotonic() - started_at < WRITER_DRAIN_WAIT_S:
        pending = (serve.status().get("writer") or {}).get("pending", 0)
        now = time.monotonic()
        if pending:
            empty_since = None
        elif empty_since is None:
            empty_since = now
        elif now - empty_since > STATUS_EVERY_S:
            return empty_since - started_at
        time.sleep(0.2)
    step.notes.append(f"the writer still had rows pending {WRITER_DRAIN_WAIT_S:g} s later")
    return WRITER_DRAIN_WAIT_S


def print_step(s: Step) -> None:
    check = (
        "rows = sent" if s.row_packets == s.sent else f"rows {s.row_packets - s.sent:+,} vs sent"
    )
    print(
        f"RESULT inject {s.label}: sent {s.sent:,} in {s.send_s:.2f} s = {s.achieved_pps:,.0f} pps "
        f"achieved; serve read {s.seen:,} ({s.seen / max(s.sent, 1):.2%}), kernel saw "
        f"{s.kernel_packets:,}, kernel drops {s.kernel_drops:,}, queue drops {s.queue_drops:,}; "
        f"serve CPU {s.cpu_send_pct:.0f}% of a core while sending, {s.cpu_us_per_packet:.2f} "
        f"µs/packet sent incl. catch-up ({s.catch_up_s:.1f} s after the send; the writer "
        f"drained {s.drain_s:.1f} s later); machine "
        f"{s.machine_pct:.0f}% busy; {s.sessions:,} sessions "
        f"({s.sessions / max(s.send_s, 1e-3):,.0f}/s of the send), {s.rows:,} rows "
        f"({s.completed:,} completed), writer pending max {s.max_pending:,}, packets queued "
        f"for the flow table max {s.max_queued:,}; {check}",
        flush=True,
    )
    for note in s.notes:
        print(f"  note: {note}")


def session_heavy_pcap(path: Path, dst_mac: bytes, sessions: int) -> PcapFacts:
    """Issue 21's mix (tests/benchmarks/synth_sessions.py: 60% DNS-like UDP pairs, 40% short
    HTTP) as whole Ethernet frames: each record's IPv4 and UDP/TCP headers behind an Ethernet
    header, zero payload up to its IP total length, the IPv4 checksum right (transport
    checksums 0, as synth_ethernet_pcap's)."""
    records = session_records(sessions)
    ip_header = records["data"][:, :20].copy()
    words = ip_header.view(">u2").astype(np.uint32).sum(axis=1)
    words = (words & 0xFFFF) + (words >> 16)
    words = (words & 0xFFFF) + (words >> 16)
    checksum = (~words & 0xFFFF).astype(">u2")
    ethernet = np.frombuffer(dst_mac + bytes.fromhex("020000000001") + b"\x08\x00", np.uint8)
    frame_bytes = 0
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for first in range(0, len(records), 20_000):
            chunk = records[first : first + 20_000]
            frame_len = 14 + chunk["len"].astype(np.int64)
            width = 16 + int(frame_len.max())
            rows = np.zeros((len(chunk), width), dtype=np.uint8)
            rows[:, 0:4] = chunk["sec"].astype("<u4").view(np.uint8).reshape(-1, 4)
            rows[:, 4:8] = chunk["usec"].astype("<u4").view(np.uint8).reshape(-1, 4)
            rows[:, 8:12] = frame_len.astype("<u4").view(np.uint8).reshape(-1, 4)
            rows[:, 12:16] = frame_len.astype("<u4").view(np.uint8).reshape(-1, 4)
            rows[:, 16:30] = ethernet
            header_bytes = np.minimum(chunk["cap"], chunk["len"]).astype(np.int64)
            headers = chunk["data"].copy()
            headers[:, 10:12] = checksum[first : first + 20_000].view(np.uint8).reshape(-1, 2)
            kept = np.arange(headers.shape[1])[None, :] < header_bytes[:, None]
            rows[:, 30 : 30 + headers.shape[1]] = np.where(kept, headers, 0)
            in_frame = np.arange(width)[None, :] < (16 + frame_len)[:, None]
            out.write(rows[in_frame].tobytes())
            frame_bytes += int(frame_len.sum())
    return PcapFacts(packets=len(records), frame_bytes=frame_bytes, flows=sessions)


def bench_inject(pair: VethPair, workdir: Path, a: argparse.Namespace) -> list[Step]:
    pcap = workdir / "flows.pcap"
    t0 = time.perf_counter()
    if a.mix == "sessions":
        facts = session_heavy_pcap(pcap, pair.receiver_mac, a.mix_sessions)
        what = (
            f"{facts.flows:,} sessions of issue 21's mix (60% DNS-like UDP pairs, 40% short "
            "HTTP; tcpreplay --unique-ip: new addresses, so new sessions, every loop)"
        )
    else:
        facts = synth_ethernet_pcap(
            pcap,
            pair.receiver_mac,
            bulk_flows=a.bulk_flows,
            short_flows=a.short_flows,
            mss=a.mss,
            bulk_segments=a.bulk_segments,
        )
        what = f"{facts.flows:,} TCP sessions ({a.bulk_flows:,} bulk, {a.short_flows:,} short)"
    print(
        f"pcap: {facts.packets:,} Ethernet frames, {what}, mean frame "
        f"{facts.frame_bytes / facts.packets:.0f} bytes, written in "
        f"{time.perf_counter() - t0:.1f} s; "
        f"each step sends {a.packets:,} packets (--loop), serve with default settings"
        + ("" if a.first_write is None else f" but [timeouts] first_write = {a.first_write:g}")
        + ("; tcpreplay pinned to CPU 0, serve to the others" if cpu_split(a.pin)[1] else ""),
        flush=True,
    )
    steps = []
    for i, rate in enumerate(parse_rate(r) for r in a.rates.split(",")):
        step = inject_step(pair, pcap, workdir, rate, i, a)
        print_step(step)
        steps.append(step)
    pcap.unlink()
    return steps


# -- 2. latency --------------------------------------------------------------------------------


def completed_visible(conn: sqlite3.Connection, src: str, sport: int, dst: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sessions WHERE status = 'completed' AND src_addr = ? AND src_port = ?"
        " AND dst_addr = ? AND dst_port = ? LIMIT 1",
        (src, sport, dst, LATENCY_PORT),
    ).fetchone()
    return row is not None


def bench_latency(
    pair: VethPair, workdir: Path, count: int, gap_s: float, flush_interval_s: float | None = None
) -> list[float]:
    """Close-to-completed-row latencies (s); gap_s < 0: wait for each row before the next."""
    name = f"latency-{'isolated' if gap_s < 0 else 'paced'}-{flush_interval_s or 'default'}"
    config = serve_config(
        workdir / f"{name}.toml",
        pair.receiver_if,
        tcp_linger_s=LATENCY_LINGER_S,
        flush_interval_s=flush_interval_s,
    )
    server_argv = pair.exec_argv(
        pair.receiver, [sys.executable, "-c", SERVER, pair.receiver_ip, str(LATENCY_PORT)]
    )
    client_argv = pair.exec_argv(
        pair.sender,
        [sys.executable, "-c", CLIENT, pair.receiver_ip, str(LATENCY_PORT), str(count), str(gap_s)],
    )
    latencies: list[float] = []
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "bufsize": 1}
    with (
        ServeProcess(pair.receiver, config, workdir, name) as serve,
        started(server_argv, stdout=subprocess.PIPE, text=True) as server,
    ):
        serve.wait_running()
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise BenchError("latency server did not start")
        conn = sqlite3.connect(f"file:{serve.db}?mode=ro", uri=True, isolation_level=None)
        try:
            with started(client_argv, **pipes) as client:
                assert client.stdout is not None and client.stdin is not None
                waiting: dict[int, float] = {}
                lines = 0
                while lines < count or waiting:
                    if lines < count and (gap_s >= 0 or not waiting):
                        line = client.stdout.readline()
                        if not line:
                            raise BenchError(f"latency client ended after {lines} connections")
                        port, closed_at = json.loads(line)
                        waiting[port] = closed_at
                        lines += 1
                    for port, closed_at in list(waiting.items()):
                        if completed_visible(conn, pair.sender_ip, port, pair.receiver_ip):
                            latencies.append(time.time() - closed_at)
                            del waiting[port]
                            if gap_s < 0 and lines < count:
                                client.stdin.write("next\n")
                        elif time.time() - closed_at > 30:
                            raise BenchError(f"no completed row for port {port} after 30 s")
                    time.sleep(0.01)
        finally:
            conn.close()
        serve.stop()
    return latencies


def print_latency(what: str, latencies: list[float]) -> None:
    def pcts(xs: list[float]) -> str:
        xs = sorted(xs)
        p95 = xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]
        return (
            f"p50 {statistics.median(xs):.2f} s, p95 {p95:.2f} s, max {xs[-1]:.2f} s, "
            f"min {xs[0]:.2f} s"
        )

    print(
        f"RESULT latency {what} ({len(latencies)} connections): close -> completed row: "
        f"{pcts(latencies)}; minus tcp_linger {LATENCY_LINGER_S} s: "
        f"{pcts([x - LATENCY_LINGER_S for x in latencies])}",
        flush=True,
    )


def bench_latencies(pair: VethPair, workdir: Path, count: int) -> None:
    """Isolated and paced connections with the default flush_interval, paced with 0.1 s.

    Isolated: the tunnel is quiet after each close, so only serve's once-a-second ticker
    expires the session. Paced: later connections' packets move packet time on, so sweeps
    also run from the packet path; the last few connections again wait for the ticker.
    """
    print(
        f"latency: [timeouts] tcp_linger = {LATENCY_LINGER_S} s, [writer] flush_interval = "
        "1.0 s (default) unless said",
        flush=True,
    )
    print_latency(
        "isolated (next connection once the row is seen)", bench_latency(pair, workdir, count, -1)
    )
    print_latency("paced (a connection every 0.1 s)", bench_latency(pair, workdir, count, 0.1))
    print_latency(
        "paced, flush_interval = 0.1 s",
        bench_latency(pair, workdir, count, 0.1, flush_interval_s=0.1),
    )


# -- 3. WireGuard tunnel ---------------------------------------------------------------------


def iperf_json(
    lab: Any, client: str, seconds: int, reverse: bool
) -> tuple[float, float, dict[str, Any]]:
    """One unlimited iperf3 TCP run; returns (received bits/s, wall s, the JSON report)."""
    from tests.helpers.netlab import IPERF_PORT, RES_V4

    argv = ["iperf3", "-c", RES_V4, "-p", str(IPERF_PORT), "-t", str(seconds), "-b", "0", "-J"]
    argv += ["-R"] if reverse else []
    for _ in range(20):
        t0 = time.monotonic()
        done = lab.run(client, argv, check=False, timeout_s=seconds + 60)
        wall = time.monotonic() - t0
        report = json.loads(done.stdout or "{}")
        if done.returncode == 0:
            return float(report["end"]["sum_received"]["bits_per_second"]), wall, report
        if "busy" not in done.stdout:
            raise BenchError(f"iperf3 failed: {done.stdout[-2000:]}{done.stderr}")
        time.sleep(0.5)
    raise BenchError("iperf3 server stayed busy")


def bench_tunnel(workdir: Path, seconds: int) -> None:
    from tests.helpers.netlab import WireguardLab

    ok, why = WireguardLab.available()
    if not ok:
        print(f"SKIPPED tunnel: {why}")
        return
    with WireguardLab() as lab:
        for reverse in (False, True):
            bps, _, _ = iperf_json(lab, "alice", seconds, reverse)
            what = "res -> alice (-R)" if reverse else "alice -> res"
            print(f"RESULT tunnel without serve: {what} {bps / 1e6:,.0f} Mbit/s", flush=True)
        config = serve_config(workdir / "tunnel.toml", "wg0", base=LAB_CONFIG.read_text())
        gw = lab.netns("gw")
        with ServeProcess(
            gw, config, workdir, "tunnel", popen=lambda argv, **kw: lab.popen("gw", argv, **kw)
        ) as serve:
            serve.wait_running()
            for reverse in (False, True):
                time.sleep(STATUS_EVERY_S + 0.2)
                before, cpu0, busy0 = serve.capture(), serve.cpu_s(), machine_busy()
                bps, wall, report = iperf_json(lab, "alice", seconds, reverse)
                cpu1, busy1 = serve.cpu_s(), machine_busy()
                time.sleep(STATUS_EVERY_S + 0.2)  # the status file then covers the whole run
                after = serve.capture()
                packets = after["packets"] - before["packets"]
                duration = float(report["end"]["sum_received"]["seconds"])
                what = "res -> alice (-R)" if reverse else "alice -> res"
                print(
                    f"RESULT tunnel with serve on {gw}:wg0: {what} {bps / 1e6:,.0f} Mbit/s; "
                    f"wg0 {packets:,} packets = {packets / duration:,.0f} packets/s; serve CPU "
                    f"{100 * (cpu1 - cpu0) / wall:.0f}% of a core; machine "
                    f"{100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1):.0f}% busy; "
                    f"kernel drops {after['kernel_drops'] - before['kernel_drops']:,}, "
                    f"queue drops {after['queue_drops'] - before['queue_drops']:,}",
                    flush=True,
                )
            final = serve.stop()
        rows, row_packets, _ = db_totals(serve.db)
        c = final["captures"][0]
        print(
            f"tunnel: serve read {c['packets']:,} packets in all, rows hold {row_packets:,} "
            f"packets in {rows} sessions (the rest: not TCP/UDP {c['skipped']})"
        )


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    """Run the steps chosen by the flags; returns 1 when rows and packets disagree."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--rates",
        default="100k,200k,250k,300k,400k,600k,top",
        help="tcpreplay --pps steps, comma-separated; 'top' = --topspeed",
    )
    ap.add_argument(
        "--packets",
        type=int,
        default=10_000_000,
        help="packets sent per rate step; short steps hide a deficit in serve's "
        "buffers (262,144 queued packets, the 64 MiB ring)",
    )
    ap.add_argument("--bulk-flows", type=int, default=3000, help="bulk TCP sessions in the pcap")
    ap.add_argument("--short-flows", type=int, default=5000, help="short TCP sessions in the pcap")
    ap.add_argument(
        "--bulk-segments",
        type=int,
        default=80,
        help="a bulk session sends 10 to this many full segments",
    )
    ap.add_argument("--mss", type=int, default=1448, help="TCP payload of a full segment")
    ap.add_argument(
        "--mix",
        choices=["tcp", "sessions"],
        default="tcp",
        help="tcp: --bulk-flows and --short-flows; sessions: issue 21's session-heavy mix",
    )
    ap.add_argument(
        "--mix-sessions", type=int, default=100_000, help="sessions in the --mix sessions pcap"
    )
    ap.add_argument("--latency-count", type=int, default=50, help="connections per latency run")
    ap.add_argument("--iperf-seconds", type=int, default=10)
    ap.add_argument(
        "--pin", action="store_true", help="tcpreplay on CPU 0 and serve on the others (taskset)"
    )
    ap.add_argument(
        "--first-write",
        type=float,
        default=None,
        help="serve's [timeouts] first_write in the inject steps (default: serve's own)",
    )
    ap.add_argument("--skip-inject", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--skip-lab", action="store_true", help="no WireGuard tunnel step")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root: network namespaces and AF_PACKET capture")
        return 2

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: namespaces, our PIDs

    signal.signal(signal.SIGTERM, terminate)
    print(f"machine: {machine()}; kernel {os.uname().release}", flush=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        workdir = Path(tmp)
        try:
            if not (a.skip_inject and a.skip_latency):
                with VethPair(f"tab{os.getpid()}") as pair:
                    if not a.skip_inject:
                        ensure_tcpreplay()
                        version = subprocess.run(
                            ["tcpreplay", "--version"], capture_output=True, text=True, check=False
                        )
                        print((version.stdout + version.stderr).splitlines()[0])
                        steps = bench_inject(pair, workdir, a)
                        good = [s for s in steps if s.zero_drop]
                        best = max(good, key=lambda s: s.achieved_pps, default=None)
                        print(
                            "RESULT inject: highest rate with zero drops: "
                            + (
                                f"{best.label} ({best.achieved_pps:,.0f} pps achieved)"
                                if best
                                else "none"
                            )
                        )
                        for s in good:
                            if s.row_packets != s.sent:
                                failed = True
                                print(
                                    f"MISMATCH {s.label}: rows hold {s.row_packets:,} "
                                    f"packets, {s.sent:,} were sent"
                                )
                        if good and not failed:
                            print(
                                f"CHECK rows = packets sent in every zero-drop step "
                                f"({len(good)} of {len(steps)})"
                            )
                    if not a.skip_latency:
                        bench_latencies(pair, workdir, a.latency_count)
            if not a.skip_lab:
                bench_tunnel(workdir, a.iperf_seconds)
        except KeyboardInterrupt:
            print("interrupted: cleaned up")
            return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
