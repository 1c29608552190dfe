"""Sessions from flow records (issue 20): the flow table of one exporter, fed records instead of
packets.

A record is a span of one direction of a conversation (or both, for an RFC 5103 biflow) as an
exporter (softflowd, a router, a firewall) accounted it. The table turns them into the same
sessions, events and rows as captured packets: the same FlowKey for both directions, the same
attribution when a session opens, the same ids, observer (metrics), checkpoints and resume, so
a collector's sessions are stored, exported, reported and purged like captured ones.

Rules:
- Records of one 5-tuple (either direction) that start within `stitch_gap` of the session's
  last record end extend it: an exporter's active-timeout splits (flowEndReason 2) of a long
  flow, and the two uniflow records of one conversation, make one session. Beyond that:
  - TCP follows the connection, as capture does: a record without a SYN continues the open
    session of its 5-tuple up to [timeouts] tcp_idle after its last record (an interactive
    connection, idle between an exporter's maxlife pieces, stays one session); a SYN more
    than `stitch_gap` later, or after the session ended by FIN, RST or its exporter, opens a
    new one (port reuse).
  - UDP continues up to [timeouts] udp_idle when the exporter cut the previous piece at its
    active timeout (flowEndReason 2), else only within `stitch_gap`.
- Bytes are the record's octets (IE 1: IP total length, as capture counts); payload is not
  known (NULL). Sampled counters arrive scaled and mark the session `estimated`.
- Each batch of records is taken in start order, so of a uniflow pair the direction that
  started first opens the session and is its initiator; when both start together (softflowd
  times both directions alike), the one from the higher port (an ephemeral port talking to
  a service's); for a biflow, its source (RFC 5103). Either way, unless only the other side
  is inside a client's tunnel addresses (the capture rule). TCP without a SYN in the
  record's flags is `midstream`.
- A session ends as `rst` on a RST; as `fin` on FINs from both sides, or a FIN with
  flowEndReason 3 (end of flow detected), or a FIN in a biflow; a UDP one as `idle` on
  flowEndReason 1 (an exporter's idle timeout does not end a TCP connection); as
  `exporter_forced` on 4 (forced end) or 5 (lack of resources). It stays in the table for
  CLOSING_HOLD_S after its last record arrived, for the other direction's record.
- flowEndReason 3 (end of flow detected) without a FIN or RST ends a TCP session as `fin`, a
  UDP one as `idle`. A UDP session ends as `idle` on flowEndReason 1 only when no direction
  of it was last cut at the exporter's active timeout.
- A session whose records carry no end (v5, v9, exporters without IE 136) stays open while
  records come; with none for `active_timeout` (the exporter's active timeout, the longest
  it holds a live flow) or the protocol's idle timeout, whichever is longer, plus
  OPEN_HOLD_MARGIN_S, it ends as `idle` at its last record's end.
- Counts of a record go to the UTC day it ends on: a session whose record ends on a later
  day than its last one marks its counters as they stood (sessions/days.py).
- Records the exporter's sequence numbers say were lost mark the sessions open at that moment
  `incomplete`: a lost record cannot be placed, and any of them may have lost bytes.

Times: session times are the exporter's record times; the table's expiry runs on the
collector's clock (when records arrived), since records of an idle flow arrive long after it
ended.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Callable, Sequence
from typing import cast

from tunnelacct.capture.decode import TCP_FIN, TCP_RST, TCP_SYN
from tunnelacct.collector.records import FlowRecord
from tunnelacct.config.model import Timeouts
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.sessions.days import day_of
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.sessions.flowkey import FlowKey, SessionIds, addr_int, key_proto
from tunnelacct.sessions.flowtable import (
    AttributeFn,
    Flow,
    FlowObserver,
    FlowTable,
    IsClientFn,
    RecordFlow,
    keyed,
)

# How long a session whose exporter said it ended waits for more records (the reverse
# direction's uniflow record is exported in the same expiry pass, usually the same datagram).
CLOSING_HOLD_S = 10.0
# Added to active_timeout before an open session with no new record is taken as ended: an
# exporter expires on its own schedule (softflowd checks every `expint`, 60 s by default).
OPEN_HOLD_MARGIN_S = 60.0
# How often the collector ends the sessions whose records stopped (ingest/flows.py).
COLLECTOR_TICK_S = 1.0
FLOW_INTERFACE_PREFIX = "flow:"

# flowEndReason (IE 136, RFC 5102): 1 idle timeout, 2 active timeout, 3 end of flow detected,
# 4 forced end, 5 lack of resources.
END_IDLE = 1
END_ACTIVE = 2
END_DETECTED = 3
END_FORCED = 4
END_LACK_OF_RESOURCES = 5

_PROTOCOLS = {int(p): p for p in IpProto}


def exporter_interface(address: str, domain_id: int) -> str:
    """The interface column of an exporter's sessions: `flow:<address>`, plus `/<domain>` for
    an observation domain (IPFIX) or source id (v9) other than 0."""
    if domain_id:
        return f"{FLOW_INTERFACE_PREFIX}{address}/{domain_id}"
    return f"{FLOW_INTERFACE_PREFIX}{address}"


def exporter_of_interface(interface: str) -> tuple[str, int] | None:
    """(exporter address, domain) of a session's interface column, as exporter_interface
    writes it; None for a capture's interface, or anything else."""
    if not interface.startswith(FLOW_INTERFACE_PREFIX):
        return None
    address, slash, domain = interface[len(FLOW_INTERFACE_PREFIX) :].partition("/")
    try:
        canonical = str(ipaddress.ip_address(address))
    except ValueError:
        return None
    if canonical != address:
        return None
    if not slash:
        return address, 0
    if not _DOMAIN.fullmatch(domain):
        return None
    return address, int(domain)


