"""decode() and the capture readers, checked against scapy's reading of the same bytes.

Every capture here is written by tests/helpers/pcapwrite.py (independent struct code), read with
open_capture() and decoded; the oracle is scapy's dissection of the frame or the IP header.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import struct
import tempfile
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.config import conf
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv46,
)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw, fuzz

from tests.helpers.pcapwrite import (
    AF_INET,
    AF_INET6_BSD,
    AF_INET6_LINUX,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    eth,
    null,
    sll,
    sll2,
    write_pcap,
    write_pcapng,
)
from tunnelacct.capture.batch import RawBatch
from tunnelacct.capture.decode import (
    FRAG_FIRST,
    FRAG_LATER,
    FRAG_NONE,
    DecodedBatch,
    decode,
    packets_at,
)
from tunnelacct.capture.pcapfile import CHUNK_BYTES, CaptureReader, open_capture
from tunnelacct.capture.reasons import REASONS
from tunnelacct.errors import CaptureFormatError

T0 = 1_700_000_000.0
AF_INET6_DARWIN = 30
LINKTYPE_RAW_12, LINKTYPE_RAW_14 = 12, 14
LINKTYPE_IEEE802_11 = 105  # a real link type tunnelacct does not decode

TCP4 = (
    IP(src="100.64.0.2", dst="10.99.0.5", id=4242, ttl=63)
    / TCP(sport=40000, dport=443, flags="PA", seq=1000, ack=2000)
    / Raw(b"q" * 333)
)
UDP6 = (
    IPv6(src="fd00:64::2", dst="fd00:99::5", hlim=63) / UDP(sport=5353, dport=53) / Raw(b"d" * 77)
)
TCP6 = IPv6(src="fd00:64::3", dst="fd00:99::5") / TCP(sport=50001, dport=22, flags="S")
UDP4 = IP(src="100.64.0.3", dst="10.99.0.5") / UDP(sport=12345, dport=5353) / Raw(b"u" * 1200)
TCP4_BULK = (
    IP(src="10.99.0.5", dst="100.64.0.2")
    / TCP(
        sport=443,
        dport=40000,
        flags="A",
        options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))],
    )
    / Raw(b"B" * 1400)
)

# scapy's dissector for each link type (LINKTYPE_RAW 14 is the OpenBSD spelling of 12)
SCAPY_LAYER = {**conf.l2types.num2layer, LINKTYPE_RAW_14: conf.l2types.num2layer[LINKTYPE_RAW]}


# -- oracle ------------------------------------------------------------------------------------


def ip_int(text: str) -> int:
    return int(ipaddress.ip_address(text))


def scapy_parse(frame: bytes, linktype: int) -> Packet:
    """scapy's dissection of a frame; where scapy reads the link header but does not bind the
    next layer (BSD loopback families 24/30), its payload is read as raw IP."""
    pkt = SCAPY_LAYER[linktype](frame)
    if IP not in pkt and IPv6 not in pkt and Raw in pkt:
        pkt = IPv46(pkt[Raw].load)
    return pkt


def scapy_facts(frame: bytes, linktype: int) -> dict[str, int]:
    """What scapy reads from a frame: addresses, ports, IP length, L4 payload length, flags."""
    pkt = scapy_parse(frame, linktype)
    if IP in pkt:
        ip = pkt[IP]
        family, proto, ip_len, l3_hdr = 4, ip.proto, ip.len, ip.ihl * 4
    else:
        ip = pkt[IPv6]
        family, proto, ip_len, l3_hdr = 6, None, ip.plen + 40, 40
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    l4_hdr = l4.dataofs * 4 if TCP in pkt else 8
    if family == 6:
        proto = 6 if TCP in pkt else 17
        l3_hdr = len(ip) - len(l4)  # 40 + every extension header scapy walked
    return {
        "family": family,
        "proto": proto,
        "src": ip_int(ip.src),
        "dst": ip_int(ip.dst),
        "sport": l4.sport,
        "dport": l4.dport,
        "ip_bytes": ip_len,
        "payload_bytes": ip_len - l3_hdr - l4_hdr,
        "flags": int(l4.flags) if TCP in pkt else 0,
    }


def decoded_facts(d: DecodedBatch, i: int) -> dict[str, int]:
    fam = int(d.family[i])
    src = (int(d.src_hi[i]) << 64 | int(d.src_lo[i])) if fam == 6 else int(d.src_lo[i])
    dst = (int(d.dst_hi[i]) << 64 | int(d.dst_lo[i])) if fam == 6 else int(d.dst_lo[i])
    return {
        "family": fam,
        "proto": int(d.proto[i]),
        "src": src,
        "dst": dst,
        "sport": int(d.sport[i]),
        "dport": int(d.dport[i]),
        "ip_bytes": int(d.ip_bytes[i]),
        "payload_bytes": int(d.payload_bytes[i]),
        "flags": int(d.flags[i]),
    }


def read_all(path: Path) -> tuple[list[RawBatch], CaptureReader]:
    reader = open_capture(path)
    return list(reader.batches()), reader


def decode_file(path: Path) -> list[DecodedBatch]:
    batches, _ = read_all(path)
    return [decode(raw) for raw in batches]


def one_batch(path: Path) -> DecodedBatch:
    batches = decode_file(path)
    assert len(batches) == 1, "a small test file is read as one batch"
    return batches[0]


ARRAY_FIELDS = [
    f.name for f in dataclasses.fields(DecodedBatch) if f.name not in ("interface", "failures")
]


def assert_same_arrays(a: DecodedBatch, b: DecodedBatch) -> None:
    for name in ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            assert x == y, name
    assert a.failures == b.failures


# The fields of a DecodedBatch that are not one value per packet.
NOT_PER_PACKET = ("interface", "packets_in", "failures", "failed_index", "failed_reason")


def test_packets_at_takes_every_per_packet_column_at_the_positions_given() -> None:
    """packets_at() (one UTC day of a batch, in the flow table) copies every column that holds
    a value per packet, as DecodedBatch's fields name them, at the positions given and in
    their order; the part's packets_in is its own, and the failures stay with the batch."""
    rng = np.random.default_rng(3)
    count = 50
    columns: dict[str, np.ndarray] = {}
    for column in dataclasses.fields(DecodedBatch):
        if column.name in NOT_PER_PACKET:
            continue
        values = rng.integers(0, 2**31, count)
        if column.name == "ts":
            columns[column.name] = values.astype(np.float64) + 0.25
        elif column.name.endswith(("_hi", "_lo")):
            columns[column.name] = values.astype(np.uint64)
        else:
            columns[column.name] = values.astype(np.int64)
    batch = DecodedBatch(**columns, interface="wg0", packets_in=count + 3, failures={"short": 3})
    index = np.array([7, 3, 3, 49, 0])
    part = packets_at(batch, index)
    for name, values in columns.items():
        np.testing.assert_array_equal(getattr(part, name), values[index], err_msg=name)
    assert part.interface == "wg0"
    assert part.packets_in == len(index)
    assert part.failures == {}


