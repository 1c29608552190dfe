"""What serve is doing: the status document (`tunnelacct status` reads its file), the file
rewritten every second, and the capture figures logged every [service] status_interval."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tunnelacct.collector.listener import format_listen
from tunnelacct.ingest.flows import FlowSource
from tunnelacct.ingest.pipeline import CapturePipeline
from tunnelacct.store.engine import sqlite_free_bytes
from tunnelacct.store.servewriter import ServeWriter

log = logging.getLogger(__name__)

STATUS_FAILURE_LOG_EVERY_S = 60.0


def status_document(
    *,
    state: str,
    gateway: str,
    started_at: datetime,
    resumed: int,
    closed_at_start: int,
    status_write_failures: int,
    pipelines: Sequence[CapturePipeline],
    writer: ServeWriter | None,
    database_url: str,
    flow_source: FlowSource | None = None,
) -> dict[str, Any]:
    """What the service is doing, as JSON-ready values."""
    return {
        "state": state,
        "gateway": gateway,
        "pid": os.getpid(),
        "started_at": started_at.isoformat(),
        "resumed_sessions": resumed,
        "status_write_failures": status_write_failures,
        "closed_at_start": closed_at_start,
        "captures": [p.status.as_dict() for p in pipelines],
        "writer": None if writer is None else _writer_status(writer, database_url),
        "collector": None if flow_source is None else _collector_status(flow_source),
    }


def _collector_status(flow_source: FlowSource) -> dict[str, Any]:
    """The collector's endpoints (as bound) and its totals over every exporter."""
    figures = flow_source.figures()
    listener = figures.listener
    decoded: dict[str, int] = {}
    for counters in figures.decoder.values():
        for reason, count in counters.items():
            decoded[reason] = decoded.get(reason, 0) + count
    exporters: dict[str, dict[str, Any]] = {}
    for (address, _port), exporter in listener.exporters.items():
        entry = exporters.setdefault(address, {"gateway": exporter.gateway, "datagrams": 0})
        entry["datagrams"] += exporter.datagrams
    for address, entry in exporters.items():
        entry["records_accounted"] = figures.records_accounted.get(address, 0)
        entry["open_sessions"] = figures.open_sessions.get(address, 0)
    return {
        "listening": [format_listen(*endpoint.sockname) for endpoint in flow_source.endpoints],
        "exporters": exporters,
        "datagrams": sum(exporter.datagrams for exporter in listener.exporters.values()),
        "dropped": {str(reason): count for reason, count in listener.dropped.items()},
        "queue_depth": listener.queue_depth,
        "decoded": decoded,
        "records_skipped": figures.records_skipped,
        "open_sessions": sum(figures.open_sessions.values()),
        "sessions_marked_incomplete": figures.sessions_marked_incomplete,
    }


def _writer_status(writer: ServeWriter, database_url: str) -> dict[str, Any]:
    return {
        "pending": writer.pending,
        "in_flight": writer.in_flight,
        "rows_written": writer.rows_written,
        "flushes": writer.flushes,
        "failed_flushes": writer.failed_flushes,
        "timed_out_flushes": writer.timed_out_flushes,
        "write_seconds_max": round(writer.write_seconds_max, 6),
        "last_flush_at": writer.last_flush_at.isoformat() if writer.last_flush_at else None,
        "store_free_bytes": sqlite_free_bytes(database_url),
    }


class StatusFile:
    """The status file, replaced whole at each write (none when `path` is None)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.write_failures = 0
        self._failure_logged = float("-inf")  # monotonic time of the last such log

    def write(self, document: dict[str, Any]) -> None:
        """Rewrite the file; a failure (no descriptor left, disk full, the directory gone) is
        counted and logged at most once a minute, never fatal (issue 16)."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as e:
            self.write_failures += 1
            now = time.monotonic()
            if now - self._failure_logged >= STATUS_FAILURE_LOG_EVERY_S:
                self._failure_logged = now
                log.warning(
                    "status file %s not written: %s (%d failures so far); serving goes on",
                    self.path,
                    e.strerror or e,
                    self.write_failures,
                )


class CaptureProgressLog:
    """Each capture's figures, and any drops, logged every `interval_s`."""

    def __init__(self, pipelines: Sequence[CapturePipeline], interval_s: float) -> None:
        self._pipelines = pipelines
        self._interval_s = interval_s
        self._next_log = time.monotonic() + interval_s
        # capture name -> (packets, kernel drops, queue drops) at the last log
        self._seen = {p.capture.name: (0, 0, 0) for p in pipelines}

    def log_when_due(self, pending_sessions: int) -> None:
        """Log when `interval_s` has passed since the last time; `pending_sessions` is the
        writer's backlog, named when the store falls behind."""
        if time.monotonic() < self._next_log:
            return
        self._next_log = time.monotonic() + self._interval_s
        for p in self._pipelines:
            s = p.status
            packets_before, kernel_drops_before, queue_drops_before = self._seen[s.name]
            self._seen[s.name] = (s.packets, s.kernel_drops, s.queue_drops)
            log.info(
                "capture on %s %s: %d packets (+%d), %d queued for the sessionizer, "
                "%d open sessions, %d opened",
                s.name,
                s.state,
                s.packets,
                s.packets - packets_before,
                s.queued_packets,
                s.open_sessions,
                s.sessions_opened,
            )
            if s.kernel_drops > kernel_drops_before:
                log.warning(
                    "capture on %s: the kernel dropped %d packets in the last %.0f s "
                    "(ring full: raise [[capture]] ring_mib)",
                    s.name,
                    s.kernel_drops - kernel_drops_before,
                    self._interval_s,
                )
            if s.queue_drops > queue_drops_before:
                log.warning(
                    "capture on %s: dropped %d packets in the last %.0f s: the store "
                    "fell behind and %d sessions are waiting to be written",
                    s.name,
                    s.queue_drops - queue_drops_before,
                    self._interval_s,
                    pending_sessions,
                )
