"""`tunnelacct serve`: the composition root of the live service.

Builds everything from Config and owns every long-running task in one TaskGroup: one
CapturePipeline per [[capture]], the SessionWriter, the WireGuard peer refresh and the status
loop. Start: migrate (done by the caller), sync the inventory, read WireGuard peers, resume the
sessions this gateway left `ongoing`, start the captures. Stop (SIGTERM/SIGINT set `stop`):
sources stop and are read to the end, every open session is checkpointed, the writer drains,
each step bounded by [service] shutdown_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.load import load_config
from tunnelacct.config.model import ClientConfig, Config
from tunnelacct.config.orgs import configured_org_ids, configured_orgs, unlogged_orgs
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.errors import ConfigError, StoreError, TunnelacctError
from tunnelacct.ingest.pipeline import CapturePipeline
from tunnelacct.ingest.status import CaptureStatus
from tunnelacct.metrics.collectors import (
    RetentionFigures,
    TrafficFigures,
    WriterFigures,
    metrics_app,
    service_registry,
)
from tunnelacct.metrics.tally import MetricLabels, TallySnapshot, TrafficTally
from tunnelacct.query.export import ExportWorkers
from tunnelacct.retention.purge import PURGE_RUNS_POLL_S, PurgeRunTally, purge
from tunnelacct.service.listeners import RateLimitedLoopErrors
from tunnelacct.service.sinks import SessionEventLog
from tunnelacct.sessions.attribution import Inventory
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.sessions.wgpeers import WireGuardError, clients_with_peers, read_wg_peers
from tunnelacct.store.engine import (
    keep_partitions_ahead,
    make_engine,
    ongoing_sessions,
    sqlite_free_bytes,
    sync_inventory,
    sync_orgs,
)
from tunnelacct.store.gatewaylock import GatewayLock
from tunnelacct.store.writer import WRITE_BUCKETS_S, SessionWriter

log = logging.getLogger(__name__)

STATUS_FILE_EVERY_S = 1.0
FORCE_AFTER_S = 1.0  # a second stop signal this much later exits at once
STATUS_FAILURE_LOG_EVERY_S = 60.0


class _Tee:
    """The writer, plus the session event log when one is configured."""

    def __init__(self, writer: SessionWriter, events: SessionEventLog | None) -> None:
        self._writer, self._events = writer, events

    async def submit(self, events: list[SessionEvent]) -> None:
        if self._events is not None:
            await self._events.write(events)
        await self._writer.submit(events)


_Server = tuple[Any, socket.socket]  # a uvicorn.Server and the socket it serves


def listen_socket(section: str, host: str, port: int) -> socket.socket:
    """The listening TCP socket of `[section] listen`; a clear error when it cannot be bound.

    TCP_NODELAY is set on it, so that every accepted connection inherits it (Linux): asyncio
    sets it only on sockets whose proto is IPPROTO_TCP, which create_server's are not, and
    without it a keep-alive request waited ~40 ms for a delayed ACK (issue 16).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as e:
        raise TunnelacctError(f"[{section}] listen {host}:{port}: {e.strerror or e}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _uvicorn(app: Any) -> Any:
    """A uvicorn server for `app` that leaves SIGTERM/SIGINT to the service, with the
    connection guards of httpconn.py (header timeout, a cap that evicts idle connections)."""
    import uvicorn  # imported only when something listens

    from tunnelacct.service.listeners import connection_cap, guarded_protocol

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    cap = connection_cap()
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_level="warning",
        access_log=False,
        http=guarded_protocol(cap),
        # asyncio accepts up to `backlog` sockets per wakeup before any of them reaches the
        # protocol and its cap: uvicorn's 2048 took every descriptor (issue 16)
        backlog=cap,
    )
    return Server(config)


