"""FlowTable through real capture bytes: scapy packets -> pcap -> open_capture -> decode -> table.

The oracle is scapy's reading of each packet (IP total length, L4 payload, who sent it) summed
per direction, never numbers the table produced earlier.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import tempfile
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, fragment6
from scapy.packet import Packet, Raw

from tests.helpers.pcapwrite import DEFAULT_SNAPLEN, LINKTYPE_RAW, write_pcap
from tunnelacct.capture.batch import RawBatch
from tunnelacct.capture.decode import decode
from tunnelacct.capture.pcapfile import open_capture
from tunnelacct.config.model import Timeouts
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.sessions import flowtable
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.sessions.flowkey import community_id
from tunnelacct.sessions.flowtable import FlowTable

T0 = Decimal(1_700_000_000)
TIMEOUTS = Timeouts(udp_idle_s=30.0, tcp_idle_s=120.0, tcp_linger_s=5.0, checkpoint_s=30.0)

CLIENT4, CLIENT4_B, CLIENT6 = "100.64.0.2", "100.64.0.3", "fd00:64::2"
SERVER4, SERVER6 = "10.99.0.5", "fd00:99::5"


def ip_int(text: str) -> int:
    return int(ipaddress.ip_address(text))


CLIENT_ADDRS = {(4, ip_int(CLIENT4)), (4, ip_int(CLIENT4_B)), (6, ip_int(CLIENT6))}


def is_client(family: int, addr: int) -> bool:
    """Tunnel addresses of the test's clients."""
    return (family, addr) in CLIENT_ADDRS


def attribute(family: int, src: int, dst: int, dport: int, proto: IpProto) -> Attribution:
    """A client when the initiator is one, a resource named after protocol and port."""
    client = "alice" if (family, src) in CLIENT_ADDRS else None
    return Attribution(org_id="acme", client_id=client, resource_id=f"{proto.label}/{dport}")


def new_table(timeouts: Timeouts = TIMEOUTS) -> FlowTable:
    return FlowTable(timeouts, attribute=attribute, is_client=is_client)


# -- packets -----------------------------------------------------------------------------------


def ip_layer(src: str, dst: str) -> Packet:
    return IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)


@dataclass
class Tcp:
    """One TCP conversation between a client and a server port, with running seq/ack."""

    client: str
    server: str
    cport: int
    sport: int
    cseq: int = 1000
    sseq: int = 70000

    def seg(self, from_client: bool, flags: str, data: bytes = b"") -> Packet:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        sp, dp = (self.cport, self.sport) if from_client else (self.sport, self.cport)
        seq, ack = (self.cseq, self.sseq) if from_client else (self.sseq, self.cseq)
        pkt = ip_layer(src, dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack)
        if data:
            pkt = pkt / Raw(data)
        used = len(data) + ("S" in flags) + ("F" in flags)
        if from_client:
            self.cseq += used
        else:
            self.sseq += used
        return pkt

    def syn(self) -> Packet:
        return self.seg(True, "S")

    def handshake(self) -> list[Packet]:
        return [self.syn(), self.seg(False, "SA"), self.seg(True, "A")]

    def request(self, n: int) -> list[Packet]:
        return [self.seg(True, "PA", b"c" * n), self.seg(False, "A")]

    def response(self, n: int) -> list[Packet]:
        return [self.seg(False, "PA", b"s" * n), self.seg(True, "A")]

    def close(self, client_first: bool = True) -> list[Packet]:
        """FIN, ACK, FIN, last ACK."""
        a = client_first
        return [self.seg(a, "FA"), self.seg(not a, "A"), self.seg(not a, "FA"), self.seg(a, "A")]

    def simultaneous_close(self) -> list[Packet]:
        return [
            self.seg(True, "FA"),
            self.seg(False, "FA"),
            self.seg(True, "A"),
            self.seg(False, "A"),
        ]


def udp(src: str, dst: str, sport: int, dport: int, n: int) -> Packet:
    return ip_layer(src, dst) / UDP(sport=sport, dport=dport) / Raw(b"u" * n)


Timed = tuple[Decimal, Packet]


def timed(start: Decimal | float, pkts: Sequence[Packet], gap: str = "0.001") -> list[Timed]:
    t = Decimal(start)
    return [(t + i * Decimal(gap), p) for i, p in enumerate(pkts)]


# -- oracle ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """scapy's reading of one packet as it lies in the capture."""

    src: str
    ip_bytes: int
    payload_bytes: int
    l4: bool  # a TCP or UDP packet (or a fragment of one)


def seen(p: Packet) -> Seen:
    raw = bytes(p)
    if raw[0] >> 4 == 4:
        ip = IP(raw)
        ip_bytes, l4 = ip.len, ip.proto in (6, 17)
        later = ip.frag > 0
    else:
        ip = IPv6(raw)
        ip_bytes = ip.plen + 40
        frag = ip.getlayer(IPv6ExtHdrFragment)
        later = frag is not None and frag.offset > 0
        l4 = TCP in ip or UDP in ip or (frag is not None and frag.nh in (6, 17))
    if later:
        payload = len(ip.payload) if ip.version == 4 else len(ip[IPv6ExtHdrFragment].payload)
    elif TCP in ip or UDP in ip:
        payload = len(ip[TCP].payload) if TCP in ip else len(ip[UDP].payload)
    else:
        payload = 0
    return Seen(ip.src, ip_bytes, payload, l4)


def direction_totals(pkts: Sequence[Packet], initiator: str) -> dict[str, int]:
    """Counters of a session as scapy sees its packets: tx = sent by `initiator`."""
    out = dict.fromkeys(
        (
            "packets_tx",
            "bytes_tx",
            "payload_bytes_tx",
            "packets_rx",
            "bytes_rx",
            "payload_bytes_rx",
        ),
        0,
    )
    for p in pkts:
        s = seen(p)
        d = "tx" if ipaddress.ip_address(s.src) == ipaddress.ip_address(initiator) else "rx"
        out[f"packets_{d}"] += 1
        out[f"bytes_{d}"] += s.ip_bytes
        out[f"payload_bytes_{d}"] += s.payload_bytes
    return out


def counters(ev: SessionEvent) -> dict[str, int]:
    return {
        k: getattr(ev, k)
        for k in (
            "packets_tx",
            "bytes_tx",
            "payload_bytes_tx",
            "packets_rx",
            "bytes_rx",
            "payload_bytes_rx",
        )
    }


# -- running captures through the table --------------------------------------------------------


@dataclass
class Run:
    closed: list[SessionEvent]
    table: FlowTable


def read_raw(path: Path) -> list[RawBatch]:
    return list(open_capture(path).batches())


def split_raw(raw: RawBatch, sizes: Sequence[int]) -> list[RawBatch]:
    """Cut one RawBatch into consecutive batches of the given sizes (the rest in the last)."""
    out, i = [], 0
    for n in [*sizes, len(raw)]:
        j = min(len(raw), i + n)
        if j > i:
            out.append(
                RawBatch(
                    raw.buf,
                    raw.offsets[i:j],
                    raw.caplens[i:j],
                    raw.wirelens[i:j],
                    raw.ts[i:j],
                    raw.linktypes[i:j],
                    raw.interface,
                )
            )
        i = j
    return out


def feed(batches: Sequence[RawBatch], timeouts: Timeouts = TIMEOUTS, end: bool = True) -> Run:
    table = new_table(timeouts)
    events: list[SessionEvent] = []
    for raw in batches:
        events += table.process(decode(raw))
    if end:
        events += table.close_all(CloseReason.END_OF_CAPTURE)
    return Run([e for e in events if e.kind is EventKind.CLOSED], table)


def write(path: Path, pkts: Sequence[Timed], snaplen: int = DEFAULT_SNAPLEN) -> Path:
    return write_pcap(path, [(t, bytes(p)) for t, p in pkts], LINKTYPE_RAW, snaplen=snaplen)


def run_capture(
    tmp_path: Path, pkts: Sequence[Timed], timeouts: Timeouts = TIMEOUTS, end: bool = True
) -> Run:
    return feed(read_raw(write(tmp_path / "cap.pcap", pkts)), timeouts, end)


def only(events: list[SessionEvent]) -> SessionEvent:
    assert len(events) == 1, events
    return events[0]


# -- TCP state machine -------------------------------------------------------------------------


def test_handshake_data_and_fin_both_ways_is_one_session_with_ip_lengths_each_way(
    tmp_path: Path,
) -> None:
    c = Tcp(CLIENT4, SERVER4, 40000, 443)
    pkts = [*c.handshake(), *c.request(517), *c.response(1400), *c.response(90), *c.close()]
    ev = only(run_capture(tmp_path, timed(T0, pkts)).closed)
    assert ev.close_reason is CloseReason.FIN
    assert (ev.src_addr, ev.src_port, ev.dst_addr, ev.dst_port) == (CLIENT4, 40000, SERVER4, 443)
    assert not ev.midstream
    assert counters(ev) == direction_totals(pkts, CLIENT4)
    assert ev.payload_bytes_tx == 517 and ev.payload_bytes_rx == 1490
    assert ev.started_ts == float(T0)
    assert ev.ended_ts == pytest.approx(float(T0) + (len(pkts) - 1) * 0.001, abs=1e-6)


