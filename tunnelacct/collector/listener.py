"""The collector's UDP endpoints (issue 20): allow-list, bounded hand-off, decoding consumer.

One asyncio-dgram endpoint per listen address receives datagrams. A datagram from a source
outside the allow-list is dropped before any parsing and counted (issue 20, item 4: UDP sources
are spoofable, so nothing from an unknown source reaches the decoder). Allowed datagrams go into
one bounded queue; a full queue drops and counts. `drain()` takes batches off the queue, decodes
them and hands the records, with their exporter rule, to a callback (the session engine later).

Example:
    listener = CollectorListener([("127.0.0.1", 2055)], AllowList(rules), max_queue=20000)
    await listener.open()
    group.create_task(listener.run(listener.endpoints[0]))   # one task per endpoint
    group.create_task(listener.drain(FlowDecoder(), on_records))
    ...
    listener.stop()   # run() returns; drain() decodes what is queued, then returns
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import socket
import time
from asyncio.trsock import TransportSocket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

import asyncio_dgram

from tunnelacct.collector.decode import Exporter, FlowDecoder
from tunnelacct.collector.records import DecodeReason, FlowRecord
from tunnelacct.errors import TunnelacctError

log = logging.getLogger(__name__)

MAX_QUEUE = 20000
# The kernel's receive buffer asked for each endpoint: what arrives while the event loop is
# busy elsewhere (a checkpoint of many sessions, a writer flush) waits there, not dropped. The
# default (net.core.rmem_default, 208 KiB) holds ~150 full datagrams: a quarter second at
# 20,000 records/s. As root (CAP_NET_ADMIN) SO_RCVBUFFORCE passes net.core.rmem_max.
RECEIVE_BUFFER_BYTES = 32 * 1024 * 1024
SO_RCVBUFFORCE = 33  # Linux (asm-generic/socket.h); Python's socket module does not name it
MAX_SOURCES = 1024
BATCH_MAX = 256
LOG_EVERY_S = 60.0
# Figures of sources past MAX_SOURCES are summed under this key (bounded memory under spoofing).
OTHER_SOURCES = "other"
OTHER_EXPORTER: Exporter = (OTHER_SOURCES, 0)
MATCH_CACHE_MAX = 4096
IPV4_MAPPED_PREFIX = "::ffff:"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class DropReason(StrEnum):
    """Why the listener dropped a datagram before the decoder saw it."""

    NOT_ALLOWED = "not_allowed"  # the source is outside the allow-list
    QUEUE_OVERFLOW = "queue_overflow"  # the queue to the decoder was full


class CollectorListenError(TunnelacctError):
    """A collector listen address cannot be bound: names the address and why."""

    def __init__(self, listen: str, why: str) -> None:
        self.listen = listen
        self.why = why
        super().__init__(f"collector listen {listen}: {why}")


@dataclass(frozen=True, slots=True)
class ExporterRule:
    """One allow-list entry: exporters in `network` feed `gateway`; `sampling` None = auto."""

    network: IpNetwork
    gateway: str
    sampling: int | None = None


class AllowList:
    """Exporter rules by network; `match(address)` returns the most specific rule or None.

    Example:
        allow = AllowList([ExporterRule(ipaddress.ip_network("192.0.2.0/24"), "branch-fw")])
        allow.match("::ffff:192.0.2.10")   # the rule: IPv4-mapped sources match IPv4 rules
    """

    def __init__(self, rules: Iterable[ExporterRule]) -> None:
        self.rules = tuple(rules)
        # Most specific first; among equal prefixes, the first given wins (stable sort).
        ordered = sorted(self.rules, key=lambda rule: rule.network.prefixlen, reverse=True)
        self._ipv4 = tuple(rule for rule in ordered if rule.network.version == 4)
        self._ipv6 = tuple(rule for rule in ordered if rule.network.version == 6)
        self._cache: dict[str, ExporterRule | None] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def match(self, address: str) -> ExporterRule | None:
        """The rule of the most specific network holding `address` (text), or None."""
        try:
            return self._cache[address]
        except KeyError:
            pass
        rule = self._lookup(address)
        if len(self._cache) >= MATCH_CACHE_MAX:
            self._cache.clear()  # spoofed sources must not grow it without bound
        self._cache[address] = rule
        return rule

    def _lookup(self, address: str) -> ExporterRule | None:
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            return None
        if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
            # A dual-stack [::] socket reports IPv4 exporters as ::ffff:a.b.c.d.
            mapped = parsed.ipv4_mapped
            for rule in self._ipv4:
                if mapped in rule.network:
                    return rule
        candidates = self._ipv4 if parsed.version == 4 else self._ipv6
        for rule in candidates:
            if parsed in rule.network:
                return rule
        return None


class Datagram(NamedTuple):
    """An allowed datagram waiting for the decoder; `received_ts` is epoch seconds."""

    payload: bytes
    exporter: Exporter
    rule: ExporterRule
    received_ts: float


class DecodedDatagram(NamedTuple):
    """One decoded datagram: its exporter's rule, its flow records, and how many records (IPFIX,
    v5) or export packets (v9) its sequence number says were lost just before it."""

    rule: ExporterRule
    exporter: Exporter
    records: list[FlowRecord]
    lost: int
    received_ts: float


# What drain() hands on per batch: the datagrams that yielded records or revealed a loss.
RecordBatch = list[DecodedDatagram]


@dataclass(frozen=True, slots=True)
class ExporterFigures:
    """One exporter's figures: allowed datagrams received, their bytes, drops by reason."""

    gateway: str
    datagrams: int
    received_bytes: int
    dropped: dict[DropReason, int]


