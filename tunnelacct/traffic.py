"""Traffic tallies for metrics: what the flow engine carried, by bounded label sets.

The flow engine never counts per packet for metrics. Each flow remembers how much of its
counters it has already reported; about once a second (the expiry sweep) the flow table folds
the difference of every changed flow into its `TrafficTally`, and the rest when the session
closes. `collect()` reads the tallies on scrape.

Labels are bounded twice. They are only ever config values (org, resource and client ids) or
fixed vocabularies (protocol, direction, close reason), never an address, port or session. And a
`SeriesCap` per metric admits at most `max_series` series: a label set first seen when the
metric is full goes to the metric's overflow series (its free labels are all OVERFLOW), forever,
so a counter never moves between series.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tunnelacct.enums import CloseReason, IpProto

OVERFLOW = "_overflow"
UNMATCHED = "unmatched"  # the resource (or client) label of sessions that matched none
DIRECTIONS = ("tx", "rx")
DURATION_BUCKETS_S = (0.001, 0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 21600, 86400, 604800)
SIZE_BUCKETS_BYTES = (100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10)
PROTOCOLS = tuple(p.label for p in IpProto)
CLOSE_REASONS = tuple(r.value for r in CloseReason)
MIN_SERIES = 100  # room for the overflow series of every metric

Labels = tuple[str, ...]


class TalliedFlow(Protocol):
    """What a tally reads of a flow (flowtable.Flow): counters per endpoint, A = 0."""

    pk0: int
    pk1: int
    by0: int
    by1: int
    mpk0: int  # the part of pk0 already tallied, and so on
    mpk1: int
    mby0: int
    mby1: int
    mkey: Labels
    init_a: bool
    started_ts: float
    last_ts: float
    close_reason: CloseReason | None


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
    closed: SeriesCap = field(init=False)  # session labels + close_reason
    histograms: SeriesCap = field(init=False)  # (org, protocol)

    def __post_init__(self) -> None:
        if self.max_series < MIN_SERIES:
            raise ValueError(f"max_series must be at least {MIN_SERIES}")
        free = (True, True, False) + ((True,) if self.client_labels else ())
        n = len(PROTOCOLS)
        set_ = object.__setattr__
        set_(self, "traffic", SeriesCap(self.max_series, free=free, width=2, fixed=n))
        set_(self, "sessions", SeriesCap(self.max_series, free=free, fixed=n))
        set_(self, "closed", SeriesCap(self.max_series, free=(*free, False),
                                       fixed=n * len(CLOSE_REASONS)))  # fmt: skip
        width = len(max(DURATION_BUCKETS_S, SIZE_BUCKETS_BYTES, key=len)) + 3  # +Inf, sum, count
        set_(self, "histograms", SeriesCap(self.max_series, free=(True, False), width=width,
                                           fixed=n))  # fmt: skip

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
    """Bucket counts (not cumulative), sum and count of one label set."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last is +Inf
        self.sum = 0.0
        self.count = 0

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum
        self.count += other.count


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
        for target, source in ((self.active, other.active), (self.opened, other.opened),
                               (self.closed, other.closed)):  # fmt: skip
            for key, n in source.items():
                target[key] = target.get(key, 0) + n
        for hists, theirs, bounds in ((self.duration, other.duration, DURATION_BUCKETS_S),
                                      (self.size, other.size, SIZE_BUCKETS_BYTES)):  # fmt: skip
            for key, h in theirs.items():
                hists.setdefault(key, Histogram(len(bounds))).merge(h)


class TrafficTally:
    """One flow table's aggregates; the table writes them in its thread, collect() copies them.

    Writers hold `lock` around a whole fold (a sweep), so a snapshot never sees half of one.
    """

    def __init__(self, guard: MetricLabels) -> None:
        self.guard = guard
        self.lock = threading.Lock()
        self._data = TallySnapshot()

    def declare(self, session_labels: Iterable[Labels]) -> None:
        """Create label sets at zero (configured resources), so graphs show 0, not no data."""
        with self.lock:
            for raw in session_labels:
                key = self.guard.traffic.admit(raw)
                self._data.traffic.setdefault(key, [0, 0, 0, 0])
                self._data.active.setdefault(self.guard.sessions.admit(raw), 0)
                self._data.opened.setdefault(self.guard.sessions.admit(raw), 0)

    def key(self, org: str, resource: str | None, proto: IpProto, client: str | None) -> Labels:
        """The session label set a new flow is tallied under (raw: caps apply per metric)."""
        return self.guard.session_labels(org, resource, proto, client)

    def opened(self, raw: Labels, *, resumed: bool = False) -> None:
        """A session opened (or resumed after a restart: active, not newly opened)."""
        d, g = self._data, self.guard
        with self.lock:
            key = g.sessions.admit(raw)
            d.active[key] = d.active.get(key, 0) + 1
            if not resumed:
                d.opened[key] = d.opened.get(key, 0) + 1

    def fold(self, flows: Iterable[TalliedFlow]) -> None:
        """Tally what each flow carried since it was last folded (once a sweep, not per packet)."""
        traffic, admit = self._data.traffic, self.guard.traffic.admit
        with self.lock:
            for f in flows:
                pk0, pk1 = f.pk0, f.pk1
                if pk0 == f.mpk0 and pk1 == f.mpk1:
                    continue
                by0, by1 = f.by0, f.by1
                key = admit(f.mkey)
                v = traffic.get(key)
                if v is None:
                    v = traffic[key] = [0, 0, 0, 0]
                tx, rx = (0, 1) if f.init_a else (1, 0)  # endpoint A sent tx when it initiated
                v[tx] += by0 - f.mby0
                v[rx] += by1 - f.mby1
                v[2 + tx] += pk0 - f.mpk0
                v[2 + rx] += pk1 - f.mpk1
                f.mpk0, f.mpk1, f.mby0, f.mby1 = pk0, pk1, by0, by1

    def closed(self, flows: Sequence[TalliedFlow]) -> None:
        """Sessions closed: the rest of their traffic, then counts and histograms."""
        self.fold(flows)
        d, g = self._data, self.guard
        with self.lock:
            for f in flows:
                raw = f.mkey
                key = g.sessions.admit(raw)
                d.active[key] = d.active.get(key, 0) - 1
                reason = f.close_reason or CloseReason.FIN
                ckey = g.closed.admit((*raw, reason.value))
                d.closed[ckey] = d.closed.get(ckey, 0) + 1
                hkey = g.histograms.admit((raw[0], raw[2]))
                duration_s, size_bytes = f.last_ts - f.started_ts, f.by0 + f.by1
                for hists, bounds, value in ((d.duration, DURATION_BUCKETS_S, duration_s),
                                             (d.size, SIZE_BUCKETS_BYTES, size_bytes)):  # fmt: skip
                    h = hists.get(hkey)
                    if h is None:
                        h = hists[hkey] = Histogram(len(bounds))
                    h.counts[bisect.bisect_left(bounds, value)] += 1  # le: value <= bound
                    h.sum += value
                    h.count += 1

    def snapshot(self) -> TallySnapshot:
        """A deep copy, taken under the lock."""
        out = TallySnapshot()
        with self.lock:
            out.merge(self._data)
        return out
