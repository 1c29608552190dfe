"""Prometheus metrics of a running service, read from its in-memory counters on each scrape.

Nothing here runs per packet: the collector copies the counters that the pipelines and the
writer keep anyway (the same ones the status file shows). Labels are bounded: the interface
(one per configured capture) and the decode failure reason (a fixed list), never an address,
port, session or user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tunnelacct import __version__
from tunnelacct.decode import OK, REASONS, SKIPPED_REASONS
from tunnelacct.pipeline import CaptureStatus

DECODE_ERROR_REASONS = tuple(r for r in REASONS[OK + 1 :] if r not in SKIPPED_REASONS)


@dataclass(frozen=True, slots=True)
class RetentionFigures:
    """What the service's purges did since it started."""

    deleted_by_org: Mapping[str, int]
    last_success_ts: float | None  # epoch seconds of the last purge that completed


@dataclass(frozen=True, slots=True)
class WriterFigures:
    """The writer's counters at one instant."""

    pending: int
    rows_written: int
    failed_flushes: int


class ServiceCollector(Collector):
    """Capture, decode and store health of one service, collected on scrape."""

    def __init__(
        self,
        captures: Callable[[], Sequence[CaptureStatus]],
        writer: Callable[[], WriterFigures | None],
        retention: Callable[[], RetentionFigures | None] = lambda: None,
    ) -> None:
        self._captures = captures
        self._writer = writer
        self._retention = retention

    def collect(self) -> Iterator[Metric]:
        """One sample per capture (and per decode error reason), plus the writer's."""
        build = GaugeMetricFamily(
            "tunnelacct_build_info", "tunnelacct version (always 1)", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
        packets = CounterMetricFamily(
            "tunnelacct_capture_packets", "Packets read from the capture", labels=["interface"]
        )
        kernel = CounterMetricFamily(
            "tunnelacct_capture_kernel_drops",
            "Packets the kernel dropped because the capture ring was full",
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
        for status in self._captures():
            packets.add_metric([status.name], status.packets)
            kernel.add_metric([status.name], status.kernel_drops)
            active.add_metric([status.name], status.open_sessions)
            for reason in DECODE_ERROR_REASONS:  # every known reason, so graphs show 0
                errors.add_metric([status.name, reason], status.decode_errors.get(reason, 0))
        yield from (packets, kernel, errors, active)
        figures = self._writer()
        if figures is not None:
            yield GaugeMetricFamily(
                "tunnelacct_writer_queue_depth",
                "Session events waiting to be written",
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
        purges = self._retention()
        if purges is not None:
            deleted = CounterMetricFamily(
                "tunnelacct_retention_deleted_sessions",
                "Sessions deleted by retention purges of this service",
                labels=["org"],
            )
            for org, n in sorted(purges.deleted_by_org.items()):
                deleted.add_metric([org], n)
            yield deleted
            if purges.last_success_ts is not None:
                yield GaugeMetricFamily(
                    "tunnelacct_retention_last_success_timestamp_seconds",
                    "When a retention purge of this service last completed (epoch seconds)",
                    value=purges.last_success_ts,
                )


def service_registry(
    captures: Callable[[], Sequence[CaptureStatus]],
    writer: Callable[[], WriterFigures | None],
    retention: Callable[[], RetentionFigures | None] = lambda: None,
) -> CollectorRegistry:
    """A registry holding only the service's collector (no process or platform metrics)."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(captures, writer, retention))
    return registry