class Service:
    """The live service for one Config; `await run(stop)` until `stop` is set."""

    def __init__(
        self,
        config: Config,
        *,
        status_path: Path | None = None,
        purge_runs_poll_s: float = PURGE_RUNS_POLL_S,
    ) -> None:
        self.config = config
        self.status_path = status_path
        self.state = "starting"
        self.started_at = datetime.now(UTC)
        self.resumed = self.closed_at_start = 0
        self.status_write_failures = 0
        self._status_failure_logged = float("-inf")  # monotonic time of the last such log
        self.pipelines: list[CapturePipeline] = []
        self.writer: SessionWriter | None = None
        self.event_log: SessionEventLog | None = None
        self.export_workers: ExportWorkers | None = None  # the API's CSV export processes
        # what every purge of the store did, from purge_runs (0 for every org known at start)
        self.purged = PurgeRunTally(o.id for o in configured_orgs(config))
        self._purge_runs_poll_s = purge_runs_poll_s
        self._purge_runs_problem: str | None = None
        self._write_lock = asyncio.Lock()  # the writer's flushes and the purge's batches take turns
        self._clients = config.clients
        self._inventory = Inventory.from_config(config)
        self._peers: dict[str, dict[str, tuple[str, ...]]] = {}  # interface -> last good peers
        self._peer_problems: dict[str, str] = {}
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
        gateway_lock = GatewayLock(engine, config.gateway)
        try:
            # before any session is touched: another serve of this gateway would be resumed
            # and closed under its feet (issue 16)
            await gateway_lock.acquire(datetime.now(UTC))
            await self._refresh_peers(engine, initial=True)
            writer = self.writer = SessionWriter(
                engine,
                config.writer,
                gateway=config.gateway,
                unlogged_orgs=unlogged_orgs(config),
                write_lock=self._write_lock,
            )
            if config.service.session_events is not None:
                self.event_log = SessionEventLog(config.service.session_events, config.gateway)
            sink = _Tee(writer, self.event_log)
            # one tally per capture: each is written by its own flow table's thread
            self._tallies = [TrafficTally(self._labels) for _ in config.captures]
            self.pipelines = [
                CapturePipeline(
                    capture,
                    config.timeouts,
                    attribute=self._attribute,
                    is_client=self._is_client,
                    queue_packets=config.service.queue_packets,
                    max_sessions=config.service.max_sessions,
                    observer=tally,
                )
                for capture, tally in zip(config.captures, self._tallies, strict=True)
            ]
            for p in self.pipelines:
                p.start()  # raises CaptureError when a capture cannot ever work
            registry = service_registry(
                self._capture_statuses,
                self._writer_figures,
                self._retention_figures,
                self._traffic_figures,
            )
            # the listeners are bound here, so an address in use is a clear error at start
            servers = [
                s
                for s in (self._api_server(engine, registry), self._metrics_server(registry))
                if s is not None
            ]
            async with asyncio.TaskGroup() as tg:
                tg.create_task(writer.run())
                await self._resume(engine, sink)  # before any packet reaches a flow table
                tasks = [tg.create_task(self._guard(p, sink, stop)) for p in self.pipelines]
                helpers = [tg.create_task(self._status_loop())]
                helpers.append(tg.create_task(self._purge_loop(engine)))
                helpers.append(tg.create_task(self._purge_runs_loop(engine)))
                helpers.append(tg.create_task(keep_partitions_ahead(engine)))
                server_tasks = [tg.create_task(srv.serve(sockets=[sock])) for srv, sock in servers]
                if config.wireguard.interfaces:
                    helpers.append(tg.create_task(self._peer_loop(engine)))
                self.state = "running"
                log.info(
                    "serving gateway %r: %d capture(s), store %s",
                    config.gateway,
                    len(self.pipelines),
                    engine.url.render_as_string(hide_password=True),
                )
                await stop.wait()
                await self._shutdown(tasks, writer)
                for server, _sock in servers:  # after the writer drained
                    server.should_exit = True
                if server_tasks:
                    await asyncio.wait(server_tasks, timeout=5)
                for task in helpers:
                    task.cancel()
        except* TunnelacctError as group:
            raise group.exceptions[0] from None  # rendered once by the CLI
        finally:
            for p in self.pipelines:
                p.stop()
            self.state = "stopped"
            if self.event_log is not None:
                self.event_log.close()
            self._write_status()
            if self.export_workers is not None:
                await asyncio.to_thread(self.export_workers.close)
            await gateway_lock.release()  # after the writer drained
            await engine.dispose()
        if self._failure is not None:
            raise self._failure

    async def _shutdown(self, tasks: list[asyncio.Task[None]], writer: SessionWriter) -> None:
        self.state = "stopping"
        budget_s = self.config.service.shutdown_timeout_s
        deadline = time.monotonic() + budget_s
        log.info("stopping: reading the rest of each capture, then checkpointing open sessions")
        for p in self.pipelines:
            p.stop()
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=budget_s)
            if late:
                log.error("%d capture(s) did not finish within %.0f s", len(late), budget_s)
                for p in self.pipelines:
                    p.abandon()
        remaining_s = max(1.0, deadline - time.monotonic())
        await writer.close(timeout_s=remaining_s)  # StoreError names what stays unwritten
        for p in self.pipelines:
            p.join(1.0)

    async def _guard(self, p: CapturePipeline, sink: _Tee, stop: asyncio.Event) -> None:
        """Run one pipeline; its failure stops the whole service in order (never silently)."""
        try:
            await p.run(sink)
        except Exception as e:  # noqa: BLE001 - reported, then raised by run() after shutdown
            log.error("capture on %s failed: %s", p.capture.name, e)
            if self._failure is None:
                self._failure = e
            stop.set()

    def _api_server(self, engine: Any, registry: CollectorRegistry) -> _Server | None:
        """The REST API's uvicorn server and its bound socket, or None without [api]."""
        api = self.config.api
        if api.host is None:
            return None
        from tunnelacct.web.app import ApiContext, create_app  # imported only when the API is on

        sock = listen_socket("api", api.host, api.port)
        if api.export_workers > 0:
            self.export_workers = ExportWorkers(api.export_workers)
        ctx = ApiContext(
            engine,
            not_ready=self._not_ready,
            metrics=registry,
            export_workers=self.export_workers,
            # the default org too: the config writes its row (and retention) when undeclared
            config_orgs=configured_org_ids(self.config),
            default_org=self.config.default_org,
        )
        log.info("REST API on http://%s:%d/ (OpenAPI at /docs)", api.host, api.port)
        return _uvicorn(create_app(ctx)), sock

    def _metrics_server(self, registry: CollectorRegistry) -> _Server | None:
        """A listener serving only /metrics, when [metrics] listen is set."""
        m = self.config.metrics
        if m.host is None:
            return None
        sock = listen_socket("metrics", m.host, m.port)
        log.info("metrics on http://%s:%d/metrics", m.host, m.port)
        return _uvicorn(metrics_app(registry)), sock

    # -- retention -----------------------------------------------------------------------------

    async def _purge_loop(self, engine: AsyncEngine) -> None:
        """Purge every [retention] interval, as `tunnelacct purge` does; failures are logged."""
        while True:
            await asyncio.sleep(self.config.retention.interval_s)
            await self.purge_once(engine)
            await self._read_purge_runs(engine)  # its figures now, not at the next poll

    async def _purge_runs_loop(self, engine: AsyncEngine) -> None:
        """Read purge_runs every `purge_runs_poll_s`: the metrics show every process's purges
        (cron, timers, other hosts), and collect() never reads the store (issue 15, item 9)."""
        while True:
            await self._read_purge_runs(engine)
            await asyncio.sleep(self._purge_runs_poll_s)

    async def _read_purge_runs(self, engine: AsyncEngine) -> None:
        try:
            await self.purged.refresh(engine)
        except StoreError as e:
            if self._purge_runs_problem is None:  # once until it works again, not every poll
                log.warning("retention metrics: %s; showing the figures read before", e)
            self._purge_runs_problem = str(e)
            return
        if self._purge_runs_problem is not None:
            log.info("retention metrics: purge_runs readable again")
            self._purge_runs_problem = None

    async def purge_once(self, engine: AsyncEngine) -> None:
        """One purge with the retention the config file says now (re-read: no restart needed).

        Nothing it meets stops the service: a config that cannot be read, whatever the reason,
        leaves the retention last stored; a failed purge is logged and tried next interval.
        """
        config: Config | None = self.config
        if self.config.path is not None:
            try:
                config = await asyncio.to_thread(load_config, self.config.path)
            except ConfigError as e:
                log.error("purge: %s; purging with the retention last stored", e)
                config = None
            except Exception:  # a bug in reading a config must not end serve (issue 16)
                log.exception(
                    "purge: cannot read %s; purging with the retention last stored",
                    self.config.path,
                )
                config = None
        try:
            if config is not None:
                await sync_orgs(engine, config)
            await purge(engine, write_lock=self._write_lock)
        except StoreError as e:
            log.error("purge failed: %s", e)
        except Exception:
            log.exception("purge failed; trying again in %s s", self.config.retention.interval_s)

    def _retention_figures(self) -> RetentionFigures:
        last = {org: at.timestamp() for org, at in self.purged.last_success_by_org.items()}
        return RetentionFigures(dict(self.purged.deleted_by_org), last)

    def _capture_statuses(self) -> list[CaptureStatus]:
        return [p.status for p in self.pipelines]

    def _writer_figures(self) -> WriterFigures | None:
        w = self.writer
        if w is None:
            return None
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
        return TrafficFigures(tally, self._labels, unattributed)

    def _not_ready(self) -> list[str]:
        """Why the service is not ready: its state, and captures not capturing."""
        reasons = [] if self.state == "running" else [f"service is {self.state}"]
        for p in self.pipelines:
            if p.status.state not in ("capturing", "finished"):
                reasons.append(f"capture on {p.capture.name} is {p.status.state}")
        return reasons

    # -- identity ------------------------------------------------------------------------------

    def _attribute(self, *args: Any) -> Any:
        return self._inventory.attribute(*args)

    def _is_client(self, family: int, addr: int) -> bool:
        return self._inventory.is_client_address(family, addr)

    async def _refresh_peers(self, engine: Any, *, initial: bool = False) -> None:
        """Read `wg show <iface> dump` of each [wireguard] interface; apply changed addresses."""
        for iface in self.config.wireguard.interfaces:
            try:
                self._peers[iface] = await asyncio.to_thread(read_wg_peers, iface)
                if self._peer_problems.pop(iface, None) is not None:
                    log.info("wireguard peers of %s readable again", iface)
            except WireGuardError as e:
                if self._peer_problems.get(iface) != str(e):
                    log.warning("%s; keeping the peers read before (%d)", e, len(self._peers))
                self._peer_problems[iface] = str(e)
        merged: dict[str, tuple[str, ...]] = {}
        for peers in self._peers.values():
            for key, allowed in peers.items():
                merged[key] = tuple(dict.fromkeys((*merged.get(key, ()), *allowed)))
        clients = clients_with_peers(self.config.clients, merged)
        if clients == self._clients and not initial:
            return
        self._apply_clients(clients)
        await sync_inventory(engine, dataclasses.replace(self.config, clients=clients))

    def _apply_clients(self, clients: tuple[ClientConfig, ...]) -> None:
        changed = [c.id for c, old in zip(clients, self._clients, strict=True) if c != old]
        self._clients = clients
        self._inventory = Inventory.from_config(dataclasses.replace(self.config, clients=clients))
        if changed:
            log.info("clients with addresses from wireguard peers: %s", ", ".join(changed))

    async def _peer_loop(self, engine: Any) -> None:
        while True:
            await asyncio.sleep(self.config.wireguard.refresh_s)
            try:
                await self._refresh_peers(engine)
            except TunnelacctError as e:
                log.warning("wireguard peer refresh failed: %s", e)

    # -- resume --------------------------------------------------------------------------------

    async def _resume(self, engine: Any, sink: _Tee) -> None:
        """Continue this gateway's `ongoing` sessions on their live interface; close the rest.

        A session is closed as `shutdown`, at its last packet, when the service cannot have
        seen all of it: its interface is no longer captured (or it came from a file replay),
        or the service was down past its idle timeout (its packets meanwhile went unseen, so
        neither `idle` nor a later end would be true). The others continue: later packets on
        their 5-tuple add to the same row.
        """
        live = {p.capture.interface: p for p in self.pipelines if p.live}
        timeouts = self.config.timeouts
        now_ts = time.time()
        stale = []
        for event in await ongoing_sessions(engine, self.config.gateway):
            pipeline = live.get(event.interface)
            idle_s = timeouts.tcp_idle_s if event.proto is IpProto.TCP else timeouts.udp_idle_s
            if pipeline is None or now_ts - event.last_ts > idle_s:
                stale.append(
                    dataclasses.replace(
                        event,
                        kind=EventKind.CLOSED,
                        ended_ts=event.last_ts,
                        close_reason=CloseReason.SHUTDOWN,
                    )
                )
            else:
                pipeline.table.resume(event)
                self.resumed += 1
        self.closed_at_start = len(stale)
        await sink.submit(stale)
        if self.resumed or stale:
            log.info(
                "resumed %d ongoing sessions; closed %d as shutdown (capture gone, or down past "
                "their idle timeout)",
                self.resumed,
                len(stale),
            )

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the service is doing, as JSON-ready values (also written to the status file)."""
        w = self.writer
        return {
            "state": self.state,
            "gateway": self.config.gateway,
            "pid": os.getpid(),
            "started_at": self.started_at.isoformat(),
            "resumed_sessions": self.resumed,
            "status_write_failures": self.status_write_failures,
            "closed_at_start": self.closed_at_start,
            "captures": [p.status.as_dict() for p in self.pipelines],
            "writer": None
            if w is None
            else {
                "pending": w.pending,
                "rows_written": w.rows_written,
                "flushes": w.flushes,
                "failed_flushes": w.failed_flushes,
                "timed_out_flushes": w.timed_out_flushes,
                "write_seconds_max": round(w.write_seconds_max, 6),
                "last_flush_at": w.last_flush_at.isoformat() if w.last_flush_at else None,
                "store_free_bytes": sqlite_free_bytes(self.config.database.url),
            },
        }

    def _write_status(self) -> None:
        """Rewrite the status file; a failure (no descriptor left, disk full, the directory
        gone) is counted and logged at most once a minute, never fatal (issue 16)."""
        if self.status_path is None:
            return
        tmp = self.status_path.with_name(self.status_path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(self.status(), indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, self.status_path)
        except OSError as e:
            self.status_write_failures += 1
            now = time.monotonic()
            if now - self._status_failure_logged >= STATUS_FAILURE_LOG_EVERY_S:
                self._status_failure_logged = now
                log.warning(
                    "status file %s not written: %s (%d failures so far); serving goes on",
                    self.status_path,
                    e.strerror or e,
                    self.status_write_failures,
                )

    async def _status_loop(self) -> None:
        """Write the status file every second; log status and any drops every status_interval."""
        interval_s = self.config.service.status_interval_s
        next_log = time.monotonic() + interval_s
        seen = {p.capture.name: (0, 0, 0) for p in self.pipelines}
        while True:
            await asyncio.sleep(STATUS_FILE_EVERY_S)
            self._write_status()
            if time.monotonic() < next_log:
                continue
            next_log = time.monotonic() + interval_s
            for p in self.pipelines:
                s = p.status
                packets0, kernel0, queue0 = seen[s.name]
                seen[s.name] = (s.packets, s.kernel_drops, s.queue_drops)
                log.info(
                    "capture on %s %s: %d packets (+%d), %d open sessions, %d opened",
                    s.name,
                    s.state,
                    s.packets,
                    s.packets - packets0,
                    s.open_sessions,
                    s.sessions_opened,
                )
                if s.kernel_drops > kernel0:
                    log.warning(
                        "capture on %s: the kernel dropped %d packets in the last %.0f s "
                        "(ring full: raise [[capture]] ring_mib)",
                        s.name,
                        s.kernel_drops - kernel0,
                        interval_s,
                    )
                if s.queue_drops > queue0:
                    log.warning(
                        "capture on %s: dropped %d packets in the last %.0f s: the store "
                        "fell behind and %d sessions are waiting to be written",
                        s.name,
                        s.queue_drops - queue0,
                        interval_s,
                        self.writer.pending if self.writer else 0,
                    )


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

    asyncio.run(main())