@dataclass(frozen=True, slots=True)
class CollectorFigures:
    """A snapshot for metrics: per exporter, per rejected source, per endpoint, queue depth."""

    exporters: dict[Exporter, ExporterFigures]
    not_allowed: dict[str, int]  # source address (or OTHER_SOURCES) -> datagrams dropped
    socket_errors: dict[str, int]  # listen address -> receive errors
    dropped: dict[DropReason, int]  # totals over every source
    queue_depth: int
    queue_max: int


class ExporterTally:
    """Mutable counters of one exporter on the receive path."""

    __slots__ = ("gateway", "datagrams", "received_bytes", "queue_overflow")

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.datagrams = 0
        self.received_bytes = 0
        self.queue_overflow = 0


class Endpoint:
    """One bound listen address and its asyncio-dgram stream."""

    __slots__ = ("listen", "stream", "socket_errors", "closed", "receive_buffer_bytes")

    def __init__(self, listen: str, stream: asyncio_dgram.DatagramServer) -> None:
        self.listen = listen
        self.stream = stream
        self.socket_errors = 0
        self.closed = False
        self.receive_buffer_bytes = 0  # the kernel's receive buffer, as it reports it

    @property
    def sockname(self) -> tuple[str, int]:
        """The bound (host, port): the real port when the listen port was 0."""
        name = self.stream.sockname
        return (str(name[0]), int(name[1]))


