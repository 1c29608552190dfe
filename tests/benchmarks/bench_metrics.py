"""Benchmark: the packet path with traffic metrics on and off (issue 6: under 5% apart).

Decodes a synthetic headers-only capture once, then sessionizes it again and again with a
FlowTable without a tally (metrics off) and with one (on: the per-sweep fold and the
per-session counts of tunnelacct.metrics.tally), alternating the order each round so that neither
profits from a warm cache. Prints packets/s of the sessionizer alone (the part that changes)
and of decode + sessionizer (the whole packet path), fastest and median of `--rounds`, and the
difference.
Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_metrics.py [--packets N] [--flows N] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.benchmarks.synth import synth_pcap  # noqa: E402
from tunnelacct.capture.decode import DecodedBatch, decode  # noqa: E402
from tunnelacct.capture.pcapfile import open_capture  # noqa: E402
from tunnelacct.config.model import Timeouts  # noqa: E402
from tunnelacct.enums import CloseReason, IpProto  # noqa: E402
from tunnelacct.metrics.tally import MetricLabels, TrafficTally  # noqa: E402
from tunnelacct.sessions.events import Attribution  # noqa: E402
from tunnelacct.sessions.flowtable import FlowTable  # noqa: E402

RESOURCES = {443: "web", 8080: "intranet", 5432: "postgres", 22: "ssh"}


def attribute(family: int, src: int, dst: int, dport: int, proto: IpProto) -> Attribution:
    """Like an inventory: a client per tunnel address, a resource per service port."""
    return Attribution(
        org_id=f"org{dst % 3}", client_id=f"c{src & 0xFF}", resource_id=RESOURCES.get(dport)
    )


def sessionize(batches: list[DecodedBatch], metrics: bool) -> float:
    """Seconds to sessionize every batch and close what is left."""
    tally = TrafficTally(MetricLabels()) if metrics else None
    table = FlowTable(
        Timeouts(),
        attribute=attribute,
        is_client=lambda f, a: a >> 24 == 100,
        emit_opened=True,
        observer=tally,
    )
    started = time.perf_counter()
    for batch in batches:
        table.process(batch)
    table.close_all(CloseReason.END_OF_CAPTURE)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--flows", type=int, default=20_000, help="sessions in the capture")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="tunnelacct-bench-metrics-") as tmp:
        pcap = Path(tmp) / "synth.pcap"
        n = synth_pcap(pcap, args.packets, args.flows)
        started = time.perf_counter()
        batches = [decode(raw) for raw in open_capture(pcap).batches()]
        decode_s = time.perf_counter() - started
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for metrics in (False, True) if r % 2 == 0 else (True, False):
            times[metrics].append(sessionize(batches, metrics))
    print(f"{n:,} packets in {args.flows:,} sessions; decode {n / decode_s:,.0f} packets/s")
    for how, pick in (("fastest", min), ("median", statistics.median)):
        best = {m: pick(t) for m, t in times.items()}
        print(f"{how} of {args.rounds} rounds each:")
        for metrics, label in ((False, "metrics off"), (True, "metrics on")):
            whole = n / (decode_s + best[metrics])
            print(
                f"  {label:12s} sessionizer {n / best[metrics]:12,.0f} packets/s   "
                f"decode + sessionizer {whole:12,.0f} packets/s"
            )
        slower = best[True] / best[False] - 1
        whole = (decode_s + best[True]) / (decode_s + best[False]) - 1
        print(
            f"  metrics on costs {slower:+.1%} of the sessionizer's time, "
            f"{whole:+.1%} of the packet path's"
        )


if __name__ == "__main__":
    main()
