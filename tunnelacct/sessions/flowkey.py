"""Flow keys, address ints, session ids and Community IDs: the identities of sessions."""

from __future__ import annotations

import binascii
import hashlib
import ipaddress
import os
import socket
import struct
import uuid
from collections.abc import Callable

# A flow key: five unsigned 64-bit words in native byte order (numpy's, so the batch path makes
# a batch's keys with one view of a key matrix): meta, A hi, A lo, B hi, B lo, where meta =
# family << 40 | proto << 32 | A port << 16 | B port, and an address's hi word is 0 for IPv4.
# As 40 bytes it is one object of 73 bytes that hashes once; as a tuple of five ints it was
# 188 bytes with its ints, held by every open session (issue 21).
FlowKey = bytes
_KEY_WORDS = struct.Struct("=5Q")
_META_WORD = struct.Struct("=Q")  # the first of them
KEY_BYTES = _KEY_WORDS.size


def pack_key(meta: int, a_hi: int, a_lo: int, b_hi: int, b_lo: int) -> FlowKey:
    """The flow key of these five words."""
    return _KEY_WORDS.pack(meta, a_hi, a_lo, b_hi, b_lo)


def key_words(key: FlowKey) -> tuple[int, int, int, int, int]:
    """(meta, A hi, A lo, B hi, B lo) of a flow key."""
    words: tuple[int, int, int, int, int] = _KEY_WORDS.unpack(key)
    return words


def key_proto(key: FlowKey) -> int:
    """The IP protocol number of a flow key."""
    meta: int = _META_WORD.unpack_from(key)[0]
    return (meta >> 32) & 0xFF


def unpack_key(key: FlowKey) -> tuple[int, int, int, int, int, int]:
    """(family, proto, A address, A port, B address, B port) of a flow key."""
    meta, a_hi, a_lo, b_hi, b_lo = _KEY_WORDS.unpack(key)
    family = meta >> 40
    proto = (meta >> 32) & 0xFF
    a_port = (meta >> 16) & 0xFFFF
    b_port = meta & 0xFFFF
    # an address as one int from its two 64-bit halves (IPv4: the lower); no call per address,
    # as this runs at least twice per session (issue 21)
    if family == 6:
        return (family, proto, (a_hi << 64) | a_lo, a_port, (b_hi << 64) | b_lo, b_port)
    return (family, proto, a_lo, a_port, b_lo, b_port)


LO64 = (1 << 64) - 1


def addr_int(text: str) -> int:
    """The unsigned int of an address written as text (IPv4 or IPv6)."""
    return int(ipaddress.ip_address(text))


# the decimal text of each byte value: an IPv4 address is four of them joined
_OCTETS = tuple(str(octet) for octet in range(256))


def addr_text(family: int, value: int) -> str:
    """Printable form (RFC 5952 for IPv6) of an address held as an unsigned int.

    IPv4 joins its four bytes' texts: 0.36 µs against inet_ntop's 0.69 (with the int's bytes
    made first), once per address of each session a busy gateway closes (issue 21)."""
    if family == 4:
        return ".".join(
            (
                _OCTETS[value >> 24],
                _OCTETS[(value >> 16) & 0xFF],
                _OCTETS[(value >> 8) & 0xFF],
                _OCTETS[value & 0xFF],
            )
        )
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


_new_object = object.__new__
_set_slot = object.__setattr__
_SAFETY_UNKNOWN = uuid.SafeUUID.unknown


def uuid_of_int(value: int) -> uuid.UUID:
    """`uuid.UUID(int=value)` for a `value` of at most 128 bits, made without UUID.__init__,
    which first works out which of its five arguments it was given and checks the value's
    range: 0.7 µs against 1.4, once per event the flow table builds (an open session holds
    its id as an int) and again per event the writer child takes in (issue 21). It sets the
    two slots UUID.__init__ sets, as UUID.__setstate__ (unpickling) does; tests/test_flowkey.py
    compares the two ways for any value."""
    ident = _new_object(uuid.UUID)
    _set_slot(ident, "int", value)
    _set_slot(ident, "is_safe", _SAFETY_UNKNOWN)
    return ident


# RFC 9562 version 7 layout: unix_ts_ms (48 bits), ver (4), rand_a (12), var (2), rand_b (62).
# The 74 bits after the time hold the issuer's tag (42 bits) and its counter (32 bits).
_TAG_BITS = 42
_COUNTER_BITS = 32
_COUNTER_MASK = (1 << _COUNTER_BITS) - 1
_MS_MASK = (1 << 48) - 1
_VERSION_7 = 0x7 << 76
_VARIANT_RFC = 0b10 << 62


