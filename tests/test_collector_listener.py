"""The collector's UDP endpoints over real loopback sockets (issue 20, item 4).

Datagrams are NetFlow v5 built with scapy: the values scapy writes are the oracle for what the
callback receives. Counts are checked against what the test sent. Waits are on conditions with
generous timeouts, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
from scapy.all import raw
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

from tunnelacct.collector import FlowDecoder
from tunnelacct.collector.listener import (
    OTHER_SOURCES,
    RECEIVE_BUFFER_BYTES,
    AllowList,
    CollectorListener,
    CollectorListenError,
    DropReason,
    ExporterRule,
    RecordBatch,
)

EXPORT_SECS = 1_700_000_000
FAKE_NOW = 1_700_000_123.5
TIMEOUT_S = 10.0
LOOPBACK_V4 = ExporterRule(ipaddress.ip_network("127.0.0.0/8"), "lab-v4")
LOOPBACK_V6 = ExporterRule(ipaddress.ip_network("::1/128"), "lab-v6", sampling=10)
ELSEWHERE = ExporterRule(ipaddress.ip_network("192.0.2.0/24"), "branch-fw")


def v5_datagram(sequence: int = 0, src_port: int = 51000) -> bytes:
    """One NetFlow v5 datagram with one UDP record; `src_port` tells datagrams apart."""
    return raw(
        NetflowHeader(version=5)
        / NetflowHeaderV5(count=1, sysUptime=10000, unixSecs=EXPORT_SECS, flowSequence=sequence)
        / NetflowRecordV5(
            src="10.1.0.1",
            dst="10.2.0.2",
            dpkts=12,
            dOctets=3400,
            first=9000,
            last=9800,
            srcport=src_port,
            dstport=53,
            prot=17,
        )
    )


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` on the event loop until it holds; fail after TIMEOUT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextmanager
def sender(family: int = socket.AF_INET, source: str | None = None) -> Iterator[socket.socket]:
    """A UDP socket to send from, bound to `source` when given."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if source is not None:
            sock.bind((source, 0))
        yield sock
    finally:
        sock.close()


@asynccontextmanager
async def running(
    rules: list[ExporterRule],
    listen: list[tuple[str, int]] | None = None,
    **options: int,
) -> AsyncIterator[CollectorListener]:
    """An open listener with one run() task per endpoint; stopped and awaited on exit."""
    listener = CollectorListener(
        listen or [("127.0.0.1", 0)], AllowList(rules), clock=lambda: FAKE_NOW, **options
    )
    await listener.open()
    tasks = [asyncio.create_task(listener.run(endpoint)) for endpoint in listener.endpoints]
    try:
        yield listener
    finally:
        listener.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT_S)


def port_of(listener: CollectorListener, index: int = 0) -> int:
    return listener.endpoints[index].sockname[1]


# -- allow-list --------------------------------------------------------------------------------


def test_most_specific_rule_wins_and_mapped_sources_match_ipv4_rules() -> None:
    wide = ExporterRule(ipaddress.ip_network("192.0.2.0/24"), "wide")
    narrow = ExporterRule(ipaddress.ip_network("192.0.2.10/32"), "narrow")
    v6 = ExporterRule(ipaddress.ip_network("2001:db8::/32"), "v6")
    allow = AllowList([wide, narrow, v6])
    assert allow.match("192.0.2.10") is narrow
    assert allow.match("192.0.2.11") is wide
    assert allow.match("::ffff:192.0.2.10") is narrow
    assert allow.match("2001:db8::1") is v6
    assert allow.match("198.51.100.1") is None
    assert allow.match("not an address") is None
    assert AllowList([]).match("192.0.2.10") is None


# -- receiving ---------------------------------------------------------------------------------


async def test_allowed_v5_datagram_reaches_callback_with_scapy_values() -> None:
    batches: list[RecordBatch] = []
    payload = v5_datagram()
    async with running([LOOPBACK_V4]) as listener:
        decoder = FlowDecoder()
        drain = asyncio.create_task(listener.drain(decoder, batches.append))
        with sender() as sock:
            sock.sendto(payload, ("127.0.0.1", port_of(listener)))
            sender_port = sock.getsockname()[1]
        await wait_until(lambda: bool(batches), "the decoded records")
    await asyncio.wait_for(drain, TIMEOUT_S)
    [decoded] = batches[0]
    rule = decoded.rule
    records = decoded.records
    assert rule is LOOPBACK_V4
    [record] = records
    assert record.exporter == ("127.0.0.1", sender_port)
    assert (record.src_addr, record.dst_addr, record.src_port, record.dst_port) == (
        "10.1.0.1",
        "10.2.0.2",
        51000,
        53,
    )
    assert (record.protocol, record.octets, record.packets) == (17, 3400, 12)
    # First 9000 ms of uptime, header at uptime 10000 ms = EXPORT_SECS.
    assert record.start_ts == pytest.approx(EXPORT_SECS - 1.0)
    figures = listener.figures().exporters[("127.0.0.1", sender_port)]
    assert (figures.gateway, figures.datagrams, figures.received_bytes) == (
        "lab-v4",
        1,
        len(payload),
    )
    assert figures.dropped == {DropReason.QUEUE_OVERFLOW: 0}


