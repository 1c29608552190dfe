"""Sessionizer: DecodedBatch -> session events, one session per 5-tuple and both directions.

Per batch, packets are grouped by flow with one vectorised sort. Only "special" packets run
Python code: the first packet of a flow in the batch, TCP packets carrying a bare SYN, a FIN or
a RST, first fragments, packets after an idle gap, and the packets of a session closed by FIN
or RST from the first one past its linger. The plain packets between two special ones are added
in one step from prefix sums, so bulk traffic costs a few array operations per batch.

Rules (issue 2): the initiator is the TCP SYN sender, else the first packet's sender, preferring
the side inside a client's tunnel addresses; tx = initiator->responder. TCP closes on FIN from
both sides or RST, after a linger that still counts late ACKs and retransmits; a SYN on a closed
5-tuple opens a new session (port reuse); idle timeouts run on packet time.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import numpy as np

from tunnelacct.capture.decode import (
    FRAG_FIRST,
    FRAG_LATER,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    DecodedBatch,
    packets_at,
)
from tunnelacct.config.model import Timeouts
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.sessions.days import DAY_S, DayMark, day_of, trimmed
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.sessions.flowkey import (
    KEY_BYTES,
    LO64,
    FlowKey,
    SessionIds,
    addr_int,
    addr_text,
    community_id,
    key_words,
    pack_key,
    unpack_key,
    uuid_of_int,
)

log = logging.getLogger(__name__)

AttributeFn = Callable[[int, int, int, int, IpProto], Attribution]
IsClientFn = Callable[[int, int], bool]
SWEEP_INTERVAL_S = 1.0  # packet time between expiry sweeps
FRAGMENT_TIMEOUT_S = 60.0  # how long a first fragment vouches for the later ones
LATE_S = 1.0  # a packet this much older than one before it is counted late
EVICT_SHARE = 64  # a full table evicts 1/64 of max_sessions at once: one scan per that many opens
FULL_LOG_INTERVAL_S = 60.0  # a full table is logged at most once a minute
# the sessions still open when a capture ends are closed and handed to the writer this many at
# a time (close_all_in_parts), so the events of all of them are never in memory at once, and
# the writer starts on the first while the last are closed
CLOSE_PART_SESSIONS = 5000
# a scan for idle sessions starts this much before the earliest time one can go idle: the times
# are compared as sums here and as differences in the scan, which may round apart
IDLE_SLACK_S = 0.001
_M1, _M2, _M3 = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
)
_SYN_MASK = TCP_SYN | TCP_ACK
_KEY_DTYPE = np.dtype((np.void, KEY_BYTES))  # a row of a key matrix as one bytes key
_PROTOS = {int(p): p for p in IpProto}
_CLOSED = EventKind.CLOSED
# a full table reads its sessions' last packet times in chunks of at least this many, in the
# order they opened, until no later one can be among the least recently active (_make_room)
LRU_CHUNK = 8192
# how much later than the bound a session must start for the chunked read to stop: the bound's
# float arithmetic may round, a millisecond only reads a few sessions more
LRU_MARGIN_S = 0.001
# addresses whose text a table keeps per family (about 130 bytes each): a gateway's sessions
# come from and go to a limited set of clients and resources
ADDRESS_TEXTS_KEPT = 16_384


class Flow:
    """Live state of one session. Its two endpoints are A, the lower (address, port), and B; its
    counters are per endpoint: `packets_a` are the packets A sent, and so on."""

    __slots__ = (
        "key",
        "session_int",
        "initiator_is_a",
        "started_ts",
        "last_ts",
        "checkpoint_ts",
        "packets_a",
        "packets_b",
        "bytes_a",
        "bytes_b",
        "payload_a",
        "payload_b",
        "fin_senders",
        "closed",
        "close_ts",
        "close_reason",
        "midstream",
        "attribution",
        "interface",
        "community_id",
        "idle_s",
        "observed",
    )
    # What only sessions of flow records set (RecordFlow's own slots), so that the many open
    # sessions of a capture do not carry them: 8 bytes each, and 16 more with day marks held
    # by the table, as pymalloc sizes objects in steps of 16 (issue 21)
    payload_known = True  # False: no payload figures (stored NULL, not 0)
    estimated = False  # a sampling interval scaled the counters
    incomplete = False  # its exporter lost records while it was open

    def __init__(
        self,
        key: FlowKey,
        session_int: int,
        initiator_is_a: bool,
        ts: float,
        midstream: bool,
        attribution: Attribution,
        interface: str,
    ) -> None:
        self.key = key
        # the session id's 128 bits; its UUID is made for each event (a UUID object held by
        # every open session was 56 bytes more of it: issue 21)
        self.session_int = session_int
        self.initiator_is_a = initiator_is_a
        self.started_ts = ts
        self.last_ts = ts
        self.checkpoint_ts = -1.0
        self.packets_a = 0
        self.packets_b = 0
        self.bytes_a = 0  # IP total length of the packets A sent
        self.bytes_b = 0
        self.payload_a = 0  # their L4 payload bytes
        self.payload_b = 0
        self.fin_senders = 0  # bit 0: A sent a FIN, bit 1: B did
        self.closed = False
        self.close_ts = 0.0
        self.close_reason: CloseReason | None = None
        self.midstream = midstream
        self.attribution = attribution
        self.interface = interface
        self.community_id: str | None = None
        self.idle_s = 0.0  # the protocol's idle timeout, set by the table
        self.observed: object = None  # the FlowObserver's own state of this flow


class RecordFlow(Flow):
    """A session of flow records (sessions/flowrecords.py): a Flow with what only they set."""

    __slots__ = ("payload_known", "estimated", "incomplete")

    def __init__(self, *flow_args: Any) -> None:
        """As a Flow is made (a table makes it from its `flow_class`, typed as Flow's)."""
        super().__init__(*flow_args)
        self.payload_known = True
        self.estimated = False
        self.incomplete = False


class FlowObserver(Protocol):
    """What watches a flow table's sessions (metrics does), called on the table's thread.

    Per session it is told once when it opens and once when it closes; in between it sees the
    open sessions at each expiry sweep (at most once per SWEEP_INTERVAL_S of packet time), never
    per packet. `Flow.observed` is its own to keep per-session state in.
    """

    def opened(self, flow: Flow, *, resumed: bool) -> None:
        """A session opened, or was resumed after a restart with its counters so far."""

    def swept(self, flows: Collection[Flow]) -> None:
        """The open sessions at an expiry sweep."""

    def closed(self, flows: Sequence[Flow]) -> None:
        """Sessions that ended, their close_reason set."""


@dataclass(slots=True)
class FlowStats:
    """Counters of the flow engine since it started."""

    packets: int = 0
    bytes: int = 0
    sessions_opened: int = 0
    unattributed_sessions: int = 0
    closed: Counter[str] = field(default_factory=Counter)
    fragments_unattributed: int = 0
    fragment_bytes_unattributed: int = 0
    # packets more than LATE_S older than a packet before them: merged or reordered captures, a
    # clock stepped back (still accounted, in their session; issue 16)
    late_packets: int = 0
    # times the table was full ([service] max_sessions) when a session opened; the sessions it
    # ended early are in `closed["evicted"]`
    table_full: int = 0


class FlowTable:
    """In-memory sessions keyed by 5-tuple; turns decoded packets into session events."""

    flow_class: type[Flow] = Flow  # what its sessions are
    # A session's start never moves once it opened (a RecordTable's may move earlier, with
    # its records): so the order sessions opened in bounds their starts (_open_order_slack)
    starts_stay = True

    def __init__(
        self,
        timeouts: Timeouts,
        *,
        attribute: AttributeFn,
        is_client: IsClientFn,
        ids: SessionIds | None = None,
        emit_opened: bool = False,
        observer: FlowObserver | None = None,
        max_sessions: int = 262_144,
        gateway: str | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, not {max_sessions}")
        self.timeouts = timeouts
        self.max_sessions = max_sessions
        self._full_logged_at = float("-inf")
        self.observer = observer
        self._linger_s = timeouts.tcp_linger_s
        self._attribute = attribute
        self._is_client = is_client
        # one issuer per table: ids never repeat, whatever the packets (issue 15)
        self.ids = ids if ids is not None else SessionIds()
        self._emit_opened = emit_opened
        self._flows: dict[FlowKey, Flow] = {}
        self._frags: dict[tuple[int, ...], tuple[Flow, int, float]] = {}
        # the open sessions that had packets on an earlier UTC day than their last: per UTC day
        # before the last one, (day, bytes_a, bytes_b, packets_a, packets_b) as they stood at
        # the end of that day (sessions/days.py); few sessions have any
        self._day_marks: dict[Flow, list[DayMark]] = {}
        self._finished: list[Flow] = []
        # sessions opened whose opened event is not made yet, in the order they opened
        self._opened: collections.deque[Flow] = collections.deque()
        self._first_write_s = timeouts.first_write_s
        # No session in the table goes idle before this packet time: sweeps and a full table
        # scan the open sessions for idle ones only from then on (the sweeps' scans of every
        # open session took 0.41 s of a session-heavy import's 7.9; issue 21). A session's
        # next packet only moves its idle end later.
        self._idle_floor = float("inf")
        # The table holds its sessions in the order they opened. Their starts mostly rise in
        # that order; this is the most any start was before the latest start opened before it
        # (late packets, merged captures, resumed sessions), so that no session opened after
        # one starting at S starts before S - _open_order_slack (_least_recently_active()).
        self._latest_start = float("-inf")
        self._open_order_slack = 0.0
        # the sessions closed by FIN or RST, by the second their linger ends in (its floor):
        # sweeps end those past their linger without a scan, and hold 8 bytes a session (a
        # heap's entries were 150). One that ended otherwise meanwhile (a new SYN, eviction) is
        # dropped when its second comes.
        self._lingering: dict[int, list[Flow]] = {}
        self._now = float("-inf")
        self._last_sweep = float("-inf")
        self._day: int | None = None  # the UTC day of packet time; None before any packet
        # address (int) -> its text, per family: _address_text()
        self._v4_texts: dict[int, str] = {}
        self._v6_texts: dict[int, str] = {}
        self.stats = FlowStats()
        self.gateway = gateway  # the sessions' gateway column; None: the writer's gateway

    def __len__(self) -> int:
        return len(self._flows)

    @property
    def now_ts(self) -> float:
        """Latest packet (or ticker) time seen, epoch seconds."""
        return self._now

    def process(self, b: DecodedBatch) -> list[SessionEvent]:
        """Account one batch of packets; returns events for sessions opened or closed by it.

        A batch whose packets fall on two UTC days is accounted a day at a time, and the open
        sessions take a day mark when packet time crosses midnight (sessions/days.py)."""
        if len(b):
            newest = float(b.ts.max())
            if self._day is not None and day_of(newest) <= self._day:
                # most batches: nothing past the current day (a late packet of an earlier one
                # counts on the day its session is on)
                self._account(b, newest)
            else:
                for day, part in self._day_parts(b):
                    if self._day is None:
                        self._day = day
                    elif day > self._day:
                        self._cross_midnight(day)
                    self._account(part, float(part.ts.max()))
        return self.advance(self._now)

    def _day_parts(self, b: DecodedBatch) -> list[tuple[int, DecodedBatch]]:
        """The batch's packets per UTC day, earliest day first, each day in capture order."""
        first_day = day_of(float(b.ts.min()))
        if first_day == day_of(float(b.ts.max())):
            return [(first_day, b)]
        days = np.floor_divide(b.ts, DAY_S).astype(np.int64)
        parts = []
        for day in np.unique(days).tolist():
            index = np.flatnonzero(days == day)
            parts.append((int(day), packets_at(b, index)))
        return parts

    def _cross_midnight(self, day: int) -> None:
        """Packet time enters UTC day `day`: every open session that had packets on an earlier
        day marks its counters as they stood at that day's end."""
        for flow in self._flows.values():
            last_day = day_of(flow.last_ts)
            if last_day >= day:
                continue  # a packet from the future (a clock stepped): it marks nothing
            self._mark_day(flow, last_day)
        self._day = day

    def _mark_day(self, flow: Flow, last_day: int) -> None:
        """`flow`, whose last packet was on UTC day `last_day`, goes on to a later one: it
        marks its counters as they stood at the end of that day."""
        mark = (last_day, flow.bytes_a, flow.bytes_b, flow.packets_a, flow.packets_b)
        marks = self._day_marks.get(flow)
        if marks is None:
            self._day_marks[flow] = [mark]
        elif marks[-1][0] != last_day:
            marks.append(mark)

    def _account(self, b: DecodedBatch, newest: float) -> None:
        """Account the packets of `b`, all on one UTC day (or late from an earlier one), whose
        newest packet time is `newest`."""
        m = len(b)
        later = b.frag == FRAG_LATER
        if not later.any():
            self._process_keyed(b, None)
        else:
            # capture order matters (fragments refresh idle timers): alternate runs of
            # ordinary packets and of fragments after the first
            cuts = (np.flatnonzero(later[1:] != later[:-1]) + 1).tolist()
            for lo, hi in zip([0, *cuts], [*cuts, m], strict=True):
                run = np.arange(lo, hi)
                if later[lo]:
                    self._process_later_fragments(b, run)
                else:
                    self._process_keyed(b, run)
        self.stats.packets += m
        self.stats.bytes += int(b.ip_bytes.sum())
        newest_before = np.maximum.accumulate(b.ts)
        newest_before[1:] = newest_before[:-1]
        newest_before[0] = self._now
        np.maximum(newest_before, self._now, out=newest_before)
        self.stats.late_packets += int(np.count_nonzero(b.ts < newest_before - LATE_S))
        self._now = max(self._now, newest)

    def advance(self, now_ts: float, *, force: bool = False) -> list[SessionEvent]:
        """Expire sessions idle (or lingering after close) as of packet time `now_ts`.

        Sweeps run at most once per SWEEP_INTERVAL_S of packet time unless `force`: that only
        delays events, since a later packet on an expired session is checked on arrival.
        """
        self._now = max(self._now, now_ts)
        now = self._now
        if force or now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = now
            self._end_expired(now)
            if self.observer is not None:
                self.observer.swept(self._flows.values())
            stale = [
                fragment_key
                for fragment_key, (_flow, _from_b, first_ts) in self._frags.items()
                if now - first_ts > FRAGMENT_TIMEOUT_S
            ]
            for fragment_key in stale:
                del self._frags[fragment_key]
        return self._drain()

    def _end_expired(self, now: float) -> None:
        """End the sessions lingering past tcp_linger after FIN or RST, or idle, as of packet
        time `now`."""
        flows = self._flows
        if self._lingering:
            self._end_lingering(now)
        if now < self._idle_floor - IDLE_SLACK_S:
            return
        floor = float("inf")  # of the open sessions that stay
        for flow in list(flows.values()):
            if flow.closed:
                continue  # it lingers: _lingering has it
            if now - flow.last_ts > flow.idle_s:
                self._finish(flow, CloseReason.IDLE)
            else:
                idle_end = flow.last_ts + flow.idle_s
                if idle_end < floor:
                    floor = idle_end
        self._idle_floor = floor

    def _end_lingering(self, now: float) -> None:
        """End the sessions closed by FIN or RST whose linger has passed as of `now`."""
        lingering = self._lingering
        flows = self._flows
        linger_s = self._linger_s
        for second in sorted(lingering):  # a few: the linger and a second or two
            if second > now:
                break  # every linger of it ends later
            still = []
            for flow in lingering.pop(second):
                if flows.get(flow.key) is not flow:
                    continue  # it ended otherwise
                if now > flow.close_ts + linger_s:
                    self._finish(flow, flow.close_reason or CloseReason.FIN)
                else:
                    still.append(flow)
            if still:
                lingering[second] = still

    def _may_go_idle_at(self, packet_ts: float) -> None:
        """An open session in the table may go idle from `packet_ts` on."""
        if packet_ts < self._idle_floor:
            self._idle_floor = packet_ts

    def _closes(self, flow: Flow, ts: float, reason: CloseReason) -> None:
        """`flow` ended by FIN or RST (or its exporter) at packet time `ts`: it lingers for
        late packets until tcp_linger has passed."""
        flow.closed = True
        flow.close_ts = ts
        flow.close_reason = reason
        self._lingers(flow)

    def _lingers(self, flow: Flow) -> None:
        """`flow` was closed: it ends once packet time is past its linger."""
        second = math.floor(flow.close_ts + self._linger_s)
        in_second = self._lingering.get(second)
        if in_second is None:
            self._lingering[second] = [flow]
        else:
            in_second.append(flow)

    def resume(self, e: SessionEvent) -> None:
        """Continue an ongoing session from its last stored snapshot (after a restart).

        Later packets on its 5-tuple within the idle timeout add to the same session and row.
        """
        key, initiator_is_a = keyed(
            e.family,
            int(e.proto),
            addr_int(e.src_addr),
            e.src_port,
            addr_int(e.dst_addr),
            e.dst_port,
        )
        payload_known = e.payload_bytes_tx is not None
        # a session of flow records comes back as one, whichever table resumes it
        of_records = not payload_known or e.estimated or e.incomplete
        flow = (RecordFlow if of_records else self.flow_class)(
            key,
            e.session_id.int,
            initiator_is_a,
            e.started_ts,
            e.midstream,
            e.attribution,
            e.interface,
        )
        flow.last_ts = e.last_ts
        flow.checkpoint_ts = e.last_ts
        if isinstance(flow, RecordFlow):
            flow.payload_known = payload_known
            flow.estimated = e.estimated
            flow.incomplete = e.incomplete
        if e.day_marks:
            self._day_marks[flow] = [
                (day, bytes_tx, bytes_rx, packets_tx, packets_rx)
                if initiator_is_a
                else (day, bytes_rx, bytes_tx, packets_rx, packets_tx)
                for day, bytes_tx, bytes_rx, packets_tx, packets_rx in e.day_marks
            ]
        # a resumed session marks its day when the next packet comes on a later one
        self._day = max(self._day if self._day is not None else -1, day_of(e.last_ts))
        payload_tx = e.payload_bytes_tx or 0
        payload_rx = e.payload_bytes_rx or 0
        if initiator_is_a:  # tx was sent by A
            flow.packets_a = e.packets_tx
            flow.bytes_a = e.bytes_tx
            flow.payload_a = payload_tx
            flow.packets_b = e.packets_rx
            flow.bytes_b = e.bytes_rx
            flow.payload_b = payload_rx
        else:
            flow.packets_a = e.packets_rx
            flow.bytes_a = e.bytes_rx
            flow.payload_a = payload_rx
            flow.packets_b = e.packets_tx
            flow.bytes_b = e.bytes_tx
            flow.payload_b = payload_tx
        t = self.timeouts
        flow.idle_s = t.tcp_idle_s if e.proto == IpProto.TCP else t.udp_idle_s
        self._flows[flow.key] = flow
        self._opened_in_order(e.started_ts)
        self._may_go_idle_at(flow.last_ts + flow.idle_s)
        if self.observer is not None:
            self.observer.opened(flow, resumed=True)

    def checkpoint(self) -> list[SessionEvent]:
        """Snapshots of the open sessions that changed since their last checkpoint.

        A session already closed (FIN or RST, lingering for late packets) is left out when it
        ends before the next checkpoint is due (`closed_hold_s()` within [timeouts]
        checkpoint): its closing event writes it within one checkpoint interval of its last
        packet, as a checkpoint would, and a session-heavy gateway does not write each of its
        short sessions twice (issue 21)."""
        skip_closed = self.closed_hold_s() <= self.timeouts.checkpoint_s
        out = []
        for flow in self._flows.values():
            if flow.last_ts != flow.checkpoint_ts and not (skip_closed and flow.closed):
                flow.checkpoint_ts = flow.last_ts
                out.append(self._event(flow, EventKind.CHECKPOINT))
        return out

    def closed_hold_s(self) -> float:
        """The longest a closed session stays in the table after its last packet: its linger,
        plus a sweep interval until the sweep that ends it."""
        return self._linger_s + SWEEP_INTERVAL_S

    def suspend(self) -> list[SessionEvent]:
        """The service stops: end what has ended, checkpoint the rest to be resumed (issue 15).

        Sessions past their idle timeout close as idle, and sessions already closed by FIN or
        RST close now with that reason: their linger only waits for late packets, and saved
        as ongoing they would come back after a restart only to end as idle. The others are
        checkpointed (ongoing) if they changed since their last checkpoint.
        """
        out = self.advance(self._now, force=True)
        for flow in list(self._flows.values()):
            if flow.closed:
                self._finish(flow, flow.close_reason or CloseReason.FIN)
        self._lingering.clear()  # each of them ended
        return out + self._drain() + self.checkpoint()

    def close_all(self, reason: CloseReason) -> list[SessionEvent]:
        """End every session now (end of capture, shutdown).

        Sessions already past their idle timeout or linger close as idle/fin/rst first, so the
        reason never depends on when the last sweep ran.
        """
        out = []
        for part in self.close_all_in_parts(reason, len(self._flows) or 1):
            out += part
        return out

    def close_all_in_parts(self, reason: CloseReason, size: int) -> Iterator[list[SessionEvent]]:
        """close_all() as lists of events of at most about `size` sessions each, made as they
        are taken: an import ending with 200,000 open sessions need not hold an event of
        every one of them at once, nor a session once its event is made (issue 21)."""
        yield self.advance(self._now, force=True)
        # each part is taken from the table as it is closed, so that its sessions are freed
        # before the next part's events are made: a list of every session, held to the last
        # part, took the session-heavy import's peak to 255-266 MiB instead of 232-242
        self._lingering.clear()  # every session ends here
        flows = self._flows
        while flows:
            for flow in list(itertools.islice(flows.values(), size)):
                flow_reason = flow.close_reason if flow.closed and flow.close_reason else reason
                self._finish(flow, flow_reason)
            yield self._drain()

    # -- per batch -----------------------------------------------------------------------------

    def _process_keyed(self, batch: DecodedBatch, index: np.ndarray | None) -> None:
        """Account the packets `index` of `batch` (all when None), none a later fragment."""

        def pick(column: np.ndarray) -> np.ndarray:
            return column if index is None else column[index]

        ts, proto, family = pick(batch.ts), pick(batch.proto), pick(batch.family)
        src_hi, src_lo = pick(batch.src_hi), pick(batch.src_lo)
        dst_hi, dst_lo = pick(batch.dst_hi), pick(batch.dst_lo)
        sport, dport = pick(batch.sport), pick(batch.dport)
        count = len(ts)
        # A = the lower (address, port) endpoint, so both directions share one key
        src_is_a = (src_hi < dst_hi) | (
            (src_hi == dst_hi) & ((src_lo < dst_lo) | ((src_lo == dst_lo) & (sport <= dport)))
        )
        a_hi = np.where(src_is_a, src_hi, dst_hi)
        a_lo = np.where(src_is_a, src_lo, dst_lo)
        b_hi = np.where(src_is_a, dst_hi, src_hi)
        b_lo = np.where(src_is_a, dst_lo, src_lo)
        a_port = np.where(src_is_a, sport, dport)
        b_port = np.where(src_is_a, dport, sport)
        meta = (family << 40) | (proto << 32) | (a_port << 16) | b_port
        key_columns = (meta, a_hi, a_lo, b_hi, b_lo)
        key_hash = (a_lo * _M1) ^ (b_lo * _M2) ^ (a_hi * _M3) ^ (b_hi * _M1 * _M2)
        key_hash ^= meta.astype(np.uint64) * _M3
        key_hash ^= key_hash >> np.uint64(31)
        order = np.argsort(key_hash, kind="stable")
        sorted_hash = key_hash[order]
        starts_flow = np.empty(count, dtype=bool)  # the first packet of its flow in the batch
        starts_flow[0] = True
        np.not_equal(sorted_hash[1:], sorted_hash[:-1], out=starts_flow[1:])
        first_of_flow = np.flatnonzero(starts_flow)[np.cumsum(starts_flow) - 1]
        sorted_keys = [column[order] for column in key_columns]
        if any(np.any(column != column[first_of_flow]) for column in sorted_keys):
            # a 64-bit hash collision: sort exactly
            order = np.lexsort((np.arange(count), *reversed(key_columns)))
            sorted_keys = [column[order] for column in key_columns]
            starts_flow[1:] = np.any([column[1:] != column[:-1] for column in sorted_keys], axis=0)
        sorted_ts = ts[order]
        sorted_from_b = (~src_is_a[order]).astype(np.int64)  # 0 = sent by A, 1 = by B
        sorted_ip_bytes = pick(batch.ip_bytes)[order]
        sorted_payload = pick(batch.payload_bytes)[order]
        sorted_flags = pick(batch.flags)[order]
        sorted_frag = pick(batch.frag)[order]
        timeouts = self.timeouts
        sorted_tcp = ((sorted_keys[0] >> 32) & 0xFF) == 6
        special = starts_flow.copy()
        # A bare SYN may open a session on a closed 5-tuple, a FIN or RST may close one: they
        # run Python code. A SYN-ACK after its flow's first packet in the batch is counted as
        # any packet is, in its run (a session opens at its flow's first packet; issue 21).
        may_open_or_close = ((sorted_flags & (TCP_FIN | TCP_RST)) != 0) | (
            (sorted_flags & _SYN_MASK) == TCP_SYN
        )
        special |= sorted_tcp & may_open_or_close
        special |= sorted_frag == FRAG_FIRST
        idle_s = np.where(sorted_tcp[1:], timeouts.tcp_idle_s, timeouts.udp_idle_s)
        gap_s = sorted_ts[1:] - sorted_ts[:-1]
        special[1:] |= (gap_s > idle_s) | (gap_s < 0)  # idle gaps, and out-of-order times
        special_at = np.flatnonzero(special)
        # the plain packets after each special one, up to the next: [run_start, run_end)
        run_end = np.append(special_at[1:], count)
        run_start = special_at + 1

        def run_sums(sent: np.ndarray) -> tuple[list[int], list[int], list[int]]:
            """Packets, IP bytes and payload bytes of each run's packets where `sent`."""
            sums = []
            for values in (
                sent,
                np.where(sent, sorted_ip_bytes, 0),
                np.where(sent, sorted_payload, 0),
            ):
                cumulative = np.zeros(count + 1, dtype=np.int64)
                np.cumsum(values, out=cumulative[1:])
                sums.append((cumulative[run_end] - cumulative[run_start]).tolist())
            return sums[0], sums[1], sums[2]

        run_packets_a, run_bytes_a, run_payload_a = run_sums(sorted_from_b == 0)
        run_packets_b, run_bytes_b, run_payload_b = run_sums(sorted_from_b == 1)
        run_lengths = (run_end - run_start).tolist()
        run_last_ts = sorted_ts[run_end - 1].tolist()
        special_positions = special_at.tolist()
        special_starts_flow = starts_flow[special_at].tolist()
        flow_starts = special_at[starts_flow[special_at]]
        # each flow's five key words side by side, so that each row's 40 bytes are its key
        key_matrix = np.stack(
            [column[flow_starts].astype(np.uint64, copy=False) for column in sorted_keys], axis=1
        )
        # (numpy's stubs allow tuples, for structured voids; an unstructured void row is bytes)
        keys = iter(cast(list[FlowKey], key_matrix.view(_KEY_DTYPE).ravel().tolist()))
        special_ts = sorted_ts[special_at].tolist()
        special_from_b = sorted_from_b[special_at].tolist()
        special_ip_bytes = sorted_ip_bytes[special_at].tolist()
        special_payload = sorted_payload[special_at].tolist()
        special_flags = sorted_flags[special_at].tolist()
        special_frag = sorted_frag[special_at].tolist()
        fragment_columns = None
        if FRAG_FIRST in special_frag:
            fragment_columns = (
                pick(batch.frag_id)[order],
                src_hi[order],
                src_lo[order],
                dst_hi[order],
                dst_lo[order],
            )

        flows = self._flows
        packet = self._packet
        interface = batch.interface
        linger_s = self._linger_s
        flow: Flow | None = None
        key: FlowKey = bytes(KEY_BYTES)
        for j in range(len(special_positions)):
            if special_starts_flow[j]:
                key = next(keys)
                flow = flows.get(key)
            flow = packet(
                flow,
                key,
                special_ts[j],
                special_from_b[j],
                special_ip_bytes[j],
                special_payload[j],
                special_flags[j],
                interface,
            )
            if special_frag[j] == FRAG_FIRST and fragment_columns is not None:
                position = special_positions[j]
                key_meta = key_words(key)[0]
                fragment_key = (
                    key_meta >> 40,
                    (key_meta >> 32) & 0xFF,
                    *(int(column[position]) for column in fragment_columns),
                )
                if len(self._frags) >= self.max_sessions:  # the oldest first fragments go
                    for old in list(itertools.islice(self._frags, self._evict_count())):
                        del self._frags[old]
                self._frags[fragment_key] = (flow, special_from_b[j], special_ts[j])
            run_length = run_lengths[j]
            if not run_length:
                continue
            if flow.closed and run_last_ts[j] > flow.close_ts + linger_s:
                # lingering after FIN/RST, and a packet of the run comes after the linger: it
                # ends the session, and opens another. (A run holds no SYN, FIN or RST, and its
                # times never go back, so a run within the linger is counted whole below.)
                first = special_positions[j] + 1
                for position in range(first, first + run_length):
                    flow = packet(
                        flow,
                        key,
                        float(sorted_ts[position]),
                        int(sorted_from_b[position]),
                        int(sorted_ip_bytes[position]),
                        int(sorted_payload[position]),
                        int(sorted_flags[position]),
                        interface,
                    )
            else:
                flow.packets_a += run_packets_a[j]
                flow.bytes_a += run_bytes_a[j]
                flow.payload_a += run_payload_a[j]
                flow.packets_b += run_packets_b[j]
                flow.bytes_b += run_bytes_b[j]
                flow.payload_b += run_payload_b[j]
                if run_last_ts[j] > flow.last_ts:  # runs are in time order, may follow a later one
                    flow.last_ts = run_last_ts[j]

    def _packet(
        self,
        flow: Flow | None,
        key: FlowKey,
        ts: float,
        from_b: int,
        ip_bytes: int,
        payload_bytes: int,
        tcp_flags: int,
        interface: str,
    ) -> Flow:
        """Account one packet that may open or close a session; returns its session."""
        if flow is not None:
            if flow.closed:
                # RFC 793: a SYN on a closed 5-tuple opens a new session (port reuse)
                if ts > flow.close_ts + self._linger_s or (tcp_flags & _SYN_MASK) == TCP_SYN:
                    self._finish(flow, flow.close_reason or CloseReason.FIN)
                    flow = None
            elif ts - flow.last_ts > flow.idle_s:
                self._finish(flow, CloseReason.IDLE)
                flow = None
        if flow is None:
            flow = self._open(key, ts, from_b, tcp_flags, interface)
        if from_b:
            flow.packets_b += 1
            flow.bytes_b += ip_bytes
            flow.payload_b += payload_bytes
        else:
            flow.packets_a += 1
            flow.bytes_a += ip_bytes
            flow.payload_a += payload_bytes
        if ts > flow.last_ts:
            flow.last_ts = ts
        if tcp_flags & (TCP_FIN | TCP_RST):
            if tcp_flags & TCP_FIN:
                flow.fin_senders |= 1 << from_b
            if not flow.closed and (tcp_flags & TCP_RST or flow.fin_senders == 3):
                self._closes(flow, ts, CloseReason.RST if tcp_flags & TCP_RST else CloseReason.FIN)
        return flow

    def _open(self, key: FlowKey, ts: float, from_b: int, tcp_flags: int, interface: str) -> Flow:
        """A new session of `key`, opened by a packet sent by B when `from_b`, else by A."""
        family, proto, a_addr, a_port, b_addr, b_port = unpack_key(key)
        sent_by_a = from_b == 0
        if proto == 6 and tcp_flags & TCP_SYN:
            syn_ack = bool(tcp_flags & TCP_ACK)
            initiator_is_a = sent_by_a != syn_ack  # a SYN-ACK comes from the responder
            midstream = syn_ack  # a SYN-ACK first: the SYN was missed
        else:
            sender, receiver = (a_addr, b_addr) if sent_by_a else (b_addr, a_addr)
            # prefer the side inside a client's tunnel addresses as the initiator
            flip = self._is_client(family, receiver) and not self._is_client(family, sender)
            initiator_is_a = sent_by_a != flip
            midstream = flip or proto == 6
        if initiator_is_a:
            initiator, responder, responder_port = a_addr, b_addr, b_port
        else:
            initiator, responder, responder_port = b_addr, a_addr, a_port
        attribution = self._attribute(family, initiator, responder, responder_port, _PROTOS[proto])
        if len(self._flows) >= self.max_sessions:
            self._make_room(ts)
        session_int = self.ids.new(ts)
        flow = self.flow_class(
            key, session_int, initiator_is_a, ts, midstream, attribution, interface
        )
        flow.idle_s = self.timeouts.tcp_idle_s if proto == 6 else self.timeouts.udp_idle_s
        self._flows[key] = flow
        self._opened_in_order(ts)
        self._may_go_idle_at(ts + flow.idle_s)
        self.stats.sessions_opened += 1
        if not attribution.attributed:
            self.stats.unattributed_sessions += 1
        if self.observer is not None:
            self.observer.opened(flow, resumed=False)
        if self._emit_opened:
            self._opened.append(flow)
        return flow

    def _opened_in_order(self, started_ts: float) -> None:
        """A session starting at `started_ts` was added to the table, after all it holds."""
        if started_ts >= self._latest_start:
            self._latest_start = started_ts
        elif self._latest_start - started_ts > self._open_order_slack:
            self._open_order_slack = self._latest_start - started_ts

    def _process_later_fragments(self, batch: DecodedBatch, index: np.ndarray) -> None:
        """Fragments after the first carry no ports: account them through their first fragment."""
        columns = [
            column[index].tolist()
            for column in (
                batch.family,
                batch.proto,
                batch.frag_id,
                batch.src_hi,
                batch.src_lo,
                batch.dst_hi,
                batch.dst_lo,
                batch.ip_bytes,
                batch.payload_bytes,
                batch.ts,
            )
        ]
        for (
            family,
            proto,
            frag_id,
            src_hi,
            src_lo,
            dst_hi,
            dst_lo,
            ip_bytes,
            payload_bytes,
            ts,
        ) in zip(*columns, strict=True):
            entry = self._frags.get((family, proto, frag_id, src_hi, src_lo, dst_hi, dst_lo))
            if entry is None or self._flows.get(entry[0].key) is not entry[0]:  # it has ended
                self.stats.fragments_unattributed += 1
                self.stats.fragment_bytes_unattributed += ip_bytes
                continue
            flow, from_b, _first_ts = entry
            if from_b:
                flow.packets_b += 1
                flow.bytes_b += ip_bytes
                flow.payload_b += payload_bytes
            else:
                flow.packets_a += 1
                flow.bytes_a += ip_bytes
                flow.payload_a += payload_bytes
            flow.last_ts = max(flow.last_ts, ts)

    def _evict_count(self) -> int:
        return max(1, self.max_sessions // EVICT_SHARE)

    def _make_room(self, ts: float) -> None:
        """The table holds max_sessions: end the sessions that have ended by packet time `ts`
        (idle, or lingering past tcp_linger), and if that frees less than 1/EVICT_SHARE of the
        table, end the least recently active ones until it has, as `evicted`.

        Nothing is lost: an evicted session is stored with its counters so far, and a later
        packet of its 5-tuple opens a new session. One scan of the table per 1/EVICT_SHARE of
        it keeps a flood of new flows at a constant cost per flow.
        """
        self.stats.table_full += 1
        self._end_expired(ts)
        wanted = self.max_sessions - self._evict_count()
        excess = len(self._flows) - wanted
        if excess <= 0:
            return
        for flow in self._least_recently_active(excess):
            self._finish(flow, CloseReason.EVICTED)
        now = time.monotonic()
        if now - self._full_logged_at >= FULL_LOG_INTERVAL_S:
            self._full_logged_at = now
            log.warning(
                "flow table full (%d open sessions, [service] max_sessions): ended the %d least"
                " recently active as evicted (logged once a minute; counted in closed by reason)",
                self.max_sessions,
                excess,
            )

    def _least_recently_active(self, count: int) -> list[Flow]:
        """The `count` open sessions with the oldest last packet, oldest first; ties in the
        order they opened.

        Reading every session's last packet time took 42 ms of a full table of 262,144,
        spread through memory (issue 21). The table holds them in the order they opened, and
        a session's last packet is never before its start: so they are read in chunks in that
        order, keeping the `count` oldest so far, until one starts more than
        `_open_order_slack` after the newest of those. No session opened after it can be
        older. Where starts may move (`starts_stay` False), every session is read.
        """
        flows = self._flows
        if not self.starts_stay or count >= len(flows):
            return _least_recently_active(list(flows.values()), count)
        # oldest first, ties in opening order: chunks are appended behind them, so two of one
        # last packet time stay in the order they opened
        oldest: list[Flow] = []
        stop_after = float("inf")  # a session starting after this ends the read
        in_order = iter(flows.values())
        chunk_size = max(count, LRU_CHUNK)
        while chunk := list(itertools.islice(in_order, chunk_size)):
            if len(oldest) >= count:
                starts = np.fromiter(
                    (flow.started_ts for flow in chunk), dtype=np.float64, count=len(chunk)
                )
                later = np.flatnonzero(starts > stop_after)
                if later.size:
                    oldest += chunk[: int(later[0])]
                    break
            oldest += chunk
            if len(oldest) >= count:
                oldest = _least_recently_active(oldest, count)
                stop_after = oldest[-1].last_ts + self._open_order_slack + LRU_MARGIN_S
        return _least_recently_active(oldest, count)

    # -- events --------------------------------------------------------------------------------

    def _finish(self, flow: Flow, reason: CloseReason) -> None:
        flow.close_reason = reason
        if self._flows.get(flow.key) is flow:
            del self._flows[flow.key]
        self._finished.append(flow)

    def _drain(self) -> list[SessionEvent]:
        out = []
        if self._opened:
            due = self._opened_due()
            out = [self._event(f, EventKind.OPENED) for f in due]
            for f in due:
                f.checkpoint_ts = f.last_ts
        if self._finished:
            for f in self._finished:
                self.stats.closed[str(f.close_reason)] += 1
                out.append(self._event(f, EventKind.CLOSED))
                if self._day_marks:
                    self._day_marks.pop(f, None)
            if self.observer is not None:
                self.observer.closed(self._finished)
            self._finished = []
        return out

    def _opened_due(self) -> list[Flow]:
        """The sessions whose opened event is due: every one opened since the last drain; with
        [timeouts] first_write, those that have been open that long in packet time and are
        neither ended nor written by a checkpoint since. One that ended sooner is written
        once, closed: serve wrote most short sessions twice, and the update of the opened
        row cost its writer more than the row itself (issue 21)."""
        opened = self._opened
        if self._first_write_s <= 0:
            due = list(opened)
            opened.clear()
            return due
        due_before = self._now - self._first_write_s
        flows = self._flows
        due = []
        while opened and opened[0].started_ts <= due_before:
            flow = opened.popleft()
            if flow.checkpoint_ts < 0 and flows.get(flow.key) is flow:
                due.append(flow)
        return due

    def _event(self, flow: Flow, kind: EventKind) -> SessionEvent:
        """The event of `kind` for `flow` as it stands.

        One or more per session, so it is lean: each address's text from `_address_text()`
        (the same clients and resources come back again and again: a dict lookup instead of
        inet_ntop, and their events share one string), and the event built positionally (a
        keyword call of SessionEvent's 26 fields costs 2.1 µs, positional 0.8 µs).
        """
        family, proto, a_addr, a_port, b_addr, b_port = unpack_key(flow.key)
        a_text = self._address_text(family, a_addr)
        b_text = self._address_text(family, b_addr)
        initiator_is_a = flow.initiator_is_a
        if initiator_is_a:
            src = a_addr
            sport = a_port
            dst = b_addr
            dport = b_port
            src_text = a_text
            dst_text = b_text
            packets_tx = flow.packets_a
            bytes_tx = flow.bytes_a
            payload_tx: int | None = flow.payload_a
            packets_rx = flow.packets_b
            bytes_rx = flow.bytes_b
            payload_rx: int | None = flow.payload_b
        else:
            src = b_addr
            sport = b_port
            dst = a_addr
            dport = a_port
            src_text = b_text
            dst_text = a_text
            packets_tx = flow.packets_b
            bytes_tx = flow.bytes_b
            payload_tx = flow.payload_b
            packets_rx = flow.packets_a
            bytes_rx = flow.bytes_a
            payload_rx = flow.payload_a
        if flow.community_id is None:
            flow.community_id = community_id(family, proto, src, sport, dst, dport)
        day_marks: tuple[DayMark, ...] = ()
        marks = self._day_marks.get(flow) if self._day_marks else None
        if marks is not None:
            day_marks = trimmed(
                tuple(
                    (day, bytes_a, bytes_b, packets_a, packets_b)
                    if initiator_is_a
                    else (day, bytes_b, bytes_a, packets_b, packets_a)
                    for day, bytes_a, bytes_b, packets_a, packets_b in marks
                ),
                (bytes_tx, bytes_rx, packets_tx, packets_rx),
            )
        closed = kind is _CLOSED
        if not flow.payload_known:
            payload_tx = None
            payload_rx = None
        # positionally, in SessionEvent's field order
        return SessionEvent(
            kind,
            uuid_of_int(flow.session_int),
            _PROTOS[proto],
            family,
            src_text,  # src_addr
            sport,
            dst_text,  # dst_addr
            dport,
            flow.started_ts,
            flow.last_ts,
            flow.last_ts if closed else None,  # ended_ts
            bytes_tx,
            bytes_rx,
            packets_tx,
            packets_rx,
            payload_tx,
            payload_rx,
            flow.close_reason if closed else None,
            flow.midstream,
            flow.community_id,
            flow.attribution,
            flow.interface,
            day_marks,
            flow.estimated,
            flow.incomplete,
            self.gateway,
        )

    def _address_text(self, family: int, address: int) -> str:
        """The text of `address` (an int of `family`), from the table's bounded cache."""
        texts = self._v4_texts if family == 4 else self._v6_texts
        text = texts.get(address)
        if text is None:
            if len(texts) >= ADDRESS_TEXTS_KEPT:
                texts.clear()  # cheaper than LRU bookkeeping; refills from the next sessions
            text = texts[address] = addr_text(family, address)
        return text


def _least_recently_active(flows: list[Flow], count: int) -> list[Flow]:
    """The `count` flows of `flows` with the oldest last packet, oldest first; ties in the
    order given (as sorted() would, at a third of heapq.nsmallest's cost on 262,144 flows)."""
    if count >= len(flows):
        return sorted(flows, key=lambda flow: flow.last_ts)
    last_seen = np.fromiter((flow.last_ts for flow in flows), dtype=np.float64, count=len(flows))
    cutoff = np.partition(last_seen, count - 1)[count - 1]  # the count-th oldest time
    older = np.flatnonzero(last_seen < cutoff)
    tied = np.flatnonzero(last_seen == cutoff)[: count - len(older)]
    chosen = np.concatenate((older, tied))
    chosen = chosen[np.argsort(last_seen[chosen], kind="stable")]
    return [flows[position] for position in chosen.tolist()]


def keyed(
    family: int, proto: int, src: int, src_port: int, dst: int, dst_port: int
) -> tuple[FlowKey, bool]:
    """The flow key of a conversation seen from `src` to `dst` (addresses as ints), and whether
    `src` is its endpoint A (the lower address and port), as the batch path keys packets."""
    if family == 6:
        src_hi = src >> 64
        src_lo = src & LO64
        dst_hi = dst >> 64
        dst_lo = dst & LO64
    else:
        src_hi = 0
        src_lo = src
        dst_hi = 0
        dst_lo = dst
    src_is_a = (src_hi, src_lo, src_port) <= (dst_hi, dst_lo, dst_port)
    if src_is_a:
        meta = (family << 40) | (proto << 32) | (src_port << 16) | dst_port
        return pack_key(meta, src_hi, src_lo, dst_hi, dst_lo), True
    meta = (family << 40) | (proto << 32) | (dst_port << 16) | src_port
    return pack_key(meta, dst_hi, dst_lo, src_hi, src_lo), False
