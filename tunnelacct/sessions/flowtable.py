"""Sessionizer: DecodedBatch -> session events, one session per 5-tuple and both directions.

Per batch, packets are grouped by flow with one vectorised sort. Only "special" packets run
Python code: the first packet of a flow in the batch, TCP packets carrying SYN/FIN/RST, first
fragments, and packets after an idle gap. The plain packets between two special ones are added
in one step from prefix sums, so bulk traffic costs a few array operations per batch.

Rules (issue 2): the initiator is the TCP SYN sender, else the first packet's sender, preferring
the side inside a client's tunnel addresses; tx = initiator->responder. TCP closes on FIN from
both sides or RST, after a linger that still counts late ACKs and retransmits; a SYN on a closed
5-tuple opens a new session (port reuse); idle timeouts run on packet time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tunnelacct.capture.decode import (
    FRAG_FIRST,
    FRAG_LATER,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    DecodedBatch,
)
from tunnelacct.config.model import Timeouts
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.metrics.tally import NO_STATS, KeyStats, TrafficTally
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.sessions.flowkey import (
    LO64,
    FlowKey,
    SessionIds,
    addr_int,
    addr_text,
    community_id,
    unpack_key,
)

log = logging.getLogger(__name__)

AttributeFn = Callable[[int, int, int, int, IpProto], Attribution]
IsClientFn = Callable[[int, int], bool]
SWEEP_INTERVAL_S = 1.0  # packet time between expiry sweeps
FRAGMENT_TIMEOUT_S = 60.0  # how long a first fragment vouches for the later ones
LATE_S = 1.0  # a packet this much older than one before it is counted late
EVICT_SHARE = 64  # a full table evicts 1/64 of max_sessions at once: one scan per that many opens
FULL_LOG_INTERVAL_S = 60.0  # a full table is logged at most once a minute
_M1, _M2, _M3 = (
    np.uint64(0x9E3779B97F4A7C15),
    np.uint64(0xBF58476D1CE4E5B9),
    np.uint64(0x94D049BB133111EB),
)
_SYN_MASK = TCP_SYN | TCP_ACK
_PROTOS = {int(p): p for p in IpProto}


class Flow:
    """Live state of one session; counters are per endpoint (0 = A, the lower endpoint)."""

    __slots__ = (
        "key", "sid", "init_a", "started_ts", "last_ts", "checkpoint_ts",
        "pk0", "pk1", "by0", "by1", "pl0", "pl1", "fins", "closed", "close_ts",
        "close_reason", "midstream", "attribution", "interface", "cid", "finished", "idle_s",
        "mstats", "mpk0", "mpk1", "mby0", "mby1",
    )  # fmt: skip

    def __init__(
        self, key: FlowKey, sid: uuid.UUID, init_a: bool, ts: float, midstream: bool,
        attribution: Attribution, interface: str,
    ) -> None:  # fmt: skip
        self.key = key
        self.sid = sid
        self.init_a = init_a
        self.started_ts = self.last_ts = ts
        self.checkpoint_ts = -1.0
        self.pk0 = self.pk1 = self.by0 = self.by1 = self.pl0 = self.pl1 = 0
        self.fins = 0
        self.closed = False
        self.close_ts = 0.0
        self.close_reason: CloseReason | None = None
        self.midstream = midstream
        self.attribution = attribution
        self.interface = interface
        self.cid: str | None = None
        self.finished = False
        self.idle_s = 0.0  # the protocol's idle timeout, set by the table
        # metrics: the flow's label set and the part of its counters already tallied
        self.mstats: KeyStats = NO_STATS
        self.mpk0 = self.mpk1 = self.mby0 = self.mby1 = 0


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

    def __init__(
        self,
        timeouts: Timeouts,
        *,
        attribute: AttributeFn,
        is_client: IsClientFn,
        ids: SessionIds | None = None,
        emit_opened: bool = False,
        tally: TrafficTally | None = None,
        max_sessions: int = 262_144,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, not {max_sessions}")
        self.timeouts = timeouts
        self.max_sessions = max_sessions
        self._full_logged_at = float("-inf")
        self.tally = tally
        self._linger_s = timeouts.tcp_linger_s
        self._attribute = attribute
        self._is_client = is_client
        # one issuer per table: ids never repeat, whatever the packets (issue 15)
        self.ids = ids if ids is not None else SessionIds()
        self._emit_opened = emit_opened
        self._flows: dict[FlowKey, Flow] = {}
        self._frags: dict[tuple[int, ...], tuple[Flow, int, float]] = {}
        self._finished: list[Flow] = []
        self._opened: list[Flow] = []
        self._now = float("-inf")
        self._last_sweep = float("-inf")
        self.stats = FlowStats()

    def __len__(self) -> int:
        return len(self._flows)

    def set_identity(self, attribute: AttributeFn, is_client: IsClientFn) -> None:
        """Use a new inventory for sessions opened from now on (open ones keep theirs)."""
        self._attribute, self._is_client = attribute, is_client

    @property
    def now_ts(self) -> float:
        """Latest packet (or ticker) time seen, epoch seconds."""
        return self._now

    def process(self, b: DecodedBatch) -> list[SessionEvent]:
        """Account one batch of packets; returns events for sessions opened or closed by it."""
        m = len(b)
        if m:
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
            self._now = max(self._now, float(b.ts.max()))
        return self.advance(self._now)

    def advance(self, now_ts: float, *, force: bool = False) -> list[SessionEvent]:
        """Expire sessions idle (or lingering after close) as of packet time `now_ts`.

        Sweeps run at most once per SWEEP_INTERVAL_S of packet time unless `force`: that only
        delays events, since a later packet on an expired session is checked on arrival.
        """
        self._now = max(self._now, now_ts)
        now = self._now
        if force or now - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = now
            t = self.timeouts
            for flow in list(self._flows.values()):
                if flow.closed:
                    if now > flow.close_ts + t.tcp_linger_s:
                        self._finish(flow, flow.close_reason or CloseReason.FIN)
                elif now - flow.last_ts > flow.idle_s:
                    self._finish(flow, CloseReason.IDLE)
            if self.tally is not None and self.tally.fold_due():
                self.tally.fold(self._flows.values())
            stale = [k for k, (_f, _d, ts) in self._frags.items() if now - ts > FRAGMENT_TIMEOUT_S]
            for k in stale:
                del self._frags[k]
        return self._drain()

    def resume(self, e: SessionEvent) -> None:
        """Continue an ongoing session from its last stored snapshot (after a restart).

        Later packets on its 5-tuple within the idle timeout add to the same session and row.
        """
        split = (lambda a: (a >> 64, a & LO64)) if e.family == 6 else (lambda a: (0, a))
        src, dst = addr_int(e.src_addr), addr_int(e.dst_addr)
        (s_hi, s_lo), (d_hi, d_lo) = split(src), split(dst)
        init_a = (s_hi, s_lo, e.src_port) <= (d_hi, d_lo, e.dst_port)
        a_hi, a_lo, a_port, b_hi, b_lo, b_port = (
            (s_hi, s_lo, e.src_port, d_hi, d_lo, e.dst_port) if init_a
            else (d_hi, d_lo, e.dst_port, s_hi, s_lo, e.src_port)
        )  # fmt: skip
        meta = (e.family << 40) | (int(e.proto) << 32) | (a_port << 16) | b_port
        flow = Flow((meta, a_hi, a_lo, b_hi, b_lo), e.session_id, init_a, e.started_ts,
                    e.midstream, e.attribution, e.interface)  # fmt: skip
        flow.last_ts = flow.checkpoint_ts = e.last_ts
        tx, rx = (e.packets_tx, e.bytes_tx, e.payload_bytes_tx), (
            e.packets_rx, e.bytes_rx, e.payload_bytes_rx)  # fmt: skip
        (flow.pk0, flow.by0, flow.pl0), (flow.pk1, flow.by1, flow.pl1) = (
            (tx, rx) if init_a else (rx, tx)
        )
        t = self.timeouts
        flow.idle_s = t.tcp_idle_s if e.proto == IpProto.TCP else t.udp_idle_s
        self._flows[flow.key] = flow
        if self.tally is not None:  # the traffic before the restart was tallied back then
            flow.mpk0, flow.mpk1, flow.mby0, flow.mby1 = flow.pk0, flow.pk1, flow.by0, flow.by1
            flow.mstats = self.tally.opened(e.attribution, e.proto, resumed=True)

    def checkpoint(self) -> list[SessionEvent]:
        """Snapshots of the open sessions that changed since their last checkpoint."""
        out = []
        for flow in self._flows.values():
            if flow.last_ts != flow.checkpoint_ts:
                flow.checkpoint_ts = flow.last_ts
                out.append(self._event(flow, EventKind.CHECKPOINT))
        return out

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
        return out + self._drain() + self.checkpoint()

    def close_all(self, reason: CloseReason) -> list[SessionEvent]:
        """End every session now (end of capture, shutdown).

        Sessions already past their idle timeout or linger close as idle/fin/rst first, so the
        reason never depends on when the last sweep ran.
        """
        out = self.advance(self._now, force=True)
        for flow in list(self._flows.values()):
            self._finish(flow, flow.close_reason if flow.closed and flow.close_reason else reason)
        return out + self._drain()

    # -- per batch -----------------------------------------------------------------------------

    def _process_keyed(self, b: DecodedBatch, idx: np.ndarray | None) -> None:
        def pick(a: np.ndarray) -> np.ndarray:
            return a if idx is None else a[idx]

        ts, proto, fam = pick(b.ts), pick(b.proto), pick(b.family)
        s_hi, s_lo, d_hi, d_lo = pick(b.src_hi), pick(b.src_lo), pick(b.dst_hi), pick(b.dst_lo)
        sport, dport = pick(b.sport), pick(b.dport)
        m = len(ts)
        # A = the lower (address, port) endpoint, so both directions share one key
        a_src = (s_hi < d_hi) | (
            (s_hi == d_hi) & ((s_lo < d_lo) | ((s_lo == d_lo) & (sport <= dport)))
        )
        a_hi, a_lo = np.where(a_src, s_hi, d_hi), np.where(a_src, s_lo, d_lo)
        b_hi, b_lo = np.where(a_src, d_hi, s_hi), np.where(a_src, d_lo, s_lo)
        a_p, b_p = np.where(a_src, sport, dport), np.where(a_src, dport, sport)
        meta = (fam << 40) | (proto << 32) | (a_p << 16) | b_p
        cols = (meta, a_hi, a_lo, b_hi, b_lo)
        h = (a_lo * _M1) ^ (b_lo * _M2) ^ (a_hi * _M3) ^ (b_hi * _M1 * _M2)
        h ^= meta.astype(np.uint64) * _M3
        h ^= h >> np.uint64(31)
        order = np.argsort(h, kind="stable")
        hs = h[order]
        start = np.empty(m, dtype=bool)
        start[0] = True
        np.not_equal(hs[1:], hs[:-1], out=start[1:])
        rep = np.flatnonzero(start)[np.cumsum(start) - 1]
        s_cols = [c[order] for c in cols]
        if any(np.any(c != c[rep]) for c in s_cols):  # a 64-bit hash collision: sort exactly
            order = np.lexsort((np.arange(m), *reversed(cols)))
            s_cols = [c[order] for c in cols]
            start[1:] = np.any([c[1:] != c[:-1] for c in s_cols], axis=0)
        ts_s = ts[order]
        d_s = (~a_src[order]).astype(np.int64)  # 0 = sent by A
        ipb_s, pay_s = pick(b.ip_bytes)[order], pick(b.payload_bytes)[order]
        fl_s, frag_s = pick(b.flags)[order], pick(b.frag)[order]
        t = self.timeouts
        tcp_s = ((s_cols[0] >> 32) & 0xFF) == 6
        special = start.copy()
        special |= tcp_s & ((fl_s & (TCP_SYN | TCP_FIN | TCP_RST)) != 0)
        special |= frag_s == FRAG_FIRST
        thr = np.where(tcp_s[1:], t.tcp_idle_s, t.udp_idle_s)
        gap = ts_s[1:] - ts_s[:-1]
        special[1:] |= (gap > thr) | (gap < 0)  # idle gaps, and out-of-order times
        sp = np.flatnonzero(special)
        run_end = np.append(sp[1:], m)
        run_start = sp + 1

        def sums(w: np.ndarray) -> tuple[list[int], ...]:
            out = []
            for vals in (w, np.where(w, ipb_s, 0), np.where(w, pay_s, 0)):
                c = np.zeros(m + 1, dtype=np.int64)
                np.cumsum(vals, out=c[1:])
                out.append((c[run_end] - c[run_start]).tolist())
            return tuple(out)

        rpk0, rby0, rpl0 = sums(d_s == 0)
        rpk1, rby1, rpl1 = sums(d_s == 1)
        rlen = (run_end - run_start).tolist()
        rlast = ts_s[run_end - 1].tolist()
        sp_l = sp.tolist()
        st = start[sp].tolist()
        at_start = sp[start[sp]]
        keys = iter(list(zip(*(c[at_start].tolist() for c in s_cols), strict=True)))
        p_ts, p_d = ts_s[sp].tolist(), d_s[sp].tolist()
        p_ipb, p_pay, p_fl = ipb_s[sp].tolist(), pay_s[sp].tolist(), fl_s[sp].tolist()
        p_frag = frag_s[sp].tolist()
        frag_src = None
        if FRAG_FIRST in p_frag:
            fid = pick(b.frag_id)[order]
            src_hi_s, src_lo_s = s_hi[order], s_lo[order]
            dst_hi_s, dst_lo_s = d_hi[order], d_lo[order]
            frag_src = (fid, src_hi_s, src_lo_s, dst_hi_s, dst_lo_s)

        flows = self._flows
        packet = self._packet
        iface = b.interface
        flow: Flow | None = None
        key: FlowKey = (0, 0, 0, 0, 0)
        for j in range(len(sp_l)):
            if st[j]:
                key = next(keys)
                flow = flows.get(key)
            flow = packet(flow, key, p_ts[j], p_d[j], p_ipb[j], p_pay[j], p_fl[j], iface)
            if p_frag[j] == FRAG_FIRST and frag_src is not None:
                i = sp_l[j]
                fk = (key[0] >> 40, (key[0] >> 32) & 0xFF, *(int(a[i]) for a in frag_src))
                if len(self._frags) >= self.max_sessions:  # the oldest first fragments go
                    for old in list(itertools.islice(self._frags, self._evict_count())):
                        del self._frags[old]
                self._frags[fk] = (flow, p_d[j], p_ts[j])
            n = rlen[j]
            if not n:
                continue
            if flow.closed:  # lingering after FIN/RST: each packet may end it
                for i in range(sp_l[j] + 1, sp_l[j] + 1 + n):
                    flow = packet(
                        flow, key, float(ts_s[i]), int(d_s[i]), int(ipb_s[i]), int(pay_s[i]),
                        int(fl_s[i]), iface,
                    )  # fmt: skip
            else:
                flow.pk0 += rpk0[j]
                flow.by0 += rby0[j]
                flow.pl0 += rpl0[j]
                flow.pk1 += rpk1[j]
                flow.by1 += rby1[j]
                flow.pl1 += rpl1[j]
                if rlast[j] > flow.last_ts:  # runs are in time order, but may follow a later one
                    flow.last_ts = rlast[j]

    def _packet(
        self, flow: Flow | None, key: FlowKey, ts: float, d: int, ipb: int, pay: int, fl: int,
        iface: str,
    ) -> Flow:  # fmt: skip
        """Account one packet that may open or close a session; returns its session."""
        if flow is not None:
            if flow.closed:
                # RFC 793: a SYN on a closed 5-tuple opens a new session (port reuse)
                if ts > flow.close_ts + self._linger_s or (fl & _SYN_MASK) == TCP_SYN:
                    self._finish(flow, flow.close_reason or CloseReason.FIN)
                    flow = None
            elif ts - flow.last_ts > flow.idle_s:
                self._finish(flow, CloseReason.IDLE)
                flow = None
        if flow is None:
            flow = self._open(key, ts, d, fl, iface)
        if d:
            flow.pk1 += 1
            flow.by1 += ipb
            flow.pl1 += pay
        else:
            flow.pk0 += 1
            flow.by0 += ipb
            flow.pl0 += pay
        if ts > flow.last_ts:
            flow.last_ts = ts
        if fl & (TCP_FIN | TCP_RST):
            if fl & TCP_FIN:
                flow.fins |= 1 << d
            if not flow.closed and (fl & TCP_RST or flow.fins == 3):
                flow.closed = True
                flow.close_ts = ts
                flow.close_reason = CloseReason.RST if fl & TCP_RST else CloseReason.FIN
        return flow

    def _open(self, key: FlowKey, ts: float, d: int, fl: int, iface: str) -> Flow:
        family, proto, a, a_port, bb, b_port = unpack_key(key)
        sender_a = d == 0
        if proto == 6 and fl & TCP_SYN:
            init_a = sender_a if not fl & TCP_ACK else not sender_a
            midstream = bool(fl & TCP_ACK)  # a SYN-ACK first: the SYN was missed
        else:
            sender, receiver = (a, bb) if sender_a else (bb, a)
            flip = self._is_client(family, receiver) and not self._is_client(family, sender)
            init_a = sender_a != flip
            midstream = flip or proto == 6
        if init_a:
            initiator, responder, responder_port = a, bb, b_port
        else:
            initiator, responder, responder_port = bb, a, a_port
        attribution = self._attribute(family, initiator, responder, responder_port, _PROTOS[proto])
        if len(self._flows) >= self.max_sessions:
            self._make_room(ts)
        sid = self.ids.new(ts)
        flow = Flow(key, sid, init_a, ts, midstream, attribution, iface)
        flow.idle_s = self.timeouts.tcp_idle_s if proto == 6 else self.timeouts.udp_idle_s
        self._flows[key] = flow
        self.stats.sessions_opened += 1
        if not attribution.attributed:
            self.stats.unattributed_sessions += 1
        if self.tally is not None:
            flow.mstats = self.tally.opened(attribution, _PROTOS[proto])
        if self._emit_opened:
            self._opened.append(flow)
        return flow

    def _process_later_fragments(self, b: DecodedBatch, idx: np.ndarray) -> None:
        """Fragments after the first carry no ports: account them through their first fragment."""
        cols = [
            a[idx].tolist()
            for a in (
                b.family,
                b.proto,
                b.frag_id,
                b.src_hi,
                b.src_lo,
                b.dst_hi,
                b.dst_lo,
                b.ip_bytes,
                b.payload_bytes,
                b.ts,
            )
        ]
        for fam, proto, fid, sh, sl, dh, dl, ipb, pay, ts in zip(*cols, strict=True):
            entry = self._frags.get((fam, proto, fid, sh, sl, dh, dl))
            if entry is None or entry[0].finished:
                self.stats.fragments_unattributed += 1
                self.stats.fragment_bytes_unattributed += ipb
                continue
            flow, d, _ = entry
            if d:
                flow.pk1, flow.by1, flow.pl1 = flow.pk1 + 1, flow.by1 + ipb, flow.pl1 + pay
            else:
                flow.pk0, flow.by0, flow.pl0 = flow.pk0 + 1, flow.by0 + ipb, flow.pl0 + pay
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
        linger_s = self.timeouts.tcp_linger_s
        for flow in list(self._flows.values()):
            if flow.closed:
                if ts > flow.close_ts + linger_s:
                    self._finish(flow, flow.close_reason or CloseReason.FIN)
            elif ts - flow.last_ts > flow.idle_s:
                self._finish(flow, CloseReason.IDLE)
        wanted = self.max_sessions - self._evict_count()
        excess = len(self._flows) - wanted
        if excess <= 0:
            return
        oldest = heapq.nsmallest(excess, self._flows.values(), key=lambda flow: flow.last_ts)
        for flow in oldest:
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

    # -- events --------------------------------------------------------------------------------

    def _finish(self, flow: Flow, reason: CloseReason) -> None:
        flow.close_reason = reason
        if self._flows.get(flow.key) is flow:
            del self._flows[flow.key]
        self._finished.append(flow)

    def _drain(self) -> list[SessionEvent]:
        out = []
        if self._opened:
            out = [self._event(f, EventKind.OPENED) for f in self._opened if not f.finished]
            for f in self._opened:
                f.checkpoint_ts = f.last_ts
            self._opened = []
        if self._finished:
            for f in self._finished:
                f.finished = True
                self.stats.closed[str(f.close_reason)] += 1
                out.append(self._event(f, EventKind.CLOSED))
            if self.tally is not None:
                self.tally.closed(self._finished)
            self._finished = []
        return out

    def _event(self, f: Flow, kind: EventKind) -> SessionEvent:
        family, proto, a, a_port, bb, b_port = unpack_key(f.key)
        if f.init_a:
            src, sport, dst, dport = a, a_port, bb, b_port
            tx, rx = (f.pk0, f.by0, f.pl0), (f.pk1, f.by1, f.pl1)
        else:
            src, sport, dst, dport = bb, b_port, a, a_port
            tx, rx = (f.pk1, f.by1, f.pl1), (f.pk0, f.by0, f.pl0)
        if f.cid is None:
            f.cid = community_id(family, proto, src, sport, dst, dport)
        closed = kind is EventKind.CLOSED
        return SessionEvent(
            kind=kind,
            session_id=f.sid,
            proto=_PROTOS[proto],
            family=family,
            src_addr=addr_text(family, src),
            src_port=sport,
            dst_addr=addr_text(family, dst),
            dst_port=dport,
            started_ts=f.started_ts,
            last_ts=f.last_ts,
            ended_ts=f.last_ts if closed else None,
            packets_tx=tx[0],
            bytes_tx=tx[1],
            payload_bytes_tx=tx[2],
            packets_rx=rx[0],
            bytes_rx=rx[1],
            payload_bytes_rx=rx[2],
            close_reason=f.close_reason if closed else None,
            midstream=f.midstream,
            community_id=f.cid,
            attribution=f.attribution,
            interface=f.interface,
        )