def test_headers_only_capture_gives_the_same_sessions_as_a_full_one(tmp_path: Path) -> None:
    c = Tcp(CLIENT4, SERVER4, 40012, 443)
    tcp = [*c.handshake(), *c.request(1300), *c.response(1400), *c.close()]
    dns = [udp(CLIENT6, SERVER6, 5300, 53, 900), udp(SERVER6, CLIENT6, 53, 5300, 1200)]
    pkts = timed(T0, tcp) + timed(T0 + 1, dns)
    full = feed(read_raw(write(tmp_path / "full.pcap", pkts)))
    heads = feed(read_raw(write(tmp_path / "heads.pcap", pkts, snaplen=96)))
    assert [counters(e) for e in heads.closed] == [counters(e) for e in full.closed]
    by_src = {e.src_addr: e for e in heads.closed}
    assert counters(by_src[CLIENT4]) == direction_totals(tcp, CLIENT4)
    assert counters(by_src[CLIENT6]) == direction_totals(dns, CLIENT6)


def test_a_half_closed_connection_stays_one_session_until_the_second_fin(tmp_path: Path) -> None:
    # Issue 15, item 16: the client sends its FIN, the server goes on sending for longer than
    # the linger, then sends its own FIN. "Any FIN closes" would split this into two sessions.
    c = Tcp(CLIENT4, SERVER4, 40030, 443)
    start = [*c.handshake(), *c.request(120), c.seg(True, "FA"), c.seg(False, "A")]
    linger = Decimal(str(TIMEOUTS.tcp_linger_s))
    pkts = timed(T0, start)
    for i in range(1, 5):  # each response well beyond the linger after the client's FIN
        pkts += timed(T0 + i * 2 * linger, c.response(1000 + i))
    tail = [c.seg(False, "FA"), c.seg(True, "A")]
    pkts += timed(T0 + 10 * linger, tail)
    run = run_capture(tmp_path, pkts, end=False)
    assert run.closed == [] and len(run.table) == 1  # open until the second FIN and its linger
    last = float(pkts[-1][0])
    ev = only(run.table.advance(last + TIMEOUTS.tcp_linger_s + 1))
    assert ev.close_reason is CloseReason.FIN and not ev.midstream
    assert counters(ev) == direction_totals([p for _, p in pkts], CLIENT4)
    assert ev.ended_ts == last


def test_rst_closes_the_session_with_reason_rst(tmp_path: Path) -> None:
    c = Tcp(CLIENT4, SERVER4, 40001, 443)
    pkts = [*c.handshake(), *c.request(100), c.seg(False, "R")]
    ev = only(run_capture(tmp_path, timed(T0, pkts)).closed)
    assert ev.close_reason is CloseReason.RST
    assert counters(ev) == direction_totals(pkts, CLIENT4)


def test_rst_closed_session_ends_after_the_linger_via_advance(tmp_path: Path) -> None:
    c = Tcp(CLIENT4, SERVER4, 40001, 443)
    pkts = timed(T0, [*c.handshake(), c.seg(True, "RA")])
    run = run_capture(tmp_path, pkts, end=False)
    assert run.closed == []
    last = float(pkts[-1][0])
    assert run.table.advance(last + TIMEOUTS.tcp_linger_s - 1) == []
    ev = only(run.table.advance(last + TIMEOUTS.tcp_linger_s + 1))
    assert ev.close_reason is CloseReason.RST


def test_simultaneous_close_is_one_session_closed_by_fin(tmp_path: Path) -> None:
    c = Tcp(CLIENT6, SERVER6, 40002, 22)
    pkts = [*c.handshake(), *c.request(40), *c.simultaneous_close()]
    ev = only(run_capture(tmp_path, timed(T0, pkts)).closed)
    assert ev.close_reason is CloseReason.FIN
    assert counters(ev) == direction_totals(pkts, CLIENT6)


def test_retransmitted_syn_with_the_same_seq_stays_one_session(tmp_path: Path) -> None:
    c = Tcp(CLIENT4, SERVER4, 40003, 443)
    syn = c.syn()
    retransmit = syn.copy()
    assert retransmit[TCP].seq == syn[TCP].seq
    pkts = [
        syn,
        retransmit,
        retransmit.copy(),
        c.seg(False, "SA"),
        c.seg(True, "A"),
        *c.request(10),
        *c.close(),
    ]
    # the retransmits follow the 1 s / 2 s backoff of a real stack
    times = [T0, T0 + 1, T0 + 3] + [T0 + 3 + Decimal("0.01") * i for i in range(1, len(pkts) - 2)]
    ev = only(run_capture(tmp_path, list(zip(times, pkts, strict=True))).closed)
    assert ev.close_reason is CloseReason.FIN
    assert ev.packets_tx == sum(1 for p in pkts if p[IP].src == CLIENT4)
    assert counters(ev) == direction_totals(pkts, CLIENT4)


def test_syn_after_a_completed_close_on_the_same_five_tuple_opens_a_second_session(
    tmp_path: Path,
) -> None:
    first = Tcp(CLIENT4, SERVER4, 40004, 443)
    s1 = [*first.handshake(), *first.request(200), *first.close()]
    second = Tcp(CLIENT4, SERVER4, 40004, 443, cseq=9_000_000, sseq=123)  # port reuse
    s2 = [*second.handshake(), *second.response(700), *second.close(client_first=False)]
    pkts = timed(T0, s1) + timed(T0 + 1, s2)  # inside the linger of the first
    closed = run_capture(tmp_path, pkts).closed
    assert len(closed) == 2
    a, b = sorted(closed, key=lambda e: e.started_ts)
    assert (a.close_reason, b.close_reason) == (CloseReason.FIN, CloseReason.FIN)
    assert not a.midstream and not b.midstream
    assert a.session_id != b.session_id
    assert counters(a) == direction_totals(s1, CLIENT4)
    assert counters(b) == direction_totals(s2, CLIENT4)
    assert b.started_ts == float(T0 + 1)


def test_port_reuse_within_one_microsecond_gives_each_session_its_own_id(tmp_path: Path) -> None:
    # Issue 15: ids made from 5-tuple and start time made these two sessions one row.
    first = Tcp(CLIENT4, SERVER4, 40020, 443)
    s1 = [*first.handshake(), *first.request(300), first.seg(False, "R")]
    second = Tcp(CLIENT4, SERVER4, 40020, 443, cseq=5_000_000, sseq=77)
    s2 = [*second.handshake(), *second.response(900), *second.close()]
    pkts = [(T0, p) for p in [*s1, *s2]]  # one timestamp: everything within a microsecond
    closed = run_capture(tmp_path, pkts).closed
    assert len(closed) == 2
    by_reason = {e.close_reason: e for e in closed}
    assert by_reason[CloseReason.RST].started_ts == by_reason[CloseReason.FIN].started_ts
    assert by_reason[CloseReason.RST].session_id != by_reason[CloseReason.FIN].session_id
    assert counters(by_reason[CloseReason.RST]) == direction_totals(s1, CLIENT4)
    assert counters(by_reason[CloseReason.FIN]) == direction_totals(s2, CLIENT4)


def test_a_clock_step_back_that_repeats_a_start_gives_a_new_id(tmp_path: Path) -> None:
    # The clock steps back after the first session ended: the same 5-tuple starts again at
    # the very same time, a distinct session that must not share the first one's id.
    burst = [udp(CLIENT4, SERVER4, 5353, 53, 40), udp(SERVER4, CLIENT4, 53, 5353, 120)]
    other = [udp(CLIENT4_B, SERVER4, 6000, 53, 10)]  # moves time on: the first burst expires
    again = [udp(CLIENT4, SERVER4, 5353, 53, 70)]
    later = T0 + Decimal(TIMEOUTS.udp_idle_s) * 3
    pkts = timed(T0, burst) + timed(later, other) + timed(T0, again)
    raw = read_raw(write(tmp_path / "cap.pcap", pkts))[0]
    closed = feed(split_raw(raw, [len(burst) + len(other)])).closed  # expiry runs per batch
    mine = sorted((e for e in closed if e.src_port == 5353), key=lambda e: e.packets_rx)
    assert len(mine) == 2 and len(closed) == 3
    assert mine[0].started_ts == mine[1].started_ts == float(T0)
    assert mine[0].session_id != mine[1].session_id
    assert counters(mine[0]) == direction_totals(again, CLIENT4)
    assert counters(mine[1]) == direction_totals(burst, CLIENT4)
    assert len({e.session_id for e in closed}) == len(closed)


