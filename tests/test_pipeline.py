"""CapturePipeline: a [[capture]] through the reader thread, the decoder and the flow table."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from tests.helpers.oracle import tshark_sessions
from tunnelacct.config.model import CaptureConfig, Timeouts
from tunnelacct.enums import EventKind
from tunnelacct.errors import StoreError
from tunnelacct.ingest import pipeline as pipeline_module
from tunnelacct.ingest.pipeline import READ_TIMEOUT_S, CapturePipeline
from tunnelacct.sessions.events import Attribution, SessionEvent

PCAP = Path(__file__).parent / "data" / "wg-small.pcap"
DAY_S = 86_400


class Sink:
    def __init__(self) -> None:
        self.closed: list[SessionEvent] = []

    async def submit(self, events: list[SessionEvent]) -> None:
        self.closed += [e for e in events if e.kind is EventKind.CLOSED]


async def test_a_loop_at_recorded_times_accounts_every_pass_even_days_ahead() -> None:
    # Each pass of a loop at speed 0 starts after the last one's sessions ended (the longest
    # idle timeout later): with tcp_idle a day, each pass runs a day after the last, so enough
    # passes run more than a day ahead of the clock. Those times are the replay's by design,
    # not a bogus record (bad_timestamp).
    timeouts = Timeouts(tcp_idle_s=float(DAY_S))
    pipeline = CapturePipeline(
        CaptureConfig(pcap=str(PCAP), loop=True),
        timeouts,
        attribute=lambda *args: Attribution("acme"),
        is_client=lambda family, addr: False,
        queue_packets=50_000,
    )
    recorded = tshark_sessions(PCAP)
    per_pass = len(recorded)
    recorded_start = recorded[0].first_ts
    days_behind_now = (time.time() - recorded_start) / DAY_S
    passes = math.ceil(days_behind_now) + 3
    sink = Sink()
    pipeline.start()
    task = asyncio.create_task(pipeline.run(sink))
    deadline = time.monotonic() + 120
    while len(sink.closed) < passes * per_pass:
        assert time.monotonic() < deadline, (len(sink.closed), pipeline.status.decode_errors)
        assert not task.done(), task
        assert "bad_timestamp" not in pipeline.status.decode_errors, pipeline.status.decode_errors
        await asyncio.sleep(0.05)
    pipeline.stop()
    await task
    assert "bad_timestamp" not in pipeline.status.decode_errors
    assert max(e.started_ts for e in sink.closed) > time.time() + DAY_S


class FailingSink:
    """A sink whose store fails: its first submit waits until `fail` is set, then raises, as
    serve's writer does once a shutdown ran out of time."""

    def __init__(self) -> None:
        self.fail = asyncio.Event()

    async def submit(self, events: list[SessionEvent]) -> None:
        await self.fail.wait()
        raise StoreError("session writer is closed")


async def test_a_sessionizer_stopped_by_its_store_counts_what_it_left_queued_as_dropped() -> None:
    """The sessionizer held back fills the queue (queued_packets); its store then fails. The
    packets still queued, and those the reader goes on reading, are dropped and counted in
    queue_drops: every packet read is in the flow table's count, skipped, undecodable or
    dropped, and none stays queued."""
    pipeline = CapturePipeline(
        CaptureConfig(pcap=str(PCAP), loop=True),
        Timeouts(),
        attribute=lambda *args: Attribution("acme"),
        is_client=lambda family, addr: False,
        queue_packets=3 * 1294,  # a few passes of the file
    )
    status = pipeline.status
    sink = FailingSink()
    pipeline.start()
    task = asyncio.create_task(pipeline.run(sink))
    deadline = time.monotonic() + 120
    read_before = -1
    while status.packets != read_before:  # until the reader waits for room
        assert time.monotonic() < deadline, status
        read_before = status.packets
        await asyncio.sleep(2 * READ_TIMEOUT_S)
    assert status.queued_packets > 1294, status  # more than the batch the reader holds
    sink.fail.set()
    ended = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(ended[0], StoreError), ended
    pipeline.stop()
    assert pipeline.join(120)
    taken_by_the_sessionizer = (
        pipeline.table.stats.packets
        + sum(status.skipped.values())
        + sum(status.decode_errors.values())
    )
    assert status.queued_packets == 0, status
    assert status.queue_drops > status.packets - read_before, status
    assert status.packets == taken_by_the_sessionizer + status.queue_drops, status


class PartsSink:
    """Records the closing events of each submit."""

    def __init__(self) -> None:
        self.parts: list[list[SessionEvent]] = []

    async def submit(self, events: list[SessionEvent]) -> None:
        self.parts.append([e for e in events if e.kind is EventKind.CLOSED])


async def test_a_replays_end_hands_its_open_sessions_over_in_parts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Idle timeouts and linger of a day: every session of the file is still in the table at
    its end, and is closed then (end_of_capture, or the FIN or RST it saw), once, in parts of
    at most CLOSE_PART_SESSIONS: the writer can start on the first while the table closes the
    rest."""
    part_sessions = 3
    monkeypatch.setattr(pipeline_module, "CLOSE_PART_SESSIONS", part_sessions)
    day = float(DAY_S)
    pipeline = CapturePipeline(
        CaptureConfig(pcap=str(PCAP)),
        Timeouts(tcp_idle_s=day, udp_idle_s=day, tcp_linger_s=day),
        attribute=lambda *args: Attribution("acme"),
        is_client=lambda family, addr: False,
        queue_packets=50_000,
    )
    recorded = tshark_sessions(PCAP)
    sink = PartsSink()
    pipeline.start()
    await asyncio.wait_for(pipeline.run(sink), timeout=120)
    pipeline.stop()
    assert pipeline.join(120)
    closed = [event for part in sink.parts for event in part]
    assert len(closed) == len(recorded)
    assert len({event.session_id for event in closed}) == len(recorded)
    assert "end_of_capture" in {str(event.close_reason) for event in closed}
    closing_parts = [part for part in sink.parts if part]
    assert len(closing_parts) >= math.ceil(len(recorded) / part_sessions)
    assert max(len(part) for part in closing_parts) <= part_sessions
