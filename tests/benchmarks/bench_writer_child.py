"""Benchmark: what the import's writer child and its parent spend per session, by what is sent.

An import hands each session to its writer child (store/writerchild.py) down a pipe, either as
a packed event, which the child unpacks into a SessionEvent and writes through its SessionWriter
(row, rollup, coalescing), or as a row of sessions complete in one write that the parent built
(store/complete.py), which the child only writes. This benchmark does each side's work in this
process, one after the other, so that each is measured alone:

- the parent's: pickling N closed sessions into messages of `--chunk`, as packed events or as
  complete rows (CPU of this process);
- the child's: unpickling those messages and writing them through a SessionWriter, with an
  import's Reimport, into a new migrated SQLite store (CPU of this process, its SQLite thread
  included, and the wall time to the drain).

The two ways alternate, `--runs` times. Prints µs per session of each. Asserts nothing about
time.

    .venv/bin/python tests/benchmarks/bench_writer_child.py [--events 300000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_writer import make_events  # noqa: E402
from tests.benchmarks.machine import machine  # noqa: E402
from tunnelacct.config.model import WriterConfig  # noqa: E402
from tunnelacct.sessions.events import SessionEvent  # noqa: E402
from tunnelacct.store.complete import CompleteSessions  # noqa: E402
from tunnelacct.store.engine import make_engine  # noqa: E402
from tunnelacct.store.migrate import migrate  # noqa: E402
from tunnelacct.store.reimport import Reimport  # noqa: E402
from tunnelacct.store.rows import driver_values  # noqa: E402
from tunnelacct.store.writer import SessionWriter  # noqa: E402
from tunnelacct.store.writerchild import child_writer_config, pack, unpack  # noqa: E402

GATEWAY = "gw-bench"
WAYS = ("packed events", "complete rows")


@dataclass(frozen=True, slots=True)
class Sides:
    """One run of one way: CPU seconds of the parent's side and of the child's, and the child's
    wall seconds."""

    parent_cpu_s: float
    child_cpu_s: float
    child_wall_s: float


class NoIssuedIds:
    """An import's issuer as the writer child knows it, with no tag: no stored row is its own."""

    def __init__(self) -> None:
        self.tags: set[int] = set()

    def issued(self, ident: uuid.UUID) -> bool:
        return False


def messages(events: Sequence[SessionEvent], chunk: int, way: str) -> list[bytes]:
    """The pipe's messages of `events` (closed, each new) sent `way`, `chunk` a message."""
    driver = driver_values("sqlite")
    sent = []
    for start in range(0, len(events), chunk):
        part = events[start : start + chunk]
        if way == "packed events":
            body: Any = [pack(event) for event in part]
        else:
            complete = CompleteSessions()
            for event in part:
                complete.add(event, GATEWAY, driver)
            body = complete
        sent.append(pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL))
    return sent


async def write_messages(url: str, sent: Sequence[bytes], way: str) -> None:
    """What the child does with `sent`: unpickle each message and write it, then drain."""
    engine = make_engine(url)
    try:
        writer = SessionWriter(
            engine,
            child_writer_config(WriterConfig()),
            gateway=GATEWAY,
            reimport=Reimport(GATEWAY, NoIssuedIds()),
        )
        running = asyncio.create_task(writer.run())
        for payload in sent:
            body = pickle.loads(payload)
            if way == "packed events":
                await writer.submit([unpack(packed) for packed in body])
            else:
                await writer.submit_complete(body)
            await asyncio.sleep(0)  # the child reads its pipe between messages
        await writer.close(timeout_s=600)
        await running
    finally:
        await engine.dispose()


def one_run(work: Path, events: Sequence[SessionEvent], chunk: int, way: str) -> Sides:
    """Both sides of `way` for `events`, into a new store in `work`."""
    store = work / "child.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    url = f"sqlite:///{store}"
    migrate(url)
    parent_started = time.process_time()
    sent = messages(events, chunk, way)
    parent_cpu_s = time.process_time() - parent_started
    child_started = time.process_time()
    wall_started = time.perf_counter()
    asyncio.run(write_messages(url, sent, way))
    return Sides(
        parent_cpu_s,
        time.process_time() - child_started,
        time.perf_counter() - wall_started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=5000, help="sessions a message")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    events = make_events(args.events, closed_share=1.0)
    print(f"{len(events):,} closed sessions, {args.chunk:,} a message")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        for run in range(1, args.runs + 1):
            for way in WAYS:
                sides = one_run(Path(tmp), events, args.chunk, way)
                per_session = 1e6 / len(events)
                print(
                    f"run {run}: {way:14s} parent {sides.parent_cpu_s * per_session:5.1f} µs, "
                    f"child {sides.child_cpu_s * per_session:5.1f} µs of CPU "
                    f"({sides.child_wall_s * per_session:5.1f} µs of wall) a session",
                    flush=True,
                )


if __name__ == "__main__":
    main()