async def test_ipv6_endpoint_receives_from_allowed_ipv6_source() -> None:
    batches: list[RecordBatch] = []
    async with running([LOOPBACK_V6], listen=[("::1", 0)]) as listener:
        drain = asyncio.create_task(listener.drain(FlowDecoder(), batches.append))
        with sender(socket.AF_INET6) as sock:
            sock.sendto(v5_datagram(), ("::1", port_of(listener)))
        await wait_until(lambda: bool(batches), "the decoded records")
    await asyncio.wait_for(drain, TIMEOUT_S)
    [decoded] = batches[0]
    rule = decoded.rule
    records = decoded.records
    assert rule.gateway == "lab-v6" and rule.sampling == 10
    assert records[0].exporter[0] == "::1"


async def test_dual_stack_endpoint_keys_ipv4_exporters_by_their_ipv4_address() -> None:
    async with running([LOOPBACK_V4], listen=[("::", 0)]) as listener:
        with sender() as sock:
            sock.sendto(v5_datagram(), ("127.0.0.1", port_of(listener)))
            exporter = ("127.0.0.1", sock.getsockname()[1])
        await wait_until(lambda: listener.queue.qsize() == 1, "the queued datagram")
        assert listener.queue.get_nowait().exporter == exporter
        assert set(listener.figures().exporters) == {exporter}


@pytest.mark.parametrize(
    ("rules", "family", "source"),
    [
        ([ELSEWHERE], socket.AF_INET, "127.0.0.1"),  # the allow-list excludes 127.0.0.1
        ([LOOPBACK_V4], socket.AF_INET6, "::1"),  # only an IPv4 rule; ::1 is not mapped
        ([], socket.AF_INET, "127.0.0.1"),  # an empty allow-list accepts nothing
    ],
    ids=["outside-allow-list", "ipv6-source-ipv4-rule", "empty-allow-list"],
)
async def test_source_outside_allow_list_is_counted_and_never_decoded(
    rules: list[ExporterRule], family: int, source: str
) -> None:
    decoder = FlowDecoder()
    batches: list[RecordBatch] = []
    listen = "::" if family == socket.AF_INET6 else "127.0.0.1"
    async with running(rules, listen=[(listen, 0)]) as listener:
        drain = asyncio.create_task(listener.drain(decoder, batches.append))
        with sender(family) as sock:
            for sequence in range(3):
                sock.sendto(v5_datagram(sequence), (source, port_of(listener)))
        await wait_until(
            lambda: listener.figures().not_allowed.get(source) == 3, "three not_allowed drops"
        )
    await asyncio.wait_for(drain, TIMEOUT_S)
    figures = listener.figures()
    assert figures.dropped[DropReason.NOT_ALLOWED] == 3
    assert figures.exporters == {}
    assert decoder.counters == {} and batches == []


async def test_not_allowed_sources_are_tracked_up_to_the_bound() -> None:
    async with running([ELSEWHERE], max_sources=2) as listener:
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"):
            with sender(source=source) as sock:
                sock.sendto(v5_datagram(), ("127.0.0.1", port_of(listener)))
        await wait_until(
            lambda: listener.figures().dropped[DropReason.NOT_ALLOWED] == 4, "four drops"
        )
        assert listener.figures().not_allowed == {
            "127.0.0.1": 1,
            "127.0.0.2": 1,
            OTHER_SOURCES: 2,
        }


async def test_full_queue_drops_and_counts_the_excess_exactly() -> None:
    sent = [v5_datagram(sequence, src_port=40000 + sequence) for sequence in range(10)]
    async with running([LOOPBACK_V4], max_queue=3) as listener:
        with sender() as sock:
            for payload in sent:
                sock.sendto(payload, ("127.0.0.1", port_of(listener)))
            exporter = ("127.0.0.1", sock.getsockname()[1])
        await wait_until(
            lambda: sum(f.datagrams for f in listener.figures().exporters.values()) == 10,
            "ten received datagrams",
        )
        figures = listener.figures()
        assert figures.queue_depth == 3 and figures.queue_max == 3
        assert figures.exporters[exporter].dropped == {DropReason.QUEUE_OVERFLOW: 7}
        assert figures.dropped == {DropReason.NOT_ALLOWED: 0, DropReason.QUEUE_OVERFLOW: 7}
        queued = [listener.queue.get_nowait() for _index in range(3)]
    # Loopback keeps order: the first three sent are the ones queued, stamped by the clock.
    assert [item.payload for item in queued] == sent[:3]
    assert {(item.exporter, item.rule, item.received_ts) for item in queued} == {
        (exporter, LOOPBACK_V4, FAKE_NOW)
    }