# -- link types --------------------------------------------------------------------------------

Wrap = Callable[[bytes], bytes]


def _null_family(ip: bytes, v6_family: int) -> int:
    return v6_family if ip[0] >> 4 == 6 else AF_INET


LINKS: dict[str, tuple[int, Wrap]] = {
    "raw-12": (LINKTYPE_RAW_12, lambda ip: ip),
    "raw-14": (LINKTYPE_RAW_14, lambda ip: ip),
    "raw-101": (LINKTYPE_RAW, lambda ip: ip),
    "ipv4-228": (LINKTYPE_IPV4, lambda ip: ip),
    "ipv6-229": (LINKTYPE_IPV6, lambda ip: ip),
    "ethernet": (LINKTYPE_ETHERNET, lambda ip: eth(ip)),
    "ethernet-802.1q": (LINKTYPE_ETHERNET, lambda ip: eth(ip, vlans=1)),
    "ethernet-802.1ad+802.1q": (LINKTYPE_ETHERNET, lambda ip: eth(ip, vlans=2)),
    "linux-sll": (LINKTYPE_LINUX_SLL, sll),
    "linux-sll2": (LINKTYPE_LINUX_SLL2, sll2),
    "null-bsd": (LINKTYPE_NULL, lambda ip: null(ip, _null_family(ip, AF_INET6_BSD))),
    "null-darwin": (LINKTYPE_NULL, lambda ip: null(ip, _null_family(ip, AF_INET6_DARWIN))),
    "null-linux": (LINKTYPE_NULL, lambda ip: null(ip, _null_family(ip, AF_INET6_LINUX))),
    "loop": (
        LINKTYPE_LOOP,
        lambda ip: null(ip, _null_family(ip, AF_INET6_BSD), big_endian=True),
    ),
}
PACKETS = {"tcp4": TCP4, "udp6": UDP6, "tcp6": TCP6, "udp4": UDP4}
LINK_CASES = [
    pytest.param(link, name, id=f"{link}-{name}")
    for link in LINKS
    for name in PACKETS
    if not (link == "ipv4-228" and "6" in name) and not (link == "ipv6-229" and "4" in name)
]


