"""Decoder fuzzing (issue 16): whatever the bytes, decode() only ever counts a reason.

Hypothesis builds structured captures, through the real pcap reader: valid IPv4 and IPv6 TCP/UDP
packets with random payloads, IPv6 extension header chains, IPv4 and IPv6 fragments, each
possibly cut short, with bytes overwritten, or replaced by noise, under every link type the
decoder knows and some it does not. For every capture:

- decode() returns, and each packet is decoded or counted under exactly one reason;
- every decoded packet is TCP or UDP of IPv4 or IPv6, with 0 <= payload <= IP length;
- a packet that was built valid and left whole decodes to the addresses, ports, protocol and IP
  length it was built with (the construction is the oracle), whatever surrounds it;
- the flow table takes the decoded batch without raising, and its byte total is the decoded
  packets' IP lengths.

FUZZ_EXAMPLES (environment) sets how many captures; CI runs the default. The long run's count
and findings are in docs/hardening.md.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Packet, Raw

from tests.helpers.pcapwrite import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    eth,
    null,
    sll,
    sll2,
    write_pcap,
)
from tunnelacct.capture.decode import decode
from tunnelacct.capture.pcapfile import open_capture
from tunnelacct.capture.reasons import REASONS
from tunnelacct.config.model import Timeouts
from tunnelacct.sessions.events import Attribution
from tunnelacct.sessions.flowtable import FlowTable

pytestmark = pytest.mark.hardening

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
T0 = 1_764_000_000.0
ADDRS4 = st.integers(1, 2**32 - 2).map(lambda n: str(ipaddress.IPv4Address(n)))
ADDRS6 = st.integers(1, 2**128 - 2).map(lambda n: str(ipaddress.IPv6Address(n)))
PORTS = st.integers(0, 65535)
PAYLOAD = st.binary(max_size=300)
EXTENSIONS = st.lists(
    st.sampled_from([IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting]), max_size=4
)


@dataclass(frozen=True)
class Built:
    """One packet as built: its bytes, and, when it is a whole valid TCP/UDP packet, what a
    decoder must read from it."""

    data: bytes
    expected: tuple[int, int, int, int, int, int, int] | None  # family, proto, src, dst, ports, ip


@st.composite
def valid_packet(draw: st.DrawFn) -> tuple[Packet, tuple[int, int, int, int, int, int, int]]:
    six = draw(st.booleans())
    src, dst = (draw(ADDRS6), draw(ADDRS6)) if six else (draw(ADDRS4), draw(ADDRS4))
    sport, dport = draw(PORTS), draw(PORTS)
    l4: Packet
    if draw(st.booleans()):
        flags = draw(st.sampled_from(["S", "SA", "A", "PA", "FA", "R", "RA"]))
        l4 = TCP(sport=sport, dport=dport, flags=flags)
    else:
        l4 = UDP(sport=sport, dport=dport)
    pkt: Packet
    if six:
        pkt = IPv6(src=src, dst=dst)
        for ext in draw(EXTENSIONS):
            pkt = pkt / ext()
        pkt = pkt / l4 / Raw(draw(PAYLOAD))
    else:
        pkt = IP(src=src, dst=dst) / l4 / Raw(draw(PAYLOAD))
    data = bytes(pkt)
    family, proto = (6 if six else 4), (6 if isinstance(l4, TCP) else 17)
    addr = int(ipaddress.ip_address(src)), int(ipaddress.ip_address(dst))
    return pkt, (family, proto, *addr, sport, dport, len(data))


@st.composite
def packet(draw: st.DrawFn) -> Built:
    kind = draw(st.sampled_from(["whole", "cut", "overwritten", "fragments", "noise"]))
    if kind == "noise":
        return Built(draw(st.binary(max_size=200)), None)
    pkt, expected = draw(valid_packet())
    data = bytes(pkt)
    if kind == "whole":
        return Built(data, expected)
    if kind == "cut":
        return Built(data[: draw(st.integers(0, max(0, len(data) - 1)))], None)
    if kind == "fragments":
        size = draw(st.integers(8, 64)) * 8
        if IPv6 in pkt:
            frags = [bytes(f) for f in _fragment6(pkt, size)]
        else:
            frags = [bytes(f) for f in fragment(pkt, fragsize=size)]
        return Built(frags[draw(st.integers(0, len(frags) - 1))], None)
    raw = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] = draw(st.integers(0, 255))
    return Built(bytes(raw), None)


def _fragment6(pkt: Packet, size: int) -> list[Packet]:
    """IPv6 fragments of `pkt` (a fragment header inserted after the fixed header)."""
    head = pkt[IPv6].copy()
    body = bytes(head.payload)
    head.remove_payload()
    out = []
    for off in range(0, len(body), size):
        chunk = body[off : off + size]
        more = off + size < len(body)
        frag = IPv6ExtHdrFragment(nh=head.nh, offset=off // 8, m=int(more), id=7)
        whole = IPv6(src=head.src, dst=head.dst, nh=44) / frag / Raw(chunk)
        out.append(whole)
    return out


FRAMING = {
    LINKTYPE_RAW: lambda b: b,
    LINKTYPE_IPV4: lambda b: b,
    LINKTYPE_IPV6: lambda b: b,
    LINKTYPE_ETHERNET: eth,
    LINKTYPE_LINUX_SLL: sll,
    LINKTYPE_LINUX_SLL2: sll2,
    LINKTYPE_NULL: lambda b: null(b, 2 if b[:1] and b[0] >> 4 == 4 else 10),
}


@st.composite
def capture(draw: st.DrawFn) -> tuple[int, list[Built], list[bytes]]:
    linktype = draw(st.sampled_from([*FRAMING, 147, 9999]))  # 147, 9999: not decoded
    packets = draw(st.lists(packet(), min_size=1, max_size=12))
    frame = FRAMING.get(linktype, lambda b: b)
    # an IPv6 packet in a LINKTYPE_IPV4 file (and the reverse) must be refused, not read
    return linktype, packets, [frame(p.data) for p in packets]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(capture())
def test_decode_only_ever_counts_a_reason_and_reads_whole_packets_as_built(
    built: tuple[int, list[Built], list[bytes]],
) -> None:
    linktype, packets, frames = built
    with tempfile.TemporaryDirectory() as tmp:
        path = write_pcap(
            Path(tmp) / "fuzz.pcap",
            [(T0 + i, f) for i, f in enumerate(frames)],
            linktype,
        )
        raws = list(open_capture(path).batches())
    decoded = [decode(raw) for raw in raws]
    assert sum(len(d) + sum(d.failures.values()) for d in decoded) == len(frames)
    for d in decoded:
        assert set(d.failures) <= set(REASONS)
        assert ((d.proto == 6) | (d.proto == 17)).all()
        assert ((d.family == 4) | (d.family == 6)).all()
        assert ((d.payload_bytes >= 0) & (d.payload_bytes <= d.ip_bytes)).all()
    table = FlowTable(Timeouts(), attribute=lambda *a: Attribution("acme"), is_client=_none)
    for d in decoded:
        table.process(d)
    assert table.stats.bytes == sum(int(d.ip_bytes.sum()) for d in decoded)
    # the whole valid packets, where the link type carries them, read as built
    carried = {
        LINKTYPE_RAW: (4, 6),
        LINKTYPE_IPV4: (4,),
        LINKTYPE_IPV6: (6,),
        LINKTYPE_ETHERNET: (4, 6),
        LINKTYPE_LINUX_SLL: (4, 6),
        LINKTYPE_LINUX_SLL2: (4, 6),
        LINKTYPE_NULL: (4, 6),
    }.get(linktype, ())
    facts = {
        float(d.ts[i]): (
            int(d.family[i]),
            int(d.proto[i]),
            _addr(int(d.family[i]), int(d.src_hi[i]), int(d.src_lo[i])),
            _addr(int(d.family[i]), int(d.dst_hi[i]), int(d.dst_lo[i])),
            int(d.sport[i]),
            int(d.dport[i]),
            int(d.ip_bytes[i]),
        )
        for d in decoded
        for i in range(len(d))
    }
    for i, p in enumerate(packets):
        if p.expected is not None and p.expected[0] in carried:
            assert facts.get(T0 + i) == p.expected, (i, linktype, p.data.hex())


def _addr(family: int, hi: int, lo: int) -> int:
    return (hi << 64) | lo if family == 6 else lo


def _none(_family: int, _addr: int) -> bool:
    return False