async def test_malformed_datagrams_are_counted_and_the_loop_keeps_running() -> None:
    decoder = FlowDecoder()
    batches: list[RecordBatch] = []
    garbage = [b"\x00", b"\x00\x63garbage", v5_datagram()[:30], b""]
    async with running([LOOPBACK_V4]) as listener:
        drain = asyncio.create_task(listener.drain(decoder, batches.append))
        with sender() as sock:
            for payload in garbage:
                sock.sendto(payload, ("127.0.0.1", port_of(listener)))
            sock.sendto(v5_datagram(src_port=45678), ("127.0.0.1", port_of(listener)))
            exporter = ("127.0.0.1", sock.getsockname()[1])
        await wait_until(lambda: bool(batches), "the valid datagram after the garbage")
    await asyncio.wait_for(drain, TIMEOUT_S)
    assert [record.src_port for decoded in batches[0] for record in decoded.records] == [45678]
    stats = decoder.stats(exporter)
    assert stats["datagrams"] == 5 and stats["records"] == 1
    # b"\x00" and b"" are shorter than a version; "\x00\x63" is version 99; 30 bytes of v5
    # are shorter than its 24-byte header plus one 48-byte record.
    assert stats["truncated_header"] == 2
    assert stats["unknown_version"] == 1
    assert stats["truncated_records"] == 1


# -- shutdown ----------------------------------------------------------------------------------


async def test_stop_ends_run_and_a_drain_waiting_on_an_empty_queue() -> None:
    listener = CollectorListener([("127.0.0.1", 0), ("::1", 0)], AllowList([LOOPBACK_V4]))
    await listener.open()
    runs = [asyncio.create_task(listener.run(endpoint)) for endpoint in listener.endpoints]
    drain = asyncio.create_task(listener.drain(FlowDecoder(), lambda batch: None))
    await asyncio.sleep(0)  # let drain() block on the empty queue
    listener.stop()
    listener.stop()  # idempotent
    await asyncio.wait_for(asyncio.gather(*runs, drain), TIMEOUT_S)
    assert all(endpoint.closed for endpoint in listener.endpoints)
    with pytest.raises(RuntimeError):
        await listener.open()


async def test_drain_after_stop_decodes_everything_queued_then_returns() -> None:
    batches: list[RecordBatch] = []
    sent_ports = [41000 + index for index in range(5)]
    async with running([LOOPBACK_V4], max_queue=5) as listener:
        with sender() as sock:
            for index, src_port in enumerate(sent_ports):
                sock.sendto(v5_datagram(index, src_port), ("127.0.0.1", port_of(listener)))
        await wait_until(lambda: listener.queue.full(), "a full queue")
    # The queue is full at stop(): drain() still decodes all five, in batches of two.
    await asyncio.wait_for(listener.drain(FlowDecoder(), batches.append, batch_max=2), TIMEOUT_S)
    assert [len(batch) for batch in batches] == [2, 2, 1]
    decoded_ports = [
        record.src_port for batch in batches for decoded in batch for record in decoded.records
    ]
    assert decoded_ports == sent_ports


async def test_open_reports_an_address_in_use_and_closes_the_others() -> None:
    with sender(source="127.0.0.1") as taken:
        port = taken.getsockname()[1]
        listener = CollectorListener([("::1", 0), ("127.0.0.1", port)], AllowList([LOOPBACK_V4]))
        with pytest.raises(CollectorListenError) as raised:
            await listener.open()
    assert raised.value.listen == f"127.0.0.1:{port}"
    assert [endpoint.closed for endpoint in listener.endpoints] == [True]


async def test_an_endpoint_asks_the_kernel_for_a_large_receive_buffer() -> None:
    """A loop busy elsewhere must not cost datagrams: as root the kernel gives every endpoint
    at least RECEIVE_BUFFER_BYTES (it reports twice what was set), read back from the socket.
    (The suite runs as root, as its network namespaces need.)"""
    listener = CollectorListener([("127.0.0.1", 0)], AllowList([]))
    await listener.open()
    try:
        [endpoint] = listener.endpoints
        reported = endpoint.stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert reported >= RECEIVE_BUFFER_BYTES
        assert endpoint.receive_buffer_bytes == reported
    finally:
        listener.stop()