@pytest.mark.parametrize(("link", "name"), LINK_CASES)
def test_every_link_type_decodes_the_fields_scapy_reads(
    tmp_path: Path, link: str, name: str
) -> None:
    linktype, wrap = LINKS[link]
    frame = wrap(bytes(PACKETS[name]))
    path = write_pcap(tmp_path / "c.pcap", [(T0, frame)], linktype)
    d = one_batch(path)
    assert d.failures == {}
    assert len(d) == 1
    assert decoded_facts(d, 0) == scapy_facts(frame, linktype)
    assert d.frag[0] == FRAG_NONE


def test_ethernet_padding_is_not_counted_as_ip_bytes(tmp_path: Path) -> None:
    syn = IP(src="100.64.0.2", dst="10.99.0.5") / TCP(sport=1, dport=2, flags="S")
    frame = eth(bytes(syn), pad=True)
    assert len(frame) == 60 > 14 + len(syn)
    d = one_batch(write_pcap(tmp_path / "p.pcap", [(T0, frame)], LINKTYPE_ETHERNET))
    assert int(d.ip_bytes[0]) == Ether(frame)[IP].len == 40
    assert int(d.payload_bytes[0]) == 0


# -- file formats ------------------------------------------------------------------------------

TIMED = [
    (Decimal("1700000000.000001"), TCP4),
    (Decimal("1700000000.500000"), UDP6),
    (Decimal("1700000123.999999"), TCP6),
    (Decimal("1700000124.123456"), UDP4),
]


@pytest.mark.parametrize("nanosecond", [False, True], ids=["usec", "nsec"])
@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
def test_pcap_variants_give_packet_times_to_the_microsecond_and_scapy_fields(
    tmp_path: Path, nanosecond: bool, big_endian: bool
) -> None:
    frames = [(ts, eth(bytes(p))) for ts, p in TIMED]
    path = write_pcap(
        tmp_path / "t.pcap",
        frames,
        LINKTYPE_ETHERNET,
        nanosecond=nanosecond,
        big_endian=big_endian,
    )
    d = one_batch(path)
    assert len(d) == len(TIMED)
    for i, (ts, frame) in enumerate(frames):
        assert abs(float(d.ts[i]) - float(ts)) < 1e-6
        assert decoded_facts(d, i) == scapy_facts(frame, LINKTYPE_ETHERNET)


def test_pcap_nanosecond_fraction_below_a_microsecond_is_kept(tmp_path: Path) -> None:
    ts = Decimal("1700000000.000000400")  # 0 us: only a nanosecond reading sees it
    path = write_pcap(tmp_path / "n.pcap", [(ts, bytes(TCP4))], LINKTYPE_RAW, nanosecond=True)
    d = one_batch(path)
    assert 2e-7 < float(d.ts[0]) - 1_700_000_000 < 7e-7  # float64 holds ~0.24 us here


@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
def test_pcapng_two_interfaces_with_own_link_types_and_time_resolutions(
    tmp_path: Path, big_endian: bool
) -> None:
    interfaces = [(LINKTYPE_ETHERNET, 6, "eth0"), (LINKTYPE_IPV6, 9, "wg0")]
    packets: list[tuple[int, Decimal, bytes]] = [
        (0, Decimal("1700000000.000001"), eth(bytes(TCP4), vlans=1)),
        (1, Decimal("1700000000.000002345"), bytes(UDP6)),
        (0, Decimal("1700000060.654321"), eth(bytes(UDP4))),
        (1, Decimal("1700000060.987654321"), bytes(TCP6)),
    ]
    path = write_pcapng(tmp_path / "two.pcapng", interfaces, packets, big_endian=big_endian)
    got = decode_file(path)
    ts = np.concatenate([d.ts for d in got])
    assert sum(len(d) for d in got) == len(packets)
    assert all(d.failures == {} for d in got)
    facts = [decoded_facts(d, i) for d in got for i in range(len(d))]
    for i, (iface, t, frame) in enumerate(packets):
        assert abs(float(ts[i]) - float(t)) < 1e-6
        assert facts[i] == scapy_facts(frame, interfaces[iface][0])


def test_pcapng_binary_time_resolution_and_single_interface_name(tmp_path: Path) -> None:
    tsresol = 0x80 | 20  # 2^-20 s per tick
    ts = Decimal(1_700_000_000) + Decimal(777_777) / Decimal(2**20)
    path = write_pcapng(
        tmp_path / "b.pcapng", [(LINKTYPE_RAW, tsresol, "wg0")], [(0, ts, bytes(TCP4))]
    )
    d = one_batch(path)
    assert abs(float(d.ts[0]) - float(ts)) < 1e-6
    assert d.interface == "wg0"


