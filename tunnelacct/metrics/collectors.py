"""Prometheus metrics of a running service, read from its in-memory counters on each scrape.

Nothing here runs per packet: the collectors copy the counters that the pipelines and the
writer keep anyway (the same ones the status file shows), the flow tables' traffic tallies
(tunnelacct.metrics.tally: folded about once a second), and serve's readiness by its store's
latest probe (tunnelacct.store.probe: a scrape never asks the store). Labels are bounded: the
interface (one per configured capture), fixed vocabularies (reason, protocol, direction), and
config ids (org, resource, client) under a per-metric series cap; never a packet's address,
port, session or user. The flow-record collector's metrics (tunnelacct.metrics.flows) are
labelled by exporter address: allow-listed devices, capped (that module says why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tunnelacct import __version__
from tunnelacct.capture.reasons import OK, REASONS, SKIPPED_REASONS
from tunnelacct.ingest.status import CaptureStatus
from tunnelacct.metrics.flows import FlowSourceCollector
from tunnelacct.metrics.tally import (
    DIRECTIONS,
    DURATION_BUCKETS_S,
    SIZE_BUCKETS_BYTES,
    Histogram,
    MetricLabels,
    TallySnapshot,
)

if TYPE_CHECKING:
    # only for annotations: importing ingest.flows would load the session engine into the web app
    from tunnelacct.ingest.flows import FlowSourceFigures

DECODE_ERROR_REASONS = tuple(r for r in REASONS[OK + 1 :] if r not in SKIPPED_REASONS)


@dataclass(frozen=True, slots=True)
class RetentionFigures:
    """What the store's purges did, as the service last read them from `purge_runs`."""

    deleted_by_org: Mapping[str, int]
    failures_by_org: Mapping[str, int]  # parts that failed, not cut short by a stop of serve
    last_success_by_org: Mapping[str, float]  # epoch seconds of each org's last purge that ended ok


@dataclass(frozen=True, slots=True)
class WriterFigures:
    """The writer's counters at one instant."""

    pending: int
    rows_written: int
    failed_flushes: int
    write_buckets_s: Sequence[float] = ()  # upper bounds of the flush-duration buckets
    write_seconds_counts: Sequence[int] = ()  # per bucket of write_buckets_s, +Inf last
    write_seconds_total: float = 0.0
    dropped_events: int = 0
    checkpoint_lag_s: float = 0.0
    store_free_bytes: int | None = None  # SQLite: free space of its filesystem


@dataclass(frozen=True, slots=True)
class TrafficFigures:
    """The flow tables' tallies merged, with the guard that labelled them."""

    tally: TallySnapshot
    guard: MetricLabels
    unattributed_sessions: int


