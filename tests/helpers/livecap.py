"""Run LiveSource on one interface and write what it captured as a LINKTYPE_RAW pcap (tests only).

Meant to run inside a namespace, stopped by SIGINT/SIGTERM sent to its PID::

    ip netns exec ta1-gw python -m tests.helpers.livecap wg0 out.pcap --snaplen 96

Touches `out.pcap.ready` once the socket is bound; on exit prints one JSON line
{"written": N, "packets": P, "drops": D} with LiveSource.stats() to stdout.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
from pathlib import Path
from types import FrameType

from tunnelacct.capture.live import LINKTYPE_RAW, LiveSource

PCAP_MAGIC_NS = 0xA1B23C4D
DRAIN_S = 0.5  # after a stop signal, keep reading until the ring is quiet this long


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("interface")
    parser.add_argument("out", type=Path)
    parser.add_argument("--snaplen", type=int, default=96)
    parser.add_argument("--block-size", type=int, default=1 << 20)
    parser.add_argument("--block-count", type=int, default=64)
    args = parser.parse_args()
    stop = False

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    written = 0
    source = LiveSource(
        args.interface,
        snaplen=args.snaplen,
        block_size=args.block_size,
        block_count=args.block_count,
    )
    with source, args.out.open("wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, args.snaplen, LINKTYPE_RAW))
        args.out.with_name(args.out.name + ".ready").touch()
        stopped = False
        while True:
            if stop and not stopped:
                source.stop()  # no new packets: what the kernel counted is all in the ring
                stopped = True
            batch = source.read_batch(DRAIN_S if stop else 0.2)
            if batch is None:
                if stop:
                    break
                continue
            for i in range(len(batch)):
                ts_ns = round(float(batch.ts[i]) * 1e9)  # a float epoch holds ~0.2 us, not 1 ns
                off, caplen = int(batch.offsets[i]), int(batch.caplens[i])
                sec, nsec = divmod(ts_ns, 10**9)
                f.write(struct.pack("<IIII", sec, nsec, caplen, int(batch.wirelens[i])))
                f.write(batch.buf[off : off + caplen].tobytes())
                written += 1
        packets, drops = source.stats()
    print(json.dumps({"written": written, "packets": packets, "drops": drops}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