def test_midstream_start_is_marked_and_the_client_side_is_the_initiator(tmp_path: Path) -> None:
    c = Tcp(CLIENT4, SERVER4, 40005, 8443)
    pkts = [*c.response(1200), *c.request(30), *c.response(600)]  # server speaks first
    assert pkts[0][IP].src == SERVER4
    ev = only(run_capture(tmp_path, timed(T0, pkts)).closed)
    assert ev.midstream
    assert (ev.src_addr, ev.src_port, ev.dst_addr, ev.dst_port) == (CLIENT4, 40005, SERVER4, 8443)
    assert ev.close_reason is CloseReason.END_OF_CAPTURE
    assert counters(ev) == direction_totals(pkts, CLIENT4)
    assert ev.attribution.client_id == "alice"


def test_midstream_start_between_non_clients_makes_the_first_sender_the_initiator(
    tmp_path: Path,
) -> None:
    c = Tcp("10.99.0.7", SERVER4, 5432, 40100)
    pkts = [c.seg(False, "PA", b"x" * 10), c.seg(True, "A")]
    ev = only(run_capture(tmp_path, timed(T0, pkts)).closed)
    assert ev.midstream
    assert (ev.src_addr, ev.src_port) == (SERVER4, 40100)
    assert counters(ev) == direction_totals(pkts, SERVER4)


def test_syn_ack_first_makes_its_receiver_the_initiator_and_marks_midstream(
    tmp_path: Path,
) -> None:
    c = Tcp(CLIENT6, SERVER6, 40006, 443)
    c.syn()  # sent but not captured
    pkts = [c.seg(False, "SA"), c.seg(True, "A"), *c.request(64), *c.close()]
    ev = only(run_capture(tmp_path, timed(T0, pkts)).closed)
    assert ev.midstream
    assert (ev.src_addr, ev.dst_addr, ev.dst_port) == (CLIENT6, SERVER6, 443)
    assert ev.close_reason is CloseReason.FIN
    assert counters(ev) == direction_totals(pkts, CLIENT6)


def test_last_ack_inside_the_linger_counts_and_a_packet_after_it_opens_a_midstream_session(
    tmp_path: Path,
) -> None:
    c = Tcp(CLIENT4, SERVER4, 40007, 443)
    body = [*c.handshake(), *c.request(10), c.seg(True, "FA"), c.seg(False, "FA")]
    last_ack = c.seg(True, "A")
    late = c.seg(False, "A")  # e.g. a stray ACK well after the close
    linger = Decimal(str(TIMEOUTS.tcp_linger_s))
    close_t = T0 + Decimal("0.001") * (len(body) - 1)
    pkts = timed(T0, body) + [(close_t + linger - 1, last_ack), (close_t + linger + 1, late)]
    closed = sorted(run_capture(tmp_path, pkts).closed, key=lambda e: e.started_ts)
    assert len(closed) == 2
    first, second = closed
    assert first.close_reason is CloseReason.FIN
    assert counters(first) == direction_totals([*body, last_ack], CLIENT4)
    assert first.last_ts == pytest.approx(float(close_t + linger - 1), abs=1e-6)
    assert second.midstream
    assert (second.src_addr, second.dst_addr) == (CLIENT4, SERVER4)  # the client side
    assert counters(second) == direction_totals([late], CLIENT4)


def test_tcp_idle_timeout_splits_a_session(tmp_path: Path) -> None:
    c = Tcp(CLIENT4, SERVER4, 40008, 443)
    s1 = [*c.handshake(), *c.request(10)]
    s2 = c.request(20)
    gap = Decimal(str(TIMEOUTS.tcp_idle_s)) + 1
    closed = sorted(
        run_capture(tmp_path, timed(T0, s1) + timed(T0 + gap, s2)).closed,
        key=lambda e: e.started_ts,
    )
    assert [e.close_reason for e in closed] == [CloseReason.IDLE, CloseReason.END_OF_CAPTURE]
    assert counters(closed[0]) == direction_totals(s1, CLIENT4)
    assert closed[1].midstream
    assert counters(closed[1]) == direction_totals(s2, CLIENT4)


# -- UDP and idle timeouts ---------------------------------------------------------------------


def test_udp_bursts_further_apart_than_the_idle_timeout_are_two_sessions(tmp_path: Path) -> None:
    burst1 = [udp(CLIENT4, SERVER4, 5353, 53, 40), udp(SERVER4, CLIENT4, 53, 5353, 120)]
    burst2 = [udp(CLIENT4, SERVER4, 5353, 53, 41), udp(SERVER4, CLIENT4, 53, 5353, 300)]
    gap = Decimal(str(TIMEOUTS.udp_idle_s)) + 1
    pkts = timed(T0, burst1) + timed(T0 + gap, burst2)
    closed = sorted(run_capture(tmp_path, pkts).closed, key=lambda e: e.started_ts)
    assert [e.close_reason for e in closed] == [CloseReason.IDLE, CloseReason.END_OF_CAPTURE]
    assert counters(closed[0]) == direction_totals(burst1, CLIENT4)
    assert counters(closed[1]) == direction_totals(burst2, CLIENT4)
    assert closed[0].ended_ts == pytest.approx(float(pkts[1][0]), abs=1e-6)


def test_udp_packets_closer_than_the_idle_timeout_stay_one_session(tmp_path: Path) -> None:
    step = Decimal(str(TIMEOUTS.udp_idle_s)) - 1
    pkts = [(T0 + i * step, udp(CLIENT4, SERVER4, 5353, 53, 10 + i)) for i in range(5)]
    ev = only(run_capture(tmp_path, pkts).closed)
    assert ev.close_reason is CloseReason.END_OF_CAPTURE
    assert counters(ev) == direction_totals([p for _, p in pkts], CLIENT4)


def test_udp_first_packet_from_the_server_makes_the_client_the_initiator(tmp_path: Path) -> None:
    pkts = [udp(SERVER6, CLIENT6, 53, 6000, 80), udp(CLIENT6, SERVER6, 6000, 53, 20)]
    ev = only(run_capture(tmp_path, timed(T0, pkts)).closed)
    assert (ev.src_addr, ev.src_port, ev.dst_addr, ev.dst_port) == (CLIENT6, 6000, SERVER6, 53)
    assert counters(ev) == direction_totals(pkts, CLIENT6)


def test_advance_fires_the_idle_timeout_without_a_further_packet(tmp_path: Path) -> None:
    pkts = timed(T0, [udp(CLIENT4, SERVER4, 5353, 53, 40), udp(SERVER4, CLIENT4, 53, 5353, 90)])
    run = run_capture(tmp_path, pkts, end=False)
    assert run.closed == []
    last = float(pkts[-1][0])
    assert run.table.advance(last + TIMEOUTS.udp_idle_s - 1) == []
    ev = only(run.table.advance(last + TIMEOUTS.udp_idle_s + 1))
    assert ev.kind is EventKind.CLOSED
    assert ev.close_reason is CloseReason.IDLE
    assert ev.ended_ts == pytest.approx(last, abs=1e-6)
    assert counters(ev) == direction_totals([p for _, p in pkts], CLIENT4)
    assert len(run.table) == 0


def test_the_end_of_capture_closes_every_session_once_in_parts_in_close_alls_order(
    tmp_path: Path,
) -> None:
    """close_all_in_parts() hands out at most `size` sessions a part, each once and in the
    order close_all() ends them in one part; a session reset before the end keeps its reason."""
    reset = Tcp(CLIENT4, SERVER4, 40010, 443)
    pkts = [*reset.handshake(), reset.seg(False, "R")]
    pkts += [udp(CLIENT4, SERVER4, 6000 + n, 53, 30 + n) for n in range(10)]
    capture = timed(T0, pkts)
    run = run_capture(tmp_path, capture, end=False)
    parts = list(run.table.close_all_in_parts(CloseReason.END_OF_CAPTURE, 4))
    assert parts[0] == []  # nothing was idle or past its linger yet
    assert [len(part) for part in parts[1:]] == [4, 4, 3]
    closed = [event for part in parts for event in part]
    in_one_part = run_capture(tmp_path, capture).closed
    assert [e.src_port for e in closed] == [e.src_port for e in in_one_part]
    by_port = {e.src_port: e for e in closed}
    assert by_port[40010].close_reason is CloseReason.RST
    for n, packet in enumerate(pkts[-10:]):
        assert by_port[6000 + n].close_reason is CloseReason.END_OF_CAPTURE
        assert counters(by_port[6000 + n]) == direction_totals([packet], CLIENT4)
    assert len(run.table) == 0


