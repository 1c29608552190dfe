"""Benchmark: `tunnelacct import` of a headers-only capture, end to end, and flow memory.

Prints packets/s (read, decode, sessionize, write to SQLite), peak RSS of the import process,
and the memory per active session with 100,000 concurrent flows. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_import.py [--packets 2000000] [--flows 20000]
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.benchmarks.measured import run_measured, tunnelacct_command  # noqa: E402
from tests.benchmarks.synth import synth_pcap  # noqa: E402
from tunnelacct.capture.decode import DecodedBatch  # noqa: E402
from tunnelacct.config.model import Timeouts  # noqa: E402
from tunnelacct.sessions.events import Attribution  # noqa: E402
from tunnelacct.sessions.flowtable import FlowTable  # noqa: E402


def bench_import(pcap: Path, workdir: Path, packets: int | None) -> None:
    """Time the whole import command of `pcap` (its packet count read from the command's
    summary when `packets` is None: a capture given with --pcap)."""
    db = workdir / "bench.db"
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    run = run_measured(tunnelacct_command("--log-level", "WARNING", "import", str(pcap)), env)
    if run.returncode != 0:
        raise SystemExit(f"import failed:\n{run.stdout}\n{run.stderr}")
    print(run.stdout.rstrip())
    if packets is None:
        summary = re.search(r"imported \d+ file\(s\): ([\d,]+) packets", run.stdout)
        if summary is None:
            raise SystemExit(f"no packet count in the import's summary:\n{run.stdout}")
        packets = int(summary.group(1).replace(",", ""))
    print(
        f"RESULT import: {packets:,} packets, {run.seconds:.2f} s wall including interpreter "
        f"start and migration, {packets / run.seconds:,.0f} packets/s; peak RSS "
        f"{run.peak_mib:,.0f} MiB (+ largest child process, decoder or writer, "
        f"{run.largest_child_mib:,.0f} MiB); CPU {run.own_cpu_s:.2f} s (+ child processes, "
        f"busiest first: {', '.join(f'{seconds:.2f}' for seconds in run.children_cpu_s)})"
    )


def bench_flow_memory(flows: int) -> None:
    """Open `flows` concurrent TCP sessions (one SYN each) and measure what the table holds."""
    rng = np.random.default_rng(7)
    n = flows
    u64 = np.uint64
    batch = DecodedBatch(
        ts=1.7e9 + np.arange(n) * 1e-5,
        family=np.full(n, 4),
        proto=np.full(n, 6),
        src_hi=np.zeros(n, u64),
        src_lo=(0x64400000 + rng.integers(2, 60000, n)).astype(u64),
        dst_hi=np.zeros(n, u64),
        dst_lo=np.full(n, 0x0A630005, u64),
        sport=10000 + np.arange(n) % 50000,
        dport=np.full(n, 443) + np.arange(n) // 50000,
        ip_bytes=np.full(n, 60),
        payload_bytes=np.zeros(n, np.int64),
        flags=np.full(n, 0x02),
        frag=np.zeros(n, np.int64),
        frag_id=np.zeros(n, np.int64),
        interface="bench",
        packets_in=n,
    )
    attribution = Attribution(org_id="acme", client_id="c", resource_id="r")
    table = FlowTable(
        Timeouts(),
        attribute=lambda *a: attribution,
        is_client=lambda f, a: False,
    )
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table.process(batch)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del batch
    per = (after - before) / len(table)
    print(
        f"RESULT memory: {len(table):,} active sessions hold {(after - before) / 2**20:.1f} MiB: "
        f"{per:,.0f} bytes per active session"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--packets", type=int, default=2_000_000)
    ap.add_argument("--flows", type=int, default=20_000, help="sessions in the capture")
    ap.add_argument("--concurrent", type=int, default=100_000, help="flows for the memory test")
    ap.add_argument("--pcap", type=Path, help="benchmark this capture instead of a synthetic one")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if a.pcap:
            pcap, packets = a.pcap, None
        else:
            pcap = work / "synthetic-s96.pcap"
            packets = synth_pcap(pcap, a.packets, a.flows)
            print(
                f"capture: {packets:,} packets, {a.flows:,} TCP sessions, headers only, "
                f"{pcap.stat().st_size / 2**20:.0f} MiB"
            )
        bench_import(pcap, work, packets)
    bench_flow_memory(a.concurrent)


if __name__ == "__main__":
    main()
