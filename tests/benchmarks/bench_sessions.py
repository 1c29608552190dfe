"""Benchmark: session-heavy import (many short sessions) into SQLite and PostgreSQL, NFStream
on the same capture, and the memory of open sessions.

Generates its capture (tests/benchmarks/synth_sessions.py: seeded, headers only, 60% DNS-like
UDP pairs, 40% short HTTP over TCP, 100.64.0.0/16 clients to 10.99.0.0/24), then times the
whole `tunnelacct import` command (interpreter start and migration included) into a new SQLite
file and into a new PostgreSQL database, with a config that attributes every session to one
org. Prints sessions/s, packets/s and peak RSS of each, and for PostgreSQL the CPU the local
server spent on each import (it shares the machine's cores with the import); runs NFStream on
the same file when a Python with nfstream is given (`--nfstream-python`), and reports the
ratio. Finally opens `--open` sessions in a flow table in a fresh process and reports its RSS
per open session. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_sessions.py [--sessions 300000]
        [--nfstream-python /path/to/python] [--runs 3] [--open 200000] [--no-postgresql]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.benchmarks.measured import (  # noqa: E402
    Measured,
    postgres_server_cpu_s,
    run_measured,
    tunnelacct_command,
)
from tests.benchmarks.synth_sessions import synth_sessions  # noqa: E402

CONFIG = """
[timeouts]
udp_idle = 60
tcp_idle = 3600

[[orgs]]
id = "acme"
name = "Acme Corp"
retention_days = 30

[[clients]]
id = "tunnel-clients"
org = "acme"
user = "everyone"
addresses = ["100.64.0.0/16"]

[[resources]]
id = "private-net"
org = "acme"
address = "10.99.0.0/24"
"""

NFSTREAM_RUNNER = """
import sys, time
from nfstream import NFStreamer
started = time.perf_counter()
flows = 0
for flow in NFStreamer(source=sys.argv[1], statistical_analysis=False, n_dissections=0,
                       splt_analysis=0, idle_timeout=60, active_timeout=3600):
    flows += 1
print(flows, time.perf_counter() - started)
"""

# Opens `count` sessions (a SYN each, from the session-heavy mix's addresses) in a FlowTable
# and prints the RSS it grew by: measured in a fresh process, numpy's batch freed first.
OPEN_RUNNER = """
import gc, sys
import numpy as np
from tunnelacct.capture.decode import DecodedBatch
from tunnelacct.config.model import Timeouts
from tunnelacct.sessions.events import Attribution
from tunnelacct.sessions.flowtable import FlowTable

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

count = int(sys.argv[1])
rng = np.random.default_rng(7)
u64 = np.uint64
attribution = Attribution(org_id="acme", client_id="c", resource_id="r")
table = FlowTable(Timeouts(), attribute=lambda *a: attribution, is_client=lambda f, a: False,
                  max_sessions=count + 1)
batches = []
for first in range(0, count, 50_000):
    n = min(50_000, count - first)
    index = np.arange(first, first + n)
    batches.append(DecodedBatch(
        ts=1.7e9 + index * 1e-5, family=np.full(n, 4), proto=np.full(n, 6),
        src_hi=np.zeros(n, u64), src_lo=(0x64400000 + rng.integers(2, 65534, n)).astype(u64),
        dst_hi=np.zeros(n, u64), dst_lo=(0x0A630000 + index % 250 + 1).astype(u64),
        sport=1024 + index % 60000, dport=443 + index // 60000,
        ip_bytes=np.full(n, 60), payload_bytes=np.zeros(n, np.int64), flags=np.full(n, 0x02),
        frag=np.zeros(n, np.int64), frag_id=np.zeros(n, np.int64), interface="bench",
        packets_in=n))
table.process(batches[0])  # warm up imports and caches, then measure from a clean table
table = FlowTable(Timeouts(), attribute=lambda *a: attribution, is_client=lambda f, a: False,
                  max_sessions=count + 1)
gc.collect()
before = rss_kib()
for batch in batches:
    table.process(batch)
