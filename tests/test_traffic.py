"""Traffic metrics: the flow engine's tallies, as Prometheus reads them from the collector."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Packet
from scapy.utils import rdpcap

from tests.helpers.pcapwrite import LINKTYPE_RAW, write_pcap
from tunnelacct.capture.batch import RawBatch
from tunnelacct.capture.decode import decode
from tunnelacct.capture.pcapfile import open_capture
from tunnelacct.config.load import load_config
from tunnelacct.config.model import CaptureConfig, Timeouts
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.ingest.pipeline import CapturePipeline
from tunnelacct.metrics.collectors import TrafficFigures, service_registry
from tunnelacct.metrics.tally import OVERFLOW, UNMATCHED, MetricLabels, TrafficTally
from tunnelacct.sessions.attribution import Inventory
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.sessions.flowtable import FlowTable

DATA = Path(__file__).parent / "data"
PCAP = DATA / "wg-small.pcap"
IPV6_HEADER_BYTES = 40
DEFAULT = Timeouts()
LONG = Timeouts(udp_idle_s=1e6, tcp_idle_s=1e6)  # nothing expires mid-test


def table_for(guard: MetricLabels, timeouts: Timeouts = DEFAULT) -> FlowTable:
    inventory = Inventory.from_config(load_config(DATA / "wg-small.toml"))
    return FlowTable(
        timeouts,
        attribute=inventory.attribute,
        is_client=inventory.is_client_address,
        observer=TrafficTally(guard, fold_every_s=0),
    )


def registry_of(table: FlowTable) -> CollectorRegistry:
    tally = table.observer
    assert isinstance(tally, TrafficTally)

    def figures() -> TrafficFigures:
        return TrafficFigures(tally.snapshot(), tally.guard, table.stats.unattributed_sessions)

    return service_registry(lambda: [], lambda: None, traffic=figures)


def ip_lengths(packets: Iterable[Packet]) -> int:
    """Independent oracle: the IP total length of every TCP/UDP packet, read by scapy."""
    total = 0
    for p in packets:
        if TCP in p or UDP in p:
            total += p[IP].len if IP in p else IPV6_HEADER_BYTES + p[IPv6].plen
    return total


def event_totals(events: Sequence[SessionEvent]) -> Counter[tuple[str, ...]]:
    """bytes/packets by (what, org, resource, protocol, direction) from closed session events."""
    out: Counter[tuple[str, ...]] = Counter()
    for e in events:
        labels = (e.attribution.org_id, e.attribution.resource_id or UNMATCHED, e.proto.label)
        out[("bytes", *labels, "tx")] += e.bytes_tx
        out[("bytes", *labels, "rx")] += e.bytes_rx
        out[("packets", *labels, "tx")] += e.packets_tx
        out[("packets", *labels, "rx")] += e.packets_rx
    return out


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name
    }


def test_metrics_equal_the_flow_engines_session_totals_after_a_capture(tmp_path: Path) -> None:
    table = table_for(MetricLabels())
    events: list[SessionEvent] = []
    for raw in open_capture(PCAP).batches():
        events += table.process(decode(raw))
    events += table.close_all(CloseReason.END_OF_CAPTURE)
    closed = [e for e in events if e.kind is EventKind.CLOSED]
    registry = registry_of(table)

    expected = event_totals(closed)
    assert len({k[1:4] for k in expected}) >= 3  # several orgs/resources: a real breakdown
    for (what, org, resource, protocol, direction), value in expected.items():
        labels = {"org": org, "resource": resource, "protocol": protocol, "direction": direction}
        assert registry.get_sample_value(f"tunnelacct_{what}_total", labels) == value, labels
    got = samples(registry, "tunnelacct_bytes_total")
    assert sum(got.values()) == ip_lengths(rdpcap(str(PCAP))) > 0
    assert len(got) == len([k for k in expected if k[0] == "bytes"])  # no stray label set

    reasons = Counter((e.attribution.org_id, e.proto.label, str(e.close_reason)) for e in closed)
    for (org, protocol, reason), n in reasons.items():
        got_n = sum(
            v
            for k, v in samples(registry, "tunnelacct_sessions_total").items()
            if dict(k).items() >= {"org": org, "protocol": protocol, "close_reason": reason}.items()
        )
        assert got_n == n
    assert set(samples(registry, "tunnelacct_sessions_active").values()) == {0.0}
    per_org = Counter((e.attribution.org_id, e.proto.label) for e in closed)
    for (org, protocol), n in per_org.items():
        labels = {"org": org, "protocol": protocol}
        assert registry.get_sample_value("tunnelacct_session_duration_seconds_count", labels) == n
        size = sum(
            e.bytes_tx + e.bytes_rx
            for e in closed
            if (e.attribution.org_id, e.proto.label) == (org, protocol)
        )
        assert registry.get_sample_value("tunnelacct_session_bytes_sum", labels) == size
        top = registry.get_sample_value("tunnelacct_session_bytes_bucket", {**labels, "le": "+Inf"})
        assert top == n
    unattributed = sum(1 for e in closed if not e.attribution.attributed)
    assert registry.get_sample_value("tunnelacct_unattributed_sessions_total") == unattributed


def halves() -> tuple[RawBatch, RawBatch]:
    """The capture's packets, cut in two halves."""
    (raw,) = list(open_capture(PCAP).batches())
    h = len(raw) // 2
    return (
        RawBatch(
            raw.buf,
            raw.offsets[:h],
            raw.caplens[:h],
            raw.wirelens[:h],
            raw.ts[:h],
            raw.linktypes[:h],
            raw.interface,
        ),
        RawBatch(
            raw.buf,
            raw.offsets[h:],
            raw.caplens[h:],
            raw.wirelens[h:],
            raw.ts[h:],
            raw.linktypes[h:],
            raw.interface,
        ),
    )


