"""A session-heavy synthetic capture: a busy gateway's many short sessions (headers only).

Seeded and vectorised (numpy), so a benchmark generates what it measures in seconds:
- 60% DNS-like UDP pairs: one query (client -> resolver port 53), one answer back;
- 40% short HTTP over TCP: SYN, SYN-ACK, ACK, request, response, ACK, FIN, FIN-ACK, ACK, and
  about half of them one more response segment and its ACK.

Clients are 100.64.0.0/16 (tunnel addresses), servers 10.99.0.0/24. Sessions start at
`sessions_per_s` of capture time and their packets interleave; each TCP session spans a few
milliseconds, so many are open at once, as on a real gateway. Raw-IP pcap (linktype 101),
40-byte headers recorded, original lengths kept: bytes are the IP total length.

    .venv/bin/python tests/benchmarks/synth_sessions.py OUT.pcap [--sessions 300000]
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.synth import record_dtype  # noqa: E402

SNAPLEN = 96
SESSIONS_PER_S = 50_000.0
UDP_SHARE = 0.6
HEADER_BYTES = 28  # what is recorded of a UDP packet: IPv4 + UDP header
TCP_HEADER_BYTES = 40

# TCP exchange: (to_server, flags, payload bytes low, high); rows marked `extra` only in the
# sessions that send a second response segment.
_SYN, _SYNACK, _ACK, _PSHACK, _FINACK = 0x02, 0x12, 0x10, 0x18, 0x11
_TCP_STEPS = [
    (True, _SYN, 0, 0, False),
    (False, _SYNACK, 0, 0, False),
    (True, _ACK, 0, 0, False),
    (True, _PSHACK, 80, 400, False),
    (False, _PSHACK, 200, 1400, False),
    (False, _PSHACK, 200, 1400, True),
    (True, _ACK, 0, 0, True),
    (True, _ACK, 0, 0, False),
    (True, _FINACK, 0, 0, False),
    (False, _FINACK, 0, 0, False),
    (True, _ACK, 0, 0, False),
]


def _headers(
    n: int,
    proto: np.ndarray,
    total: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    flags: np.ndarray,
) -> np.ndarray:
    """The first 40 bytes of each packet: IPv4 header, then the UDP or TCP header."""
    hdr = np.zeros((n, TCP_HEADER_BYTES), dtype=np.uint8)
    hdr[:, 0] = 0x45
    hdr[:, 2:4] = total.astype(">u2").view(np.uint8).reshape(n, 2)
    hdr[:, 8] = 64
    hdr[:, 9] = proto
    hdr[:, 12:16] = src.astype(">u4").view(np.uint8).reshape(n, 4)
    hdr[:, 16:20] = dst.astype(">u4").view(np.uint8).reshape(n, 4)
    hdr[:, 20:22] = sport.astype(">u2").view(np.uint8).reshape(n, 2)
    hdr[:, 22:24] = dport.astype(">u2").view(np.uint8).reshape(n, 2)
    udp = proto == 17
    udp_length = (total - 20).astype(">u2").view(np.uint8).reshape(n, 2)
    hdr[udp, 24:26] = udp_length[udp]
    tcp = ~udp
    hdr[tcp, 32] = 0x50
    hdr[tcp, 33] = flags[tcp]
    return hdr


def synth_sessions(
    path: Path, sessions: int, seed: int = 1, sessions_per_s: float = SESSIONS_PER_S
) -> tuple[int, int]:
    """Write the capture; returns (packets, sessions) written."""
    rec = session_records(sessions, seed, sessions_per_s)
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 101))
        # records are variable length (cap bytes of data): write them field by field
        for chunk_start in range(0, len(rec), 200_000):
            chunk = rec[chunk_start : chunk_start + 200_000]
            out.write(_pack_records(chunk))
    return len(rec), sessions


def session_records(
    sessions: int, seed: int = 1, sessions_per_s: float = SESSIONS_PER_S
) -> np.ndarray:
    """The capture's packets in time order, as pcap records (record_dtype(40)): `cap` bytes of
    each header are what a headers-only capture keeps, `len` its IP total length."""
    rng = np.random.default_rng(seed)
    is_udp = rng.random(sessions) < UDP_SHARE
    start = 1_700_000_000.0 + np.sort(rng.random(sessions)) * (sessions / sessions_per_s)
    client = (0x64400000 + rng.integers(2, 65534, sessions)).astype(np.uint32)
    server = (0x0A630000 + rng.integers(1, 255, sessions)).astype(np.uint32)
    # distinct client ports per session index keep every 5-tuple unique within the capture
    client_port = (1024 + (np.arange(sessions) % 64000)).astype(np.uint16)
    server_port = np.where(is_udp, 53, rng.choice([80, 443, 8080], sessions)).astype(np.uint16)
    two_segments = rng.random(sessions) < 0.5

    steps = len(_TCP_STEPS)
    # per session: which steps it sends (UDP: the first two, as query and answer)
    udp_rows = np.zeros(steps, dtype=bool)
    udp_rows[:2] = True
    extra = np.array([s[4] for s in _TCP_STEPS])
    sends = np.where(
        is_udp[:, None],
        udp_rows[None, :],
        (~extra)[None, :] | two_segments[:, None],
    )
    session_of = np.repeat(np.arange(sessions), steps).reshape(sessions, steps)[sends]
    step_of = np.tile(np.arange(steps), sessions).reshape(sessions, steps)[sends]
    n = int(session_of.size)

    to_server = np.array([s[0] for s in _TCP_STEPS])[step_of]
    flags = np.array([s[1] for s in _TCP_STEPS], dtype=np.uint8)[step_of]
    low = np.array([s[2] for s in _TCP_STEPS])[step_of]
    high = np.array([s[3] for s in _TCP_STEPS])[step_of]
    payload = np.where(high > 0, rng.integers(0, 1 << 30, n) % np.maximum(high - low, 1) + low, 0)
    udp_packet = is_udp[session_of]
    dns_payload = np.where(step_of == 0, rng.integers(30, 60, n), rng.integers(60, 400, n))
    payload = np.where(udp_packet, dns_payload, payload)
    proto = np.where(udp_packet, 17, 6).astype(np.uint8)
    header = np.where(udp_packet, 28, 40)
    total = header + payload
    # a round trip of 1-20 ms per step: packets of concurrent sessions interleave
    rtt = rng.uniform(0.001, 0.02, sessions)
    ts = start[session_of] + step_of * rtt[session_of]
    order = np.argsort(ts, kind="stable")

    src = np.where(to_server, client[session_of], server[session_of])
    dst = np.where(to_server, server[session_of], client[session_of])
    sport = np.where(to_server, client_port[session_of], server_port[session_of])
    dport = np.where(to_server, server_port[session_of], client_port[session_of])
    hdr = _headers(n, proto, total, src, dst, sport, dport, flags)
    captured = np.minimum(np.where(udp_packet, HEADER_BYTES, TCP_HEADER_BYTES), total)
    rec = np.zeros(n, dtype=record_dtype(TCP_HEADER_BYTES))
    ts_sorted = ts[order]
    rec["sec"] = ts_sorted.astype(np.int64)
    rec["usec"] = ((ts_sorted % 1) * 1e6).astype(np.int64)
    rec["cap"] = captured[order]
    rec["len"] = total[order]
    rec["data"] = hdr[order]
    return rec


def _pack_records(records: np.ndarray) -> bytes:
    """pcap records with only `cap` bytes of each header: 16 bytes of record header + data."""
    header_and_data = np.zeros((len(records), 16 + TCP_HEADER_BYTES), dtype=np.uint8)
    header_and_data[:, 0:4] = records["sec"].astype("<u4").view(np.uint8).reshape(-1, 4)
    header_and_data[:, 4:8] = records["usec"].astype("<u4").view(np.uint8).reshape(-1, 4)
    header_and_data[:, 8:12] = records["cap"].astype("<u4").view(np.uint8).reshape(-1, 4)
    header_and_data[:, 12:16] = records["len"].astype("<u4").view(np.uint8).reshape(-1, 4)
    header_and_data[:, 16:] = records["data"]
    keep = np.arange(16 + TCP_HEADER_BYTES)[None, :] < (16 + records["cap"])[:, None]
    return header_and_data[keep].tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--sessions", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=SESSIONS_PER_S, help="new sessions/s")
    args = parser.parse_args()
    packets, sessions = synth_sessions(args.out, args.sessions, args.seed, args.rate)
    print(f"wrote {packets:,} packets in {sessions:,} sessions to {args.out}")


if __name__ == "__main__":
    main()