def test_headers_only_capture_decodes_identical_arrays(tmp_path: Path) -> None:
    pkts = [TCP4, UDP6, TCP6, UDP4, TCP4_BULK, TCP4 / Raw(b"z" * 900)]
    frames = [(T0 + i, eth(bytes(p), vlans=i % 3)) for i, p in enumerate(pkts)]
    full = one_batch(write_pcap(tmp_path / "full.pcap", frames, LINKTYPE_ETHERNET))
    heads = one_batch(write_pcap(tmp_path / "hdr.pcap", frames, LINKTYPE_ETHERNET, snaplen=96))
    assert len(full) == len(pkts)
    assert_same_arrays(full, heads)
    assert [int(b) for b in heads.ip_bytes] == [len(p) for p in pkts]


def test_ipv6_extension_chain_with_first_fragment_reaches_tcp_ports(tmp_path: Path) -> None:
    pkt = (
        IPv6(src="fd00:64::2", dst="fd00:99::5")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting()
        / IPv6ExtHdrFragment(m=1, offset=0, id=0xABCDEF)
        / TCP(sport=41000, dport=8080, flags="PA")
        / Raw(b"x" * 64)
    )
    raw = bytes(pkt)
    d = one_batch(write_pcap(tmp_path / "x.pcap", [(T0, raw)], LINKTYPE_RAW))
    assert d.failures == {}
    got = decoded_facts(d, 0)
    assert got == scapy_facts(raw, LINKTYPE_RAW)
    assert (got["sport"], got["dport"], got["payload_bytes"]) == (41000, 8080, 64)
    assert got["ip_bytes"] == IPv6(raw).plen + 40 == len(raw)
    assert int(d.frag[0]) == FRAG_FIRST
    assert int(d.frag_id[0]) == 0xABCDEF


def test_ipv6_later_fragment_carries_no_ports_and_its_fragment_id(tmp_path: Path) -> None:
    pkt = (
        IPv6(src="fd00:64::2", dst="fd00:99::5")
        / IPv6ExtHdrFragment(nh=17, m=0, offset=100, id=77)
        / Raw(b"r" * 48)
    )
    d = one_batch(write_pcap(tmp_path / "l.pcap", [(T0, bytes(pkt))], LINKTYPE_RAW))
    assert (int(d.frag[0]), int(d.frag_id[0]), int(d.proto[0])) == (FRAG_LATER, 77, 17)
    assert (int(d.sport[0]), int(d.dport[0])) == (0, 0)
    assert int(d.ip_bytes[0]) == 40 + 8 + 48
    assert int(d.payload_bytes[0]) == 48


@pytest.mark.parametrize(
    "options",
    [[IPOption_RR(routers=["192.0.2.1", "192.0.2.2"])], [IPOption_NOP()] * 4],
    ids=["record-route", "nops"],
)
@pytest.mark.parametrize("l4", ["tcp", "udp"])
def test_ipv4_options_move_the_transport_header(
    tmp_path: Path, options: list[Packet], l4: str
) -> None:
    proto = TCP(sport=2000, dport=80, flags="A") if l4 == "tcp" else UDP(sport=2000, dport=53)
    raw = bytes(IP(src="100.64.0.2", dst="10.99.0.5", options=options) / proto / Raw(b"o" * 50))
    assert IP(raw).ihl > 5
    d = one_batch(write_pcap(tmp_path / "o.pcap", [(T0, raw)], LINKTYPE_RAW))
    assert d.failures == {}
    got = decoded_facts(d, 0)
    assert got == scapy_facts(raw, LINKTYPE_RAW)
    assert (got["sport"], got["payload_bytes"]) == (2000, 50)


def test_ipv4_fragments_keep_ip_lengths_and_only_the_first_has_ports(tmp_path: Path) -> None:
    frags = fragment(
        IP(src="100.64.0.2", dst="10.99.0.5", id=999) / UDP(sport=7, dport=9) / Raw(b"f" * 3000),
        fragsize=1000,
    )
    d = one_batch(write_pcap(tmp_path / "f.pcap", [(T0, bytes(f)) for f in frags], LINKTYPE_RAW))
    lens = [IP(bytes(f)).len for f in frags]
    assert len(d) == len(frags) > 1
    assert [int(x) for x in d.ip_bytes] == lens
    assert [int(x) for x in d.frag] == [FRAG_FIRST] + [FRAG_LATER] * (len(frags) - 1)
    assert {int(x) for x in d.frag_id} == {999}
    assert (int(d.sport[0]), int(d.dport[0])) == (7, 9)
    assert [int(x) for x in d.payload_bytes] == [lens[0] - 20 - 8] + [n - 20 for n in lens[1:]]


# -- malformed input: one reason each ----------------------------------------------------------

IP4 = bytes(IP(src="100.64.0.2", dst="10.99.0.5") / TCP(sport=1, dport=2) / Raw(b"p" * 40))
IP6 = bytes(IPv6(src="fd00:64::2", dst="fd00:99::5") / UDP(sport=1, dport=2) / Raw(b"p" * 40))


def _with(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value) :]