def test_traffic_is_counted_while_sessions_are_still_open() -> None:
    """Counters move with the traffic (once a sweep), not only when sessions close."""
    table = table_for(MetricLabels(), LONG)
    first, _ = halves()
    half = len(first)
    events = table.process(decode(first))
    registry = registry_of(table)
    table.advance(table.now_ts + 1.0)  # the next sweep folds what the open flows carried
    assert not [e for e in events if e.kind is EventKind.CLOSED]
    got = samples(registry, "tunnelacct_bytes_total")
    assert sum(got.values()) == ip_lengths(rdpcap(str(PCAP))[:half]) > 0
    assert sum(samples(registry, "tunnelacct_sessions_active").values()) == len(table) > 0
    assert sum(samples(registry, "tunnelacct_sessions_total").values()) == 0


def test_open_flows_are_folded_in_at_most_once_per_interval_of_the_clock() -> None:
    """A fast replay sweeps many times a second; folding each time would be wasted work."""
    clock = [100.0]
    tally = TrafficTally(MetricLabels(), fold_every_s=0.5, clock=lambda: clock[0])
    inventory = Inventory.from_config(load_config(DATA / "wg-small.toml"))
    table = FlowTable(
        LONG,
        attribute=inventory.attribute,
        is_client=inventory.is_client_address,
        observer=tally,
    )
    registry = registry_of(table)
    first, second = halves()
    table.process(decode(first))  # its sweep folds the first half
    packets = rdpcap(str(PCAP))
    assert sum(samples(registry, "tunnelacct_bytes_total").values()) == ip_lengths(
        packets[: len(first)]
    )
    table.process(decode(second))  # packet time moves on and sweeps, the clock does not
    table.advance(table.now_ts + 2.0)
    assert sum(samples(registry, "tunnelacct_bytes_total").values()) == ip_lengths(
        packets[: len(first)]
    )
    clock[0] += 0.5
    table.advance(table.now_ts + 2.0)
    assert sum(samples(registry, "tunnelacct_bytes_total").values()) == ip_lengths(
        rdpcap(str(PCAP))
    )


def test_configured_resources_show_zero_before_any_traffic() -> None:
    guard = MetricLabels()
    tally = TrafficTally(guard)
    tally.declare([guard.session_labels("acme", "web", IpProto.TCP, None)])
    figures = TrafficFigures(tally.snapshot(), guard, 0)
    registry = service_registry(lambda: [], lambda: None, traffic=lambda: figures)
    labels = {"org": "acme", "resource": "web", "protocol": "tcp"}
    assert registry.get_sample_value("tunnelacct_bytes_total", {**labels, "direction": "rx"}) == 0
    assert registry.get_sample_value("tunnelacct_sessions_active", labels) == 0


def many_sessions(tmp_path: Path, n: int) -> list[RawBatch]:
    """One UDP packet each from n client addresses to n resource addresses."""
    base_c, base_r = int(ipaddress.ip_address("100.64.0.0")), int(ipaddress.ip_address("10.0.0.0"))
    pkts = [
        (
            1_700_000_000 + i / n,
            bytes(
                IP(
                    src=str(ipaddress.ip_address(base_c + i)),
                    dst=str(ipaddress.ip_address(base_r + i)),
                )
                / UDP(sport=40000, dport=53)
                / (b"x" * (i % 50))
            ),
        )
        for i in range(n)
    ]
    path = write_pcap(tmp_path / "many.pcap", pkts, LINKTYPE_RAW)
    return list(open_capture(path).batches())