class RecordTable(FlowTable):
    """The sessions of one exporter (address and observation domain), from its flow records.

    Example:
        table = RecordTable(timeouts, stitch_gap_s=5, active_timeout_s=1800,
                            interface=exporter_interface("192.0.2.10", 0), gateway="branch-fw",
                            attribute=identity.attribute, is_client=identity.is_client)
        table.add_records(records, received_ts=time.time())
        events = table.advance(time.time())    # ended sessions; checkpoint() for the others
    """

    flow_class = RecordFlow
    starts_stay = False  # an earlier record may move a session's start (_least_recently_active)

    def __init__(
        self,
        timeouts: Timeouts,
        *,
        stitch_gap_s: float,
        active_timeout_s: float,
        interface: str,
        gateway: str | None,
        attribute: AttributeFn,
        is_client: IsClientFn,
        ids: SessionIds | None = None,
        observer: FlowObserver | None = None,
        max_sessions: int = 262_144,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            timeouts,
            attribute=attribute,
            is_client=is_client,
            ids=ids,
            observer=observer,
            max_sessions=max_sessions,
            gateway=gateway,
        )
        self.stitch_gap_s = stitch_gap_s
        self.active_timeout_s = active_timeout_s
        self._clock = clock
        self.interface = interface
        self.records = 0  # records accounted
        self.records_skipped = 0  # records of other protocols, or without addresses
        self.sessions_marked_incomplete = 0
        # when each open session's last record arrived (collector clock, epoch s), oldest
        # first: advance() reads it from the front
        self._arrived: dict[FlowKey, float] = {}
        # sessions whose flags changed since their last checkpoint without new counters
        self._flagged: dict[FlowKey, Flow] = {}
        # open sessions whose last record of a direction the exporter cut at its active
        # timeout: bit 0 for A's direction, bit 1 for B's
        self._active_split: dict[FlowKey, int] = {}
        self._wall_now = float("-inf")

    def add_records(self, records: Sequence[FlowRecord], received_ts: float, lost: int = 0) -> None:
        """Account records received at `received_ts`; `lost` > 0: the exporter's sequence
        numbers say records were lost just before them (the open sessions become incomplete).

        Events of sessions ended by them come from the next `advance()`."""
        self._wall_now = max(self._wall_now, received_ts)
        for record in sorted(records, key=_opening_order):
            self._add(record, received_ts)
        if lost > 0:
            self.mark_incomplete()

    def mark_incomplete(self) -> None:
        """Flag every open session incomplete: its exporter lost records meanwhile."""
        for key, flow in self._flows.items():
            if not flow.incomplete:
                _of_records(flow).incomplete = True
                self.sessions_marked_incomplete += 1
                self._flagged[key] = flow

    def advance(self, now_ts: float, *, force: bool = False) -> list[SessionEvent]:
        """End the sessions whose records stopped, as of the collector's clock `now_ts`.

        A session the exporter ended waits CLOSING_HOLD_S after its last record's arrival;
        an open one `open_hold_s`. Sessions are visited oldest arrival first, and only those
        whose last record came more than CLOSING_HOLD_S ago: a second's work is about the
        sessions that end, not every open one. `force` is accepted for the FlowTable
        interface."""
        self._wall_now = max(self._wall_now, now_ts)
        now = self._wall_now
        flows = self._flows
        for key, arrived in list(self._arrived.items()):
            if now - arrived <= CLOSING_HOLD_S:
                break  # arrival order: every later one came even more recently
            flow = flows[key]
            if flow.closed:
                if now - arrived > CLOSING_HOLD_S:
                    self._finish(flow, flow.close_reason or CloseReason.FIN)
            elif now - arrived > self.open_hold_s(flow):
                self._finish(flow, CloseReason.IDLE)
        if self.observer is not None:
            self.observer.swept(self._flows.values())
        return self._drain()

    def _lingers(self, flow: Flow) -> None:
        """Its sessions end by their records' arrival (advance()), not after a linger in
        packet time: nothing to keep."""

    def _end_expired(self, now: float) -> None:
        """A full table first ends the sessions past their linger or their idle timeout as of
        record time `now`, as a capture's does (every session, as advance() is this table's)."""
        linger_s = self._linger_s
        for flow in list(self._flows.values()):
            if flow.closed:
                if now > flow.close_ts + linger_s:
                    self._finish(flow, flow.close_reason or CloseReason.FIN)
            elif now - flow.last_ts > flow.idle_s:
                self._finish(flow, _IDLE)

    def open_hold_s(self, flow: Flow) -> float:
        """How long an open session waits for its next record, from its last one's arrival:
        as long as the exporter may hold a live flow (active_timeout), or a continuation
        may still come (the protocol's idle timeout), plus the exporter's expiry delay."""
        return max(self.active_timeout_s, flow.idle_s) + OPEN_HOLD_MARGIN_S

    def resume(self, e: SessionEvent) -> None:
        """Continue a session of this exporter left ongoing before a restart."""
        super().resume(e)
        key, _src_is_a = keyed(
            e.family,
            int(e.proto),
            addr_int(e.src_addr),
            e.src_port,
            addr_int(e.dst_addr),
            e.dst_port,
        )
        # its hold counts from the restart: records may have waited in the exporter meanwhile
        self._arrived.pop(key, None)
        self._arrived[key] = max(self._wall_now, self._clock())

    def checkpoint(self) -> list[SessionEvent]:
        """Snapshots of the open sessions whose counters or flags changed since the last
        (those the exporter ended are written by their closing event, FlowTable.checkpoint)."""
        events = super().checkpoint()
        if self._flagged:
            skip_closed = self.closed_hold_s() <= self.timeouts.checkpoint_s
            checkpointed = {event.session_id.int for event in events}
            for key, flow in self._flagged.items():
                if (
                    self._flows.get(key) is flow
                    and flow.session_int not in checkpointed
                    and not (skip_closed and flow.closed)
                ):
                    events.append(self._event(flow, EventKind.CHECKPOINT))
            self._flagged.clear()
        return events

    def closed_hold_s(self) -> float:
        """The longest a session its exporter ended stays in the table after its last record
        arrived: CLOSING_HOLD_S, plus the collector's tick that ends it."""
        return CLOSING_HOLD_S + COLLECTOR_TICK_S

    # -- per record ----------------------------------------------------------------------------

    def _add(self, record: FlowRecord, received_ts: float) -> None:
        proto = record.protocol
        if proto not in _PROTOCOLS or not record.src_addr or not record.dst_addr:
            self.records_skipped += 1
            return
        if ":" in record.src_addr:
            family = 6
            address_family = socket.AF_INET6
        else:
            family = 4
            address_family = socket.AF_INET
        try:
            # inet_pton: the decoder wrote these with inet_ntop (4x faster than ipaddress)
            src = int.from_bytes(socket.inet_pton(address_family, record.src_addr), "big")
            dst = int.from_bytes(socket.inet_pton(address_family, record.dst_addr), "big")
        except OSError:  # an IPv4 source with an IPv6 destination cannot come from one template
            self.records_skipped += 1
            return
        key, src_is_a = keyed(family, proto, src, record.src_port, dst, record.dst_port)
        from_b = 0 if src_is_a else 1
        flags = record.tcp_flags or 0
        flow = self._flows.get(key)
        if flow is not None and self._starts_new_session(flow, record, flags):
            self._finish(flow, flow.close_reason if flow.closed and flow.close_reason else _IDLE)
            flow = None
        if flow is None:
            flow = self._open_record(key, record, from_b, flags)
        elif record.start_ts < flow.started_ts and flow.checkpoint_ts < 0:
            # not written yet: its start can still move (it fixes the row's partition)
            flow.started_ts = record.start_ts
        self._count(flow, record, from_b)
        self._close_by(flow, record, from_b, flags, proto)
        if record.estimated:
            _of_records(flow).estimated = True
        self._arrived.pop(key, None)  # to the end: the dict stays in arrival order
        self._arrived[key] = received_ts
        self.records += 1

    def _starts_new_session(self, flow: Flow, record: FlowRecord, flags: int) -> bool:
        """Whether `record` belongs to a new session rather than to `flow` of its 5-tuple."""
        gap_s = record.start_ts - flow.last_ts
        if key_proto(flow.key) == IpProto.TCP:
            if flow.closed:  # FIN, RST or the exporter ended it: a SYN is a new connection
                syn_after = bool(flags & TCP_SYN) and record.start_ts >= flow.close_ts
                return syn_after or gap_s > self.stitch_gap_s
            if flags & TCP_SYN and gap_s > self.stitch_gap_s:
                return True  # a new connection on the 5-tuple of one never seen to end
            # no SYN: the same connection, idle in between (an exporter's maxlife pieces of
            # an interactive session), as capture keeps it up to tcp_idle
            return gap_s > flow.idle_s
        if gap_s <= self.stitch_gap_s:
            return False
        # UDP: a piece the exporter cut at its active timeout continues up to udp_idle
        return not self._active_split.get(flow.key) or gap_s > flow.idle_s

    def _open_record(self, key: FlowKey, record: FlowRecord, from_b: int, flags: int) -> Flow:
        # tcp_flags 0: a record's flags are those of all its packets, so a SYN there does not
        # say who sent the first one; `_open` then takes the sender, or the client side
        flow = self._open(key, record.start_ts, from_b, 0, self.interface)
        _of_records(flow).payload_known = False
        if record.protocol == IpProto.TCP:
            flow.midstream = not flags & TCP_SYN
        flow.last_ts = record.end_ts if record.end_ts > record.start_ts else record.start_ts
        return flow

    def _count(self, flow: Flow, record: FlowRecord, from_b: int) -> None:
        last_day = day_of(flow.last_ts)
        if day_of(record.end_ts) > last_day and (flow.packets_a or flow.packets_b):
            # the record ends on a later UTC day: its counts go to that day, and the session
            # marks what it had moved by the end of its last one (sessions/days.py)
            self._mark_day(flow, last_day)
        reverse_octets = record.reverse_octets or 0
        reverse_packets = record.reverse_packets or 0
        if from_b:
            flow.packets_b += record.packets
            flow.bytes_b += record.octets
            flow.packets_a += reverse_packets
            flow.bytes_a += reverse_octets
        else:
            flow.packets_a += record.packets
            flow.bytes_a += record.octets
            flow.packets_b += reverse_packets
            flow.bytes_b += reverse_octets
        if record.end_ts > flow.last_ts:
            flow.last_ts = record.end_ts
        self.stats.packets += record.packets + reverse_packets
        self.stats.bytes += record.octets + reverse_octets

    def _close_by(
        self, flow: Flow, record: FlowRecord, from_b: int, flags: int, proto: int
    ) -> None:
        """Set the session's end from the record's TCP flags and flowEndReason."""
        if flow.closed:
            return
        end_reason = record.end_reason
        reason: CloseReason | None = None
        if proto == IpProto.TCP and flags & TCP_RST:
            reason = CloseReason.RST
        elif proto == IpProto.TCP and flags & TCP_FIN:
            flow.fin_senders |= 1 << from_b
            biflow = record.reverse_packets is not None
            if flow.fin_senders == 3 or biflow or end_reason == END_DETECTED:
                reason = CloseReason.FIN
        directions = 3 if record.reverse_packets is not None else 1 << from_b
        split = self._active_split.get(flow.key, 0)
        if end_reason == END_ACTIVE:
            self._active_split[flow.key] = split | directions
        elif split:
            self._active_split[flow.key] = split & ~directions
        if reason is None:
            if end_reason == END_IDLE and proto != IpProto.TCP:
                # an exporter's idle timeout ends no TCP connection (capture's tcp_idle does),
                # nor a UDP one whose other direction is still active
                if not self._active_split.get(flow.key):
                    reason = CloseReason.IDLE
            elif end_reason in (END_FORCED, END_LACK_OF_RESOURCES):
                reason = CloseReason.EXPORTER_FORCED
            elif end_reason == END_DETECTED:
                reason = CloseReason.FIN if proto == IpProto.TCP else CloseReason.IDLE
        if reason is not None:
            self._closes(flow, record.end_ts, reason)

    def _finish(self, flow: Flow, reason: CloseReason) -> None:
        if self._flows.get(flow.key) is flow:
            self._arrived.pop(flow.key, None)
            self._flagged.pop(flow.key, None)
            self._active_split.pop(flow.key, None)
        super()._finish(flow, reason)


def _of_records(flow: Flow) -> RecordFlow:
    """A session of a RecordTable as what it is (its `flow_class`, and what resume() makes of
    a session of flow records)."""
    return cast(RecordFlow, flow)


def _opening_order(record: FlowRecord) -> tuple[float, int]:
    """Records in start order; of two that start together (the uniflow pair of one
    conversation, often timed alike by its exporter), the one from the higher port first: its
    sender is the likelier initiator (an ephemeral port talking to a service's)."""
    return (record.start_ts, -record.src_port)


_IDLE = CloseReason.IDLE
_DOMAIN = re.compile(r"[1-9][0-9]{0,9}")  # a non-zero 32-bit domain id, no leading zero