def _ipv6_ext_chain(n: int) -> bytes:
    pkt: Packet = IPv6(src="fd00:64::2", dst="fd00:99::5")
    for _ in range(n):
        pkt = pkt / IPv6ExtHdrDestOpt()
    return bytes(pkt / UDP(sport=1, dport=2))


# (linktype, captured bytes, wire length or None for the captured length, expected reason)
MALFORMED: dict[str, tuple[int, bytes, int | None, str]] = {
    "unsupported-linktype": (LINKTYPE_IEEE802_11, IP4, None, "unsupported_linktype"),
    "ethernet-header-cut": (LINKTYPE_ETHERNET, eth(IP4)[:10], 100, "truncated_link_header"),
    "vlan-tag-cut": (LINKTYPE_ETHERNET, eth(IP4, vlans=1)[:16], 100, "truncated_link_header"),
    "sll-header-cut": (LINKTYPE_LINUX_SLL, sll(IP4)[:12], 100, "truncated_link_header"),
    "sll2-header-cut": (LINKTYPE_LINUX_SLL2, sll2(IP4)[:18], 100, "truncated_link_header"),
    "null-header-cut": (LINKTYPE_NULL, b"\x02\x00", 100, "truncated_link_header"),
    "arp": (
        LINKTYPE_ETHERNET,
        bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:00:02") / ARP(pdst="10.99.0.1")),
        None,
        "not_ip",
    ),
    "null-unknown-family": (LINKTYPE_NULL, null(IP4, 7), None, "not_ip"),
    "ipv4-header-cut": (LINKTYPE_RAW, IP4[:12], len(IP4), "truncated_ip_header"),
    "ipv6-header-cut": (LINKTYPE_RAW, IP6[:30], len(IP6), "truncated_ip_header"),
    "ip-version-5": (LINKTYPE_RAW, b"\x55" + IP4[1:], None, "bad_ip_version"),
    "ipv6-on-ipv4-linktype": (LINKTYPE_IPV4, IP6, None, "bad_ip_version"),
    "ipv6-behind-ipv4-ethertype": (
        LINKTYPE_ETHERNET,
        eth(IP6, ethertype=0x0800),
        None,
        "bad_ip_version",
    ),
    "ihl-below-5": (LINKTYPE_RAW, b"\x44" + IP4[1:], None, "bad_ip_header_length"),
    "options-cut": (
        LINKTYPE_RAW,
        bytes(IP(options=[IPOption_NOP()] * 8) / TCP())[:24],
        60,
        "truncated_ip_header",
    ),
    "total-length-below-header": (
        LINKTYPE_RAW,
        _with(IP4, 2, struct.pack(">H", 12)),
        None,
        "bad_ip_total_length",
    ),
    "ipv6-payload-length-zero": (LINKTYPE_RAW, _with(IP6, 4, b"\0\0"), None, "bad_ip_total_length"),
    "total-length-beyond-frame": (
        LINKTYPE_RAW,
        _with(IP4, 2, struct.pack(">H", 1500)),
        None,
        "ip_length_exceeds_frame",
    ),
    "ipv6-payload-length-beyond-frame": (
        LINKTYPE_RAW,
        _with(IP6, 4, struct.pack(">H", 900)),
        None,
        "ip_length_exceeds_frame",
    ),
    "ipv6-extension-cut": (
        LINKTYPE_RAW,
        bytes(IPv6(nh=60, plen=16) / Raw(b"\x11\x01\0\0")),
        56,
        "truncated_ipv6_extension",
    ),
    "nine-ipv6-extensions": (LINKTYPE_RAW, _ipv6_ext_chain(9), None, "too_many_ipv6_extensions"),
    "icmp": (LINKTYPE_RAW, bytes(IP(dst="10.99.0.5") / ICMP()), None, "other_protocol"),
    "icmpv6": (
        LINKTYPE_RAW,
        bytes(IPv6(dst="fd00:99::5") / ICMPv6EchoRequest()),
        None,
        "other_protocol",
    ),
    "tcp-header-cut-by-ip-length": (
        LINKTYPE_RAW,
        bytes(IP(len=30) / TCP())[:30],
        None,
        "truncated_tcp_header",
    ),
    "tcp-header-cut-by-capture": (LINKTYPE_RAW, IP4[:30], len(IP4), "truncated_tcp_header"),
    "tcp-data-offset-below-5": (
        LINKTYPE_RAW,
        bytes(IP() / TCP(dataofs=2)),
        None,
        "bad_tcp_header_length",
    ),
    "tcp-data-offset-beyond-ip-payload": (
        LINKTYPE_RAW,
        bytes(IP() / TCP(dataofs=15)),
        None,
        "bad_tcp_header_length",
    ),
    "udp-header-cut": (LINKTYPE_RAW, bytes(IP(len=24) / UDP())[:24], None, "truncated_udp_header"),
    "udp-length-below-8": (
        LINKTYPE_RAW,
        bytes(IP() / UDP(len=4) / Raw(b"abcd")),
        None,
        "bad_udp_length",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_packet_is_counted_under_exactly_its_reason(tmp_path: Path, case: str) -> None:
    linktype, data, wirelen, reason = MALFORMED[case]
    assert reason in REASONS
    rec = (T0, data) if wirelen is None else (T0, data, wirelen)
    d = one_batch(write_pcap(tmp_path / "m.pcap", [rec], linktype))
    assert len(d) == 0
    assert d.packets_in == 1
    assert d.failures == {reason: 1}
    assert d.failed_index.tolist() == [0]
    assert [REASONS[r] for r in d.failed_reason] == [reason]


def test_malformed_packets_among_good_ones_are_each_counted_once(tmp_path: Path) -> None:
    cases = [c for c in MALFORMED.values() if c[0] == LINKTYPE_RAW]
    records: list[tuple[int, bytes, int | None]] = []
    for i, (lt, data, wirelen, _reason) in enumerate(cases):
        records.append((lt, data, wirelen))
        records.append((LINKTYPE_RAW, bytes(TCP4 if i % 2 else UDP6), None))
    recs = [
        (T0 + i, data) if w is None else (T0 + i, data, w)
        for i, (_lt, data, w) in enumerate(records)
    ]
    d = one_batch(write_pcap(tmp_path / "mix.pcap", recs, LINKTYPE_RAW))
    expected: dict[str, int] = {}
    for _lt, _data, _w, reason in cases:
        expected[reason] = expected.get(reason, 0) + 1
    assert d.failures == expected
    assert len(d) == len(cases)
    assert d.failed_index.tolist() == list(range(0, 2 * len(cases), 2))
    assert len(d) + sum(d.failures.values()) == d.packets_in == len(records)


# -- broken files ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_records_straddling_read_chunks_are_all_decoded(tmp_path: Path, fmt: str) -> None:
    frame = bytes(UDP4)
    n = 2 * CHUNK_BYTES // (len(frame) + 16) + 5  # the file spans three reads
    times = [Decimal(1_700_000_000) + Decimal(i) / 1000 for i in range(n)]
    if fmt == "pcap":
        path = write_pcap(tmp_path / "big.pcap", [(t, frame) for t in times], LINKTYPE_RAW)
    else:
        path = write_pcapng(
            tmp_path / "big.pcapng", [(LINKTYPE_RAW, 6, None)], [(0, t, frame) for t in times]
        )
    assert path.stat().st_size > 2 * CHUNK_BYTES
    decoded = decode_file(path)
    assert len(decoded) > 1
    assert sum(len(d) for d in decoded) == n
    assert all(d.failures == {} for d in decoded)
    ts = np.concatenate([d.ts for d in decoded])
    assert np.max(np.abs(ts - np.array([float(t) for t in times]))) < 1e-6
    assert set(np.concatenate([d.ip_bytes for d in decoded]).tolist()) == {IP(frame).len}


@pytest.mark.parametrize("where", ["data", "record-header"])
def test_pcap_cut_inside_its_last_record_keeps_earlier_packets(tmp_path: Path, where: str) -> None:
    last = eth(bytes(TCP4_BULK))
    frames = [(T0, eth(bytes(TCP4))), (T0 + 1, eth(bytes(UDP6))), (T0 + 2, last)]
    path = write_pcap(tmp_path / "cut.pcap", frames, LINKTYPE_ETHERNET)
    size = path.stat().st_size
    # keep 10 bytes of the last record's data, or 10 of its 16-byte record header
    keep = size - len(last) + 10 if where == "data" else size - len(last) - 16 + 10
    path.write_bytes(path.read_bytes()[:keep])
    batches, reader = read_all(path)
    decoded = [decode(raw) for raw in batches]
    assert reader.stats.truncated_tail
    assert reader.stats.packets == 2
    assert sum(len(d) for d in decoded) == 2
    facts = [decoded_facts(d, i) for d in decoded for i in range(len(d))]
    assert facts == [scapy_facts(f, LINKTYPE_ETHERNET) for _, f in frames[:2]]


def test_pcap_record_with_impossible_length_raises_with_its_byte_offset(tmp_path: Path) -> None:
    first = eth(bytes(TCP4))
    frames = [(T0, first), (T0 + 1, eth(bytes(UDP6))), (T0 + 2, eth(bytes(TCP6)))]
    path = write_pcap(tmp_path / "bad.pcap", frames, LINKTYPE_ETHERNET)
    second_record = 24 + 16 + len(first)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, second_record + 8, 0x7FFF_FFFF)  # caplen of record 2
    path.write_bytes(bytes(data))
    reader = open_capture(path)
    got: list[RawBatch] = []
    with pytest.raises(CaptureFormatError) as err:
        got.extend(reader.batches())
    assert f"byte {second_record} " in err.value.why
    # issue 16: the record before the damage (same read chunk) is still handed out
    decoded = [decode(raw) for raw in got]
    facts = [decoded_facts(d, i) for d in decoded for i in range(len(d))]
    assert facts == [scapy_facts(frames[0][1], LINKTYPE_ETHERNET)]


def test_pcapng_block_with_invalid_length_raises_with_its_byte_offset(tmp_path: Path) -> None:
    path = write_pcapng(
        tmp_path / "bad.pcapng", [(LINKTYPE_RAW, 6, None)], [(0, T0, IP4), (0, T0 + 1, IP4)]
    )
    data = bytearray(path.read_bytes())
    shb_len = struct.unpack_from("<I", data, 4)[0]
    idb_len = struct.unpack_from("<I", data, shb_len + 4)[0]
    epb_len = struct.unpack_from("<I", data, shb_len + idb_len + 4)[0]
    second_epb = shb_len + idb_len + epb_len
    struct.pack_into("<I", data, second_epb + 4, 13)  # not a multiple of 4
    path.write_bytes(bytes(data))
    got: list[RawBatch] = []
    with pytest.raises(CaptureFormatError) as err:
        got.extend(open_capture(path).batches())
    assert f"byte {second_epb} " in err.value.why
    assert sum(len(raw) for raw in got) == 1  # issue 16: the block before it is handed out


@pytest.mark.parametrize("damage", ["unknown-interface", "caplen-beyond-block"])
def test_pcapng_unreadable_packet_block_hands_out_the_blocks_before_it(
    tmp_path: Path, damage: str
) -> None:
    packets = [(0, T0 + i, IP4) for i in range(5)]
    path = write_pcapng(tmp_path / "bad.pcapng", [(LINKTYPE_RAW, 6, None)], packets)
    data = bytearray(path.read_bytes())
    off = 0
    for _ in range(2 + 3):  # SHB, IDB, then three good EPBs
        off += struct.unpack_from("<I", data, off + 4)[0]
    if damage == "unknown-interface":
        struct.pack_into("<I", data, off + 8, 7)  # interface 7 of 1
    else:
        struct.pack_into("<I", data, off + 20, 4096)  # captured length beyond the block
    path.write_bytes(bytes(data))
    got: list[RawBatch] = []
    with pytest.raises(CaptureFormatError) as err:
        got.extend(open_capture(path).batches())
    assert f"packet block at byte {off} " in err.value.why
    assert [float(t) for raw in got for t in raw.ts] == [float(T0 + i) for i in range(3)]


def test_timestamps_no_record_can_hold_are_counted_as_bad_timestamp(tmp_path: Path) -> None:
    # Issue 16: if_tsresol 0x80 (2^0 s) and a timestamp of 2^64-1 raised OverflowError in the
    # writer; such packets are a counted decode error, the others decode as usual.
    times = [Decimal(2**64 - 1), T0, Decimal(10**12), T0 + 1]  # 10**12 s: the year 33658
    path = write_pcapng(
        tmp_path / "times.pcapng", [(LINKTYPE_RAW, 0x80, None)], [(0, t, IP4) for t in times]
    )
    batches = decode_file(path)
    assert sum(b.failures.get("bad_timestamp", 0) for b in batches) == 2
    assert [float(t) for b in batches for t in b.ts] == [float(T0), float(T0 + 1)]


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a capture file\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64],
    ids=["empty", "text", "png"],
)
def test_non_capture_file_raises_capture_format_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureFormatError):
        open_capture(path)