def test_advance_fires_the_tcp_idle_timeout_without_a_further_packet(tmp_path: Path) -> None:
    c = Tcp(CLIENT4, SERVER4, 40009, 443)
    pkts = timed(T0, [*c.handshake(), *c.request(5)])
    run = run_capture(tmp_path, pkts, end=False)
    last = float(pkts[-1][0])
    assert run.table.advance(last + TIMEOUTS.tcp_idle_s - 1) == []
    ev = only(run.table.advance(last + TIMEOUTS.tcp_idle_s + 1))
    assert ev.close_reason is CloseReason.IDLE


def test_each_session_ends_at_its_own_time_across_sweeps_that_end_others(tmp_path: Path) -> None:
    """A sweep that ends one session leaves the others to end at their own times: a UDP session
    idle 30 s after its last packet, a TCP one past its linger after FIN both ways, in any
    order of their ends."""
    early = [udp(CLIENT4, SERVER4, 5001, 53, 40), udp(SERVER4, CLIENT4, 53, 5001, 90)]
    later = [udp(CLIENT4, SERVER4, 5002, 53, 41), udp(SERVER4, CLIENT4, 53, 5002, 91)]
    c = Tcp(CLIENT4, SERVER4, 40011, 443)
    tcp = [*c.handshake(), *c.request(20), *c.close()]
    pkts = timed(T0, early) + timed(T0 + 20, later) + timed(T0 + 28, tcp)
    run = run_capture(tmp_path, pkts, end=False)
    assert run.closed == []
    idle_s = Decimal(str(TIMEOUTS.udp_idle_s))
    linger_s = Decimal(str(TIMEOUTS.tcp_linger_s))
    early_end = pkts[1][0] + idle_s
    tcp_end = pkts[-1][0] + linger_s
    later_end = pkts[3][0] + idle_s
    assert early_end < tcp_end < later_end
    ends = [(early_end, early, CloseReason.IDLE), (tcp_end, tcp, CloseReason.FIN)]
    ends.append((later_end, later, CloseReason.IDLE))
    for end, packets, reason in ends:
        assert run.table.advance(float(end) - 0.6) == [], reason
        ev = only(run.table.advance(float(end) + 0.6))
        assert ev.close_reason is reason
        assert counters(ev) == direction_totals(packets, CLIENT4)
    assert len(run.table) == 0


def test_sessions_whose_lingers_end_in_one_second_each_end_after_their_own(
    tmp_path: Path,
) -> None:
    """Two connections closed by FIN 0.2 s apart: a sweep between their linger ends ends the
    first only, a later one the second."""
    first = Tcp(CLIENT4, SERVER4, 40012, 443)
    second = Tcp(CLIENT4, SERVER4, 40013, 443)
    first_packets = [*first.handshake(), *first.close()]
    second_packets = [*second.handshake(), *second.close()]
    pkts = timed(T0 + 10, first_packets) + timed(T0 + Decimal("10.2"), second_packets)
    run = run_capture(tmp_path, pkts, end=False)
    linger_s = Decimal(str(TIMEOUTS.tcp_linger_s))
    first_end = pkts[len(first_packets) - 1][0] + linger_s
    second_end = pkts[-1][0] + linger_s
    assert int(first_end) == int(second_end)  # in one second
    between = float(first_end + second_end) / 2
    ev = only(run.table.advance(between))
    assert (ev.src_port, ev.close_reason) == (40012, CloseReason.FIN)
    assert counters(ev) == direction_totals(first_packets, CLIENT4)
    ev = only(run.table.advance(float(second_end) + 1.1))
    assert (ev.src_port, ev.close_reason) == (40013, CloseReason.FIN)
    assert counters(ev) == direction_totals(second_packets, CLIENT4)


# -- fragments ---------------------------------------------------------------------------------


def _udp_fragments(src: str, dst: str, ident: int, size: int = 4000) -> list[Packet]:
    if ":" in src:
        whole = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(id=ident) / UDP(sport=7000, dport=53)
        return list(fragment6(whole / Raw(b"F" * size), 1280))
    whole = IP(src=src, dst=dst, id=ident) / UDP(sport=7000, dport=53) / Raw(b"F" * size)
    return list(fragment(whole, fragsize=1000))


@pytest.mark.parametrize("client", [CLIENT4, CLIENT6], ids=["ipv4", "ipv6"])
def test_fragments_of_one_udp_datagram_count_into_its_session(tmp_path: Path, client: str) -> None:
    server = SERVER6 if ":" in client else SERVER4
    frags = _udp_fragments(client, server, 0x4242)
    assert len(frags) >= 3
    reply = udp(server, client, 53, 7000, 100)
    pkts = [*frags, reply]
    run = run_capture(tmp_path, timed(T0, pkts))
    ev = only(run.closed)
    assert (ev.src_addr, ev.src_port, ev.dst_port) == (client, 7000, 53)
    assert ev.packets_tx == len(frags)
    assert ev.bytes_tx == sum(seen(f).ip_bytes for f in frags)
    assert ev.payload_bytes_tx == 4000  # the UDP payload, whatever the fragmentation
    assert counters(ev) == direction_totals(pkts, client)
    assert run.table.stats.fragments_unattributed == 0


def test_later_fragment_without_its_first_fragment_is_counted_unattributed(
    tmp_path: Path,
) -> None:
    frags = _udp_fragments(CLIENT4, SERVER4, 0x5151)
    other = udp(CLIENT4, SERVER4, 7001, 53, 10)
    pkts = [other, *frags[1:]]  # the first fragment was lost before the capture point
    run = run_capture(tmp_path, timed(T0, pkts))
    ev = only(run.closed)
    assert counters(ev) == direction_totals([other], CLIENT4)
    assert run.table.stats.fragments_unattributed == len(frags) - 1
    assert run.table.stats.fragment_bytes_unattributed == sum(seen(f).ip_bytes for f in frags[1:])


def test_batch_holding_only_later_fragments_does_not_raise(tmp_path: Path) -> None:
    frags = _udp_fragments(CLIENT4, SERVER4, 0x6161)
    (raw,) = read_raw(write(tmp_path / "f.pcap", timed(T0, frags)))
    # the first fragment ends one batch, its later fragments make up the next one
    run = feed(split_raw(raw, [1]))
    ev = only(run.closed)
    assert ev.packets_tx == len(frags)
    assert ev.bytes_tx == sum(seen(f).ip_bytes for f in frags)


def test_later_fragments_refresh_the_idle_timer_whatever_the_batches(tmp_path: Path) -> None:
    frags = _udp_fragments(CLIENT4, SERVER4, 0x7171)
    idle = Decimal(str(TIMEOUTS.udp_idle_s))
    # the last fragment arrives 10 ms after the first; the next datagram comes udp_idle_s + 5 ms
    # after the first fragment but only udp_idle_s - 5 ms after the last one: not idle
    pkts = [(T0, frags[0])] + [(T0 + Decimal("0.01"), f) for f in frags[1:]]
    pkts.append((T0 + idle + Decimal("0.005"), udp(CLIENT4, SERVER4, 7000, 53, 10)))
    (raw,) = read_raw(write(tmp_path / "g.pcap", pkts))
    for sizes in ([len(raw)], [len(frags)], [1] * len(raw)):
        run = feed(split_raw(raw, sizes))
        ev = only(run.closed)
        assert ev.packets_tx == len(pkts), sizes
        assert ev.close_reason is CloseReason.END_OF_CAPTURE, sizes


def test_later_fragments_after_their_session_ended_are_unattributed_whatever_the_batches(
    tmp_path: Path,
) -> None:
    """A datagram's first fragment, then a packet past the idle timeout that ends its session
    and opens the next one on the 5-tuple, then the datagram's later fragments: they belong to
    no open session, in one batch as in many."""
    frags = _udp_fragments(CLIENT4, SERVER4, 0x8181)
    after_idle = T0 + Decimal(str(TIMEOUTS.udp_idle_s)) + 1
    next_one = udp(CLIENT4, SERVER4, 7000, 53, 10)
    pkts = [(T0, frags[0]), (after_idle, next_one)]
    pkts += [(after_idle + Decimal("0.001"), f) for f in frags[1:]]
    (raw,) = read_raw(write(tmp_path / "h.pcap", pkts))
    for sizes in ([len(raw)], [1], [2], [1] * len(raw)):
        run = feed(split_raw(raw, sizes))
        first, second = sorted(run.closed, key=lambda e: e.started_ts)
        assert first.close_reason is CloseReason.IDLE, sizes
        assert counters(first) == direction_totals([frags[0]], CLIENT4), sizes
        assert counters(second) == direction_totals([next_one], CLIENT4), sizes
        stats = run.table.stats
        assert stats.fragments_unattributed == len(frags) - 1, sizes
        assert stats.fragment_bytes_unattributed == sum(seen(f).ip_bytes for f in frags[1:])


# -- IPv6 and community id ---------------------------------------------------------------------


