"""Minimal, independent writers of pcap and pcapng files and link-layer wrappers, for tests.

Shares no code with `tunnelacct.capture`: the file formats are written from their specs
(tcpdump.org/manpages/pcap-savefile.5.html, IETF draft-ietf-opsawg-pcapng) with struct::

    write_pcap(tmp_path / "a.pcap", [(1.5, eth(bytes(ip_pkt)))], LINKTYPE_ETHERNET)
    write_pcapng(tmp_path / "b.pcapng", [(1, 6, "eth0"), (101, 9, "wg0")],
                 [(0, 1.5, eth(raw_ip)), (1, 1.6, raw_ip)])

Timestamps are float epoch seconds, or `decimal.Decimal` when the exact sub-microsecond value
matters (a float near 1.7e9 only holds ~0.2 us).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Raw

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

ETHERTYPE_IPV4, ETHERTYPE_IPV6 = 0x0800, 0x86DD
ETHERTYPE_8021Q, ETHERTYPE_8021AD = 0x8100, 0x88A8
AF_INET, AF_INET6_LINUX, AF_INET6_BSD = 2, 10, 24

PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
DEFAULT_SNAPLEN = 262144

PCAPNG_SHB, PCAPNG_IDB, PCAPNG_EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
PCAPNG_BOM = 0x1A2B3C4D
OPT_ENDOFOPT, OPT_IF_NAME, OPT_IF_TSRESOL = 0, 2, 9

MAC_DST, MAC_SRC = "02:00:00:00:00:01", "02:00:00:00:00:02"

Timestamp = float | Decimal
PcapRecord = tuple[Timestamp, bytes] | tuple[Timestamp, bytes, int]


def _split_ts(ts: Timestamp, units_per_s: int) -> tuple[int, int]:
    """(whole seconds, fraction in units) of a timestamp, rounded to the nearest unit."""
    total = (Decimal(ts) * units_per_s).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    sec, frac = divmod(int(total), units_per_s)
    return sec, frac


def _ticks(ts: Timestamp, tsresol: int) -> int:
    """Timestamp in units of an if_tsresol value (high bit set: 2^-n, else 10^-n seconds)."""
    scale = Decimal(2) ** (tsresol & 0x7F) if tsresol & 0x80 else Decimal(10) ** tsresol
    return int((Decimal(ts) * scale).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def write_pcap(
    path: str | Path,
    packets: Sequence[PcapRecord],
    linktype: int,
    snaplen: int = DEFAULT_SNAPLEN,
    nanosecond: bool = False,
    big_endian: bool = False,
) -> Path:
    """Write a libpcap file; data longer than `snaplen` is cut, its original length recorded.

    Each packet is (ts, data) or (ts, data, wirelen); wirelen defaults to len(data).
    """
    order = ">" if big_endian else "<"
    units = 10**9 if nanosecond else 10**6
    magic = PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for rec in packets:
        ts, data = rec[0], rec[1]
        wirelen = rec[2] if len(rec) == 3 else len(data)
        cut = data[:snaplen]
        sec, frac = _split_ts(ts, units)
        out.append(struct.pack(order + "IIII", sec, frac, len(cut), wirelen))
        out.append(cut)
    p = Path(path)
    p.write_bytes(b"".join(out))
    return p


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _block(order: str, btype: int, body: bytes) -> bytes:
    """A pcapng block: type, total length, body (padded to 32 bits), total length again."""
    body = _pad4(body)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def _option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + _pad4(value)


def write_pcapng(
    path: str | Path,
    interfaces: Sequence[tuple[int, int, str | None]],
    packets: Sequence[tuple[int, Timestamp, bytes] | tuple[int, Timestamp, bytes, int]],
    big_endian: bool = False,
    snaplen: int = DEFAULT_SNAPLEN,
) -> Path:
    """Write a pcapng file: one section header, one IDB per (linktype, tsresol, name), EPBs.

    `tsresol` is the raw if_tsresol byte: 6 = microseconds, 9 = nanoseconds, 0x80|n = 2^-n s.
    Each packet is (interface index, ts, data[, wirelen]); data is cut to `snaplen`.
    """
    order = ">" if big_endian else "<"
    blocks = [_block(order, PCAPNG_SHB, struct.pack(order + "IHHq", PCAPNG_BOM, 1, 0, -1))]
    for linktype, tsresol, name in interfaces:
        opts = _option(order, OPT_IF_TSRESOL, bytes([tsresol]))
        if name is not None:
            opts += _option(order, OPT_IF_NAME, name.encode())
        opts += _option(order, OPT_ENDOFOPT, b"")
        blocks.append(
            _block(order, PCAPNG_IDB, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)
        )
    for rec in packets:
        iface, ts, data = rec[0], rec[1], rec[2]
        wirelen = rec[3] if len(rec) == 4 else len(data)
        cut = data[:snaplen]
        ticks = _ticks(ts, interfaces[iface][1])
        head = struct.pack(
            order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(cut), wirelen
        )
        blocks.append(_block(order, PCAPNG_EPB, head + cut))
    p = Path(path)
    p.write_bytes(b"".join(blocks))
    return p


def _ethertype(ip_bytes: bytes) -> int:
    """EtherType announcing the IP version in the first nibble (IPv4 unless it says 6)."""
    return ETHERTYPE_IPV6 if ip_bytes[:1] and ip_bytes[0] >> 4 == 6 else ETHERTYPE_IPV4


def eth(ip_bytes: bytes, vlans: int = 0, ethertype: int | None = None, pad: bool = False) -> bytes:
    """Ethernet II frame around an IP packet, with 0, 1 (802.1Q) or 2 (802.1ad + 802.1Q) tags.

    `pad=True` pads the frame to the 60-byte Ethernet minimum like a NIC does.
    """
    etype = _ethertype(ip_bytes) if ethertype is None else ethertype
    if vlans == 0:
        frame = Ether(dst=MAC_DST, src=MAC_SRC, type=etype)
    elif vlans == 1:
        frame = Ether(dst=MAC_DST, src=MAC_SRC, type=ETHERTYPE_8021Q) / Dot1Q(vlan=10, type=etype)
    elif vlans == 2:
        frame = (
            Ether(dst=MAC_DST, src=MAC_SRC, type=ETHERTYPE_8021AD)
            / Dot1AD(vlan=100, type=ETHERTYPE_8021Q)
            / Dot1Q(vlan=10, type=etype)
        )
    else:
        raise ValueError(f"vlans must be 0, 1 or 2, not {vlans}")
    data = bytes(frame / Raw(ip_bytes))
    return data + b"\0" * (60 - len(data)) if pad and len(data) < 60 else data


def sll(ip_bytes: bytes, ethertype: int | None = None) -> bytes:
    """Linux cooked capture v1 (LINKTYPE_LINUX_SLL, 16-byte header) around an IP packet."""
    etype = _ethertype(ip_bytes) if ethertype is None else ethertype
    head = CookedLinux(
        pkttype=0, lladdrtype=1, lladdrlen=6, src=b"\x02\0\0\0\0\x02\0\0", proto=etype
    )
    return bytes(head / Raw(ip_bytes))


def sll2(ip_bytes: bytes, ethertype: int | None = None) -> bytes:
    """Linux cooked capture v2 (LINKTYPE_LINUX_SLL2, 20-byte header) around an IP packet."""
    etype = _ethertype(ip_bytes) if ethertype is None else ethertype
    head = CookedLinuxV2(
        proto=etype, ifindex=3, lladdrtype=1, pkttype=0, lladdrlen=6, src=b"\x02\0\0\0\0\x02\0\0"
    )
    return bytes(head / Raw(ip_bytes))


def null(ip_bytes: bytes, family: int, big_endian: bool = False) -> bytes:
    """BSD loopback header: LINKTYPE_NULL stores the family in host order (little-endian here,
    via scapy's Loopback), LINKTYPE_LOOP in network order (`big_endian=True`, struct)."""
    if big_endian:
        return struct.pack(">I", family) + ip_bytes
    return bytes(Loopback(type=family) / Raw(ip_bytes))