class SessionIds:
    """Issues session ids: unique among every session one issuer ever names, whatever the
    packets (merged or duplicated captures, port reuse within a microsecond, clock steps).

    An id is a time-ordered UUID (RFC 9562 version 7): the start time in Unix milliseconds
    (48 bits), then a random tag of this issuer (42 bits) and a counter (32 bits) instead of
    rand_a and rand_b (RFC 9562 section 6.2, method 1: dedicated counter bits). The counter
    makes ids of one issuer distinct; when it wraps, the issuer draws a new tag. Ids of two
    issuers differ by their tags (two random 42-bit tags agree once in 4.4e12 pairs).

    Time first, so that ids of sessions that start together sit together in the primary key's
    index: the writer appends to it and a retention purge removes whole runs of it, instead of
    touching a random page per row (5x faster purges on SQLite, README "Performance"), and a
    re-import finds the rows of an earlier capture by an id range (`reimport.py`).
    """

    __slots__ = ("tags", "_high", "_counter", "_entropy")

    def __init__(self, entropy: Callable[[int], bytes] = os.urandom) -> None:
        self._entropy = entropy
        self.tags: set[int] = set()  # every tag this issuer has used
        self._high = 0
        self._counter = 0
        self._new_tag()

    def _new_tag(self) -> None:
        while True:
            tag = int.from_bytes(self._entropy(6), "big") >> (48 - _TAG_BITS)
            if tag not in self.tags:
                break
        self.tags.add(tag)
        # the tag's upper 12 bits are rand_a; its lower 30 bits start rand_b
        rand_a = tag >> 30
        rand_b_high = (tag & ((1 << 30) - 1)) << _COUNTER_BITS
        self._high = (rand_a << 64) | _VERSION_7 | _VARIANT_RFC | rand_b_high
        self._counter = 0

    def new(self, started_ts: float) -> int:
        """The 128 bits of a new id for a session that started at `started_ts` (epoch seconds),
        as an int: what the flow table holds of an open session's id (`uuid_of_int()` makes
        its UUID)."""
        if self._counter > _COUNTER_MASK:
            self._new_tag()
        count = self._counter
        self._counter = count + 1
        ms = round(started_ts * 1_000_000) // 1000  # as started_at (microseconds) shows it
        return ((ms & _MS_MASK) << 80) | self._high | count

    def issued(self, ident: uuid.UUID) -> bool:
        """Whether `ident` carries one of this issuer's tags (so it may have issued it)."""
        return id_tag(ident) in self.tags


def tag_hex(tag: int) -> str:
    """The hex digits that carry issuer tag `tag` in a session id's 32-digit hex form: digits
    13 to 23 (0-based), rand_a and the variant bits with the tag's lower 30 bits."""
    rand_a = tag >> 30
    variant_and_tag = (_VARIANT_RFC >> 32) | (tag & ((1 << 30) - 1))
    return f"{rand_a:03x}{variant_and_tag:08x}"


def id_tag(ident: uuid.UUID) -> int:
    """The issuer tag of a version 7 session id (`SessionIds`); other ids give other values."""
    value = ident.int
    rand_a = (value >> 64) & 0xFFF
    rand_b_high = (value >> _COUNTER_BITS) & ((1 << 30) - 1)
    return (rand_a << 30) | rand_b_high


def start_ms(ident: uuid.UUID) -> int:
    """The start time in Unix milliseconds that a time-ordered session id begins with."""
    return ident.int >> 80


def id_range(first_ms: int, last_ms: int) -> tuple[uuid.UUID, uuid.UUID]:
    """The lowest and the highest id of sessions that started from `first_ms` to `last_ms`
    (Unix milliseconds, both included): ids sort by their start first."""
    low = uuid.UUID(int=(first_ms & _MS_MASK) << 80)
    high = uuid.UUID(int=((last_ms & _MS_MASK) << 80) | ((1 << 80) - 1))
    return low, high


# -- Community ID v1 (corelight/community-id-spec): rows join Zeek and Suricata logs ------------

# seed, the lower endpoint's address, the other's, protocol, a zero byte, the two ports in the
# same order: the spec's hash input, packed in one call (a session-heavy gateway hashes tens of
# thousands a second, issue 21)
_V4_INPUT = struct.Struct(">HIIBxHH")
_V6_INPUT = struct.Struct(">H16s16sBxHH")


def community_id(
    family: int, proto: int, src: int, sport: int, dst: int, dport: int, seed: int = 0
) -> str:
    """`1:<base64 sha1>` of the ordered 5-tuple; addresses are unsigned ints of their family."""
    # the spec orders endpoints so that both directions hash alike: smaller (addr, port) first;
    # addresses of one family compare as their big-endian bytes do
    if (src, sport) > (dst, dport):
        data = _hash_input(family, seed, proto, dst, dport, src, sport)
    else:
        data = _hash_input(family, seed, proto, src, sport, dst, dport)
    return "1:" + binascii.b2a_base64(hashlib.sha1(data).digest(), newline=False).decode("ascii")


def _hash_input(
    family: int, seed: int, proto: int, first: int, first_port: int, second: int, second_port: int
) -> bytes:
    """The bytes Community ID v1 hashes, endpoints already ordered."""
    if family == 4:
        return _V4_INPUT.pack(seed, first, second, proto, first_port, second_port)
    return _V6_INPUT.pack(
        seed, first.to_bytes(16, "big"), second.to_bytes(16, "big"), proto, first_port, second_port
    )