def test_ipv6_tcp_and_udp_sessions_with_counts_each_way(tmp_path: Path) -> None:
    c = Tcp(CLIENT6, SERVER6, 40010, 443)
    tcp = [*c.handshake(), *c.request(300), *c.response(1000), *c.close()]
    dns = [udp(CLIENT6, SERVER6, 5300, 53, 33), udp(SERVER6, CLIENT6, 53, 5300, 250)]
    pkts = timed(T0, tcp) + timed(T0 + Decimal("0.0005"), dns)
    closed = {e.proto: e for e in run_capture(tmp_path, sorted(pkts, key=lambda x: x[0])).closed}
    assert set(closed) == {IpProto.TCP, IpProto.UDP}
    assert closed[IpProto.TCP].family == closed[IpProto.UDP].family == 6
    assert counters(closed[IpProto.TCP]) == direction_totals(tcp, CLIENT6)
    assert counters(closed[IpProto.UDP]) == direction_totals(dns, CLIENT6)
    assert closed[IpProto.TCP].close_reason is CloseReason.FIN


def test_addresses_are_written_right_after_the_tables_address_texts_are_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The table keeps the text of the addresses it wrote (flowtable.ADDRESS_TEXTS_KEPT per
    family) and clears it when full: with room for 2, sessions of IPv4 and IPv6 addresses
    whose ints are equal (10.0.0.7 and ::a00:7) and of more addresses than it keeps, in
    turns, each carry the addresses scapy wrote into their first packet."""
    monkeypatch.setattr(flowtable, "ADDRESS_TEXTS_KEPT", 2)
    servers = ["10.0.0.7", "::a00:7", "10.0.0.8", "fd00:99::5", "10.0.0.9", "::a00:9"]
    pkts: list[Packet] = []
    for turn in range(3):
        for number, server in enumerate(servers):
            client = "fd00:64::2" if ":" in server else "100.64.0.2"
            pkts.append(udp(client, server, 1000 + turn * 10 + number, 53, 20))
    closed = run_capture(tmp_path, timed(T0, pkts)).closed
    assert len(closed) == len(pkts)
    written = Counter((inet_text(p, "src"), inet_text(p, "dst")) for p in pkts)
    assert Counter((event.src_addr, event.dst_addr) for event in closed) == written


def inet_text(packet: Packet, field: str) -> str:
    """The address `field` of `packet`'s IP header as the store writes it: inet_ntop's text
    (which writes ::a00:7 as ::10.0.0.7)."""
    if IPv6 in packet:
        return socket.inet_ntop(
            socket.AF_INET6, socket.inet_pton(socket.AF_INET6, packet[IPv6].getfieldval(field))
        )
    return socket.inet_ntop(
        socket.AF_INET, socket.inet_pton(socket.AF_INET, packet[IP].getfieldval(field))
    )


# corelight/community-id-spec baseline/baseline_deflt.json (seed 0)
COMMUNITY_ID_VECTORS = [
    ("128.232.110.120", 34855, "66.35.250.204", 80, 6, "1:LQU9qZlK+B5F3KDmev6m5PMibrg="),
    ("192.168.1.52", 54585, "8.8.8.8", 53, 17, "1:d/FP5EW3wiY1vCndhwleRRKHowQ="),
    (
        "2001:470:e5bf:dead:4957:2174:e82c:4887",
        63943,
        "2607:f8b0:400c:c03::1a",
        25,
        6,
        "1:/qFaeAR+gFe1KYjMzVDsMv+wgU4=",
    ),
]
# baseline_seed1.json (seed 1)
COMMUNITY_ID_SEED1 = [
    ("128.232.110.120", 34855, "66.35.250.204", 80, 6, "1:3V71V58M3Ksw/yuFALMcW0LAHvc="),
    ("192.168.1.52", 54585, "8.8.8.8", 53, 17, "1:Q9We8WO3piVF8yEQBNJF4uiSVrI="),
    (
        "2001:470:e5bf:dead:4957:2174:e82c:4887",
        63943,
        "2607:f8b0:400c:c03::1a",
        25,
        6,
        "1:eJYTW6AOzFLlSUoESovMjnu7rMw=",
    ),
]


@pytest.mark.parametrize(("src", "sport", "dst", "dport", "proto", "want"), COMMUNITY_ID_VECTORS)
def test_session_community_id_matches_the_spec_vector(
    tmp_path: Path, src: str, sport: int, dst: str, dport: int, proto: int, want: str
) -> None:
    if proto == 6:
        pkts = Tcp(src, dst, sport, dport).handshake()
    else:
        pkts = [udp(src, dst, sport, dport, 30), udp(dst, src, dport, sport, 90)]
    ev = only(run_capture(tmp_path, timed(T0, pkts)).closed)
    assert ev.community_id == want
    # the reverse direction hashes alike
    fam = 6 if ":" in src else 4
    assert community_id(fam, proto, ip_int(dst), dport, ip_int(src), sport) == want


@pytest.mark.parametrize(("src", "sport", "dst", "dport", "proto", "want"), COMMUNITY_ID_SEED1)
def test_community_id_with_seed_1_matches_the_spec_vector(
    src: str, sport: int, dst: str, dport: int, proto: int, want: str
) -> None:
    fam = 6 if ":" in src else 4
    assert community_id(fam, proto, ip_int(src), sport, ip_int(dst), dport, seed=1) == want
    assert community_id(fam, proto, ip_int(dst), dport, ip_int(src), sport, seed=1) == want


def spec_community_id(src: str, sport: int, dst: str, dport: int, proto: int, seed: int) -> str:
    """Community ID v1 as corelight/community-id-spec writes it out: the addresses' network
    bytes, endpoints ordered by (address bytes, port), then seed, addresses, protocol, a
    padding byte and the ports, SHA-1, base64."""
    import base64
    import hashlib

    first = (ipaddress.ip_address(src).packed, sport)
    second = (ipaddress.ip_address(dst).packed, dport)
    if second < first:
        first, second = second, first
    data = (
        seed.to_bytes(2, "big")
        + first[0]
        + second[0]
        + bytes([proto, 0])
        + first[1].to_bytes(2, "big")
        + second[1].to_bytes(2, "big")
    )
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode()


addresses_v4 = st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v)))
addresses_v6 = st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v)))


@given(
    pair=st.one_of(st.tuples(addresses_v4, addresses_v4), st.tuples(addresses_v6, addresses_v6)),
    same_address=st.booleans(),
    sport=st.integers(0, 65535),
    dport=st.integers(0, 65535),
    proto=st.sampled_from([6, 17]),
    seed=st.integers(0, 65535),
)
def test_community_id_matches_the_spec_for_any_tuple(
    pair: tuple[str, str],
    same_address: bool,
    sport: int,
    dport: int,
    proto: int,
    seed: int,
) -> None:
    src = pair[0]
    dst = pair[0] if same_address else pair[1]  # one address both ways: the ports decide
    family = 6 if ":" in src else 4
    want = spec_community_id(src, sport, dst, dport, proto, seed)
    assert community_id(family, proto, ip_int(src), sport, ip_int(dst), dport, seed) == want
    assert community_id(family, proto, ip_int(dst), dport, ip_int(src), sport, seed) == want


# -- batch boundaries never change results -----------------------------------------------------


NO_ID = uuid.UUID(int=0)


def closed_view(run: Run) -> list[SessionEvent]:
    """Closed events in a canonical order (emission order may follow sweep timing), without
    their ids: each run names its sessions anew (flowkey.SessionIds)."""
    unnamed = [dataclasses.replace(e, session_id=NO_ID) for e in run.closed]
    return sorted(unnamed, key=repr)


def stats_view(table: FlowTable) -> dict[str, object]:
    st_ = dataclasses.asdict(table.stats)
    st_["closed"] = dict(Counter(table.stats.closed))
    return st_


# 5-tuples the scenarios draw from: few, so that ports are reused and sessions interleave
TCP_TUPLES = [
    (CLIENT4, SERVER4, 40000, 443),
    (CLIENT4_B, SERVER4, 40000, 443),
    (CLIENT6, SERVER6, 40001, 22),
]
UDP_TUPLES = [
    (CLIENT4, SERVER4, 5353, 53),
    (CLIENT6, SERVER6, 6000, 53),
    (CLIENT4_B, SERVER4, 6000, 53),
]
TCP_ACTIONS = [
    "handshake",
    "request",
    "response",
    "close",
    "close_server_first",
    "simultaneous_close",
    "rst_client",
    "rst_server",
    "syn",
    "syn_ack",
    "ack",
]
UDP_ACTIONS = ["client", "server", "fragmented"]
# Timeouts the scenarios pause around, microseconds: results must not depend on which batch
# (and so which expiry sweep) the packets that cross them fall into.
THRESHOLDS_US = [
    int(TIMEOUTS.tcp_linger_s * 1e6),
    int(TIMEOUTS.udp_idle_s * 1e6),
    int(TIMEOUTS.tcp_idle_s * 1e6),
]
PAUSES_US = st.one_of(
    st.integers(0, 1_200_000),  # back-to-back up to just past one expiry-sweep interval
    st.sampled_from(THRESHOLDS_US).flatmap(lambda t: st.integers(t - 1_000_000, t + 1_000_000)),
)


def _tcp_step(c: Tcp, action: str, n: int) -> list[Packet]:
    match action:
        case "handshake":
            return c.handshake()
        case "request":
            return c.request(n)
        case "response":
            return c.response(n)
        case "close":
            return c.close()
        case "close_server_first":
            return c.close(client_first=False)
        case "simultaneous_close":
            return c.simultaneous_close()
        case "rst_client":
            return [c.seg(True, "R")]
        case "rst_server":
            return [c.seg(False, "RA")]
        case "syn":
            return [c.syn()]
        case "syn_ack":
            return [c.seg(False, "SA")]
        case _:
            return [c.seg(True, "A")]


def _udp_step(t: tuple[str, str, int, int], action: str, n: int, ident: int) -> list[Packet]:
    cl, sv, cp, sp = t
    if action == "client":
        return [udp(cl, sv, cp, sp, n)]
    if action == "server":
        return [udp(sv, cl, sp, cp, n)]
    if ":" in cl:
        whole = IPv6(src=cl, dst=sv) / IPv6ExtHdrFragment(id=ident) / UDP(sport=cp, dport=sp)
        return list(fragment6(whole / Raw(b"F" * (1500 + n)), 1280))
    whole = IP(src=cl, dst=sv, id=ident) / UDP(sport=cp, dport=sp) / Raw(b"F" * (1500 + n))
    return list(fragment(whole, fragsize=1024))


@dataclass(frozen=True)
class Step:
    """One step of a scenario: what happens on which 5-tuple, and the pauses around it."""

    pause_us: int
    kind: str  # "tcp", "udp" or "icmp"
    index: int
    action: str
    size: int
    new_isn: int | None  # a fresh sequence space on the same 5-tuple (port reuse)
    spacing_us: tuple[int, ...]  # between the step's own packets


@st.composite
def scenarios(draw: st.DrawFn, noise: bool = False) -> list[Step]:
    """Interleaved TCP and UDP sessions: handshakes, data, closes, resets, port reuse, pauses."""
    steps = []
    for _ in range(draw(st.integers(1, 16))):
        pause = draw(PAUSES_US)
        size = draw(st.integers(1, 1400))
        spacing = tuple(
            draw(st.lists(st.sampled_from([0, 1, 1000, 20_000]), min_size=6, max_size=6))
        )
        kind = draw(st.sampled_from(["tcp", "udp", "icmp"] if noise else ["tcp", "udp"]))
        if kind == "tcp":
            index = draw(st.integers(0, len(TCP_TUPLES) - 1))
            action = draw(st.sampled_from(TCP_ACTIONS))
            isn = (
                draw(st.integers(0, 2**31))
                if action == "handshake" and draw(st.booleans())
                else None
            )
        else:
            index = draw(st.integers(0, len(UDP_TUPLES) - 1))
            action = draw(st.sampled_from(UDP_ACTIONS))
            isn = None
        steps.append(Step(pause, kind, index, action, size, isn, spacing))
    return steps


def build(steps: Sequence[Step]) -> list[Timed]:
    """The packets of a scenario with their capture times."""
    convs = [Tcp(*t) for t in TCP_TUPLES]
    t_us = 0
    out: list[Timed] = []
    for k, step in enumerate(steps):
        t_us += step.pause_us
        if step.kind == "tcp":
            if step.new_isn is not None:
                convs[step.index] = Tcp(*TCP_TUPLES[step.index], cseq=step.new_isn)
            pkts = _tcp_step(convs[step.index], step.action, step.size)
        elif step.kind == "udp":
            pkts = _udp_step(UDP_TUPLES[step.index], step.action, step.size, ident=k + 1)
        else:
            cl, sv = UDP_TUPLES[step.index][:2]
            pkts = [
                IPv6(src=cl, dst=sv) / ICMPv6EchoRequest()
                if ":" in cl
                else IP(src=cl, dst=sv) / ICMP()
            ]
        for i, p in enumerate(pkts):
            out.append((T0 + Decimal(t_us) / 10**6, p))
            t_us += step.spacing_us[i % len(step.spacing_us)]
    return out


def _scenario_raw(pkts: list[Timed]) -> RawBatch:
    with tempfile.TemporaryDirectory() as tmp:
        (raw,) = read_raw(write(Path(tmp) / "s.pcap", pkts))
    return raw


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.lists(st.integers(1, 12), max_size=40))
def test_batch_boundaries_never_change_closed_sessions(steps: list[Step], sizes: list[int]) -> None:
    raw = _scenario_raw(build(steps))
    whole = feed([raw])
    for split in (sizes, [1] * len(raw)):
        run = feed(split_raw(raw, split))
        assert closed_view(run) == closed_view(whole), split
        assert stats_view(run.table) == stats_view(whole.table), split


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(noise=True))
def test_session_totals_equal_the_ip_lengths_of_all_tcp_and_udp_packets(
    steps: list[Step],
) -> None:
    pkts = build(steps)
    run = feed([_scenario_raw(pkts)])
    looked = [seen(p) for _, p in pkts]
    l4 = [s for s in looked if s.l4]
    assert sum(e.bytes_tx + e.bytes_rx for e in run.closed) == sum(s.ip_bytes for s in l4)
    assert sum(e.packets_tx + e.packets_rx for e in run.closed) == len(l4)
    assert sum(e.payload_bytes_tx + e.payload_bytes_rx for e in run.closed) == sum(
        s.payload_bytes for s in l4
    )
    assert run.table.stats.fragments_unattributed == 0
    assert len(run.table) == 0


def test_idle_session_at_the_end_of_the_capture_closes_as_idle_whatever_the_batches(
    tmp_path: Path,
) -> None:
    idle = Decimal(str(TIMEOUTS.udp_idle_s))
    quiet = udp(CLIENT4, SERVER4, 5353, 53, 10)  # then nothing for longer than udp_idle_s
    busy = [udp(CLIENT4_B, SERVER4, 6000, 53, 10 + i) for i in range(2)]
    pkts = [
        (T0, quiet),
        (T0 + idle - Decimal("0.2"), busy[0]),
        (T0 + idle + Decimal("0.5"), busy[1]),
    ]
    (raw,) = read_raw(write(tmp_path / "q.pcap", pkts))
    for sizes in ([3], [2, 1], [1, 1, 1]):
        run = feed(split_raw(raw, sizes))
        ev = next(e for e in run.closed if e.src_addr == CLIENT4)
        # by packet time the session had been idle for more than udp_idle_s when the capture ended
        assert ev.close_reason is CloseReason.IDLE, sizes


def test_out_of_order_timestamps_give_the_same_sessions_whatever_the_batches(
    tmp_path: Path,
) -> None:
    # two capture rings can hand packets over slightly out of order: 10 s, then 5 s, then 38 s
    pkts = [
        (T0 + 10, udp(CLIENT4, SERVER4, 5353, 53, 10)),
        (T0 + 5, udp(SERVER4, CLIENT4, 53, 5353, 20)),
        (T0 + 38, udp(CLIENT4, SERVER4, 5353, 53, 30)),
    ]
    (raw,) = read_raw(write(tmp_path / "o.pcap", pkts))
    runs = [feed(split_raw(raw, sizes)) for sizes in ([3], [1, 2], [1, 1, 1])]
    for run in runs:
        for ev in run.closed:
            assert ev.last_ts >= ev.started_ts, ev
    assert closed_view(runs[1]) == closed_view(runs[0])
    assert closed_view(runs[2]) == closed_view(runs[0])


def test_sessions_split_across_batches_count_every_packet_once(
    tmp_path: Path,
) -> None:
    c = Tcp(CLIENT4, SERVER4, 40011, 443)
    s1 = [*c.handshake(), *c.request(100), *c.close()]
    c2 = Tcp(CLIENT4, SERVER4, 40011, 443, cseq=5_000_000)
    s2 = [*c2.handshake(), *c2.response(2000), c2.seg(False, "RA")]
    dns = [udp(CLIENT4, SERVER4, 5353, 53, 50), udp(SERVER4, CLIENT4, 53, 5353, 500)]
    pkts = sorted(
        timed(T0, s1) + timed(T0 + 2, s2) + timed(T0 + Decimal("0.0005"), dns, gap="0.01"),
        key=lambda x: x[0],
    )
    (raw,) = read_raw(write(tmp_path / "m.pcap", pkts))
    run = feed(split_raw(raw, [3, 4, 1, 7]))
    ids = [e.session_id for e in run.closed]
    assert len(ids) == len(set(ids)) == 3
    by_reason = Counter(e.close_reason for e in run.closed)
    assert by_reason == Counter(
        {CloseReason.FIN: 1, CloseReason.RST: 1, CloseReason.END_OF_CAPTURE: 1}
    )
    total = sum(seen(p).ip_bytes for _, p in pkts)
    assert sum(e.bytes_tx + e.bytes_rx for e in run.closed) == total
    assert run.table.stats.bytes == total
    assert np.isclose(min(e.started_ts for e in run.closed), float(T0))


# -- resume after a restart --------------------------------------------------------------------


@pytest.mark.parametrize(
    "conv",
    [Tcp(CLIENT6, SERVER6, 41000, 443), Tcp(CLIENT4, SERVER4, 40100, 8443)],
    ids=["initiator-is-lower-endpoint", "initiator-is-higher-endpoint"],
)
def test_a_resumed_session_continues_with_the_same_id_and_counters(
    tmp_path: Path, conv: Tcp
) -> None:
    pkts = timed(
        T0,
        [
            *conv.handshake(),
            *conv.request(300),
            *conv.response(900),
            *conv.request(20),
            *conv.close(),
        ],
    )
    cut = 7
    whole = only(run_capture(tmp_path, pkts).closed)
    # first run: the packets before the cut, then the service stops (a checkpoint is saved)
    first = new_table()
    for raw in read_raw(write(tmp_path / "a.pcap", pkts[:cut])):
        first.process(decode(raw))
    (saved,) = first.checkpoint()
    # second run: a new table resumes the saved snapshot and sees the rest
    second = new_table()
    second.resume(saved)
    events = []
    for raw in read_raw(write(tmp_path / "b.pcap", pkts[cut:])):
        events += second.process(decode(raw))
    events += second.close_all(CloseReason.END_OF_CAPTURE)
    resumed = only([e for e in events if e.kind is EventKind.CLOSED])
    assert resumed.session_id == saved.session_id
    # where it was first seen; its id is the first run's, `whole` was named by a third table
    assert resumed == dataclasses.replace(whole, interface="a.pcap", session_id=saved.session_id)
    assert second.stats.sessions_opened == 0


def test_suspend_ends_fin_and_rst_closed_sessions_and_checkpoints_the_open_ones(
    tmp_path: Path,
) -> None:
    # Issue 15: the service stops while sessions linger after their close.
    by_fin = Tcp(CLIENT4, SERVER4, 40200, 443)
    fin = [*by_fin.handshake(), *by_fin.request(100), *by_fin.close()]
    by_rst = Tcp(CLIENT4, SERVER4, 40201, 443)
    rst = [*by_rst.handshake(), by_rst.seg(False, "R")]
    still = Tcp(CLIENT4, SERVER4, 40202, 443)
    open_ = [*still.handshake(), *still.request(50)]
    run = run_capture(tmp_path, timed(T0, [*fin, *rst, *open_]), end=False)
    assert run.closed == [] and len(run.table) == 3  # all three inside the linger or open
    events = run.table.suspend()
    kinds = {(e.src_port, e.kind, e.close_reason) for e in events}
    assert kinds == {
        (40200, EventKind.CLOSED, CloseReason.FIN),
        (40201, EventKind.CLOSED, CloseReason.RST),
        (40202, EventKind.CHECKPOINT, None),
    }
    by_port = {e.src_port: e for e in events}
    assert counters(by_port[40200]) == direction_totals(fin, CLIENT4)
    assert counters(by_port[40201]) == direction_totals(rst, CLIENT4)
    assert counters(by_port[40202]) == direction_totals(open_, CLIENT4)
    assert len(run.table) == 1


def test_a_checkpoint_leaves_out_a_session_lingering_after_fin_and_its_close_writes_it(
    tmp_path: Path,
) -> None:
    # Issue 21: a closed session ends within its linger, before the next checkpoint is due,
    # so its closing event is its only write; an open session is checkpointed.
    by_fin = Tcp(CLIENT4, SERVER4, 40300, 443)
    fin = [*by_fin.handshake(), *by_fin.request(100), *by_fin.close()]
    still = Tcp(CLIENT4, SERVER4, 40301, 443)
    open_ = [*still.handshake(), *still.request(50)]
    run = run_capture(tmp_path, timed(T0, [*fin, *open_]), end=False)
    assert run.closed == [] and len(run.table) == 2
    checkpointed = only(run.table.checkpoint())
    assert checkpointed.src_port == 40301
    assert counters(checkpointed) == direction_totals(open_, CLIENT4)
    past_linger = float(T0) + 1 + run.table.closed_hold_s()
    closed = only(run.table.advance(past_linger))
    assert (closed.src_port, closed.kind, closed.close_reason) == (
        40300,
        EventKind.CLOSED,
        CloseReason.FIN,
    )
    assert counters(closed) == direction_totals(fin, CLIENT4)


def test_a_linger_longer_than_the_checkpoint_interval_keeps_closed_sessions_checkpointed(
    tmp_path: Path,
) -> None:
    # A closed session that would wait past the next checkpoint is checkpointed as before.
    long_linger = Timeouts(udp_idle_s=30.0, tcp_idle_s=120.0, tcp_linger_s=60.0, checkpoint_s=30.0)
    by_fin = Tcp(CLIENT4, SERVER4, 40302, 443)
    fin = [*by_fin.handshake(), *by_fin.request(100), *by_fin.close()]
    run = run_capture(tmp_path, timed(T0, fin), timeouts=long_linger, end=False)
    checkpointed = only(run.table.checkpoint())
    assert checkpointed.kind is EventKind.CHECKPOINT
    assert counters(checkpointed) == direction_totals(fin, CLIENT4)


def test_packets_older_than_one_before_them_by_over_a_second_are_counted_late(
    tmp_path: Path,
) -> None:
    # Issue 16: merged captures and clock steps are counted (the packets still count).
    offsets = ["0", "10", "2", "9.5", "12", "10.9", "3"]
    pkts = [
        (T0 + Decimal(o), udp(CLIENT4, SERVER4, 5000 + i, 53, 20)) for i, o in enumerate(offsets)
    ]
    newest, late = Decimal("-Infinity"), 0
    for t, _p in pkts:  # the oracle: older than the newest before it by more than 1 s
        late += t < newest - 1
        newest = max(newest, t)
    raw = read_raw(write(tmp_path / "late.pcap", pkts))[0]
    run = feed(split_raw(raw, [4]))  # the count holds across batches
    assert run.table.stats.late_packets == late == 3
    assert run.table.stats.packets == len(pkts)


def test_emit_opened_announces_each_session_once_when_it_opens(tmp_path: Path) -> None:
    long_lived, short = Tcp(CLIENT4, SERVER4, 40100, 443), Tcp(CLIENT4, SERVER4, 40101, 443)
    first = [*long_lived.handshake(), *short.handshake(), *short.request(10), *short.close()]
    later = [*long_lived.request(20)]
    pkts = timed(T0, first) + timed(T0 + 1, later)
    raws = split_raw(read_raw(write(tmp_path / "cap.pcap", pkts))[0], [len(first)])
    table = FlowTable(TIMEOUTS, attribute=attribute, is_client=is_client, emit_opened=True)
    events = sorted(table.process(decode(raws[0])), key=lambda e: e.src_port)
    assert [(e.kind, e.src_port) for e in events] == [
        (EventKind.OPENED, 40100),
        (EventKind.OPENED, 40101),
    ]
    # counters as of the end of the batch that opened them
    assert [(e.packets_tx, e.packets_rx) for e in events] == [(2, 1), (5, 4)]
    # later packets are not announced again; the closed one ends after its linger
    events = table.process(decode(raws[1])) + table.advance(float(T0) + 30)
    assert [(e.kind, e.src_port) for e in events] == [(EventKind.CLOSED, 40101)]
    (last,) = table.close_all(CloseReason.SHUTDOWN)
    assert (last.src_port, last.packets_tx, last.packets_rx) == (40100, 3, 2)


# -- a full table (issue 16: a flood of new flows) ---------------------------------------------


def feed_capped(
    tmp_path: Path, pkts: Sequence[Timed], max_sessions: int, timeouts: Timeouts = TIMEOUTS
) -> tuple[Run, list[int]]:
    """Run `pkts` through a table of `max_sessions` in batches of 50 packets; the closed
    sessions, and the table's size after each batch."""
    table = FlowTable(timeouts, attribute=attribute, is_client=is_client, max_sessions=max_sessions)
    (raw,) = read_raw(write(tmp_path / "cap.pcap", pkts))
    events: list[SessionEvent] = []
    sizes = []
    for batch in split_raw(raw, [50] * (len(pkts) // 50)):
        events += table.process(decode(batch))
        sizes.append(len(table))
    events += table.close_all(CloseReason.END_OF_CAPTURE)
    return Run([e for e in events if e.kind is EventKind.CLOSED], table), sizes


def flood(flows: int, rounds: int) -> list[Packet]:
    """`rounds` UDP packets of each of `flows` client ports, round after round, so a small
    table evicts a flow before its next packet comes; one keep-alive flow in every 10 packets."""
    keepalive = udp(CLIENT4, SERVER4, 5353, 53, 7)
    pkts: list[Packet] = []
    for r in range(rounds):
        for i in range(flows):
            pkts.append(udp(CLIENT4, SERVER4, 10_000 + i, 53, 10 + (i + r) % 90))
            if i % 10 == 0:
                pkts.append(keepalive)
    return pkts


def test_a_flood_of_flows_never_grows_the_table_past_max_sessions_and_loses_no_packet(
    tmp_path: Path,
) -> None:
    pkts = flood(1000, 2)
    run, sizes = feed_capped(tmp_path, timed(T0, pkts, "0.0001"), max_sessions=100)
    assert max(sizes) <= 100
    # every packet in some session of its 5-tuple: summed per 5-tuple, scapy's counters
    oracle: Counter[tuple[int, str]] = Counter()
    for p in pkts:
        oracle[(p[UDP].sport, "packets")] += 1
        oracle[(p[UDP].sport, "bytes")] += seen(p).ip_bytes
    stored: Counter[tuple[int, str]] = Counter()
    for ev in run.closed:
        stored[(ev.src_port, "packets")] += ev.packets_tx
        stored[(ev.src_port, "bytes")] += ev.bytes_tx
    assert stored == oracle
    reasons = Counter(ev.close_reason for ev in run.closed)
    assert reasons[CloseReason.EVICTED] >= 1000  # each flow's first session, at least
    assert run.table.stats.closed["evicted"] == reasons[CloseReason.EVICTED]
    assert len({ev.session_id for ev in run.closed}) == len(run.closed)  # none overwritten


def test_a_full_table_evicts_the_least_recently_active_sessions(tmp_path: Path) -> None:
    run, _ = feed_capped(tmp_path, timed(T0, flood(1000, 2), "0.0001"), max_sessions=100)
    keepalive = [ev for ev in run.closed if ev.src_port == 5353]
    (session,) = keepalive  # active all along: never evicted, one session
    assert session.close_reason is CloseReason.END_OF_CAPTURE
    assert session.packets_tx == 200
    evicted = [ev for ev in run.closed if ev.close_reason is CloseReason.EVICTED]
    assert all(ev.last_ts < session.last_ts for ev in evicted)


class EveryLastPacketRead(FlowTable):
    """A table that reads every session's last packet time to choose what a full table
    evicts, as if starts could move: the oracle of the read in opening order."""

    starts_stay = False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 15), st.integers(0, 4000)), min_size=1, max_size=80),
    st.sampled_from([1, 2, 3]),
    st.sampled_from([4, 8]),
)
def test_a_full_table_evicts_what_reading_every_last_packet_would_evict(
    packets: list[tuple[int, int]], chunk: int, max_sessions: int
) -> None:
    # Issue 21: a full table reads its sessions in the order they opened only until none
    # opened later can be among the least recently active. Packets out of time order (a
    # merged capture) open sessions that start before ones opened earlier: the read must
    # still end the very sessions, with the same counters, that reading all of them ends.
    timed_packets = [
        (T0 + Decimal(at_ms) / 1000, udp(CLIENT4, SERVER4, 10_000 + port, 53, 10 + port))
        for port, at_ms in packets
    ]
    raw = _scenario_raw(timed_packets)
    original_chunk = flowtable.LRU_CHUNK
    flowtable.LRU_CHUNK = chunk
    try:
        runs = []
        for table_class in (FlowTable, EveryLastPacketRead):
            table = table_class(
                TIMEOUTS, attribute=attribute, is_client=is_client, max_sessions=max_sessions
            )
            events: list[SessionEvent] = []
            for part in split_raw(raw, [1] * len(raw)):
                events += table.process(decode(part))
            events += table.close_all(CloseReason.END_OF_CAPTURE)
            runs.append(Run([e for e in events if e.kind is EventKind.CLOSED], table))
    finally:
        flowtable.LRU_CHUNK = original_chunk
    read_in_order, read_all = runs
    assert closed_view(read_in_order) == closed_view(read_all)
    assert stats_view(read_in_order.table) == stats_view(read_all.table)


