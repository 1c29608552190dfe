"""Resuming at start: the sessions this gateway (and its collector's exporters' gateways) left
`ongoing` in the store (a restart, a crash) continue where their capture or exporter still
feeds them, or are closed."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.model import Config
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.ingest.flows import FlowSource
from tunnelacct.ingest.pipeline import CapturePipeline
from tunnelacct.service.sinks import WriterAndEventLog
from tunnelacct.store.ongoing import ongoing_sessions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Resumed:
    """What a start did with the sessions left ongoing."""

    continued: int  # handed to their capture's flow table
    closed: int  # closed as `shutdown`


async def resume_sessions(
    engine: AsyncEngine,
    config: Config,
    pipelines: Sequence[CapturePipeline],
    sink: WriterAndEventLog,
    *,
    flow_source: FlowSource | None = None,
) -> Resumed:
    """Continue this gateway's `ongoing` sessions on their live interface; close the rest.

    A session is closed as `shutdown`, at its last packet, when the service cannot have seen
    all of it: its interface is no longer captured (or it came from a file replay), or the
    service was down past its idle timeout (its packets meanwhile went unseen, so neither
    `idle` nor a later end would be true). The others continue: later packets on their 5-tuple
    add to the same row. Runs before any packet reaches a flow table.

    A session of flow records (interface `flow:<exporter>`, under its exporter's gateway)
    continues in the collector's table of that exporter when the exporter is still allowed
    with that gateway and its last record is within [collector] active_timeout: the exporter
    may still hold the flow, and its next record stitches onto the same row.
    """
    live = {p.capture.interface: p for p in pipelines if p.live}
    timeouts = config.timeouts
    now_ts = time.time()
    stale = []
    continued = 0
    stored = await ongoing_sessions(engine, config.gateway)
    if config.collector is not None:
        for exporter_gateway in {e.gateway for e in config.collector.exporters}:
            if exporter_gateway != config.gateway:
                stored += await ongoing_sessions(engine, exporter_gateway)
    await sink.seed(stored)  # the usage rollup holds their share already
    for event in stored:
        if flow_source is not None and flow_source.resume(event):
            continued += 1
            continue
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
            continued += 1
    await sink.submit(stale)
    if continued or stale:
        log.info(
            "resumed %d ongoing sessions; closed %d as shutdown (capture gone, or down past "
            "their idle timeout)",
            continued,
            len(stale),
        )
    return Resumed(continued, len(stale))
