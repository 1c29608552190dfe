"""LiveSource on real interfaces, checked against tcpdump and tshark (no mocks)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netlab import LineReader, WireguardLab, wait_written
from tests.helpers.oracle import tshark_sessions
from tests.helpers.waiting import WAIT_S
from tunnelacct.capture.live import LiveSource
from tunnelacct.errors import CaptureError

ROOT = Path(__file__).resolve().parent.parent
# each skips when the machine lacks it, or under CI fails (tests/helpers/needs.py)
needs_root = pytest.mark.usefixtures("require_root")  # AF_PACKET capture: root or CAP_NET_RAW
IPV6_EXTENSION_HEADERS = (0, 43, 44, 60)
PR_CAPBSET_DROP, CAP_NET_RAW = 24, 13  # <linux/prctl.h>, <linux/capability.h>
Spawn = Callable[..., "subprocess.Popen[Any]"]

TRAFFIC = """
import socket, struct
def icmp_echo(family, proto, kind, dst):
    with socket.socket(family, socket.SOCK_RAW, proto) as s:
        for seq in range(3):
            body = struct.pack("!BBHHH", kind, 0, 0, 0x77, seq) + b"p" * 1000
            if family == socket.AF_INET:  # the kernel computes the ICMPv6 checksum, not this one
                total = sum(struct.unpack("!%dH" % (len(body) // 2), body))
                while total >> 16:
                    total = (total & 0xFFFF) + (total >> 16)
                body = body[:2] + struct.pack("!H", ~total & 0xFFFF) + body[4:]
            s.sendto(body, (dst, 0))
icmp_echo(socket.AF_INET, socket.IPPROTO_ICMP, 8, "10.77.0.2")
icmp_echo(socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, "fd77::2")
for family, dst in ((socket.AF_INET, "10.77.0.2"), (socket.AF_INET6, "fd77::2")):
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        for size in (10, 1200, 3000):  # 3000 bytes: IP fragments, each still TCP/UDP
            s.sendto(b"u" * size, (dst, 9))
    try:
        socket.create_connection((dst, 9), timeout=5).close()
    except ConnectionRefusedError:
        pass  # SYN answered by RST
"""


def wanted(packet: bytes) -> bool:
    """The filter's contract from the IP header: TCP/UDP (IPv6: or an extension header)."""
    version = packet[0] >> 4
    if version == 4:
        return packet[9] in (6, 17)
    return version == 6 and packet[6] in (6, 17, *IPV6_EXTENSION_HEADERS)


def from_test(packet: bytes) -> bool:
    """Sent by the test's sockets (10.77.0.0/24, fd77::/64), not by the kernel on its own."""
    if packet[0] >> 4 == 4:
        return packet[12:15] == bytes([10, 77, 0])
    return packet[8:10] == b"\xfd\x77"


def link_local(data: bytes) -> bool:
    """An IPv6 packet from fe80::/10 (the kernel's neighbour and multicast chatter)."""
    return data[0] >> 4 == 6 and data[8] == 0xFE and data[9] & 0xC0 == 0x80


def read_records(pcap: Path, *, link_bytes: int = 0) -> list[tuple[bytes, int, float]]:
    """(bytes from the IP header, length on the wire from the IP header, ts) of each record."""
    raw = pcap.read_bytes()
    order, tick = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\x4d\x3c\xb2\xa1": ("<", 1e-9)}[raw[:4]]
    out, off = [], 24
    while off + 16 <= len(raw):
        sec, frac, caplen, wirelen = struct.unpack_from(order + "IIII", raw, off)
        data = raw[off + 16 + link_bytes : off + 16 + caplen]
        out.append((data, wirelen - link_bytes, sec + frac * tick))
        off += 16 + caplen
    return out


def in_netns(netns: str) -> Spawn:
    """Start argv inside `netns` (`ip netns exec` execs in place: the PID is the program)."""
    return lambda argv, **kwargs: subprocess.Popen(["ip", "netns", "exec", netns, *argv], **kwargs)


def start_live(spawn: Spawn, iface: str, out: Path, snaplen: int) -> subprocess.Popen[str]:
    """tests/helpers/livecap.py via `spawn`, once its socket is bound (stdout: a stats line)."""
    argv = [
        sys.executable,
        "-m",
        "tests.helpers.livecap",
        iface,
        str(out),
        "--snaplen",
        str(snaplen),
    ]
    log = out.with_suffix(".log").open("w")
    proc: subprocess.Popen[str] = spawn(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True
    )
    log.close()
    ready = out.with_name(out.name + ".ready")
    deadline = time.monotonic() + WAIT_S
    while not ready.exists():
        assert proc.poll() is None, f"live capture exited: {out.with_suffix('.log').read_text()}"
        assert time.monotonic() < deadline, f"live capture not ready after {WAIT_S:g} s"
        time.sleep(0.05)
    return proc


def stop_live(proc: subprocess.Popen[str]) -> dict[str, int]:
    """SIGTERM the capture PID, wait for it to drain the ring, return its stats line."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, f"live capture exited {proc.returncode}"
    stats: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return stats


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.usefixtures("require_lab", "require_tshark")
def test_wg0_capture_matches_tcpdump_packet_for_packet(tmp_path: Path) -> None:
    live_pcap, dump_pcap = tmp_path / "live.pcap", tmp_path / "tcpdump.pcap"
    with WireguardLab() as lab:
        live = start_live(partial(lab.popen, "gw"), "wg0", live_pcap, 96)
        try:
            with lab.capture({dump_pcap: 96}) as cap:
                lab.run_standard_traffic(scale=0.2)
        finally:
            stats = stop_live(live)
    assert cap.problems() == []
    all_captured = read_records(live_pcap)
    assert stats == {"written": len(all_captured), "packets": len(all_captured), "drops": 0}
    # The kernel's own IPv6 link-local reports (MLD, kept by the filter for their hop-by-hop
    # header) may fall before tcpdump started: compare the lab's traffic only.
    dumped = [r for r in read_records(dump_pcap) if wanted(r[0]) and not link_local(r[0])]
    captured = [r for r in all_captured if not link_local(r[0])]
    assert len(captured) == len(dumped) > 1000
    assert all(len(data) <= 96 for data, _, _ in captured)
    # The same packets: identical first 96 bytes and wire length, each seen exactly once.
    assert Counter(r[:2] for r in captured) == Counter(r[:2] for r in dumped)
    live_sessions, dump_sessions = tshark_sessions(live_pcap), tshark_sessions(dump_pcap)
    assert live_sessions
    untimed = [dataclasses.replace(s, first_ts=0.0, last_ts=0.0) for s in live_sessions]
    assert untimed == [dataclasses.replace(s, first_ts=0.0, last_ts=0.0) for s in dump_sessions]
    for ours, theirs in zip(live_sessions, dump_sessions, strict=True):
        assert abs(ours.first_ts - theirs.first_ts) < 0.01, (ours, theirs)


@contextlib.contextmanager
def veth_pair(prefix: str) -> Iterator[tuple[str, str]]:
    """Namespaces (sender, receiver) joined by a veth: 10.77.0.1-2/24, fd77::1-2/64."""
    sender, receiver = f"{prefix}tx", f"{prefix}rx"
    made: list[str] = []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    try:
        for ns in (sender, receiver):
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", sender, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ip("-n", sender, "link", "set", "v1", "netns", receiver)
        for ns, dev, n in ((sender, "v0", 1), (receiver, "v1", 2)):
            ip("-n", ns, "addr", "add", f"10.77.0.{n}/24", "dev", dev)
            ip("-n", ns, "-6", "addr", "add", f"fd77::{n}/64", "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
        yield sender, receiver
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@needs_root
@pytest.mark.usefixtures("require_tcpdump")
def test_filter_keeps_only_tcp_udp_cut_to_snaplen_on_ethernet(tmp_path: Path) -> None:
    snaplen = 64
    live_pcap, dump_pcap = tmp_path / "live.pcap", tmp_path / "all.pcap"
    with veth_pair(f"tl{os.getpid()}") as (sender, receiver):
        live = start_live(in_netns(receiver), "v1", live_pcap, snaplen)
        argv = ["ip", "netns", "exec", receiver, "tcpdump", "-i", "v1", "-s", "0", "-U", "-n"]
        dump = subprocess.Popen(
            [*argv, "-Z", "root", "-w", str(dump_pcap)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert dump.stderr is not None
        reader = LineReader(dump.stderr, "listening on")
        reader.start()
        try:
            assert reader.seen.wait(WAIT_S), "".join(reader.lines)
            subprocess.run(
                ["ip", "netns", "exec", sender, sys.executable, "-c", TRAFFIC],
                check=True,
                timeout=30,
            )
            wait_written(dump, reader, 1.0, "tcpdump on v1")
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(WAIT_S)
            reader.join(WAIT_S)
            dump.stderr.close()
            stats = stop_live(live)
    everything = read_records(dump_pcap, link_bytes=14)  # Ethernet header: 14 bytes
    captured = read_records(live_pcap)
    assert {data[9] for data, _, _ in everything if data[0] >> 4 == 4} >= {1, 6, 17}  # has ICMP
    assert all(wanted(data) for data, _, _ in captured)
    # Our traffic only: the kernel's own MLD reports (hop-by-hop header, so kept by the filter)
    # from fe80:: may go out before either capture starts.
    expected = [(d[:snaplen], n) for d, n, _ in everything if wanted(d) and from_test(d)]
    got = Counter((d, n) for d, n, _ in captured if from_test(d))
    assert got == Counter(expected)
    protocols = {data[9] if data[0] >> 4 == 4 else data[6] for data, _, _ in captured}
    assert {6, 17, 44} <= protocols <= {6, 17, *IPV6_EXTENSION_HEADERS}  # 44: IPv6 fragments
    v4_offsets = [int.from_bytes(d[6:8]) & 0x1FFF for d, _, _ in captured if d[0] >> 4 == 4]
    assert any(v4_offsets), "no IPv4 non-first fragment of the 3000-byte datagram"
    assert all(len(data) == min(snaplen, wirelen) for data, wirelen, _ in captured)
    assert any(wirelen > snaplen for _, wirelen, _ in captured)
    # Every packet read was written, none dropped. The kernel's count may exceed it by its own
    # IPv6 multicast reports on this veth (seen ~1 run in 5, not from the test's traffic, which
    # is checked packet for packet above); the wg0 test checks the counts for equality.
    assert stats["written"] == len(captured) and stats["drops"] == 0
    assert len(captured) <= stats["packets"] <= len(captured) + 2


@needs_root
def test_missing_interface_raises_capture_error_naming_it() -> None:
    with pytest.raises(CaptureError, match=r"^capture on wg9: no such interface$") as caught:
        LiveSource("wg9")
    assert caught.value.interface == "wg9"


def drop_cap_net_raw() -> None:
    """In the child before exec: drop CAP_NET_RAW from the bounding set, so even root lacks it."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_RAW)")


@needs_root
def test_capture_without_cap_net_raw_raises_permission_denied() -> None:
    code = (
        "from tunnelacct.errors import CaptureError\n"
        "from tunnelacct.capture.live import LiveSource\n"
        "try:\n    LiveSource('lo')\nexcept CaptureError as e:\n    print(e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=drop_cap_net_raw,
    )
    assert done.stdout.strip() == "capture on lo: permission denied (needs root or CAP_NET_RAW)", (
        done.stderr
    )


@needs_root
def test_close_is_idempotent_and_use_after_close_raises() -> None:
    source = LiveSource("lo", block_size=1 << 16, block_count=2)
    source.read_batch(0.0)  # whatever lo carried: must not fail
    source.close()
    source.close()
    with pytest.raises(CaptureError, match="closed"):
        source.read_batch(0.1)


@needs_root
def test_deleting_the_interface_mid_capture_raises_capture_error() -> None:
    code = (
        "import subprocess\n"
        "from tunnelacct.errors import CaptureError\n"
        "from tunnelacct.capture.live import LiveSource\n"
        "with LiveSource('v1') as source:\n"
        "    subprocess.run(['ip', 'link', 'del', 'v1'], check=True)\n"
        "    try:\n        source.read_batch(5.0)\n"
        "    except CaptureError as e:\n        print(e)\n"
    )
    with veth_pair(f"tg{os.getpid()}") as (_sender, receiver):
        done = subprocess.run(
            ["ip", "netns", "exec", receiver, sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.stdout.strip() == "capture on v1: interface went down or was deleted", done.stderr