class ServiceCollector(Collector):
    """Capture, decode and store health of one service, collected on scrape."""

    def __init__(
        self,
        captures: Callable[[], Sequence[CaptureStatus]],
        writer: Callable[[], WriterFigures | None],
        retention: Callable[[], RetentionFigures | None] = lambda: None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self._captures = captures
        self._writer = writer
        self._retention = retention
        self._ready = ready

    def collect(self) -> Iterator[Metric]:
        """One sample per capture (and per decode error reason), plus the writer's."""
        build = GaugeMetricFamily(
            "tunnelacct_build_info", "tunnelacct version (always 1)", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
        if self._ready is not None:
            yield GaugeMetricFamily(
                "tunnelacct_ready",
                "1 when GET /readyz would answer 200: serve running, every capture capturing "
                "or finished, the store answering its latest probe; else 0",
                value=1 if self._ready() else 0,
            )
        packets = CounterMetricFamily(
            "tunnelacct_capture_packets", "Packets read from the capture", labels=["interface"]
        )
        kernel = CounterMetricFamily(
            "tunnelacct_capture_kernel_drops",
            "Packets the kernel dropped because the capture ring was full",
            labels=["interface"],
        )
        queue = CounterMetricFamily(
            "tunnelacct_capture_queue_drops",
            "Packets read but dropped from the capture's queue to the sessionizer: a shutdown "
            "ran out of [service] shutdown_timeout while the store held the sessions back",
            labels=["interface"],
        )
        errors = CounterMetricFamily(
            "tunnelacct_decode_errors",
            "Captured packets that could not be decoded, by reason",
            labels=["interface", "reason"],
        )
        active = GaugeMetricFamily(
            "tunnelacct_capture_open_sessions",
            "Sessions the capture is tracking now",
            labels=["interface"],
        )
        queued = GaugeMetricFamily(
            "tunnelacct_capture_queued_packets",
            "Packets read and waiting for the sessionizer (it is behind the reader: a burst, or "
            "the writer holding it back): what is queued, up to [service] queue_packets or one "
            "larger batch, and the batch the reader holds until there is room",
            labels=["interface"],
        )
        for status in self._captures():
            packets.add_metric([status.name], status.packets)
            kernel.add_metric([status.name], status.kernel_drops)
            queue.add_metric([status.name], status.queue_drops)
            active.add_metric([status.name], status.open_sessions)
            queued.add_metric([status.name], status.queued_packets)
            for reason in DECODE_ERROR_REASONS:  # every known reason, so graphs show 0
                errors.add_metric([status.name, reason], status.decode_errors.get(reason, 0))
        yield from (packets, kernel, queue, errors, active, queued)
        figures = self._writer()
        if figures is not None:
            yield GaugeMetricFamily(
                "tunnelacct_writer_queue_depth",
                "Session events waiting to be written, those on their way to the writer "
                "process included",
                value=figures.pending,
            )
            yield CounterMetricFamily(
                "tunnelacct_store_rows_written",
                "Session rows written (inserted or updated)",
                value=figures.rows_written,
            )
            yield CounterMetricFamily(
                "tunnelacct_store_failed_flushes",
                "Writer flushes that failed and were retried",
                value=figures.failed_flushes,
            )
            yield _histogram(
                "tunnelacct_store_write_seconds",
                "Duration of each writer flush (one transaction), failed ones included",
                figures.write_buckets_s,
                [((), figures.write_seconds_counts, figures.write_seconds_total)],
            )
            yield CounterMetricFamily(
                "tunnelacct_writer_dropped",
                "Session events lost: the store stayed unavailable past the shutdown timeout",
                value=figures.dropped_events,
            )
            yield GaugeMetricFamily(
                "tunnelacct_checkpoint_lag_seconds",
                "At most how many seconds of open sessions' counters a crash now would lose",
                value=figures.checkpoint_lag_s,
            )
            if figures.store_free_bytes is not None:
                yield GaugeMetricFamily(
                    "tunnelacct_store_free_bytes",
                    "Bytes free on the SQLite store's filesystem (for unprivileged writers)",
                    value=figures.store_free_bytes,
                )
        purges = self._retention()
        if purges is not None:
            # from purge_runs: the purges of every process and host on the store (issue 15)
            yield _per_org(
                CounterMetricFamily(
                    "tunnelacct_retention_deleted_sessions",
                    "Sessions deleted by the store's retention purges, any process or host "
                    "(purge_runs, as read by this service)",
                    labels=["org"],
                ),
                purges.deleted_by_org,
            )
            yield _per_org(
                CounterMetricFamily(
                    "tunnelacct_retention_purge_failures",
                    "Retention purges of the org that failed, any process or host (purge_runs "
                    "parts that ended failed, but for those cut short by serve stopping)",
                    labels=["org"],
                ),
                purges.failures_by_org,
            )
            yield _per_org(
                GaugeMetricFamily(
                    "tunnelacct_retention_last_success_timestamp_seconds",
                    "When the store's last retention purge of the org ended ok, any process or "
                    "host (epoch seconds)",
                    labels=["org"],
                ),
                purges.last_success_by_org,
            )


def _per_org(
    family: CounterMetricFamily | GaugeMetricFamily, by_org: Mapping[str, float]
) -> CounterMetricFamily | GaugeMetricFamily:
    """`family` with one sample per org of `by_org`, in org order."""
    for org, value in sorted(by_org.items()):
        family.add_metric([org], value)
    return family


class TrafficCollector(Collector):
    """Traffic, sessions and their histograms by org, resource and protocol, on scrape."""

    def __init__(self, traffic: Callable[[], TrafficFigures]) -> None:
        self._traffic = traffic

    def collect(self) -> Iterator[Metric]:
        """Every label set of the tallies (already within each metric's cap)."""
        figures = self._traffic()
        tally = figures.tally
        guard = figures.guard
        names = list(guard.session_label_names)
        bytes_ = CounterMetricFamily(
            "tunnelacct_bytes",
            "IP bytes (IP total length) of sessions; tx = initiator to responder",
            labels=[*names, "direction"],
        )
        packets = CounterMetricFamily(
            "tunnelacct_packets",
            "Packets of sessions; tx = initiator to responder",
            labels=[*names, "direction"],
        )
        for labels, (b_tx, b_rx, p_tx, p_rx) in tally.traffic.items():
            for direction, b, p in zip(DIRECTIONS, (b_tx, b_rx), (p_tx, p_rx), strict=True):
                bytes_.add_metric([*labels, direction], b)
                packets.add_metric([*labels, direction], p)
        yield from (bytes_, packets)
        active = GaugeMetricFamily("tunnelacct_sessions_active", "Sessions open now", labels=names)
        opened = CounterMetricFamily("tunnelacct_sessions_opened", "Sessions opened", labels=names)
        for labels, n in tally.active.items():
            active.add_metric(list(labels), n)
        for labels, n in tally.opened.items():
            opened.add_metric(list(labels), n)
        closed = CounterMetricFamily(
            "tunnelacct_sessions",
            "Sessions closed, by close reason",
            labels=[*names, "close_reason"],
        )
        for labels, n in tally.closed.items():
            closed.add_metric(list(labels), n)
        yield from (active, opened, closed)
        yield _histogram(
            "tunnelacct_session_duration_seconds",
            "Duration of closed sessions",
            DURATION_BUCKETS_S,
            _series(tally.duration),
            ["org", "protocol"],
        )
        yield _histogram(
            "tunnelacct_session_bytes",
            "Bytes both ways of closed sessions",
            SIZE_BUCKETS_BYTES,
            _series(tally.size),
            ["org", "protocol"],
        )
        yield CounterMetricFamily(
            "tunnelacct_unattributed_sessions",
            "Sessions opened that no client or resource matched",
            value=figures.unattributed_sessions,
        )
        overflow = CounterMetricFamily(
            "tunnelacct_metrics_overflow",
            "Observations added to a metric's _overflow series because it was full",
            labels=["metric"],
        )
        for metric, cap in (
            ("tunnelacct_bytes_total", guard.traffic),
            ("tunnelacct_sessions_active", guard.sessions),
            ("tunnelacct_sessions_total", guard.closed),
            ("tunnelacct_session_duration_seconds", guard.histograms),
        ):
            overflow.add_metric([metric], cap.overflowed)
        yield overflow


_HistogramSeries = tuple[tuple[str, ...], Sequence[int], float]  # labels, counts, sum


def _series(hists: Mapping[tuple[str, ...], Histogram]) -> list[_HistogramSeries]:
    return [(labels, h.counts, h.sum) for labels, h in hists.items()]


def _histogram(
    name: str,
    documentation: str,
    bounds: Sequence[float],
    series: Sequence[_HistogramSeries],
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    """A histogram family from per-bucket (not cumulative) counts, +Inf last."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, counts, total in series:
        counts = counts or [0] * (len(bounds) + 1)
        cumulative = []
        running = 0
        for bound, n in zip([*map(_le, bounds), "+Inf"], counts, strict=True):
            running += n
            cumulative.append((bound, running))
        family.add_metric(list(values), cumulative, total)
    return family


def _le(bound: float) -> str:
    return repr(float(bound))


def metrics_app(registry: CollectorRegistry) -> Any:
    """An ASGI app serving `registry` at GET /metrics and 404 for every other path."""
    inner = make_asgi_app(registry)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics":
            await inner(scope, receive, send)
            return
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b"only /metrics is served here\n"})

    return app


def service_registry(
    captures: Callable[[], Sequence[CaptureStatus]],
    writer: Callable[[], WriterFigures | None],
    retention: Callable[[], RetentionFigures | None] = lambda: None,
    traffic: Callable[[], TrafficFigures] | None = None,
    flows: Callable[[], FlowSourceFigures | None] | None = None,
    ready: Callable[[], bool] | None = None,
) -> CollectorRegistry:
    """A registry holding only the service's collectors (no process or platform metrics).

    `flows` reads the flow-record collector's figures, None when serve has no [collector];
    `ready` says whether serve is ready (no `tunnelacct_ready` without it).
    """
    registry = CollectorRegistry()
    registry.register(ServiceCollector(captures, writer, retention, ready))
    if traffic is not None:
        registry.register(TrafficCollector(traffic))
    if flows is not None:
        registry.register(FlowSourceCollector(flows))
    return registry