def test_pcap_header_cut_short_raises_capture_format_error(tmp_path: Path) -> None:
    path = tmp_path / "short.pcap"
    path.write_bytes(struct.pack("<IHH", 0xA1B2C3D4, 2, 4))
    with pytest.raises(CaptureFormatError):
        read_all(path)


# -- properties: nothing raises, every packet is accounted for ---------------------------------

FUZZ_LINKTYPES = [lt for lt, _ in LINKS.values()] + [LINKTYPE_IEEE802_11, 0xFFFF]
VALID_FRAMES = [(lt, wrap(bytes(p))) for lt, wrap in LINKS.values() for p in PACKETS.values()]


@st.composite
def junk_frames(draw: st.DrawFn) -> tuple[int, bytes, int]:
    """(interface index, captured bytes, extra wire bytes): random bytes, or a valid frame with
    random bytes overwritten and its end cut off."""
    if draw(st.booleans()):
        data = draw(st.binary(max_size=120))
        iface = draw(st.integers(0, len(FUZZ_LINKTYPES) - 1))
    else:
        lt, frame = draw(st.sampled_from(VALID_FRAMES))
        buf = bytearray(frame)
        for _ in range(draw(st.integers(0, 4))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
        data = bytes(buf[: draw(st.integers(0, len(buf)))])
        iface = FUZZ_LINKTYPES.index(lt)
    return iface, data, draw(st.integers(0, 3000))


def _decode_pcapng(
    interfaces: list[int], packets: list[tuple[int, bytes, int]]
) -> list[DecodedBatch]:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_pcapng(
            Path(tmp) / "fuzz.pcapng",
            [(lt, 6, None) for lt in interfaces],
            [
                (iface, T0 + i, data, len(data) + extra)
                for i, (iface, data, extra) in enumerate(packets)
            ],
        )
        return decode_file(path)


def _assert_every_packet_accounted(decoded: list[DecodedBatch], n: int) -> None:
    assert sum(d.packets_in for d in decoded) == n
    for d in decoded:
        assert len(d) + sum(d.failures.values()) == d.packets_in
        assert set(d.failures) <= set(REASONS) - {"ok"}
        assert len(np.unique(d.failed_index)) == len(d.failed_index)
        assert all(getattr(d, f).shape == (len(d),) for f in ("ts", "ip_bytes", "sport", "frag"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(junk_frames(), max_size=40))
def test_random_bytes_on_every_link_type_never_raise_and_are_all_counted(
    packets: list[tuple[int, bytes, int]],
) -> None:
    decoded = _decode_pcapng(FUZZ_LINKTYPES, packets)
    _assert_every_packet_accounted(decoded, len(packets))
    for d in decoded:
        # whatever decoded has a plausible IP length: never more than the wire could hold
        assert np.all(d.ip_bytes >= 20)
        assert np.all((d.payload_bytes >= 0) & (d.payload_bytes <= d.ip_bytes))


@st.composite
def scapy_fuzzed(draw: st.DrawFn) -> list[tuple[int, bytes, int]]:
    """Packets from scapy's fuzz(), reproducible from a drawn seed, wrapped in random links."""
    rng_seed = draw(st.integers(0, 2**32 - 1))
    state = random.getstate()
    random.seed(rng_seed)  # scapy's RandField draws from the global generator
    try:
        templates = [
            IP() / TCP(),
            IPv6() / UDP(),
            IP(version=4) / TCP(),
            IPv6(version=6) / UDP(),
        ]
        pkts = [bytes(fuzz(random.choice(templates))) for _ in range(25)]
    finally:
        random.setstate(state)
    links = [(i, lt, wrap) for i, (lt, wrap) in enumerate(LINKS.values())]
    out = []
    for raw in pkts:
        i, _lt, wrap = draw(st.sampled_from(links))
        out.append((i, wrap(raw), 0))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scapy_fuzzed())
def test_scapy_fuzzed_ip_tcp_and_ipv6_udp_never_raise_and_agree_with_scapy(
    packets: list[tuple[int, bytes, int]],
) -> None:
    linktypes = [lt for lt, _ in LINKS.values()]
    decoded = _decode_pcapng(linktypes, packets)
    _assert_every_packet_accounted(decoded, len(packets))
    # packets that decoded carry the addresses and IP length scapy reads from their header
    k = 0
    for d in decoded:
        good = set(range(d.packets_in)) - set(d.failed_index.tolist())
        for j, i in enumerate(sorted(good)):
            iface, frame, _ = packets[k + i]
            pkt = scapy_parse(frame, linktypes[iface])
            ip = pkt[IP] if IP in pkt else pkt[IPv6]
            got = decoded_facts(d, j)
            assert (got["src"], got["dst"]) == (ip_int(ip.src), ip_int(ip.dst))
            assert got["ip_bytes"] == (ip.len if IP in pkt else ip.plen + 40)
        k += d.packets_in


def test_rawbatch_of_mixed_link_types_decodes_each_packet_by_its_own_type() -> None:
    frames = [(lt, wrap(bytes(TCP4))) for lt, wrap in LINKS.values() if lt != LINKTYPE_IPV6]
    buf = b"".join(f for _, f in frames)
    lens = np.array([len(f) for _, f in frames], dtype=np.int64)
    raw = RawBatch(
        buf=np.frombuffer(buf, dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64),
        caplens=lens,
        wirelens=lens.copy(),
        ts=np.full(len(frames), T0),
        linktypes=np.array([lt for lt, _ in frames], dtype=np.int64),
        interface="mixed",
    )
    d = decode(raw)
    assert d.failures == {}
    want = scapy_facts(bytes(TCP4), LINKTYPE_RAW)
    assert [decoded_facts(d, i) for i in range(len(d))] == [want] * len(frames)
