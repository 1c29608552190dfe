"""The import's reading phase in one flow table, against the same packets in two, on two cores.

What a second flow-table process would give the session-heavy import (issue 21,
docs/performance-sessions.md "Where each target ends"): in its reading phase the flow table
holds one core and the other is mostly idle. This decodes the capture into memory once, splits
every batch in two by the pair of addresses (so a conversation, its fragments included, is
one table's; capture order kept within each part), and times reading it all:
- one table over every batch, in one process;
- two tables at once, each over its part, in two forked processes; the wall time is the
  slower one's.

Each table attributes with the session-heavy benchmark's config (bench_sessions.py), as the
import does. Only the reading is timed: closing the sessions left at the capture's end is
the closing phase, another matter. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/flowtable_shards.py [--sessions 300000] [--runs 3]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_sessions import session_heavy  # noqa: E402
from tests.benchmarks.machine import machine  # noqa: E402
from tunnelacct.capture.decode import DecodedBatch, decode, packets_at  # noqa: E402
from tunnelacct.capture.pcapfile import open_capture  # noqa: E402
from tunnelacct.config.load import load_config  # noqa: E402
from tunnelacct.heap import fewer_collections  # noqa: E402
from tunnelacct.sessions.attribution import Inventory  # noqa: E402
from tunnelacct.sessions.flowtable import FlowTable  # noqa: E402

SHARDS = 2
_MIX = np.uint64(0x9E3779B97F4A7C15)


def shard_of(batch: DecodedBatch) -> np.ndarray:
    """Each packet's part, 0 or 1: the same for both directions of a pair of addresses."""
    pair = batch.src_hi ^ batch.src_lo ^ batch.dst_hi ^ batch.dst_lo  # symmetric in src, dst
    return ((pair * _MIX) >> np.uint64(63)).astype(np.int64)


def split(batch: DecodedBatch) -> list[DecodedBatch]:
    """`batch` as SHARDS batches, each with its part's packets in capture order."""
    parts = shard_of(batch)
    return [packets_at(batch, np.flatnonzero(parts == shard)) for shard in range(SHARDS)]


def new_table(inventory: Inventory, config: Any, tables: int) -> FlowTable:
    """A flow table as the import makes one (its timeouts, the attribution), one of `tables`:
    each holds its share of `[service] max_sessions`, so that all together hold as many."""
    return FlowTable(
        config.timeouts,
        attribute=inventory.attribute,
        is_client=inventory.is_client_address,
        max_sessions=config.service.max_sessions // tables,
    )


def read_all(
    batches: list[DecodedBatch], inventory: Inventory, config: Any, tables: int = 1
) -> float:
    """Seconds to run `batches` through a new table, one of `tables` (the sessions they close
    included)."""
    table = new_table(inventory, config, tables)
    with fewer_collections():
        started = time.perf_counter()
        for batch in batches:
            table.process(batch)
        return time.perf_counter() - started


def read_in_child(batches: list[DecodedBatch], inventory: Inventory, config: Any, out: Any) -> None:
    out.send(read_all(batches, inventory, config, SHARDS))
    out.close()


def read_sharded(parts: list[list[DecodedBatch]], inventory: Inventory, config: Any) -> list[float]:
    """Each part read by a table of its own in a forked process, all at once: their seconds."""
    ctx = mp.get_context("fork")  # the decoded batches are the parent's, shared as they are
    pipes = []
    procs = []
    for part in parts:
        receiving, sending = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=read_in_child, args=(part, inventory, config, sending))
        proc.start()
        sending.close()
        pipes.append(receiving)
        procs.append(proc)
    seconds = [pipe.recv() for pipe in pipes]
    for proc in procs:
        proc.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        config_path, pcap, packets, sessions = session_heavy(Path(tmp), args.sessions)
        config = load_config(config_path)
        batches = [decode(raw) for raw in open_capture(pcap).batches()]
    inventory = Inventory.from_config(config)
    parts: list[list[DecodedBatch]] = [[] for _ in range(SHARDS)]
    for batch in batches:
        for shard, part in enumerate(split(batch)):
            parts[shard].append(part)
    shares = ", ".join(f"{sum(len(b) for b in part):,}" for part in parts)
    print(f"capture: {sessions:,} sessions, {packets:,} packets; packets per part: {shares}")
    for run in range(1, args.runs + 1):
        one = read_all(batches, inventory, config)
        two = read_sharded(parts, inventory, config)
        print(
            f"run {run}: one table {one:.2f} s; two tables at once "
            f"{', '.join(f'{seconds:.2f}' for seconds in two)} s: wall {max(two):.2f} s, "
            f"{one / max(two):.2f}x"
        )


if __name__ == "__main__":
    main()
