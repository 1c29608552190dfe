"""Traffic tallies for metrics: what the flow engine carried, by bounded label sets.

The flow engine never counts per packet for metrics. Each flow remembers how much of its
counters it has already reported; at the expiry sweep (at most every FOLD_EVERY_S) the table
folds the difference of every changed flow into its `TrafficTally`, and the rest when the
session closes. `collect()` reads the tallies on scrape.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tunnelacct.config.model import MIN_SERIES
from tunnelacct.enums import CloseReason, IpProto
from tunnelacct.sessions.events import Attribution

OVERFLOW = "_overflow"
UNMATCHED = "unmatched"  # the resource (or client) label of sessions that matched none
DIRECTIONS = ("tx", "rx")
DURATION_BUCKETS_S = (0.001, 0.01, 0.1, 1, 10, 60, 300, 1800, 3600, 21600, 86400, 604800)
SIZE_BUCKETS_BYTES = (100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10)
PROTOCOLS = tuple(p.label for p in IpProto)
_PROTO_LABEL = {p: p.label for p in IpProto}
CLOSE_REASONS = tuple(r.value for r in CloseReason)
# Open flows are folded in at most this often (wall clock): under the 1 s sweep interval, so a
# live capture, which sweeps about once a second, folds at every sweep.
FOLD_EVERY_S = 0.5

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
    mstats: KeyStats
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
        set_(self, "closed", SeriesCap(self.max_series, free=free, width=len(CLOSE_REASONS),
                                       fixed=n))  # fmt: skip
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
        for target, source in ((self.active, other.active), (self.opened, other.opened),
                               (self.closed, other.closed)):  # fmt: skip
            for key, n in source.items():
                target[key] = target.get(key, 0) + n
        for hists, theirs, bounds in ((self.duration, other.duration, DURATION_BUCKETS_S),
                                      (self.size, other.size, SIZE_BUCKETS_BYTES)):  # fmt: skip
            for key, h in theirs.items():
                hists.setdefault(key, Histogram(len(bounds))).merge(h)


class KeyStats:
    """The series one session label set counts into, resolved once per label set.

    Each is the label set's own series, or an overflow series shared with others when that
    metric was full: the hot path adds to lists and never looks a label set up again.
    """

    __slots__ = ("traffic", "sessions", "closed", "duration", "size")

    def __init__(
        self, traffic: list[int], sessions: list[int], closed: list[int],
        duration: Histogram, size: Histogram,
    ) -> None:  # fmt: skip
        self.traffic = traffic  # bytes tx, rx, packets tx, rx
        self.sessions = sessions  # active, opened
        self.closed = closed  # per CLOSE_REASONS
        self.duration = duration
        self.size = size


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

    def opened(
        self, attribution: Attribution, proto: IpProto, *, resumed: bool = False
    ) -> KeyStats:
        """A session opened (or resumed after a restart: active, not newly opened)."""
        org, resource, client = attribution.org_id, attribution.resource_id, attribution.client_id
        raw: Labels = (
            (org, resource or UNMATCHED, _PROTO_LABEL[proto], client or UNMATCHED)
            if self._client_labels
            else (org, resource or UNMATCHED, _PROTO_LABEL[proto])
        )
        ks = self._stats.get(raw) or self.stats_for(raw)
        ks.sessions[0] += 1
        if not resumed:
            ks.sessions[1] += 1
        return ks

    def fold_due(self) -> bool:
        """True at most once per `fold_every_s` of the clock (not of packet time): a replay
        sweeps many times a second, and Prometheus reads no more often than that anyway."""
        now = self._clock()
        if now < self._next_fold:
            return False
        self._next_fold = now + self._fold_every_s
        return True

    @staticmethod
    def fold(flows: Iterable[TalliedFlow]) -> None:
        """Tally what each flow carried since it was last folded (once a sweep, not per packet)."""
        for f in flows:
            pk0, pk1 = f.pk0, f.pk1
            if pk0 == f.mpk0 and pk1 == f.mpk1:
                continue
            by0, by1 = f.by0, f.by1
            v = f.mstats.traffic
            tx, rx = (0, 1) if f.init_a else (1, 0)  # endpoint A sent tx when it initiated
            v[tx] += by0 - f.mby0
            v[rx] += by1 - f.mby1
            v[2 + tx] += pk0 - f.mpk0
            v[2 + rx] += pk1 - f.mpk1
            f.mpk0, f.mpk1, f.mby0, f.mby1 = pk0, pk1, by0, by1

    @staticmethod
    def closed(flows: Sequence[TalliedFlow]) -> None:
        """Sessions closed: the rest of their traffic, then counts and histograms."""
        dur_bounds, size_bounds, reasons = DURATION_BUCKETS_S, SIZE_BUCKETS_BYTES, _REASONS
        for f in flows:
            ks = f.mstats
            by0, by1 = f.by0, f.by1
            v = ks.traffic
            tx, rx = (0, 1) if f.init_a else (1, 0)
            v[tx] += by0 - f.mby0
            v[rx] += by1 - f.mby1
            v[2 + tx] += f.pk0 - f.mpk0
            v[2 + rx] += f.pk1 - f.mpk1
            f.mpk0, f.mpk1, f.mby0, f.mby1 = f.pk0, f.pk1, by0, by1
            ks.sessions[0] -= 1
            reason = f.close_reason or CloseReason.FIN
            i = 0
            while reasons[i] is not reason and i < _LAST_REASON:  # members are singletons
                i += 1
            ks.closed[i] += 1
            duration_s, size_bytes = f.last_ts - f.started_ts, by0 + by1
            h = ks.duration
            h.counts[bisect.bisect_left(dur_bounds, duration_s)] += 1  # le: value <= bound
            h.sum += duration_s
            h = ks.size
            h.counts[bisect.bisect_left(size_bounds, size_bytes)] += 1
            h.sum += size_bytes

    def snapshot(self) -> TallySnapshot:
        """A copy of every series."""
        out = TallySnapshot()
        with self._lock:
            out.traffic = {k: list(v) for k, v in self._traffic.items()}
            out.active = {k: v[0] for k, v in self._sessions.items()}
            out.opened = {k: v[1] for k, v in self._sessions.items()}
            out.closed = {(*k, r): n for k, v in self._closed.items()
                          for r, n in zip(CLOSE_REASONS, v, strict=True)}  # fmt: skip
            for mine, theirs, bounds in ((out.duration, self._duration, DURATION_BUCKETS_S),
                                         (out.size, self._size, SIZE_BUCKETS_BYTES)):  # fmt: skip
                for k, h in theirs.items():
                    mine.setdefault(k, Histogram(len(bounds))).merge(h)
        return out


# series that count nowhere: what flows of a table without a tally point at
NO_STATS = KeyStats([0] * 4, [0, 0], [0] * len(CLOSE_REASONS), Histogram(0), Histogram(0))