def format_listen(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets: `[::]:4739`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CollectorListener:
    """The collector's UDP endpoints, the allow-list check and the bounded queue to the decoder.

    Lifecycle: `await open()` binds every listen address (a failure closes the others and raises
    CollectorListenError); one task per endpoint runs `run(endpoint)`; one task runs `drain()`.
    `stop()` closes the endpoints: `run()` returns and `drain()` decodes what is already queued
    (at most `max_queue` datagrams), then returns. `stop()` is idempotent; `open()` after it
    raises.
    """

    def __init__(
        self,
        listen: Sequence[tuple[str, int]],
        allow: AllowList,
        *,
        max_queue: int = MAX_QUEUE,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.listen = tuple(listen)
        self.allow = allow
        self.max_sources = max_sources
        self.queue: asyncio.Queue[Datagram | None] = asyncio.Queue(maxsize=max_queue)
        self.endpoints: list[Endpoint] = []
        self._clock = clock
        self._stopped = False
        self._exporters: dict[Exporter, ExporterTally] = {}
        self._not_allowed: dict[str, int] = {}
        self._next_log_ts = 0.0
        self._unlogged: dict[DropReason, int] = {}

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Bind every listen address (port 0 picks a free port; see `Endpoint.sockname`)."""
        if self._stopped:
            raise RuntimeError("collector listener is stopped")
        for host, port in self.listen:
            listen = format_listen(host, port)
            try:
                stream = await asyncio_dgram.bind((host, port))
            except OSError as error:
                self.stop()
                raise CollectorListenError(listen, error.strerror or str(error)) from error
            endpoint = Endpoint(listen, stream)
            endpoint.receive_buffer_bytes = _enlarge_receive_buffer(stream.socket)
            self.endpoints.append(endpoint)
            log.info(
                "collector listening on %s (udp, bound %s, max_queue=%d, receive buffer %d KiB)",
                listen,
                format_listen(*endpoint.sockname),
                self.queue.maxsize,
                endpoint.receive_buffer_bytes // 1024,
            )
        if not self.allow.rules:
            # Issue 20, item 4: with no [[collector.exporters]] nothing is accepted; say so.
            log.warning("collector has no exporters in its allow-list: every datagram is dropped")

    def stop(self) -> None:
        """Close every endpoint: run() returns, drain() finishes the queue and returns."""
        if self._stopped:
            return
        self._stopped = True
        for endpoint in self.endpoints:
            endpoint.closed = True
            endpoint.stream.close()
        # Wake a drain() blocked on an empty queue; when the queue is full, drain() is not
        # blocked and sees the stop once it has emptied the queue.
        if not self.queue.full():
            self.queue.put_nowait(None)
        log.info(
            "collector stopped (%d endpoints, %d datagrams queued)",
            len(self.endpoints),
            self.queue.qsize(),
        )

    # -- receiving ----------------------------------------------------------------------------

    async def run(self, endpoint: Endpoint) -> None:
        """Receive on one endpoint until it is closed; never raises on bad input or errors."""
        stream = endpoint.stream
        match = self.allow.match
        exporters = self._exporters
        queue = self.queue
        clock = self._clock
        while True:
            try:
                payload, source = await stream.recv()
            except asyncio_dgram.TransportClosed:
                break
            except Exception as error:  # ICMP errors, ENOBUFS...: counted, never fatal
                self._socket_error(endpoint, error)
                if endpoint.closed:
                    break
                continue
            if not isinstance(source, tuple):
                continue  # an AF_UNIX peer: never on the inet endpoints bound here
            address = str(source[0])
            if address.startswith(IPV4_MAPPED_PREFIX) and "." in address:
                address = address[len(IPV4_MAPPED_PREFIX) :]  # one exporter, either socket
            rule = match(address)
            if rule is None:
                self._drop_not_allowed(address)
                continue
            exporter = (address, int(source[1]))
            tally = exporters.get(exporter)
            if tally is None:
                tally = self._new_tally(exporter, rule)
            tally.datagrams += 1
            tally.received_bytes += len(payload)
            try:
                queue.put_nowait(Datagram(payload, exporter, rule, clock()))
            except asyncio.QueueFull:
                tally.queue_overflow += 1
                self._note_drop(DropReason.QUEUE_OVERFLOW)
        if not self._stopped:
            log.warning("collector endpoint %s closed by the system", endpoint.listen)
        endpoint.closed = True

    def _new_tally(self, exporter: Exporter, rule: ExporterRule) -> ExporterTally:
        if len(self._exporters) >= self.max_sources:
            # Allowed networks can be wide and source ports are spoofable: cap the keys.
            other = self._exporters.get(OTHER_EXPORTER)
            if other is None:
                other = self._exporters[OTHER_EXPORTER] = ExporterTally(OTHER_SOURCES)
            return other
        tally = self._exporters[exporter] = ExporterTally(rule.gateway)
        return tally

    def _drop_not_allowed(self, address: str) -> None:
        counts = self._not_allowed
        if address not in counts and len(counts) >= self.max_sources:
            address = OTHER_SOURCES
        counts[address] = counts.get(address, 0) + 1
        self._note_drop(DropReason.NOT_ALLOWED, address)

    def _note_drop(self, reason: DropReason, source: str = "") -> None:
        """Log drops at most once every LOG_EVERY_S, with how many there were since."""
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        now = self._clock()
        if now < self._next_log_ts:
            return
        self._next_log_ts = now + LOG_EVERY_S
        summary = ", ".join(f"{key}={count}" for key, count in sorted(self._unlogged.items()))
        self._unlogged.clear()
        log.warning("collector dropped datagrams (%s; last source %s)", summary, source or "-")

    def _socket_error(self, endpoint: Endpoint, error: Exception) -> None:
        endpoint.socket_errors += 1
        if endpoint.socket_errors == 1:
            log.warning(
                "collector endpoint %s: receive error %r (further ones are only counted)",
                endpoint.listen,
                error,
            )

    # -- consuming ----------------------------------------------------------------------------

    async def drain(
        self,
        decoder: FlowDecoder,
        on_records: Callable[[RecordBatch], Awaitable[None] | None],
        batch_max: int = BATCH_MAX,
    ) -> None:
        """Decode queued datagrams in batches of up to `batch_max` and pass their records on.

        Each datagram is decoded at its receive time, with its rule's sampling override.
        `on_records` gets one list per batch (only datagrams that yielded records or revealed
        lost records) and is awaited when it returns an awaitable (the session engine waits
        for the writer there); an exception from it ends drain(). After stop(), drain()
        decodes every datagram already queued, then returns.
        """
        queue = self.queue
        while True:
            if self._stopped and queue.empty():
                return
            first = await queue.get()
            batch: RecordBatch = []
            item = first
            taken = 0
            while True:
                if item is not None:
                    decoded = _decode(decoder, item)
                    if decoded.records or decoded.lost:
                        batch.append(decoded)
                taken += 1
                if taken >= batch_max or queue.empty():
                    break
                item = queue.get_nowait()
            if batch:
                handled = on_records(batch)
                if inspect.isawaitable(handled):
                    await handled
            # Let the receive loops run between batches even when the queue never empties.
            await asyncio.sleep(0)

    # -- figures ------------------------------------------------------------------------------

    def figures(self) -> CollectorFigures:
        """A snapshot of every counter and the queue depth (for metrics, read on scrape)."""
        exporters = {
            exporter: ExporterFigures(
                tally.gateway,
                tally.datagrams,
                tally.received_bytes,
                {DropReason.QUEUE_OVERFLOW: tally.queue_overflow},
            )
            for exporter, tally in self._exporters.items()
        }
        dropped = {
            DropReason.NOT_ALLOWED: sum(self._not_allowed.values()),
            DropReason.QUEUE_OVERFLOW: sum(t.queue_overflow for t in self._exporters.values()),
        }
        return CollectorFigures(
            exporters=exporters,
            not_allowed=dict(self._not_allowed),
            socket_errors={endpoint.listen: endpoint.socket_errors for endpoint in self.endpoints},
            dropped=dropped,
            queue_depth=self.queue.qsize(),
            queue_max=self.queue.maxsize,
        )


def _enlarge_receive_buffer(sock: TransportSocket) -> int:
    """Ask for RECEIVE_BUFFER_BYTES of kernel receive buffer (forced past rmem_max when
    privileged, else up to it); returns what the kernel then reports."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        except OSError as error:
            log.warning("collector: cannot set the receive buffer: %s", error)
    size = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    if size < RECEIVE_BUFFER_BYTES:
        log.warning(
            "collector: receive buffer %d KiB, not the %d KiB asked for (raise "
            "net.core.rmem_max, or run with CAP_NET_ADMIN): bursts may be dropped by the kernel",
            size // 1024,
            RECEIVE_BUFFER_BYTES // 1024,
        )
    return size


def _lost_so_far(decoder: FlowDecoder, exporter: Exporter) -> int:
    counters = decoder.counters.get(exporter)
    if counters is None:
        return 0
    lost_records = counters.get(DecodeReason.LOST_RECORDS, 0)
    return lost_records + counters.get(DecodeReason.LOST_PACKETS, 0)


def _decode(decoder: FlowDecoder, item: Datagram) -> DecodedDatagram:
    """Decode one queued datagram, noting the loss its sequence number reveals."""
    lost_before = _lost_so_far(decoder, item.exporter)
    records = decoder.decode_datagram(
        item.payload, item.exporter, item.received_ts, item.rule.sampling
    )
    lost = _lost_so_far(decoder, item.exporter) - lost_before
    return DecodedDatagram(item.rule, item.exporter, records, lost, item.received_ts)


__all__ = [
    "AllowList",
    "CollectorFigures",
    "CollectorListenError",
    "CollectorListener",
    "Datagram",
    "DecodedDatagram",
    "DropReason",
    "Endpoint",
    "ExporterFigures",
    "ExporterRule",
    "RecordBatch",
    "format_listen",
]
