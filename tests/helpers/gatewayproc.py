"""One gateway's writer as a separate process, and the plan of what it is given (issue 7).

A *plan* is a deterministic list of sessions per gateway and generation: a third of them share
their 5-tuple and start time with the same index on every other gateway (two gateways seeing
the same connection), the rest are the gateway's own. Session ids come from the gateway's
namespace exactly as the flow table derives them (`tunnelacct.sessions.flowkey`). Each session gets
OPENED, then CHECKPOINT, then CLOSED (or a second CHECKPOINT: it stays ongoing), in three
rounds, so rows are inserted and then updated across flushes. Counters depend on the gateway,
so a row written by the wrong gateway shows.

    python -m tests.helpers.gatewayproc write URL gw-1 --generation 0 --sessions 5000
    python -m tests.helpers.gatewayproc resume URL gw-1   # a restart: close what is ongoing

With `--barrier DIR` the processes start writing together: each marks itself ready in DIR and
waits for DIR/go (so that interpreter start-up does not serialise them), and they write at the
same time: each waits, once mid-way (a writer after its first round, a restart before it
writes), until all are mid-way, so none ends before every one has begun, however the machine
schedules them.
Each run prints one JSON line: {"gateway", "events", "rows_written", "started", "ended", ...}
with wall-clock start and end (time.time()) of its writing, so a test can check the runs
overlapped.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from tunnelacct.config.model import WriterConfig
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.store.engine import make_engine
from tunnelacct.store.ongoing import ongoing_sessions
from tunnelacct.store.writer import SessionWriter

T0 = 1_795_430_445.0
ATTRIBUTION = Attribution("acme", "c1", "laptop", "alice", "r1", "web")
RESUME_DELTA = (11, 13, 1, 1)  # bytes_tx, bytes_rx, packets_tx, packets_rx a restart adds


def _num(*parts: object) -> int:
    """A stable pseudo-random 64-bit number of `parts` (the same in every process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class Planned:
    """One planned session and the counters of its last event."""

    event: SessionEvent  # the last event the gateway is given (CLOSED or CHECKPOINT)
    shared: bool  # the same 5-tuple and start on every gateway


def _session_id(gateway: str, generation: int, i: int, started_ts: float) -> uuid.UUID:
    """The id of planned session `i`: the same in every process that plans it, distinct per
    gateway, time-ordered like the ids of flowkey.SessionIds."""
    ms = round(started_ts * 1_000_000) // 1000
    rest = _num(gateway, generation, i, "id") << 16 | _num(gateway, generation, i, "id2") & 0xFFFF
    return uuid.UUID(int=(ms << 80) | (rest & ((1 << 80) - 1)))


def plan(gateway: str, generation: int, sessions: int) -> list[Planned]:
    """The sessions `gateway` sees in `generation`, each as its final event."""
    out = []
    for i in range(sessions):
        shared = i % 3 == 0
        owner = "all" if shared else gateway
        src = f"100.64.{_num(owner, generation, i, 'a') % 256}.{1 + i % 250}"
        dst = f"10.1.{_num(owner, generation, i, 'b') % 256}.{1 + _num(owner, i) % 250}"
        sport = 1024 + _num(owner, generation, i, "p") % 60000
        proto = IpProto.TCP if i % 5 else IpProto.UDP
        started = T0 + generation * 3600 + i * 0.001
        sid = _session_id(gateway, generation, i, started)
        n = 1 + _num(gateway, generation, i, "n") % 1000  # differs per gateway
        closes = _num(gateway, generation, i, "c") % 10 < 7
        last = started + n / 100
        out.append(
            Planned(
                SessionEvent(
                    kind=EventKind.CLOSED if closes else EventKind.CHECKPOINT,
                    session_id=sid,
                    proto=proto,
                    family=4,
                    src_addr=src,
                    src_port=sport,
                    dst_addr=dst,
                    dst_port=443,
                    started_ts=started,
                    last_ts=last,
                    ended_ts=last if closes else None,
                    bytes_tx=100 * n,
                    bytes_rx=1000 * n,
                    packets_tx=n,
                    packets_rx=2 * n,
                    payload_bytes_tx=60 * n,
                    payload_bytes_rx=960 * n,
                    close_reason=CloseReason.FIN if closes else None,
                    midstream=False,
                    community_id=f"1:{_num(owner, generation, i):016x}",
                    attribution=ATTRIBUTION,
                    interface="wg0",
                ),
                shared,
            )
        )
    return out


def _earlier(e: SessionEvent, kind: EventKind, share: float) -> SessionEvent:
    """An earlier snapshot of the session `e` ends with: `share` of its counters."""

    def part(v: int) -> int:
        return int(v * share)

    return replace(
        e,
        kind=kind,
        last_ts=e.started_ts + (e.last_ts - e.started_ts) * share,
        ended_ts=None,
        close_reason=None,
        bytes_tx=part(e.bytes_tx),
        bytes_rx=part(e.bytes_rx),
        packets_tx=part(e.packets_tx),
        packets_rx=part(e.packets_rx),
        payload_bytes_tx=part(e.payload_bytes_tx),
        payload_bytes_rx=part(e.payload_bytes_rx),
    )


def resumed_close(e: SessionEvent) -> SessionEvent:
    """What a restarted gateway writes for a resumed ongoing session: closed as SHUTDOWN after
    RESUME_DELTA more traffic."""
    btx, brx, ptx, prx = RESUME_DELTA
    return replace(
        e,
        kind=EventKind.CLOSED,
        last_ts=e.last_ts + 1,
        ended_ts=e.last_ts + 1,
        close_reason=CloseReason.SHUTDOWN,
        bytes_tx=e.bytes_tx + btx,
        bytes_rx=e.bytes_rx + brx,
        packets_tx=e.packets_tx + ptx,
        packets_rx=e.packets_rx + prx,
    )


def wait_for_go(barrier: Path | None, gateway: str) -> None:
    """Say ready in `barrier` (a directory), then wait until the parent creates `go` there."""
    if barrier is None:
        return
    (barrier / f"ready-{gateway}-{os.getpid()}").touch()
    deadline = time.monotonic() + 60
    while not (barrier / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{gateway}: no go in {barrier} within 60 s")
        time.sleep(0.005)


def meet(barrier: Path | None, gateway: str) -> None:
    """Say mid-way in `barrier`, then wait until every process that said ready there has."""
    if barrier is None:
        return
    (barrier / f"mid-{gateway}-{os.getpid()}").touch()
    everyone = len(list(barrier.glob("ready-*")))
    deadline = time.monotonic() + 60
    while len(list(barrier.glob("mid-*"))) < everyone:
        if time.monotonic() > deadline:
            raise SystemExit(f"{gateway}: not all mid-way in {barrier} within 60 s")
        time.sleep(0.005)


async def _write(
    url: str,
    gateway: str,
    rounds: list[list[SessionEvent]],
    started: float,
    barrier: Path | None,
) -> dict[str, object]:
    """Write `rounds` of events, meeting the others in `barrier` after the first of several, or
    before a single one."""
    engine = make_engine(url)
    try:
        config = WriterConfig(batch_size=1000, flush_interval_s=0.01, max_pending=4000)
        writer = SessionWriter(engine, config, gateway=gateway)
        task = asyncio.create_task(writer.run())
        if len(rounds) == 1:
            await asyncio.to_thread(meet, barrier, gateway)
        for number, events in enumerate(rounds):
            for start in range(0, len(events), 500):
                await writer.submit(events[start : start + 500])
                await asyncio.sleep(0)
            if number == 0 and len(rounds) > 1:
                await asyncio.to_thread(meet, barrier, gateway)
        await writer.close(timeout_s=120)
        await task
        return {
            "gateway": gateway,
            "events": sum(map(len, rounds)),
            "rows_written": writer.rows_written,
            "failed_flushes": writer.failed_flushes,
            "started": started,
            "ended": time.time(),
        }
    finally:
        await engine.dispose()


async def write(
    url: str, gateway: str, generation: int, sessions: int, barrier: Path | None = None
) -> dict[str, object]:
    """Give the writer of `gateway` its planned sessions in three rounds; drain."""
    finals = [p.event for p in plan(gateway, generation, sessions)]
    rounds = [
        [_earlier(e, EventKind.OPENED, 0.25) for e in finals],
        [_earlier(e, EventKind.CHECKPOINT, 0.5) for e in finals],
        finals,
    ]
    wait_for_go(barrier, gateway)
    return await _write(url, gateway, rounds, time.time(), barrier)


async def resume(url: str, gateway: str, barrier: Path | None = None) -> dict[str, object]:
    """A restart of `gateway`: read back its ongoing sessions and close each one."""
    wait_for_go(barrier, gateway)
    started = time.time()
    engine = make_engine(url)
    try:
        resumed = await ongoing_sessions(engine, gateway)
    finally:
        await engine.dispose()
    result = await _write(url, gateway, [[resumed_close(e) for e in resumed]], started, barrier)
    return {
        **result,
        "resumed": len(resumed),
        "resumed_ids": sorted(e.session_id.hex for e in resumed),
    }


def main() -> None:
    """Command line: write or resume, then print the JSON summary line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("mode", choices=("write", "resume"))
    ap.add_argument("url")
    ap.add_argument("gateway")
    ap.add_argument("--generation", type=int, default=0)
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--barrier", type=Path, help="start together: see wait_for_go()")
    a = ap.parse_args()
    if a.mode == "write":
        result = asyncio.run(write(a.url, a.gateway, a.generation, a.sessions, a.barrier))
    else:
        result = asyncio.run(resume(a.url, a.gateway, a.barrier))
    print(json.dumps(result))  # noqa: T201 (the parent reads it)


if __name__ == "__main__":
    main()