def test_a_full_table_ends_idle_sessions_as_idle_before_evicting_any(tmp_path: Path) -> None:
    early = [udp(CLIENT4, SERVER4, 20_000 + i, 53, 20) for i in range(100)]
    late = [udp(CLIENT4, SERVER4, 30_000 + i, 53, 20) for i in range(100)]
    pkts = timed(T0, early, "0.001") + timed(T0 + 100, late, "0.001")  # udp_idle is 30 s
    table = FlowTable(TIMEOUTS, attribute=attribute, is_client=is_client, max_sessions=100)
    (raw,) = read_raw(write(tmp_path / "cap.pcap", pkts))
    first, second = split_raw(raw, [100])
    events = table.process(decode(first))
    events += table.process(decode(second))  # the late flows open before this batch's sweep
    closed = [ev for ev in events if ev.kind is EventKind.CLOSED]
    assert sorted(ev.src_port for ev in closed) == [20_000 + i for i in range(100)]
    assert {ev.close_reason for ev in closed} == {CloseReason.IDLE}
    assert table.stats.table_full >= 1


def test_first_write_announces_only_the_sessions_still_open_that_long(tmp_path: Path) -> None:
    """[timeouts] first_write (issue 21): a session that has ended before it is due makes
    its closed event and no opened one; one still open first_write seconds after its start
    makes one opened event once packet time gets there, with its counters as they stand."""
    timeouts = dataclasses.replace(TIMEOUTS, first_write_s=10.0)
    long_lived, short = Tcp(CLIENT4, SERVER4, 40100, 443), Tcp(CLIENT4, SERVER4, 40101, 443)
    first = [*long_lived.handshake(), *short.handshake(), *short.request(10), *short.close()]
    middle = [*long_lived.request(20)]
    last = [*long_lived.request(5)]
    pkts = timed(T0, first) + timed(T0 + 7, middle) + timed(T0 + 12, last)
    raws = split_raw(read_raw(write(tmp_path / "cap.pcap", pkts))[0], [len(first), len(middle)])
    table = FlowTable(timeouts, attribute=attribute, is_client=is_client, emit_opened=True)
    assert table.process(decode(raws[0])) == []  # neither is due at T0
    # T0 + 7: the short one's linger (5 s after its last packet) is over; the long one is
    # not due yet (T0 + 10)
    ended = only(table.process(decode(raws[1])))
    assert (ended.kind, ended.src_port) == (EventKind.CLOSED, 40101)
    assert counters(ended) == direction_totals(packets_of_port(first, 40101), CLIENT4)
    opened = only(table.process(decode(raws[2])))  # T0 + 12
    assert (opened.kind, opened.src_port) == (EventKind.OPENED, 40100)
    long_packets = packets_of_port(first, 40100) + middle + last
    assert counters(opened) == direction_totals(long_packets, CLIENT4)
    # announced once: a later packet and the next sweeps make no other opened event
    assert table.advance(float(T0) + 25) == []