@pytest.mark.parametrize("client_labels", [False, True])
def test_ten_thousand_clients_and_resources_stay_within_the_series_cap(
    tmp_path: Path, client_labels: bool
) -> None:
    n, cap = 10_000, 500
    r0, c0 = int(ipaddress.ip_address("10.0.0.0")), int(ipaddress.ip_address("100.64.0.0"))

    def attribute(family: int, src: int, dst: int, dport: int, proto: IpProto) -> Attribution:
        return Attribution(
            org_id=f"org{(dst - r0) % 40}",
            client_id=f"client{src - c0}",
            resource_id=f"res{dst - r0}",
        )

    guard = MetricLabels(client_labels=client_labels, max_series=cap)
    table = FlowTable(
        Timeouts(),
        attribute=attribute,
        is_client=lambda f, a: False,
        observer=TrafficTally(guard, fold_every_s=0),
    )
    raw = many_sessions(tmp_path, n)
    total_ip = sum(int(b.ip_bytes.sum()) for b in map(decode, raw))
    for batch in raw:
        table.process(decode(batch))
    table.advance(table.now_ts + 1.0)
    registry = registry_of(table)

    def assert_capped() -> None:
        series = Counter(family.name for family in registry.collect() for _s in family.samples)
        assert series["tunnelacct_bytes"] > 0
        for name, count in series.items():
            assert count <= cap, f"{name}: {count} series"

    assert_capped()
    # nothing is lost: what did not fit is in the overflow series
    got = samples(registry, "tunnelacct_bytes_total")
    assert sum(got.values()) == total_ip
    overflow = {k: v for k, v in got.items() if ("resource", OVERFLOW) in k}
    assert sum(overflow.values()) > 0
    assert all(dict(k)["org"] == OVERFLOW for k in overflow)
    assert sum(samples(registry, "tunnelacct_sessions_active").values()) == n
    over = samples(registry, "tunnelacct_metrics_overflow_total")
    assert over[(("metric", "tunnelacct_bytes_total"),)] > 0
    table.close_all(CloseReason.SHUTDOWN)  # sessions_total and the histograms fill up too
    assert_capped()
    closed = samples(registry, "tunnelacct_sessions_total")
    assert sum(closed.values()) == n and len(closed) > cap // 2


def test_a_resumed_session_is_active_but_neither_opened_again_nor_counted_twice() -> None:
    """After a restart the stored counters were tallied by the previous process."""
    first, second = halves()
    before = table_for(MetricLabels(), LONG)
    before.process(decode(first))
    snapshots = before.checkpoint()
    assert snapshots
    after = table_for(MetricLabels(), LONG)
    for e in snapshots:
        after.resume(e)
    registry = registry_of(after)
    after.advance(after.now_ts + 1.0)
    assert sum(samples(registry, "tunnelacct_sessions_active").values()) == len(snapshots)
    assert sum(samples(registry, "tunnelacct_sessions_opened_total").values()) == 0
    assert sum(samples(registry, "tunnelacct_bytes_total").values()) == 0
    after.process(decode(second))
    after.close_all(CloseReason.SHUTDOWN)
    packets = rdpcap(str(PCAP))
    assert sum(samples(registry, "tunnelacct_bytes_total").values()) == ip_lengths(
        packets[len(first) :]
    )


def test_checkpoint_lag_is_the_age_of_the_newest_checkpoint_the_store_holds() -> None:
    now = [1000.0]
    inventory = Inventory.from_config(load_config(DATA / "wg-small.toml"))
    pipeline = CapturePipeline(
        CaptureConfig(pcap=str(PCAP)),
        LONG,
        attribute=inventory.attribute,
        is_client=inventory.is_client_address,
        queue_packets=1000,
        monotonic=lambda: now[0],
    )
    assert pipeline.checkpoint_lag_s(None) == 0.0  # nothing open: nothing to lose
    for raw in open_capture(PCAP).batches():
        pipeline.table.process(decode(raw))
    assert len(pipeline.table) > 0
    pipeline._checkpoints.extend([970.0, 980.0, 990.0])  # checkpoints taken at these times
    assert pipeline.checkpoint_lag_s(None) == 10.0  # all written: the newest one counts
    assert pipeline.checkpoint_lag_s(985.0) == 20.0  # the one at 990 still pending
    assert pipeline.checkpoint_lag_s(960.0) == 30.0  # none complete: at least the oldest's age
