"""Vectorised packet decoding: RawBatch -> DecodedBatch of TCP/UDP header facts.

Every packet of a batch is decoded at once with numpy gathers at computed offsets, so the
per-packet cost is a few array operations rather than Python code. Nothing here raises on bad
input: each packet that cannot be used gets exactly one reason code, counted by name.

Bytes are the IP total length from the header (IPv4 total length, IPv6 payload length + 40),
never the captured length, so headers-only captures account exactly like full ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tunnelacct.capture.batch import BUF_PAD, RawBatch
from tunnelacct.capture.reasons import OK, REASONS

# LINKTYPE_* values (tcpdump.org/linktypes.html); DLT_RAW is 12 or 14 depending on the OS.
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP = 0, 1, 108
LINKTYPES_RAW = (12, 14, 101)
LINKTYPE_IPV4, LINKTYPE_IPV6 = 228, 229
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8

TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
FRAG_NONE, FRAG_FIRST, FRAG_LATER = 0, 1, 2

REASON = {name: code for code, name in enumerate(REASONS)}
# The last second a stored time can hold (datetime's year 9999), epoch seconds.
MAX_TS = 253_402_300_799.0
# A packet dated further than this after the moment it is decoded is refused as bad_timestamp:
# one record from 2106 in a capture moved packet time on 80 years, and every open session
# closed as idle (issue 16). A day covers any clock skew between capturing host and this one.
FUTURE_SLACK_S = 86_400.0


def plausible_until(now_ts: float) -> float:
    """The latest packet time `decode()` accepts when decoding at wall time `now_ts`."""
    return min(now_ts + FUTURE_SLACK_S, MAX_TS)


IPV6_EXT_GENERIC = (
    0,
    43,
    60,
    135,
    139,
    140,
)  # hop-by-hop, routing, dest opts, mobility, HIP, shim6
IPV6_EXT_FRAGMENT, IPV6_EXT_AH = 44, 51
MAX_IPV6_EXTENSIONS = 8

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


@dataclass(slots=True)
class DecodedBatch:
    """Header facts of the TCP/UDP packets of one RawBatch (arrays of equal length).

    Addresses are split in two u64 halves (IPv4: hi = 0, lo = the address). Fragments after
    the first (frag == FRAG_LATER) carry no ports; frag_id links them to their first fragment.
    """

    ts: F64
    family: I64  # 4 or 6
    proto: I64  # 6 or 17
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    sport: I64
    dport: I64
    ip_bytes: I64  # IP total length from the header
    payload_bytes: I64  # L4 payload in this packet
    flags: I64  # TCP flags byte (0 for UDP)
    frag: I64
    frag_id: I64
    interface: str
    packets_in: int = 0  # packets in the RawBatch, decoded or not
    failures: dict[str, int] = field(default_factory=dict)  # reason -> packets
    failed_index: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    failed_reason: I64 = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.ts)


def packets_at(batch: DecodedBatch, index: np.ndarray) -> DecodedBatch:
    """The packets `index` (positions) of `batch`, in that order, as a batch of their own: one
    UTC day of a batch, one flow table's share of it. Its counts of packets that failed to
    decode stay with `batch`."""
    return DecodedBatch(
        ts=batch.ts[index],
        family=batch.family[index],
        proto=batch.proto[index],
        src_hi=batch.src_hi[index],
        src_lo=batch.src_lo[index],
        dst_hi=batch.dst_hi[index],
        dst_lo=batch.dst_lo[index],
        sport=batch.sport[index],
        dport=batch.dport[index],
        ip_bytes=batch.ip_bytes[index],
        payload_bytes=batch.payload_bytes[index],
        flags=batch.flags[index],
        frag=batch.frag[index],
        frag_id=batch.frag_id[index],
        interface=batch.interface,
        packets_in=len(index),
    )


# Zero bytes after the buffer: a read at (a position clamped to the buffer) + up to PAD - 8
# bytes stays inside, so the many field reads need no bounds checks of their own.
PAD = BUF_PAD


class _Views:
    """Unaligned big-endian reads of the batch buffer at arbitrary byte offsets."""

    def __init__(self, buf: U8) -> None:
        if len(buf) >= PAD and not buf[-PAD:].any():
            self.n = len(buf) - PAD
            pad = buf
        else:
            self.n = len(buf)
            pad = np.concatenate([buf, np.zeros(PAD, dtype=np.uint8)])
        self.u8 = pad
        self.u16 = np.ndarray((len(pad) - 1,), dtype=">u2", buffer=pad, strides=(1,))
        self.u32 = np.ndarray((len(pad) - 3,), dtype=">u4", buffer=pad, strides=(1,))
        self.u64 = np.ndarray((len(pad) - 7,), dtype=">u8", buffer=pad, strides=(1,))

    def get(self, view: npt.NDArray[np.generic], pos: I64) -> I64:
        """view[pos]; pos must be a clamped base (<= n) plus less than PAD - 8."""
        return view[pos].astype(np.int64)

    def get_u64(self, pos: I64) -> U64:
        return self.u64[pos].astype(np.uint64)

    def clamp(self, pos: I64) -> I64:
        """Positions forced into [0, n]: for offsets computed from packet contents."""
        return np.clip(pos, 0, self.n)


def decode(raw: RawBatch, *, not_after_ts: float = MAX_TS) -> DecodedBatch:
    """Decode every packet of a batch; failures are counted by reason, never raised.

    Packets dated after `not_after_ts` (epoch seconds; `plausible_until(time.time())` where
    packets come from a capture) or before 1970 are bad_timestamp.
    """
    n = len(raw)
    v = _Views(raw.buf)
    off, cap, lt = raw.offsets, raw.caplens, raw.linktypes
    reason = np.zeros(n, dtype=np.int64)
    end = off + cap  # first byte after the captured data

    def fail(mask: B, name: str) -> None:
        if mask.any():  # usually not: skip the masked write
            reason[mask & (reason == OK)] = REASON[name]

    # Issue 16: a crafted pcapng timestamp (2^64-1 ticks) made the writer raise OverflowError.
    # Written so that NaN fails too.
    fail(~((raw.ts >= 0.0) & (raw.ts <= min(not_after_ts, MAX_TS))), "bad_timestamp")
    l3, ver_hint = _link_layer(v, off, cap, lt, fail)
    wire_l3 = raw.wirelens - (l3 - off)  # bytes of the L3 packet that were on the wire

    alive = reason == OK
    fail(alive & (l3 + 1 > end), "truncated_ip_header")
    first = v.get(v.u8, l3)
    version = first >> 4
    known_v = ver_hint != 0
    fail(known_v & (version != ver_hint), "bad_ip_version")
    is4 = (reason == OK) & (version == 4)
    is6 = (reason == OK) & (version == 6)
    fail(~is4 & ~is6, "bad_ip_version")

    # IPv4
    fail(is4 & (l3 + 20 > end), "truncated_ip_header")
    ihl = (first & 0x0F) * 4
    fail(is4 & (ihl < 20), "bad_ip_header_length")
    fail(is4 & (l3 + ihl > end), "truncated_ip_header")
    tot4 = v.get(v.u16, l3 + 2)
    fail(is4 & (tot4 < ihl), "bad_ip_total_length")
    ff = v.get(v.u16, l3 + 6)
    frag_off4 = (ff & 0x1FFF) * 8
    more4 = (ff & 0x2000) != 0
    proto = np.where(is4, v.get(v.u8, l3 + 9), 0)
    frag_id = np.where(is4, v.get(v.u16, l3 + 4), 0)

    frag_off = np.where(is4, frag_off4, 0)
    more = np.where(is4, more4, False)
    is_frag = is4 & (more | (frag_off > 0))
    if not is6.any():
        ip_bytes = tot4
        fail(is4 & (ip_bytes > wire_l3), "ip_length_exceeds_frame")
        l4 = v.clamp(l3 + ihl)
    else:
        # IPv6 with its extension-header chain
        fail(is6 & (l3 + 40 > end), "truncated_ip_header")
        plen6 = v.get(v.u16, l3 + 4)
        fail(is6 & (plen6 == 0), "bad_ip_total_length")  # jumbograms are not supported
        ip_bytes = np.where(is4, tot4, plen6 + 40)
        fail(ip_bytes > wire_l3, "ip_length_exceeds_frame")
        l4 = v.clamp(np.where(is4, l3 + ihl, l3 + 40))
        nh = np.where(is6, v.get(v.u8, l3 + 6), proto)
        walking = is6 & (reason == OK)
        for _ in range(MAX_IPV6_EXTENSIONS):
            generic = walking & np.isin(nh, IPV6_EXT_GENERIC)
            frag6 = walking & (nh == IPV6_EXT_FRAGMENT)
            ah = walking & (nh == IPV6_EXT_AH)
            ext = generic | frag6 | ah
            if not ext.any():
                break
            fail(ext & (l4 + 8 > end), "truncated_ipv6_extension")
            ext &= reason == OK
            next_len = v.get(v.u8, l4 + 1)
            hlen = np.where(frag6, 8, np.where(ah, (next_len + 2) * 4, (next_len + 1) * 8))
            fo = v.get(v.u16, l4 + 2)
            fr = frag6 & ext
            frag_off = np.where(fr, fo & 0xFFF8, frag_off)
            more = np.where(fr, (fo & 1) != 0, more)
            is_frag = is_frag | (fr & (((fo & 1) != 0) | ((fo & 0xFFF8) > 0)))
            frag_id = np.where(fr, v.get(v.u32, l4 + 4), frag_id)
            nh = np.where(ext, v.get(v.u8, l4), nh)
            l4 = v.clamp(np.where(ext, l4 + hlen, l4))
            walking = ext
        fail(
            walking & np.isin(nh, (*IPV6_EXT_GENERIC, IPV6_EXT_FRAGMENT, IPV6_EXT_AH)),
            "too_many_ipv6_extensions",
        )
        fail(is6 & (l4 - l3 > ip_bytes), "bad_ip_total_length")
        proto = np.where(is6, nh, proto)

    fail((proto != 6) & (proto != 17), "other_protocol")
    later = is_frag & (frag_off > 0)
    has_l4 = ~later
    tcp = (reason == OK) & (proto == 6) & has_l4
    udp = (reason == OK) & (proto == 17) & has_l4
    l4_room = ip_bytes - (l4 - l3)  # L4 bytes the IP header announces
    fail(tcp & ((l4 + 14 > end) | (l4_room < 14)), "truncated_tcp_header")
    doff = (v.get(v.u8, l4 + 12) >> 4) * 4
    fail(tcp & ((doff < 20) | (doff > l4_room) & ~is_frag), "bad_tcp_header_length")
    fail(udp & ((l4 + 8 > end) | (l4_room < 8)), "truncated_udp_header")
    fail(udp & ~is_frag & (v.get(v.u16, l4 + 4) < 8), "bad_udp_length")

    good = np.flatnonzero(reason == OK)
    failed = np.flatnonzero(reason != OK)
    counts = np.bincount(reason[failed], minlength=len(REASONS)) if len(failed) else None
    failures = {REASONS[c]: int(k) for c, k in enumerate(counts) if k} if counts is not None else {}

    g_l3, g_l4 = l3[good], l4[good]
    g_is4 = is4[good]
    g_tcp = proto[good] == 6
    g_later = later[good]
    g_room = l4_room[good]
    l4hdr = np.where(g_tcp, np.minimum(doff[good], g_room), np.minimum(8, g_room))
    payload = np.where(g_later, g_room, g_room - l4hdr)
    sport = np.where(g_later, 0, v.get(v.u16, g_l4))
    dport = np.where(g_later, 0, v.get(v.u16, g_l4 + 2))
    zero = np.zeros(len(good), dtype=np.uint64)
    src_lo = v.get(v.u32, g_l3 + 12).astype(np.uint64)
    dst_lo = v.get(v.u32, g_l3 + 16).astype(np.uint64)
    if g_is4.all():
        src_hi, dst_hi = zero, zero.copy()
    else:
        src_hi = np.where(g_is4, zero, v.get_u64(g_l3 + 8))
        src_lo = np.where(g_is4, src_lo, v.get_u64(g_l3 + 16))
        dst_hi = np.where(g_is4, zero, v.get_u64(g_l3 + 24))
        dst_lo = np.where(g_is4, dst_lo, v.get_u64(g_l3 + 32))
    flags = np.where(g_tcp & ~g_later, v.get(v.u8, g_l4 + 13), 0)
    frag = np.where(is_frag[good], np.where(g_later, FRAG_LATER, FRAG_FIRST), FRAG_NONE)
    return DecodedBatch(
        ts=raw.ts[good],
        family=np.where(g_is4, 4, 6),
        proto=proto[good],
        src_hi=src_hi,
        src_lo=src_lo,
        dst_hi=dst_hi,
        dst_lo=dst_lo,
        sport=sport,
        dport=dport,
        ip_bytes=ip_bytes[good],
        payload_bytes=payload,
        flags=flags,
        frag=frag,
        frag_id=frag_id[good],
        interface=raw.interface,
        packets_in=n,
        failures=failures,
        failed_index=failed,
        failed_reason=reason[failed],
    )


def _link_layer(
    v: _Views, off: I64, cap: I64, lt: I64, fail: Callable[[B, str], None]
) -> tuple[I64, I64]:
    """Offset of the IP header per packet, and the IP version the link layer announces (0 = ask
    the IP header)."""
    l3 = off.copy()
    hint = np.zeros(len(off), dtype=np.int64)
    end = off + cap
    known = np.isin(
        lt,
        (
            *LINKTYPES_RAW,
            LINKTYPE_ETHERNET,
            LINKTYPE_LINUX_SLL,
            LINKTYPE_LINUX_SLL2,
            LINKTYPE_IPV4,
            LINKTYPE_IPV6,
            LINKTYPE_NULL,
            LINKTYPE_LOOP,
        ),
    )
    fail(~known, "unsupported_linktype")
    hint[lt == LINKTYPE_IPV4] = 4
    hint[lt == LINKTYPE_IPV6] = 6

    def ethertype_to_hint(mask: B, etype: I64) -> None:
        hint[mask & (etype == ETH_P_IP)] = 4
        hint[mask & (etype == ETH_P_IPV6)] = 6
        fail(mask & (etype != ETH_P_IP) & (etype != ETH_P_IPV6), "not_ip")

    eth = lt == LINKTYPE_ETHERNET
    if eth.any():
        fail(eth & (cap < 14), "truncated_link_header")
        etype = v.get(v.u16, off + 12)
        l3 = np.where(eth, off + 14, l3)
        for _ in range(2):  # 802.1Q / 802.1ad tags, up to two
            tagged = eth & ((etype == ETH_P_8021Q) | (etype == ETH_P_8021AD))
            fail(tagged & (l3 + 4 > end), "truncated_link_header")
            etype = np.where(tagged, v.get(v.u16, l3 + 2), etype)
            l3 = np.where(tagged, l3 + 4, l3)
        ethertype_to_hint(eth, etype)
    sll = lt == LINKTYPE_LINUX_SLL
    if sll.any():
        fail(sll & (cap < 16), "truncated_link_header")
        ethertype_to_hint(sll, v.get(v.u16, off + 14))
        l3 = np.where(sll, off + 16, l3)
    sll2 = lt == LINKTYPE_LINUX_SLL2
    if sll2.any():
        fail(sll2 & (cap < 20), "truncated_link_header")
        ethertype_to_hint(sll2, v.get(v.u16, off))
        l3 = np.where(sll2, off + 20, l3)
    null = (lt == LINKTYPE_NULL) | (lt == LINKTYPE_LOOP)
    if null.any():
        fail(null & (cap < 4), "truncated_link_header")
        # NULL stores the BSD address family in host order, LOOP in network order.
        fam_be = v.get(v.u32, off)
        fam_le = (
            v.get(v.u8, off)
            | (v.get(v.u8, off + 1) << 8)
            | (v.get(v.u8, off + 2) << 16)
            | (v.get(v.u8, off + 3) << 24)
        )
        # the capturing host's byte order is unknown for NULL: the family is the small reading
        fam = np.where((lt == LINKTYPE_LOOP) | (fam_be <= 0xFF), fam_be, fam_le)
        hint[null & (fam == 2)] = 4
        hint[null & np.isin(fam, (10, 24, 28, 30))] = 6
        fail(null & (hint == 0), "not_ip")
        l3 = np.where(null, off + 4, l3)
    return l3, hint