def test_first_write_leaves_out_a_session_a_checkpoint_wrote_first(tmp_path: Path) -> None:
    """A session that a checkpoint wrote before its first write was due is in the store
    already: no opened event follows (the checkpoint's counters, then the closed event)."""
    timeouts = dataclasses.replace(TIMEOUTS, first_write_s=10.0)
    long_lived = Tcp(CLIENT4, SERVER4, 40100, 443)
    first = [*long_lived.handshake()]
    later = [*long_lived.request(20)]
    pkts = timed(T0, first) + timed(T0 + 15, later)
    raws = split_raw(read_raw(write(tmp_path / "cap.pcap", pkts))[0], [len(first)])
    table = FlowTable(timeouts, attribute=attribute, is_client=is_client, emit_opened=True)
    assert table.process(decode(raws[0])) == []
    written = only(table.checkpoint())
    assert (written.kind, counters(written)) == (
        EventKind.CHECKPOINT,
        direction_totals(first, CLIENT4),
    )
    assert table.process(decode(raws[1])) == []  # T0 + 15: due, but written already
    (closed,) = table.close_all(CloseReason.SHUTDOWN)
    assert counters(closed) == direction_totals(first + later, CLIENT4)


def packets_of_port(pkts: Sequence[Packet], sport: int) -> list[Packet]:
    """The packets of `pkts` with `sport` on either side."""
    return [p for p in pkts if sport in (p[TCP].sport, p[TCP].dport)]
