"""The collector source of serve (tunnelacct/ingest/flows.py): its stop loses no session, even
when the writer is full while a tick hands over the sessions it ended."""

from __future__ import annotations

import asyncio
import ipaddress

from tunnelacct.collector.listener import DecodedDatagram, ExporterRule
from tunnelacct.collector.records import FlowRecord
from tunnelacct.config.model import CollectorConfig, ExporterConfig, Timeouts
from tunnelacct.enums import IpProto
from tunnelacct.ingest.flows import FlowSource
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.sessions.flowrecords import CLOSING_HOLD_S, COLLECTOR_TICK_S, END_IDLE

EXPORTER = ("127.0.0.1", 40000)
GATEWAY = "branch-fw"
T0 = 1_700_000_000.0
SESSIONS = 50
WAIT_S = 60.0


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class StalledSink:
    """A writer that is full: submit() takes nothing until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()
        self.session_ids: set[object] = set()

    async def room(self) -> None:
        """Room for input: the stall is in submit()."""

    async def submit(self, events: list[SessionEvent]) -> None:
        if events and not self.release.is_set():
            self.blocked.set()
            await self.release.wait()
        self.session_ids.update(event.session_id for event in events)


def attribute(
    family: int, initiator: int, responder: int, responder_port: int, proto: IpProto
) -> Attribution:
    return Attribution(org_id="acme")


def dns_record(index: int) -> FlowRecord:
    """One direction of a DNS-like exchange the exporter ended as idle (flowEndReason 1)."""
    return FlowRecord(
        EXPORTER,
        10,
        0,
        int(IpProto.UDP),
        f"100.64.0.{index + 1}",
        "10.99.0.53",
        50000 + index,
        53,
        80,
        1,
        None,
        None,
        T0,
        T0 + 0.01,
        None,
        END_IDLE,
        None,
        1,
        False,
    )


async def test_stopping_while_a_tick_waits_for_the_writer_loses_no_session() -> None:
    clock = FakeClock(T0 + 1)
    config = CollectorConfig(
        listen=(("127.0.0.1", 0),), exporters=(ExporterConfig("127.0.0.1/32", GATEWAY),)
    )
    source = FlowSource(
        config, Timeouts(), attribute=attribute, is_client=lambda f, a: False, clock=clock
    )
    await source.open()
    rule = ExporterRule(ipaddress.ip_network("127.0.0.1/32"), GATEWAY)
    records = [dns_record(index) for index in range(SESSIONS)]
    source.add([DecodedDatagram(rule, EXPORTER, records, 0, clock.now)])
    sink = StalledSink()
    running = asyncio.create_task(source.run(sink))
    clock.now += CLOSING_HOLD_S + COLLECTOR_TICK_S  # the next tick ends every session
    await asyncio.wait_for(sink.blocked.wait(), WAIT_S)
    source.stop()  # while that tick waits for the full writer
    for _ in range(20):
        await asyncio.sleep(0)
    sink.release.set()
    await asyncio.wait_for(running, WAIT_S)
    assert len(sink.session_ids) == SESSIONS
