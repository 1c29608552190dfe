"""Traffic tallies for metrics: what the flow engine carried, by bounded label sets.

A `TrafficTally` is a flow table's FlowObserver: the table never counts per packet for
metrics. The tally keeps, per flow, how much of its counters it has already reported; at the
expiry sweep (at most every FOLD_EVERY_S) it folds the difference of every changed flow in,
and the rest when the session closes. `collect()` reads the tallies on scrape.

Labels are bounded twice. They are only ever config values (org, resource and client ids) or
fixed vocabularies (protocol, direction, close reason), never an address, port or session. And a
`SeriesCap` per metric admits at most `max_series` series: a label set first seen when the
metric is full goes to the metric's overflow series (its free labels are all OVERFLOW), forever,
so a counter never moves between series.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunnelacct.config.model import MIN_SERIES
from tunnelacct.enums import CloseReason, IpProto
from tunnelacct.sessions.flowkey import key_proto

if TYPE_CHECKING:  # for annotations only: reading tallies (metrics, the API) needs no numpy
    from tunnelacct.sessions.flowtable import Flow

OVERFLOW = "_overflow"
UNMATCHED = "unmatched"  # the resource (or client) label of sessions that matched none
DIRECTIONS = ("tx", "rx")
DURATION_BUCKETS_S = (0.001, 0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 21600, 86400, 604800)
SIZE_BUCKETS_BYTES = (100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10)
PROTOCOLS = tuple(p.label for p in IpProto)
# keyed by protocol number: IpProto(number) costs an Enum call per session opened (issue 21)
_PROTO_LABEL = {int(p): p.label for p in IpProto}
CLOSE_REASONS = tuple(r.value for r in CloseReason)
# Open flows are folded in at most this often (wall clock): under the 1 s sweep interval, so a
# live capture, which sweeps about once a second, folds at every sweep.
FOLD_EVERY_S = 0.5

Labels = tuple[str, ...]


class SeriesCap:
    """Admits label sets to one metric until it holds `limit` series; thread-safe.

    `width` is the series one label set makes (2 for a label set counted per direction; the
    buckets plus _sum and _count of a histogram). `free` marks the labels that become OVERFLOW
    in the overflow series; the others (fixed vocabularies) keep their value, and room for
    every overflow series they can make is kept aside.
    """

    def __init__(self, limit: int, *, free: tuple[bool, ...], width: int = 1, fixed: int = 1):
        overflow_series = fixed * width
        self.limit = limit
        self._room = max(0, (limit - overflow_series) // width)  # own label sets
        self._free = free
        self._own: set[Labels] = set()
        self._lock = threading.Lock()
        self.overflowed = 0  # observations sent to the overflow series

    def admit(self, labels: Labels) -> Labels:
        """`labels`, or its overflow series' labels when the metric is full."""
        own = self._own
        if labels in own:
            return labels
        with self._lock:
            if labels in own or len(own) < self._room:
                own.add(labels)
                return labels
            self.overflowed += 1
        return tuple(OVERFLOW if f else v for v, f in zip(labels, self._free, strict=True))


@dataclass(frozen=True, slots=True)
class MetricLabels:
    """The label guard of one service: which labels traffic metrics carry, and their caps.

    Session labels are (org, resource, protocol), plus client when `client_labels` is on.
    """

    client_labels: bool = False
    max_series: int = 2000
    traffic: SeriesCap = field(init=False)  # bytes and packets: a session label set x direction
    sessions: SeriesCap = field(init=False)  # active and opened
    closed: SeriesCap = field(init=False)  # session labels, x close_reason
    histograms: SeriesCap = field(init=False)  # (org, protocol)

    def __post_init__(self) -> None:
        if self.max_series < MIN_SERIES:
            raise ValueError(f"max_series must be at least {MIN_SERIES}")
        free = (True, True, False) + ((True,) if self.client_labels else ())
        n = len(PROTOCOLS)
        set_ = object.__setattr__
        set_(self, "traffic", SeriesCap(self.max_series, free=free, width=2, fixed=n))
        set_(self, "sessions", SeriesCap(self.max_series, free=free, fixed=n))
        # a session label set makes one series per close reason
        set_(
            self, "closed", SeriesCap(self.max_series, free=free, width=len(CLOSE_REASONS), fixed=n)
        )
        width = len(max(DURATION_BUCKETS_S, SIZE_BUCKETS_BYTES, key=len)) + 3  # +Inf, sum, count
        set_(
            self, "histograms", SeriesCap(self.max_series, free=(True, False), width=width, fixed=n)
        )

    @property
    def session_label_names(self) -> tuple[str, ...]:
        return ("org", "resource", "protocol") + (("client",) if self.client_labels else ())

    def session_labels(
        self, org: str, resource: str | None, proto: IpProto, client: str | None
    ) -> Labels:
        """Raw session labels (before any cap)."""
        base = (org, resource or UNMATCHED, proto.label)
        return (*base, client or UNMATCHED) if self.client_labels else base


