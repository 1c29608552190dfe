"""The [collector] of `serve` (issue 20): flow records from exporters become session events.

The collector is one more source of the same session engine: its UDP endpoints
(collector/listener.py, asyncio-dgram) take allowed datagrams, the decoder
(collector/decode.py) turns them into flow records, and one RecordTable per exporter address
and observation domain (sessions/flowrecords.py) makes sessions of them, attributed by the
same identity, counted by a traffic tally like a capture's, and handed to the same sink (the
writer, the usage rollup, the session event log).

Tasks, all in serve's TaskGroup: one `listener.run(endpoint)` per listen address, and `run()`,
which decodes the queued datagrams into the tables and, once a second, ends the sessions whose
records stopped, expires templates and, every `[timeouts] checkpoint`, checkpoints the open
sessions. `stop()` closes the endpoints; `run()` then decodes what was queued, suspends the
tables (ended sessions closed, the others checkpointed to be resumed) and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tunnelacct.collector.decode import Exporter, FlowDecoder
from tunnelacct.collector.listener import (
    AllowList,
    CollectorFigures,
    CollectorListener,
    Endpoint,
    ExporterRule,
    RecordBatch,
)
from tunnelacct.collector.records import FlowRecord
from tunnelacct.config.model import CollectorConfig, Timeouts
from tunnelacct.enums import IpProto
from tunnelacct.ingest.pipeline import SessionSink
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.sessions.flowkey import SessionIds
from tunnelacct.sessions.flowrecords import (
    COLLECTOR_TICK_S,
    OPEN_HOLD_MARGIN_S,
    RecordTable,
    exporter_interface,
    exporter_of_interface,
)
from tunnelacct.sessions.flowtable import AttributeFn, FlowObserver, IsClientFn

log = logging.getLogger(__name__)


TableKey = tuple[str, int]  # (exporter address, observation domain / source id)


@dataclass(frozen=True, slots=True)
class FlowSourceFigures:
    """The collector's counters at one instant, for metrics and the status file."""

    listener: CollectorFigures
    # per exporter (address, port): the decoder's tallies and bad input by reason
    decoder: dict[Exporter, dict[str, int]]
    templates: dict[str, int]  # exporter address -> templates it has defined and not withdrawn
    pending_sets: dict[str, int]  # exporter address -> data sets waiting for their template
    open_sessions: dict[str, int]  # exporter address -> sessions open in its tables
    records_accounted: dict[str, int]  # exporter address -> TCP/UDP records made sessions of
    records_skipped: int  # records of protocols other than TCP/UDP, or without addresses
    sessions_marked_incomplete: int


class FlowSink(SessionSink, Protocol):
    """Where the collector's events go (the writer): it also says when it has room."""

    async def room(self) -> None: ...


