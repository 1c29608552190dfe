"""Flow keys, address ints and session ids: the identities the flow table works with."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import struct
import uuid

# (meta, A hi, A lo, B hi, B lo); meta = family << 40 | proto << 32 | A port << 16 | B port
FlowKey = tuple[int, int, int, int, int]


def addr_of(family: int, hi: int, lo: int) -> int:
    """The address as one unsigned int from its two 64-bit halves (IPv4: `lo`)."""
    return (hi << 64) | lo if family == 6 else lo


def unpack_key(key: FlowKey) -> tuple[int, int, int, int, int, int]:
    """(family, proto, A address, A port, B address, B port) of a flow key."""
    meta, a_hi, a_lo, b_hi, b_lo = key
    family = meta >> 40
    return (family, (meta >> 32) & 0xFF, addr_of(family, a_hi, a_lo), (meta >> 16) & 0xFFFF,
            addr_of(family, b_hi, b_lo), meta & 0xFFFF)  # fmt: skip


LO64 = (1 << 64) - 1


def addr_int(text: str) -> int:
    """The unsigned int of an address written as text (IPv4 or IPv6)."""
    return int(ipaddress.ip_address(text))


def addr_text(family: int, value: int) -> str:
    """Printable form (RFC 5952 for IPv6) of an address held as an unsigned int."""
    if family == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


_ID_FIELDS = struct.Struct(">BB16sH16sHd")


def session_id(
    namespace: bytes, family: int, proto: int, src: int, sport: int, dst: int, dport: int,
    started_ts: float,
) -> uuid.UUID:  # fmt: skip
    """A name-based, time-ordered UUID (RFC 9562 version 8, laid out like version 7): the start
    time in Unix milliseconds (48 bits), then BLAKE2b of the initiator-first 5-tuple and start
    time keyed by the gateway's namespace. Stable: the same packets give the same id.

    Time first, so that ids of sessions that start together sit together in the primary key's
    index: the writer appends to it and a retention purge removes whole runs of it, instead of
    touching a random page per row (5x faster purges on SQLite, README "Performance").
    """
    name = _ID_FIELDS.pack(
        family, proto, src.to_bytes(16, "big"), sport, dst.to_bytes(16, "big"), dport, started_ts
    )
    raw = bytearray(hashlib.blake2b(name, digest_size=16, key=namespace).digest())
    ms = round(started_ts * 1_000_000) // 1000  # as started_at (microseconds) shows it
    raw[0:6] = (ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big")
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


def session_namespace(gateway: str) -> uuid.UUID:
    """Namespace of session ids: the same packets on the same gateway give the same ids, so
    importing a file twice (or replaying it) updates its rows instead of duplicating them."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"tunnelacct:gateway:{gateway}")
