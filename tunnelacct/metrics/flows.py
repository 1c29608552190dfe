"""Prometheus metrics of the flow-record collector (issue 20), read from its figures on scrape.

"Metrics per exporter: datagrams, records, drops by reason, lost records, templates, queue
depth." Each scrape reads one `FlowSourceFigures` snapshot (`FlowSource.figures()`: the
listener's, the decoder's and the record tables' counters, kept anyway) and sums it per exporter
address; nothing here runs per datagram.

Why an exporter address may be a label here, when the capture metrics never carry one: a
packet's addresses are whoever talks through the gateway, unbounded and personal, whereas an
exporter is a router or firewall that the operator listed in `[[collector.exporters]]`. A
datagram from any other source is dropped before it is counted per exporter and shows only in
the unlabelled `tunnelacct_collector_not_allowed_datagrams_total`: UDP source addresses are
spoofable, so a label per rejected source would let anyone make series. Within an allowed network
the listener keeps at most MAX_SOURCES sources and sums the rest under "other" (kept here as an
exporter of that name), and this collector gives at most MAX_EXPORTER_SERIES addresses a series
of their own, so even a wide allowed network flooded with forged sources makes a bounded number
of series. Source ports are summed away: an exporter takes a new source port when it restarts,
and a restart must not start new series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tunnelacct.collector.listener import MAX_SOURCES, OTHER_SOURCES, DropReason
from tunnelacct.collector.records import DecodeReason

if TYPE_CHECKING:
    # only for annotations: importing ingest.flows would load the session engine into the web app
    from tunnelacct.ingest.flows import FlowSourceFigures

MAX_EXPORTER_SERIES = MAX_SOURCES
EXPORTER_LABELS = ("exporter", "gateway")
UNKNOWN_GATEWAY = ""  # an address only the decoder counted: the listener summed it under "other"

# The decoder's counters that are tallies, not input it threw away. SEQUENCE_BACKWARDS is a
# reordered or repeated message: it is decoded all the same, so it is no drop either.
DECODE_TALLIES = frozenset(
    {
        DecodeReason.DATAGRAMS,
        DecodeReason.RECORDS,
        DecodeReason.OPTIONS_RECORDS,
        DecodeReason.TEMPLATES,
        DecodeReason.TEMPLATES_WITHDRAWN,
        DecodeReason.TEMPLATES_EXPIRED,
        DecodeReason.EXPORTER_RESTARTS,
        DecodeReason.LOST_RECORDS,
        DecodeReason.LOST_PACKETS,
        DecodeReason.PENDING_SETS,
        DecodeReason.PENDING_DECODED,
        DecodeReason.SEQUENCE_BACKWARDS,
    }
)
# Every other DecodeReason is bad input: a reason added to the decoder is exported without an
# edit here (style rule 8: nothing is dropped without a counter).
DECODE_DROP_REASONS: tuple[str, ...] = tuple(
    reason for reason in DecodeReason if reason not in DECODE_TALLIES
)
# The `reason` values of tunnelacct_collector_dropped_total, each exported for every exporter.
DROP_REASONS: tuple[str, ...] = (DropReason.QUEUE_OVERFLOW, *DECODE_DROP_REASONS)


@dataclass(slots=True)
class ExporterTotals:
    """One exporter address's figures, summed over its source ports and domains."""

    gateway: str
    datagrams: int = 0
    received_bytes: int = 0
    records: int = 0
    lost_records: int = 0
    lost_export_packets: int = 0
    restarts: int = 0
    templates: int = 0
    pending_sets: int = 0
    open_sessions: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # DROP_REASONS value -> datagrams/sets

    def add_dropped(self, reason: str, count: int) -> None:
        """Add `count` to the drops under `reason`."""
        self.dropped[reason] = self.dropped.get(reason, 0) + count