class Histogram:
    """Bucket counts (not cumulative; their total is the count) and sum of one label set."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last is +Inf
        self.sum = 0.0

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum


@dataclass(slots=True)
class TallySnapshot:
    """Copies of one or more tallies, merged (what collect() reads)."""

    traffic: dict[Labels, list[int]] = field(default_factory=dict)  # bytes tx, rx, packets tx, rx
    active: dict[Labels, int] = field(default_factory=dict)
    opened: dict[Labels, int] = field(default_factory=dict)
    closed: dict[Labels, int] = field(default_factory=dict)  # session labels + close reason
    duration: dict[Labels, Histogram] = field(default_factory=dict)  # (org, protocol)
    size: dict[Labels, Histogram] = field(default_factory=dict)

    def merge(self, other: TallySnapshot) -> None:
        for key, v in other.traffic.items():
            mine = self.traffic.setdefault(key, [0, 0, 0, 0])
            for i in range(4):
                mine[i] += v[i]
        for target, source in (
            (self.active, other.active),
            (self.opened, other.opened),
            (self.closed, other.closed),
        ):
            for key, n in source.items():
                target[key] = target.get(key, 0) + n
        for hists, theirs, bounds in (
            (self.duration, other.duration, DURATION_BUCKETS_S),
            (self.size, other.size, SIZE_BUCKETS_BYTES),
        ):
            for key, h in theirs.items():
                hists.setdefault(key, Histogram(len(bounds))).merge(h)


class KeyStats:
    """The series one session label set counts into, resolved once per label set.

    Each is the label set's own series, or an overflow series shared with others when that
    metric was full: the hot path adds to lists and never looks a label set up again.
    """

    __slots__ = ("traffic", "sessions", "closed", "duration", "size")

    def __init__(
        self,
        traffic: list[int],
        sessions: list[int],
        closed: list[int],
        duration: Histogram,
        size: Histogram,
    ) -> None:
        self.traffic = traffic  # bytes tx, rx, packets tx, rx
        self.sessions = sessions  # active, opened
        self.closed = closed  # per CLOSE_REASONS
        self.duration = duration
        self.size = size


class Tallied:
    """A flow's state in its tally (`Flow.observed`): its series, and how much of its counters
    is already counted in them."""

    __slots__ = ("stats", "packets_a", "packets_b", "bytes_a", "bytes_b")

    def __init__(self, stats: KeyStats) -> None:
        self.stats = stats
        self.packets_a = 0
        self.packets_b = 0
        self.bytes_a = 0
        self.bytes_b = 0


_REASONS = tuple(CloseReason)  # in CLOSE_REASONS order; identity tests beat Enum.__hash__
_LAST_REASON = len(_REASONS) - 1


class TrafficTally:
    """One flow table's aggregates: the table adds to them in its thread, collect() copies them.

    One thread writes (the flow table's), so counters need no lock; `_lock` guards the maps
    (a new label set) against a snapshot being copied at the same time.
    """

    def __init__(
        self,
        guard: MetricLabels,
        *,
        fold_every_s: float = FOLD_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.guard = guard
        self._fold_every_s = fold_every_s
        self._clock = clock
        self._next_fold = float("-inf")
        self._client_labels = guard.client_labels
        self._lock = threading.Lock()
        self._stats: dict[Labels, KeyStats] = {}  # raw session labels -> their series
        self._traffic: dict[Labels, list[int]] = {}
        self._sessions: dict[Labels, list[int]] = {}
        self._closed: dict[Labels, list[int]] = {}
        self._duration: dict[Labels, Histogram] = {}
        self._size: dict[Labels, Histogram] = {}

    def declare(self, session_labels: Iterable[Labels]) -> None:
        """Create label sets at zero (configured resources), so graphs show 0, not no data."""
        for raw in session_labels:
            self.stats_for(raw)

    def stats_for(self, raw: Labels) -> KeyStats:
        """The series of a raw session label set (admitted to each metric on first sight)."""
        ks = self._stats.get(raw)
        if ks is None:
            g = self.guard
            with self._lock:
                ks = self._stats[raw] = KeyStats(
                    self._traffic.setdefault(g.traffic.admit(raw), [0, 0, 0, 0]),
                    self._sessions.setdefault(g.sessions.admit(raw), [0, 0]),
                    self._closed.setdefault(g.closed.admit(raw), [0] * len(CLOSE_REASONS)),
                    self._duration.setdefault(
                        g.histograms.admit((raw[0], raw[2])), Histogram(len(DURATION_BUCKETS_S))
                    ),
                    self._size.setdefault(
                        g.histograms.admit((raw[0], raw[2])), Histogram(len(SIZE_BUCKETS_BYTES))
                    ),
                )
        return ks

    def opened(self, flow: Flow, *, resumed: bool) -> None:
        """A session opened (or resumed after a restart: active, not newly opened, and its
        traffic before the restart was tallied back then)."""
        attribution = flow.attribution
        proto = _PROTO_LABEL[key_proto(flow.key)]
        resource = attribution.resource_id or UNMATCHED
        raw: Labels = (
            (attribution.org_id, resource, proto, attribution.client_id or UNMATCHED)
            if self._client_labels
            else (attribution.org_id, resource, proto)
        )
        stats = self._stats.get(raw) or self.stats_for(raw)
        stats.sessions[0] += 1
        state = Tallied(stats)
        if resumed:
            state.packets_a = flow.packets_a
            state.packets_b = flow.packets_b
            state.bytes_a = flow.bytes_a
            state.bytes_b = flow.bytes_b
        else:
            stats.sessions[1] += 1
        flow.observed = state

    def swept(self, flows: Collection[Flow]) -> None:
        """An expiry sweep: fold the open sessions in, when a fold is due."""
        if self.fold_due():
            self.fold(flows)

    def fold_due(self) -> bool:
        """True at most once per `fold_every_s` of the clock (not of packet time): a replay
        sweeps many times a second, and Prometheus reads no more often than that anyway."""
        now = self._clock()
        if now < self._next_fold:
            return False
        self._next_fold = now + self._fold_every_s
        return True

    @staticmethod
    def fold(flows: Iterable[Flow]) -> None:
        """Tally what each flow carried since it was last folded (once a sweep, not per packet)."""
        for flow in flows:
            state = flow.observed
            assert isinstance(state, Tallied)
            if flow.packets_a != state.packets_a or flow.packets_b != state.packets_b:
                _count_traffic(flow, state)

    @staticmethod
    def closed(flows: Sequence[Flow]) -> None:
        """Sessions closed: the rest of their traffic, then counts and histograms."""
        duration_bounds, size_bounds, reasons = DURATION_BUCKETS_S, SIZE_BUCKETS_BYTES, _REASONS
        for flow in flows:
            state = flow.observed
            assert isinstance(state, Tallied)
            _count_traffic(flow, state)
            stats = state.stats
            stats.sessions[0] -= 1
            reason = flow.close_reason or CloseReason.FIN
            i = 0
            while reasons[i] is not reason and i < _LAST_REASON:  # members are singletons
                i += 1
            stats.closed[i] += 1
            duration_s = flow.last_ts - flow.started_ts
            size_bytes = flow.bytes_a + flow.bytes_b
            histogram = stats.duration
            histogram.counts[bisect.bisect_left(duration_bounds, duration_s)] += 1  # le: <= bound
            histogram.sum += duration_s
            histogram = stats.size
            histogram.counts[bisect.bisect_left(size_bounds, size_bytes)] += 1
            histogram.sum += size_bytes

    def snapshot(self) -> TallySnapshot:
        """A copy of every series."""
        out = TallySnapshot()
        with self._lock:
            out.traffic = {k: list(v) for k, v in self._traffic.items()}
            out.active = {k: v[0] for k, v in self._sessions.items()}
            out.opened = {k: v[1] for k, v in self._sessions.items()}
            out.closed = {
                (*k, r): n
                for k, v in self._closed.items()
                for r, n in zip(CLOSE_REASONS, v, strict=True)
            }
            for mine, theirs, bounds in (
                (out.duration, self._duration, DURATION_BUCKETS_S),
                (out.size, self._size, SIZE_BUCKETS_BYTES),
            ):
                for k, h in theirs.items():
                    mine.setdefault(k, Histogram(len(bounds))).merge(h)
        return out


def _count_traffic(flow: Flow, state: Tallied) -> None:
    """Add to the flow's series what it carried since `state` last counted it."""
    traffic = state.stats.traffic  # bytes tx, rx, packets tx, rx
    tx = 0 if flow.initiator_is_a else 1  # endpoint A sent tx when it initiated
    rx = 1 - tx
    traffic[tx] += flow.bytes_a - state.bytes_a
    traffic[rx] += flow.bytes_b - state.bytes_b
    traffic[2 + tx] += flow.packets_a - state.packets_a
    traffic[2 + rx] += flow.packets_b - state.packets_b
    state.packets_a = flow.packets_a
    state.packets_b = flow.packets_b
    state.bytes_a = flow.bytes_a
    state.bytes_b = flow.bytes_b
