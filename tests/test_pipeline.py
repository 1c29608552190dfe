"""CapturePipeline: a [[capture]] through the reader thread, the decoder and the flow table."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

from tests.helpers.oracle import tshark_sessions
from tunnelacct.config.model import CaptureConfig, Timeouts
from tunnelacct.enums import EventKind
from tunnelacct.ingest.pipeline import CapturePipeline
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
