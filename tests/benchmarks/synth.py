"""Synthetic headers-only raw-IP pcap files for benchmarks (numpy, seconds for millions).

Flows follow a heavy-tailed size distribution (many short sessions, a few bulk ones); each flow
opens with a SYN handshake and ends with FINs both ways, packets of concurrent flows interleave.
"""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np

SNAPLEN = 96


RATE_PPS = 50_000.0  # a busy gateway: 2M packets span 40 s, so sessions close as it runs


def record_dtype(data_bytes: int) -> np.dtype:
    """A pcap record (little-endian header: seconds, microseconds, captured and original
    length) followed by `data_bytes` of packet, as a numpy structured dtype."""
    return np.dtype(
        [
            ("sec", "<u4"),
            ("usec", "<u4"),
            ("cap", "<u4"),
            ("len", "<u4"),
            ("data", "u1", (data_bytes,)),
        ]
    )


def synth_pcap(
    path: Path,
    packets: int,
    flows: int,
    seed: int = 1,
    rate_pps: float = RATE_PPS,
    first_flow: int = 0,
) -> int:
    """Write about `packets` TCP packets in `flows` sessions; returns packets written.

    Flow k uses client port 10000 + (first_flow + k) % 50000: files written with first_flow
    apart by at least `flows` share no session (5-tuple) while they total 50,000 flows or less.
    """
    rng = np.random.default_rng(seed)
    sizes = np.maximum(6, (rng.pareto(1.2, flows) * 8).astype(np.int64))
    sizes = np.maximum(6, (sizes * packets / sizes.sum()).astype(np.int64))
    n = int(sizes.sum())
    flow = np.repeat(np.arange(flows), sizes)
    pos = np.arange(n) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # index inside its flow
    last = np.repeat(sizes, sizes) - 1
    # interleave: each flow occupies a random window of the timeline proportional to its size
    start = rng.random(flows) * 0.9
    span = np.minimum(1 - start, sizes / sizes.max() * 0.5 + 0.001)
    when = np.repeat(start, sizes) + np.repeat(span, sizes) * (pos / np.maximum(last, 1))
    order = np.argsort(when, kind="stable")
    flow, pos, last = flow[order], pos[order], last[order]
    duration = n / rate_pps
    ts = 1_700_000_000.0 + np.sort(when) * duration
    # direction: handshake S (c->s), SA (s->c), then alternate-ish with data mostly c->s
    to_server = rng.random(n) < 0.6
    to_server[pos == 0] = True
    to_server[pos == 1] = False
    to_server[pos == last - 2] = True  # FIN from the client, then from the server, last ACK
    to_server[pos == last - 1] = False
    to_server[pos == last] = True
    flags = np.full(n, 0x10, dtype=np.uint8)  # ACK
    flags[pos == 0] = 0x02
    flags[pos == 1] = 0x12
    flags[pos == last - 2] = 0x11
    flags[pos == last - 1] = 0x11
    payload = np.where((pos > 2) & (pos < last - 2), rng.integers(0, 1400, n), 0)
    total = 40 + payload
    client = (0x64400000 + 2 + (flow % 200)).astype(np.uint32)  # 100.64.0.x
    server = (0x0A630000 + 5 + (flow % 7)).astype(np.uint32)  # 10.99.0.x
    cport = (10000 + (first_flow + flow) % 50000).astype(np.uint16)
    sport = np.array([443, 8080, 5432, 22], dtype=np.uint16)[flow % 4]
    hdr = np.zeros((n, 40), dtype=np.uint8)
    hdr[:, 0] = 0x45
    hdr[:, 2:4] = total.astype(">u2").view(np.uint8).reshape(n, 2)
    hdr[:, 8] = 64
    hdr[:, 9] = 6
    src = np.where(to_server, client, server).astype(">u4").view(np.uint8).reshape(n, 4)
    dst = np.where(to_server, server, client).astype(">u4").view(np.uint8).reshape(n, 4)
    hdr[:, 12:16], hdr[:, 16:20] = src, dst
    p1 = np.where(to_server, cport, sport).astype(">u2").view(np.uint8).reshape(n, 2)
    p2 = np.where(to_server, sport, cport).astype(">u2").view(np.uint8).reshape(n, 2)
    hdr[:, 20:22], hdr[:, 22:24] = p1, p2
    hdr[:, 32] = 0x50
    hdr[:, 33] = flags
    rec = np.zeros(n, dtype=record_dtype(40))
    rec["sec"] = ts.astype(np.int64)
    rec["usec"] = ((ts % 1) * 1e6).astype(np.int64)
    rec["cap"] = 40
    rec["len"] = total
    rec["data"] = hdr
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 101))
        f.write(rec.tobytes())
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=RATE_PPS, help="packets per second of capture")
    a = ap.parse_args()
    n = synth_pcap(a.out, a.packets, a.flows, rate_pps=a.rate)
    print(f"wrote {n} packets to {a.out}")


if __name__ == "__main__":
    main()
