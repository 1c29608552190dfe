"""Community ID v1 flow hashes (corelight/community-id-spec), so rows join Zeek/Suricata logs."""

from __future__ import annotations

import base64
import hashlib
import struct

_PORTS = struct.Struct(">HH")


def community_id(
    family: int, proto: int, src: int, sport: int, dst: int, dport: int, seed: int = 0
) -> str:
    """`1:<base64 sha1>` of the ordered 5-tuple; addresses are unsigned ints of their family."""
    width = 4 if family == 4 else 16
    sb, db = src.to_bytes(width, "big"), dst.to_bytes(width, "big")
    # the spec orders endpoints so that both directions hash alike: smaller (addr, port) first
    if (sb, sport) > (db, dport):
        sb, db, sport, dport = db, sb, dport, sport
    data = seed.to_bytes(2, "big") + sb + db + bytes((proto, 0)) + _PORTS.pack(sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")
