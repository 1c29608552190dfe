"""The flow-exporter lab (tests/helpers/flowlab.py) against independent oracles: tshark reads
the scenario pcap, nfdump reads what nfcapd stored from the same exporters (issue 20)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.helpers.flowlab import (
    EXPORTERS,
    SHORT_SCENARIO,
    FiveTuple,
    FlowLabResult,
    available,
    load_datagrams,
    run_flow_lab,
)
from tests.helpers.needs import INSTALL_HINT, missing_tools, require
from tests.helpers.oracle import tshark_sessions
from tunnelacct.collector.decode import FlowDecoder


@pytest.fixture(scope="module")
def lab_result(tmp_path_factory: pytest.TempPathFactory) -> FlowLabResult:
    """One short scenario through the whole lab, shared by the module's tests."""
    require(available(), "flow-exporter lab tests", hint=INSTALL_HINT)
    require(missing_tools("tshark"), "flow-exporter lab tests", hint=INSTALL_HINT)
    return run_flow_lab(tmp_path_factory.mktemp("flowlab"), SHORT_SCENARIO)


def tshark_totals(pcap: Path, sentinel_port: int) -> dict[FiveTuple, tuple[int, int]]:
    """(packets, IP bytes) per directed 5-tuple of tshark's TCP and UDP streams of the pcap
    (tests/helpers/oracle.py), the sentinel's left out."""
    totals: dict[FiveTuple, list[int]] = defaultdict(lambda: [0, 0])
    for stream in tshark_sessions(pcap):
        if sentinel_port in (stream.src_port, stream.dst_port):
            continue
        proto = 6 if stream.protocol == "tcp" else 17
        src = str(ipaddress.ip_address(stream.src_addr))
        dst = str(ipaddress.ip_address(stream.dst_addr))
        if stream.packets_tx:
            sent = totals[(proto, src, stream.src_port, dst, stream.dst_port)]
            sent[0] += stream.packets_tx
            sent[1] += stream.bytes_tx
        if stream.packets_rx:
            answered = totals[(proto, dst, stream.dst_port, src, stream.src_port)]
            answered[0] += stream.packets_rx
            answered[1] += stream.bytes_rx
    return {key: (packets, nbytes) for key, (packets, nbytes) in totals.items()}


def test_every_exporter_sent_datagrams_of_its_version(lab_result: FlowLabResult) -> None:
    for exporter in EXPORTERS:
        datagrams = lab_result.datagrams[exporter.name]
        assert datagrams, f"no datagram from {exporter.name}"
        versions = {int.from_bytes(gram.data[:2], "big") for gram in datagrams}
        assert versions == {exporter.version}, exporter.name


@pytest.mark.parametrize("exporter", ["v9", "ipfix"])
def test_nfdump_per_direction_totals_equal_the_pcaps(
    lab_result: FlowLabResult, exporter: str
) -> None:
    expected = tshark_totals(lab_result.pcap, lab_result.sentinel_port)
    assert any(key[0] == 6 and key[4] == 5201 for key in expected), "no iperf3 TCP in the pcap"
    assert any(":" in key[1] for key in expected), "no IPv6 flow in the pcap"
    assert lab_result.nfdump_totals(exporter) == expected


def test_nfdump_biflow_forward_totals_equal_the_pcaps(lab_result: FlowLabResult) -> None:
    # RFC 5103: forward is the first packet's sender. nfdump 1.7.1 keeps only the forward
    # counters of softflowd's biflows (reverse IEs are PEN 29305), so only those are compared.
    expected = tshark_totals(lab_result.pcap, lab_result.sentinel_port)
    forward = lab_result.nfdump_totals("ipfix-biflow")
    assert forward
    assert {key: expected.get(key) for key in forward} == forward


def test_saved_datagrams_read_back_unchanged(lab_result: FlowLabResult, tmp_path: Path) -> None:
    for exporter in EXPORTERS:
        path = lab_result.save_datagrams(exporter.name, tmp_path / f"{exporter.name}.pcap")
        back = load_datagrams(path)
        sent = lab_result.datagrams[exporter.name]
        assert [gram.data for gram in back] == [gram.data for gram in sent]
        assert [gram.source for gram in back] == [gram.source for gram in sent]
        # a pcap keeps microseconds
        assert [g.arrived_ts for g in back] == pytest.approx([g.arrived_ts for g in sent], abs=2e-6)


def test_nothing_is_left_running_after_the_lab(lab_result: FlowLabResult) -> None:
    alive = [pid for pid in lab_result.pids if Path(f"/proc/{pid}").exists()]
    assert alive == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert names.isdisjoint(lab_result.namespaces)
    assert not any(Path("/run/netns", name).exists() for name in lab_result.namespaces)
    assert os.getpid() not in lab_result.pids


def decoded_totals(result: FlowLabResult, exporter: str) -> dict[FiveTuple, tuple[int, int]]:
    """(packets, bytes) per directed 5-tuple from tunnelacct's decoder of the exporter's
    datagrams: a biflow's reverse counters go to the reversed 5-tuple."""
    decoder = FlowDecoder()
    totals: dict[FiveTuple, list[int]] = defaultdict(lambda: [0, 0])
    for datagram in result.datagrams[exporter]:
        source = (datagram.source[0], datagram.source[1])
        for record in decoder.decode_datagram(datagram.data, source, datagram.arrived_ts):
            if record.protocol not in (6, 17):
                continue
            if result.sentinel_port in (record.src_port, record.dst_port):
                continue
            forward = (record.protocol, record.src_addr, record.src_port)
            forward += (record.dst_addr, record.dst_port)
            if record.packets:
                totals[forward][0] += record.packets
                totals[forward][1] += record.octets
            if record.reverse_packets:
                reverse = (record.protocol, record.dst_addr, record.dst_port)
                reverse += (record.src_addr, record.src_port)
                totals[reverse][0] += record.reverse_packets
                totals[reverse][1] += record.reverse_octets or 0
    return {key: (packets, nbytes) for key, (packets, nbytes) in totals.items()}


@pytest.mark.parametrize("exporter", [e.name for e in EXPORTERS])
def test_the_decoder_gives_the_pcaps_totals_from_every_real_exporter(
    lab_result: FlowLabResult, exporter: str
) -> None:
    """softflowd's v9, IPFIX and IPFIX biflow datagrams decoded by tunnelacct give tshark's
    per-direction packets and IP bytes of the scenario exactly, with nothing counted bad."""
    expected = tshark_totals(lab_result.pcap, lab_result.sentinel_port)
    assert decoded_totals(lab_result, exporter) == expected
