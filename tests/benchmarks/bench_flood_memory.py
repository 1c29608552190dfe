"""Benchmark: the peak memory of `serve` under a flood of new flows, at 1x and 10x the flows,
with the flow table capped (`[service] max_sessions`, default 262,144) and without a cap.

Each run is a fresh `tunnelacct serve` process replaying, as fast as it can, a capture of
FLOWS x SCALE single-packet UDP flows (each its own 5-tuple, as a scan or a spoofed flood
makes them) within 30 s of packet time, less than the UDP idle timeout: every flow is still
open when the next arrives. It prints serve's peak RSS (VmHWM, read once the replay has
finished and every session is written), the sessions closed as evicted, and the rows stored
(one per flow: no packet lost). Asserts nothing about memory.

    .venv/bin/python tests/benchmarks/bench_flood_memory.py [--flows 300000] [--scales 1 10]
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_fault_memory import peak_rss_mib  # noqa: E402
from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.pcapwrite import LINKTYPE_RAW, PCAP_MAGIC_US  # noqa: E402
from tests.helpers.serving import Serve, write_config  # noqa: E402
from tests.helpers.stores import query  # noqa: E402
from tunnelacct.config.model import ServiceConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
SPREAD_S = 30.0  # packet time the flood spans: under udp_idle (60 s)
PAYLOAD = 20
UNCAPPED = 100_000_000
WAIT_FLOOD_S = 3600.0


def flood_pcap(path: Path, flows: int) -> None:
    """A pcap (raw IPv4) of `flows` UDP packets to 10.1.0.5:53, each from its own
    (address in 100.64.0.0/10, port) pair, evenly over SPREAD_S seconds."""
    index = np.arange(flows, dtype=np.int64)
    ip_len = 20 + 8 + PAYLOAD
    record = np.zeros((flows, 16 + ip_len), dtype=np.uint8)
    ts = 1_700_000_000 + index * (SPREAD_S / max(flows, 1))
    seconds = ts.astype(np.int64)
    micros = ((ts - seconds) * 1e6).astype(np.int64)
    header = record[:, :16].view("<u4")
    header[:, 0] = seconds
    header[:, 1] = micros
    header[:, 2] = ip_len
    header[:, 3] = ip_len
    packet = record[:, 16:]
    packet[:, 0] = 0x45
    packet[:, 2:4] = np.frombuffer(struct.pack(">H", ip_len), dtype=np.uint8)
    packet[:, 8] = 64  # TTL
    packet[:, 9] = 17  # UDP
    source = 0x64400000 + 1 + index // 50_000  # 100.64.0.1, then one address per 50,000 ports
    packet[:, 12:16] = source.astype(">u4").view(np.uint8).reshape(flows, 4)
    packet[:, 16:20] = np.frombuffer(bytes([10, 1, 0, 5]), dtype=np.uint8)
    # IPv4 header checksum
    words = packet[:, :20].astype(np.uint32).reshape(flows, 10, 2)
    total = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    checksum = (~total & 0xFFFF).astype(">u2")
    packet[:, 10:12] = checksum.view(np.uint8).reshape(flows, 2)
    source_port = 10_000 + index % 50_000
    packet[:, 20:22] = source_port.astype(">u2").view(np.uint8).reshape(flows, 2)
    packet[:, 22:24] = np.frombuffer(struct.pack(">H", 53), dtype=np.uint8)
    packet[:, 24:26] = np.frombuffer(struct.pack(">H", 8 + PAYLOAD), dtype=np.uint8)
    file_header = struct.pack("<IHHiIII", PCAP_MAGIC_US, 2, 4, 0, 0, 65535, LINKTYPE_RAW)
    with path.open("wb") as out:
        out.write(file_header)
        out.write(record.tobytes())


def run(flows: int, max_sessions: int) -> dict[str, float]:
    """One serve replaying a flood of `flows`: its peak RSS and what it stored."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pcap = work / "flood.pcap"
        flood_pcap(pcap, flows)
        config = write_config(
            DATA / "wg-small.toml",
            work / "serve.toml",
            {"timeouts": {"udp_idle": 60}, "service": {"max_sessions": max_sessions}},
            captures=[{"pcap": str(pcap), "speed": 0}],
        )
        url = f"sqlite:///{work / 'store.db'}"
        with Serve(None, config, url, work) as serve:
            serve.start(wait_for="")  # as fast as it can: it may finish before a status shows
            done = serve.wait(
                lambda s: s["captures"][0]["state"] == "finished" and s["writer"]["pending"] == 0,
                WAIT_FLOOD_S,
                "the flood replayed and written",
            )
            assert serve.proc is not None
            peak = peak_rss_mib(serve.proc.pid)
            capture = done["captures"][0]
            assert serve.stop() == 0, serve.log()
        stored = int(str(query(url, "select count(*) from sessions")[0][0]))
    return {
        "peak": peak,
        "evicted": capture["closed"].get("evicted", 0),
        "stored": stored,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--flows", type=int, default=300_000)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--uncapped", action="store_true", help="also run without a cap")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    caps = [ServiceConfig().max_sessions] + ([UNCAPPED] if a.uncapped else [])
    for cap in caps:
        for scale in a.scales:
            flows = a.flows * scale
            got = run(flows, cap)
            shown_cap = "none" if cap == UNCAPPED else f"{cap:,}"
            print(
                f"cap {shown_cap:>8} flows {flows:>10,}: peak RSS {got['peak']:7.1f} MiB, "
                f"evicted {got['evicted']:,}, "
                f"rows stored {got['stored']:,}"
            )


if __name__ == "__main__":
    main()
