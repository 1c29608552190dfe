"""`tunnelacct serve`: the composition root of the live service.

Builds everything from Config and owns every long-running task in one TaskGroup: one
CapturePipeline per [[capture]], the flow-record collector ([collector], `ingest/flows.py`:
a task per UDP listen address and one decoding into its flow tables), the SessionWriter (in a
process of its own: `store/servewriter.py`), the WireGuard peer refresh (`peers.py`), the
purges (`purges.py`), the store's readiness probe (`store/probe.py`), the listeners
(`listeners.py`) and the status file (`status.py`).
Three phases:

- start: take the gateway lock, read WireGuard peers, build the writer, the captures and the
  listeners (a capture that cannot work or an address in use is a clear error here), resume
  the sessions this gateway left `ongoing` (`resume.py`);
- run: until SIGTERM/SIGINT set `stop`;
- shut down: sources stop and are read to the end (the captures, then the collector's queue),
  every open session is checkpointed, the writer drains, each step bounded by [service]
  shutdown_timeout; then the listeners stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.model import Config
from tunnelacct.config.orgs import configured_org_ids
from tunnelacct.errors import TunnelacctError
from tunnelacct.heap import SERVE_THRESHOLDS, fewer_collections
from tunnelacct.ingest.flows import FlowSource, FlowSourceFigures
from tunnelacct.ingest.pipeline import CapturePipeline
from tunnelacct.ingest.status import CaptureStatus
from tunnelacct.metrics.collectors import (
    TrafficFigures,
    WriterFigures,
    metrics_app,
    service_registry,
)
from tunnelacct.metrics.tally import MetricLabels, TallySnapshot, TrafficTally
from tunnelacct.query.export import ExportWorkers
from tunnelacct.retention.purge import PURGE_RUNS_POLL_S
from tunnelacct.service.listeners import (
    RateLimitedLoopErrors,
    Server,
    listen_socket,
    uvicorn_server,
)
from tunnelacct.service.peers import PeerIdentity
from tunnelacct.service.purges import ScheduledPurges
from tunnelacct.service.resume import resume_sessions
from tunnelacct.service.sinks import SessionEventLog, WriterAndEventLog
from tunnelacct.service.status import CaptureProgressLog, StatusFile, status_document
from tunnelacct.store.engine import keep_partitions_ahead, make_engine, sqlite_free_bytes
from tunnelacct.store.gatewaylock import GatewayLock
from tunnelacct.store.probe import PROBE_EVERY_S, StoreProbe, readiness_reasons
from tunnelacct.store.servewriter import ServeWriter
from tunnelacct.store.writer import WRITE_BUCKETS_S

log = logging.getLogger(__name__)

STATUS_FILE_EVERY_S = 1.0
FORCE_AFTER_S = 1.0  # a second stop signal this much later exits at once
COLLECTOR_TASK = "collector"


class Service:
    """The live service for one Config; `await run(stop)` until `stop` is set."""

    def __init__(
        self,
        config: Config,
        *,
        status_path: Path | None = None,
        purge_runs_poll_s: float = PURGE_RUNS_POLL_S,
        store_probe_every_s: float = PROBE_EVERY_S,
    ) -> None:
        self.config = config
        self.state = "starting"
        self.started_at = datetime.now(UTC)
        self.resumed = 0
        self.closed_at_start = 0
        self.status_file = StatusFile(status_path)
        self.pipelines: list[CapturePipeline] = []
        self.flow_source: FlowSource | None = None  # [collector]
        # the writer child (started by run()); its flushes and the purge's batches take turns
        # at its write lock
        self.writer = ServeWriter(config, log_level=logging.getLevelName(log.getEffectiveLevel()))
        self.event_log: SessionEventLog | None = None
        self.export_workers: ExportWorkers | None = None  # the API's CSV export processes
        self.registry: CollectorRegistry | None = None  # what GET /metrics serves, once started
        self.purges = ScheduledPurges(
            config, self.writer.write_lock(), purge_runs_poll_s=purge_runs_poll_s
        )
        self.identity = PeerIdentity(config)
        # the store's latest answer to a readiness probe: GET /readyz and tunnelacct_ready
        self.store_probe = StoreProbe()
        self._store_probe_every_s = store_probe_every_s
        self._failure: BaseException | None = None
        self._labels = MetricLabels(config.metrics.client_labels, config.metrics.max_series)
        self._declared = TrafficTally(self._labels)  # configured resources at 0 from the start
        self._tallies: list[TrafficTally] = []
        self._declared.declare(
            self._labels.session_labels(r.org, r.id, proto, None)
            for r in config.resources
            for proto in r.protocols
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then shut down in order; raises what made it fail."""
        config = self.config
        engine = make_engine(config.database.url, synchronous=config.database.synchronous)
        # this gateway's name, and those the collector's exporters write their sessions under
        gateway_locks = [GatewayLock(engine, name) for name in served_gateways(config)]
        try:
            # before any session is touched: another serve of this gateway would be resumed
            # and closed under its feet (issue 16)
            for gateway_lock in gateway_locks:
                await gateway_lock.acquire(datetime.now(UTC))
            writer, sink, servers = await self._start(engine)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(writer.run())
                resumed = await resume_sessions(
                    engine, config, self.pipelines, sink, flow_source=self.flow_source
                )
                self.resumed = resumed.continued
                self.closed_at_start = resumed.closed
                capture_tasks = [
                    tg.create_task(self._guard(pipeline, sink, stop)) for pipeline in self.pipelines
                ]
                if self.flow_source is not None:
                    # the endpoints' receive loops, then the decoding into the flow tables
                    capture_tasks += [
                        tg.create_task(self.flow_source.listener.run(endpoint), name=COLLECTOR_TASK)
                        for endpoint in self.flow_source.endpoints
                    ]
                    capture_tasks.append(
                        tg.create_task(
                            self._guard_flows(self.flow_source, sink, stop), name=COLLECTOR_TASK
                        )
                    )
                background_tasks = [
                    tg.create_task(self._status_loop()),
                    tg.create_task(self.purges.every_interval(engine)),
                    tg.create_task(self.purges.poll_purge_runs(engine)),
                    tg.create_task(keep_partitions_ahead(engine)),
                    tg.create_task(
                        self.store_probe.every_interval(engine, self._store_probe_every_s)
                    ),
                ]
                server_tasks = [
                    tg.create_task(server.serve(sockets=[sock])) for server, sock in servers
                ]
                if config.wireguard.interfaces:
                    background_tasks.append(tg.create_task(self.identity.keep_current(engine)))
                self.state = "running"
                # What exists now (modules, the app and its routes, the config) lives as long
                # as the process: out of the collector's generations, a full collection walks
                # only what came since (a month's report by user, p99: 116 -> 68 ms, README)
                gc.freeze()
                log.info(
                    "serving gateway %r: %d capture(s)%s, store %s",
                    config.gateway,
                    len(self.pipelines),
                    ", a flow collector" if self.flow_source is not None else "",
                    engine.url.render_as_string(hide_password=True),
                )
                await stop.wait()
                await self._shutdown(
                    capture_tasks,
                    writer,
                    servers=servers,
                    server_tasks=server_tasks,
                    background_tasks=background_tasks,
                )
        except* TunnelacctError as group:
            raise group.exceptions[0] from None  # rendered once by the CLI
        finally:
            for pipeline in self.pipelines:
                pipeline.stop()
            if self.flow_source is not None:
                self.flow_source.stop()
            self.state = "stopped"
            if self.event_log is not None:
                self.event_log.close()
            self._write_status()
            if self.export_workers is not None:
                await asyncio.to_thread(self.export_workers.close)
            await asyncio.to_thread(self.writer.kill)  # only if it still runs: a failed start
            for gateway_lock in reversed(gateway_locks):
                await gateway_lock.release()  # after the writer drained
            await engine.dispose()
        if self._failure is not None:
            raise self._failure

    async def _start(
        self, engine: AsyncEngine
    ) -> tuple[ServeWriter, WriterAndEventLog, list[Server]]:
        """Start the writer child, read the peers, build the captures, start them and bind
        the listeners: a capture that cannot ever work or an address in use fails the start."""
        config = self.config
        writer = self.writer
        writer.start()  # it builds its engine while the peers are read
        await self.identity.refresh(engine, initial=True)
        await self.store_probe.probe(engine)  # the first scrape has its answer
        if config.service.session_events is not None:
            self.event_log = SessionEventLog(config.service.session_events, config.gateway)
        sink = WriterAndEventLog(writer, self.event_log)
        # one tally per capture: each is written by its own flow table's thread
        self._tallies = [TrafficTally(self._labels) for _ in config.captures]
        self.pipelines = [
            CapturePipeline(
                capture,
                config.timeouts,
                attribute=self.identity.attribute,
                is_client=self.identity.is_client,
                queue_packets=config.service.queue_packets,
                max_sessions=config.service.max_sessions,
                observer=tally,
            )
            for capture, tally in zip(config.captures, self._tallies, strict=True)
        ]
        for pipeline in self.pipelines:
            pipeline.start()  # raises CaptureError when a capture cannot ever work
        if config.collector is not None:
            flow_tally = TrafficTally(self._labels)
            self._tallies.append(flow_tally)
            self.flow_source = FlowSource(
                config.collector,
                config.timeouts,
                attribute=self.identity.attribute,
                is_client=self.identity.is_client,
                max_sessions=config.service.max_sessions,
                observer=flow_tally,
            )
            await self.flow_source.open()  # CollectorListenError: an address cannot be bound
        registry = service_registry(
            self._capture_statuses,
            self._writer_figures,
            self.purges.figures,
            self._traffic_figures,
            self._flow_figures,
            ready=self._ready,
        )
        self.registry = registry
        servers = [self._api_server(engine, registry), self._metrics_server(registry)]
        return writer, sink, [server for server in servers if server is not None]

    async def _shutdown(
        self,
        capture_tasks: list[asyncio.Task[None]],
        writer: ServeWriter,
        *,
        servers: list[Server],
        server_tasks: list[asyncio.Task[None]],
        background_tasks: list[asyncio.Task[None]],
    ) -> None:
        """Stop in the order the data flows: captures read to their end, open sessions
        checkpointed, the writer drained (all within [service] shutdown_timeout); then the
        listeners stop and the background tasks are cancelled."""
        self.state = "stopping"
        budget_s = self.config.service.shutdown_timeout_s
        deadline = time.monotonic() + budget_s
        log.info("stopping: reading the rest of each capture, then checkpointing open sessions")
        for pipeline in self.pipelines:
            pipeline.stop()
        if self.flow_source is not None:
            self.flow_source.stop()  # decodes what is queued, then checkpoints its sessions
        if capture_tasks:
            _done, late = await asyncio.wait(capture_tasks, timeout=budget_s)
            if late:
                log.error("%d capture(s) did not finish within %.0f s", len(late), budget_s)
                for pipeline in self.pipelines:
                    pipeline.abandon()
                for task in late:
                    if task.get_name() == COLLECTOR_TASK:
                        task.cancel()  # waiting for a stalled store: its sessions stay ongoing
        remaining_s = max(1.0, deadline - time.monotonic())
        await writer.close(timeout_s=remaining_s)  # StoreError names what stays unwritten
        for pipeline in self.pipelines:
            pipeline.join(1.0)
        for server, _sock in servers:  # after the writer drained
            server.should_exit = True
        if server_tasks:
            await asyncio.wait(server_tasks, timeout=5)
        for task in background_tasks:
            task.cancel()

    async def _guard(
        self, pipeline: CapturePipeline, sink: WriterAndEventLog, stop: asyncio.Event
    ) -> None:
        """Run one pipeline; its failure stops the whole service in order (never silently)."""
        try:
            await pipeline.run(sink)
        except Exception as e:  # noqa: BLE001 - reported, then raised by run() after shutdown
            log.error("capture on %s failed: %s", pipeline.capture.name, e)
            if self._failure is None:
                self._failure = e
            stop.set()

    async def _guard_flows(
        self, flow_source: FlowSource, sink: WriterAndEventLog, stop: asyncio.Event
    ) -> None:
        """Run the collector's decoding; its failure stops the whole service in order."""
        try:
            await flow_source.run(sink)
        except Exception as e:  # noqa: BLE001 - reported, then raised by run() after shutdown
            log.error("flow collector failed: %s", e)
            if self._failure is None:
                self._failure = e
            stop.set()

    def _api_server(self, engine: Any, registry: CollectorRegistry) -> Server | None:
        """The REST API's uvicorn server and its bound socket, or None without [api]."""
        api = self.config.api
        if api.host is None:
            return None
        # imported only when the API is on
        from tunnelacct.web.app import ApiContext, create_app
        from tunnelacct.web.ui.logins import LoginExpiry

        sock = listen_socket("api", api.host, api.port)
        if api.export_workers > 0:
            self.export_workers = ExportWorkers(api.export_workers)
        ctx = ApiContext(
            engine,
            not_ready=self._not_ready,
            store_probe=self.store_probe,
            metrics=registry,
            export_workers=self.export_workers,
            # the default org too: the config writes its row (and retention) when undeclared
            config_orgs=configured_org_ids(self.config),
            default_org=self.config.default_org,
            login_expiry=LoginExpiry(
                idle_s=api.login_idle_timeout_s, max_age_s=api.login_max_age_s
            ),
            purge_interval_s=self.config.retention.interval_s,
        )
        log.info(
            "REST API and web UI on http://%s:%d%s/ (OpenAPI at /docs)",
            api.host,
            api.port,
            api.root_path,
        )
        server = uvicorn_server(
            create_app(ctx), root_path=api.root_path, trusted_proxies=api.trusted_proxies
        )
        return server, sock

    def _metrics_server(self, registry: CollectorRegistry) -> Server | None:
        """A listener serving only /metrics, when [metrics] listen is set."""
        m = self.config.metrics
        if m.host is None:
            return None
        sock = listen_socket("metrics", m.host, m.port)
        log.info("metrics on http://%s:%d/metrics", m.host, m.port)
        return uvicorn_server(metrics_app(registry)), sock

    async def purge_once(self, engine: AsyncEngine) -> None:
        """One purge with the retention the config file says now (ScheduledPurges)."""
        await self.purges.purge_once(engine)

    # -- figures, read by the metrics and the readiness probe ---------------------------------

    def _capture_statuses(self) -> list[CaptureStatus]:
        return [p.status for p in self.pipelines]

    def _writer_figures(self) -> WriterFigures:
        w = self.writer
        written_before = w.oldest_pending_since
        lag_s = max((p.checkpoint_lag_s(written_before) for p in self.pipelines), default=0.0)
        return WriterFigures(
            pending=w.pending,
            rows_written=w.rows_written,
            failed_flushes=w.failed_flushes,
            write_buckets_s=WRITE_BUCKETS_S,
            write_seconds_counts=list(w.write_seconds_counts),
            write_seconds_total=w.write_seconds_total,
            dropped_events=w.dropped_events,
            checkpoint_lag_s=lag_s,
            store_free_bytes=sqlite_free_bytes(self.config.database.url),
        )

    def _traffic_figures(self) -> TrafficFigures:
        tally = TallySnapshot()
        for capture_tally in (self._declared, *self._tallies):
            tally.merge(capture_tally.snapshot())
        unattributed = sum(p.table.stats.unattributed_sessions for p in self.pipelines)
        if self.flow_source is not None:
            tables = self.flow_source.tables.values()
            unattributed += sum(table.stats.unattributed_sessions for table in tables)
        return TrafficFigures(tally, self._labels, unattributed)

    def _flow_figures(self) -> FlowSourceFigures | None:
        return self.flow_source.figures() if self.flow_source is not None else None

    def _not_ready(self) -> list[str]:
        """Why the service itself is not ready: its state, and captures not capturing (GET
        /readyz adds the store's answer)."""
        reasons = [] if self.state == "running" else [f"service is {self.state}"]
        for p in self.pipelines:
            if p.status.state not in ("capturing", "finished"):
                reasons.append(f"capture on {p.capture.name} is {p.status.state}")
        return reasons

    def _ready(self) -> bool:
        """What GET /readyz would say now, by the store's latest answer (tunnelacct_ready)."""
        return not readiness_reasons(self._not_ready(), self.store_probe)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the service is doing, as JSON-ready values (also written to the status file)."""
        return status_document(
            state=self.state,
            gateway=self.config.gateway,
            started_at=self.started_at,
            resumed=self.resumed,
            closed_at_start=self.closed_at_start,
            status_write_failures=self.status_file.write_failures,
            pipelines=self.pipelines,
            writer=self.writer,
            database_url=self.config.database.url,
            flow_source=self.flow_source,
        )

    def _write_status(self) -> None:
        self.status_file.write(self.status())

    async def _status_loop(self) -> None:
        """Write the status file every second; log status and any drops every status_interval."""
        progress = CaptureProgressLog(self.pipelines, self.config.service.status_interval_s)
        while True:
            await asyncio.sleep(STATUS_FILE_EVERY_S)
            self._write_status()
            progress.log_when_due(self.writer.pending)


def served_gateways(config: Config) -> list[str]:
    """The gateway names this service writes sessions under: its own, then each collector
    exporter's (one serve per name and store: see GatewayLock)."""
    names = [config.gateway]
    if config.collector is not None:
        for exporter in config.collector.exporters:
            if exporter.gateway not in names:
                names.append(exporter.gateway)
    return names


def serve(config: Config, *, status_path: Path | None = None) -> None:
    """Run the service until SIGTERM or SIGINT (a second one exits at once, unclean)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        first_at: list[float] = []

        def on_signal(signum: int) -> None:
            name = signal.Signals(signum).name
            if first_at:
                # One stop request often arrives twice (a terminal's Ctrl-C reaches the whole
                # process group, `timeout` signals child and group): only a later one forces.
                if time.monotonic() - first_at[0] >= FORCE_AFTER_S:
                    log.error("second %s: exiting without draining", name)
                    os._exit(1)
                return
            first_at.append(time.monotonic())
            log.info("%s received: shutting down (again to force)", name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        # accept() failing on EMFILE logged 389,098 lines in 15 s (issue 16)
        loop.set_exception_handler(RateLimitedLoopErrors())
        try:
            await Service(config, status_path=status_path).run(stop)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)

    # young collections less often, the older generations' as by default (heap.py: not
    # BULK_THRESHOLDS, which held a connection flood's closed sockets until serve ran out)
    with fewer_collections(SERVE_THRESHOLDS):
        asyncio.run(main())