class FlowSource:
    """[collector]: endpoints, decoder and one RecordTable per exporter address and domain."""

    def __init__(
        self,
        config: CollectorConfig,
        timeouts: Timeouts,
        *,
        attribute: AttributeFn,
        is_client: IsClientFn,
        max_sessions: int = 262_144,
        observer: FlowObserver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.timeouts = timeouts
        rules = [
            ExporterRule(
                ipaddress.ip_network(exporter.address), exporter.gateway, exporter.sampling
            )
            for exporter in config.exporters
        ]
        self.allow = AllowList(rules)
        self.listener = CollectorListener(
            config.listen, self.allow, max_queue=config.max_queue, clock=clock
        )
        self.decoder = FlowDecoder(template_timeout_s=config.template_timeout_s)
        self.tables: dict[TableKey, RecordTable] = {}
        self.ids = SessionIds()  # one issuer for every table: ids never repeat
        self._attribute = attribute
        self._is_client = is_client
        self._max_sessions = max_sessions
        self._observer = observer
        self._clock = clock
        self._suspended = False

    # -- lifecycle -----------------------------------------------------------------------------

    async def open(self) -> None:
        """Bind every listen address (CollectorListenError names one that cannot be bound)."""
        await self.listener.open()

    @property
    def endpoints(self) -> list[Endpoint]:
        return self.listener.endpoints

    def stop(self) -> None:
        """Close the endpoints: `run()` finishes the queue, suspends the tables and returns."""
        self.listener.stop()

    async def run(self, sink: FlowSink) -> None:
        """Decode into the tables until stopped; then suspend them into `sink`.

        While the writer holds all it may (`[writer] max_pending`), decoding waits: datagrams
        wait in the queue and the kernel's receive buffer, and past those they are dropped and
        counted (queue_overflow, the socket's drops), never held in memory without bound."""

        async def on_records(batch: RecordBatch) -> None:
            await sink.room()
            self.add(batch)

        stopping = asyncio.Event()
        ticker = asyncio.create_task(self._tick(sink, stopping))
        try:
            await self.listener.drain(self.decoder, on_records)
        finally:
            # never cancelled mid-submit: the sessions a tick ended are out of the tables, and
            # a cancelled submit would lose them; the tick in progress finishes first
            stopping.set()
            try:
                await ticker
            except asyncio.CancelledError:
                ticker.cancel()  # serve gave up waiting (a stalled store): so do we
                raise
        await sink.submit(self.suspend())

    def resume(self, event: SessionEvent) -> bool:
        """Continue a session of an exporter left ongoing before a restart; False when it
        cannot continue (not a collector session, its exporter no longer allowed, or no record
        for longer than an exporter holds a live flow)."""
        exporter = exporter_of_interface(event.interface)
        if exporter is None:
            return False
        address = exporter[0]
        domain_id = exporter[1]
        rule = self.allow.match(address)
        if rule is None or (event.gateway is not None and rule.gateway != event.gateway):
            return False
        timeouts = self.timeouts
        idle_s = timeouts.tcp_idle_s if event.proto is IpProto.TCP else timeouts.udp_idle_s
        hold_s = max(self.config.active_timeout_s, idle_s) + OPEN_HOLD_MARGIN_S
        if self._clock() - event.last_ts > hold_s:
            return False
        self._table(address, domain_id, rule).resume(event)
        return True

    def suspend(self) -> list[SessionEvent]:
        """The service stops: close what has ended, checkpoint the rest (once)."""
        if self._suspended:
            return []
        self._suspended = True
        events: list[SessionEvent] = []
        for table in self.tables.values():
            events += table.suspend()
        return events

    # -- records -------------------------------------------------------------------------------

    def add(self, batch: RecordBatch) -> None:
        """Account one batch of decoded datagrams in their exporters' tables."""
        for decoded in batch:
            address = decoded.exporter[0]
            by_domain: dict[int, list[FlowRecord]] = defaultdict(list)
            for record in decoded.records:
                by_domain[record.domain_id].append(record)
            for domain_id, records in by_domain.items():
                table = self._table(address, domain_id, decoded.rule)
                table.add_records(records, decoded.received_ts, decoded.lost)
            if decoded.lost and not decoded.records:
                for (table_address, _domain_id), table in self.tables.items():
                    if table_address == address:
                        table.mark_incomplete()

    def _table(self, address: str, domain_id: int, rule: ExporterRule) -> RecordTable:
        key = (address, domain_id)
        table = self.tables.get(key)
        if table is None:
            table = self.tables[key] = RecordTable(
                self.timeouts,
                stitch_gap_s=self.config.stitch_gap_s,
                active_timeout_s=self.config.active_timeout_s,
                interface=exporter_interface(address, domain_id),
                gateway=rule.gateway,
                attribute=self._attribute,
                is_client=self._is_client,
                ids=self.ids,
                observer=self._observer,
                max_sessions=self._max_sessions,
                clock=self._clock,
            )
            log.info(
                "collector: first records from exporter %s (domain %d) for gateway %r",
                address,
                domain_id,
                rule.gateway,
            )
        return table

    async def _tick(self, sink: FlowSink, stopping: asyncio.Event) -> None:
        """Once a second until `stopping`: end sessions whose records stopped, expire
        templates; every [timeouts] checkpoint, checkpoint the open sessions."""
        checkpoint_s = self.timeouts.checkpoint_s
        next_checkpoint = self._clock() + checkpoint_s
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), COLLECTOR_TICK_S)
            if stopping.is_set():
                return  # suspend() takes it from here
            now = self._clock()
            events: list[SessionEvent] = []
            for table in list(self.tables.values()):
                events += table.advance(now)
            if now >= next_checkpoint:
                next_checkpoint = now + checkpoint_s
                for table in list(self.tables.values()):
                    events += table.checkpoint()
            self.decoder.expire_templates(now)
            if events:
                await sink.submit(events)

    # -- figures -------------------------------------------------------------------------------

    def figures(self) -> FlowSourceFigures:
        """A snapshot of the listener's, the decoder's and the tables' counters."""
        templates: dict[str, int] = defaultdict(int)
        for key, count in self.decoder.templates.counts().items():
            templates[key[0]] += count
        pending: dict[str, int] = defaultdict(int)
        decoder_counters: dict[Exporter, dict[str, int]] = {}
        for exporter in self.decoder.counters:
            decoder_counters[exporter] = self.decoder.stats(exporter)
            pending[exporter[0]] += self.decoder.pending_count(exporter)
        open_sessions: dict[str, int] = defaultdict(int)
        records_accounted: dict[str, int] = defaultdict(int)
        for (address, _domain_id), table in self.tables.items():
            open_sessions[address] += len(table)
            records_accounted[address] += table.records
        return FlowSourceFigures(
            listener=self.listener.figures(),
            decoder=decoder_counters,
            templates=dict(templates),
            pending_sets=dict(pending),
            open_sessions=dict(open_sessions),
            records_accounted=dict(records_accounted),
            records_skipped=sum(t.records_skipped for t in self.tables.values()),
            sessions_marked_incomplete=sum(
                t.sessions_marked_incomplete for t in self.tables.values()
            ),
        )


__all__ = ["FlowSink", "FlowSource", "FlowSourceFigures", "TableKey"]