class FlowSourceCollector(Collector):
    """The flow-record collector's figures per exporter address, plus its queue and sockets.

    `flows` returns None when serve has no [collector]: then nothing is collected.

    Example:
        registry.register(FlowSourceCollector(lambda: flow_source.figures()))
    """

    def __init__(
        self,
        flows: Callable[[], FlowSourceFigures | None],
        max_exporters: int = MAX_EXPORTER_SERIES,
    ) -> None:
        self._flows = flows
        self._max_exporters = max_exporters
        # Addresses given a series of their own though the listener did not count them (see
        # _totals_of): kept, so an address keeps its series from one scrape to the next.
        self._decoder_only: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        """Every exporter's series (every drop reason, 0 included), then the totals."""
        figures = self._flows()
        if figures is None:
            return
        exporters = sorted(self._totals_of(figures).items())
        labels = list(EXPORTER_LABELS)
        datagrams = CounterMetricFamily(
            "tunnelacct_collector_datagrams",
            "Flow export datagrams received from an allowed exporter (its source ports summed)",
            labels=labels,
        )
        received = CounterMetricFamily(
            "tunnelacct_collector_received_bytes",
            "UDP payload bytes of the datagrams received from an allowed exporter",
            labels=labels,
        )
        records = CounterMetricFamily(
            "tunnelacct_collector_records",
            "Flow records decoded from the exporter's datagrams (options records not included)",
            labels=labels,
        )
        dropped = CounterMetricFamily(
            "tunnelacct_collector_dropped",
            "Datagrams, sets or records of the exporter thrown away, by reason: queue_overflow "
            "(the queue to the decoder was full) or the bad input the decoder found",
            labels=[*labels, "reason"],
        )
        lost_records = CounterMetricFamily(
            "tunnelacct_collector_lost_records",
            "Flow records the exporter's sequence numbers say never arrived (IPFIX, NetFlow v5)",
            labels=labels,
        )
        lost_packets = CounterMetricFamily(
            "tunnelacct_collector_lost_export_packets",
            "Export packets the exporter's sequence numbers say never arrived (NetFlow v9)",
            labels=labels,
        )
        restarts = CounterMetricFamily(
            "tunnelacct_collector_exporter_restarts",
            "Times the exporter restarted (its sequence number or uptime went backwards)",
            labels=labels,
        )
        templates = GaugeMetricFamily(
            "tunnelacct_collector_templates",
            "Templates (NetFlow v9, IPFIX) of the exporter, not withdrawn or expired",
            labels=labels,
        )
        pending = GaugeMetricFamily(
            "tunnelacct_collector_pending_sets",
            "The exporter's data sets waiting for their template",
            labels=labels,
        )
        open_sessions = GaugeMetricFamily(
            "tunnelacct_collector_open_sessions",
            "Sessions open now from the exporter's flow records",
            labels=labels,
        )
        for address, totals in exporters:
            values = [address, totals.gateway]
            datagrams.add_metric(values, totals.datagrams)
            received.add_metric(values, totals.received_bytes)
            records.add_metric(values, totals.records)
            for reason in DROP_REASONS:  # every known reason, so graphs show 0
                dropped.add_metric([*values, reason], totals.dropped.get(reason, 0))
            lost_records.add_metric(values, totals.lost_records)
            lost_packets.add_metric(values, totals.lost_export_packets)
            restarts.add_metric(values, totals.restarts)
            templates.add_metric(values, totals.templates)
            pending.add_metric(values, totals.pending_sets)
            open_sessions.add_metric(values, totals.open_sessions)
        yield from (datagrams, received, records, dropped, lost_records, lost_packets, restarts)
        yield from (templates, pending, open_sessions)
        listener = figures.listener
        yield CounterMetricFamily(
            "tunnelacct_collector_not_allowed_datagrams",
            "Datagrams dropped unparsed because their source is outside the allow-list "
            "(no address label: sources are spoofable)",
            value=listener.dropped.get(DropReason.NOT_ALLOWED, 0),
        )
        yield GaugeMetricFamily(
            "tunnelacct_collector_queue_depth",
            "Allowed datagrams waiting for the decoder",
            value=listener.queue_depth,
        )
        yield GaugeMetricFamily(
            "tunnelacct_collector_queue_max",
            "Datagrams the queue to the decoder holds before it drops ([collector] max_queue)",
            value=listener.queue_max,
        )
        socket_errors = CounterMetricFamily(
            "tunnelacct_collector_socket_errors",
            "Receive errors of a collector endpoint ([collector] listen address)",
            labels=["listen"],
        )
        for listen, count in sorted(listener.socket_errors.items()):
            socket_errors.add_metric([listen], count)
        yield socket_errors
        yield CounterMetricFamily(
            "tunnelacct_collector_records_skipped",
            "Flow records not made into sessions: protocol not TCP or UDP, or no addresses",
            value=figures.records_skipped,
        )
        yield CounterMetricFamily(
            "tunnelacct_collector_incomplete_sessions",
            "Open sessions marked incomplete because their exporter lost records meanwhile",
            value=figures.sessions_marked_incomplete,
        )

    def _totals_of(self, figures: FlowSourceFigures) -> dict[str, ExporterTotals]:
        """Exporter address (or "other") -> its figures, summed over ports and domains."""
        exporters: dict[str, ExporterTotals] = {}
        for (address, _port), listened in figures.listener.exporters.items():
            totals = exporters.get(address)
            if totals is None:
                totals = exporters[address] = ExporterTotals(listened.gateway)
            totals.datagrams += listened.datagrams
            totals.received_bytes += listened.received_bytes
            for drop_reason, count in listened.dropped.items():
                totals.add_dropped(drop_reason, count)
        for (address, _port), counters in figures.decoder.items():
            totals = self._exporter(exporters, address)
            totals.records += counters.get(DecodeReason.RECORDS, 0)
            totals.lost_records += counters.get(DecodeReason.LOST_RECORDS, 0)
            totals.lost_export_packets += counters.get(DecodeReason.LOST_PACKETS, 0)
            totals.restarts += counters.get(DecodeReason.EXPORTER_RESTARTS, 0)
            for decode_reason in DECODE_DROP_REASONS:
                totals.add_dropped(decode_reason, counters.get(decode_reason, 0))
        for address, count in figures.templates.items():
            self._exporter(exporters, address).templates += count
        for address, count in figures.pending_sets.items():
            self._exporter(exporters, address).pending_sets += count
        for address, count in figures.open_sessions.items():
            self._exporter(exporters, address).open_sessions += count
        return exporters

    def _exporter(self, exporters: dict[str, ExporterTotals], address: str) -> ExporterTotals:
        """The totals of `address`, which the listener may not have counted.

        The listener sums the sources past its MAX_SOURCES under "other", but the decoder and
        the tables count them by address. Such an address gets a series of its own (gateway
        unknown: "") while fewer than `max_exporters` exporters have one; past that it is
        summed under "other" as well, so the series stay bounded.
        """
        totals = exporters.get(address)
        if totals is not None:
            return totals
        if address in self._decoder_only or len(exporters) < self._max_exporters:
            self._decoder_only.add(address)
            totals = exporters[address] = ExporterTotals(UNKNOWN_GATEWAY)
            return totals
        other = exporters.get(OTHER_SOURCES)
        if other is None:
            other = exporters[OTHER_SOURCES] = ExporterTotals(OTHER_SOURCES)
        return other


__all__ = [
    "DECODE_DROP_REASONS",
    "DECODE_TALLIES",
    "DROP_REASONS",
    "EXPORTER_LABELS",
    "MAX_EXPORTER_SERIES",
    "ExporterTotals",
    "FlowSourceCollector",
]
