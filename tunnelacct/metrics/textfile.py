"""Prometheus text output of an import, for node_exporter's textfile collector (cron imports)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile

from tunnelacct.ingest.importer import ImportSummary


def write_import_metrics(summary: ImportSummary, path: Path) -> None:
    """Write the summary's figures atomically to `path` (a `.prom` file)."""
    reg = CollectorRegistry()
    Counter("tunnelacct_import_packets", "Packets read by the import", registry=reg).inc(
        summary.packets
    )
    Counter("tunnelacct_import_sessions", "Sessions the import recorded", registry=reg).inc(
        summary.sessions
    )
    errors = Counter(
        "tunnelacct_import_decode_errors",
        "Packets not decoded, by reason",
        ["reason"],
        registry=reg,
    )
    for reason, n in summary.decode_errors.items():
        errors.labels(reason).inc(n)
    Gauge("tunnelacct_import_duration_seconds", "Wall time of the import", registry=reg).set(
        summary.seconds
    )
    Gauge(
        "tunnelacct_import_last_run_timestamp_seconds", "When the import finished", registry=reg
    ).set_to_current_time()
    write_to_textfile(str(path), reg)