del batches
gc.collect()
after = rss_kib()
print(len(table), (after - before) * 1024)
"""


def measured_import(command: list[str], env: dict[str, str]) -> Measured:
    """Run the CLI, measured from outside (wall time, peak memory, CPU of each process)."""
    run = run_measured(tunnelacct_command("--log-level", "WARNING", *command), env)
    if run.returncode != 0:
        raise SystemExit(f"{command} failed:\n{run.stdout}\n{run.stderr}")
    return run


def import_once(url: str, config: Path, pcap: Path) -> Measured:
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": url}
    return measured_import(["import", "--config", str(config), str(pcap)], env)


def report_import(label: str, runs: list[Measured], sessions: int, packets: int) -> float:
    """Print each run and the best; returns the best sessions/s."""
    best = min(runs, key=lambda run: run.seconds)
    for run in runs:
        children_cpu = ", ".join(f"{seconds:.2f}" for seconds in run.children_cpu_s)
        print(
            f"  {label}: {run.seconds:.2f} s, {sessions / run.seconds:,.0f} sessions/s, "
            f"{packets / run.seconds:,.0f} packets/s; peak RSS {run.peak_mib:,.0f} MiB "
            f"(+ largest child process, decoder or writer, {run.largest_child_mib:,.0f}; "
            f"all processes together at most {run.together_mib:,.0f}); "
            f"CPU {run.own_cpu_s:.2f} s (+ child processes, busiest first: {children_cpu})"
        )
    print(best.stdout.rstrip())
    rate = sessions / best.seconds
    print(
        f"RESULT {label}: best of {len(runs)}: {rate:,.0f} sessions/s ({best.seconds:.2f} s), "
        f"peak RSS {best.peak_mib:,.0f} MiB"
    )
    return rate


def stored_sessions_sqlite(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])


def session_heavy(work: Path, sessions: int) -> tuple[Path, Path, int, int]:
    """The benchmark's config and its capture of `sessions` sessions, written into `work`:
    (config, capture, packets, sessions)."""
    config = work / "bench.toml"
    config.write_text(CONFIG)
    pcap = work / "sessions.pcap"
    packets, made = synth_sessions(pcap, sessions)
    return config, pcap, packets, made


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nfstream-python", type=Path, help="a Python that imports nfstream")
    parser.add_argument(
        "--open", type=int, default=200_000, help="open sessions, memory test (0: none)"
    )
    parser.add_argument("--no-postgresql", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config, pcap, packets, sessions = session_heavy(work, args.sessions)
        print(
            f"capture: {packets:,} packets, {sessions:,} sessions, headers only, "
            f"{pcap.stat().st_size / 2**20:.0f} MiB"
        )
        sqlite_runs = []
        for run in range(args.runs):
            db = work / f"run{run}.db"
            sqlite_runs.append(import_once(f"sqlite:///{db}", config, pcap))
            stored = stored_sessions_sqlite(db)
            if stored != sessions:
                print(f"WARNING: SQLite holds {stored:,} sessions, the capture {sessions:,}")
            db.unlink()
        sqlite_rate = report_import("import into SQLite", sqlite_runs, sessions, packets)
        if not args.no_postgresql:
            from tests.helpers.pg import fresh_database

            pg_runs = []
            server_cpu = []
            for _ in range(args.runs):
                with fresh_database() as url:
                    server_before = postgres_server_cpu_s()
                    pg_runs.append(import_once(url, config, pcap))
                    server_cpu.append(postgres_server_cpu_s() - server_before)
            report_import("import into PostgreSQL", pg_runs, sessions, packets)
            print(
                "  the PostgreSQL server's CPU during each import: "
                + ", ".join(f"{seconds:.2f} s" for seconds in server_cpu)
            )
        if args.nfstream_python:
            nf_runs = []
            for _ in range(args.runs):
                done = subprocess.run(
                    [str(args.nfstream_python), "-c", NFSTREAM_RUNNER, str(pcap)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                flows, seconds = done.stdout.split()
                nf_runs.append((int(flows), float(seconds)))
            flows, seconds = min(nf_runs, key=lambda run: run[1])
            nf_rate = sessions / seconds
            print(f"  NFStream runs: {[f'{s:.2f} s' for _, s in nf_runs]} ({flows:,} flows)")
            print(
                f"RESULT NFStream: best {seconds:.2f} s, {nf_rate:,.0f} sessions/s; "
                f"tunnelacct into SQLite is {sqlite_rate / nf_rate:.2f}x NFStream"
            )
    if args.open <= 0:  # no memory figure asked for
        return
    done = subprocess.run(
        [sys.executable, "-c", OPEN_RUNNER, str(args.open)],
        capture_output=True,
        text=True,
        check=True,
    )
    opened, grew = (int(x) for x in done.stdout.split())
    print(
        f"RESULT memory: {opened:,} open sessions grew RSS by {grew / 2**20:,.1f} MiB: "
        f"{grew / opened:,.0f} bytes per open session"
    )


if __name__ == "__main__":
    main()
