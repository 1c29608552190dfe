"""Flow collector decoding: NetFlow v5/v9 built with scapy, IPFIX packed by hand from RFC 7011.

The datagrams here are the oracle: every expected value is written into the bytes by the test
(scapy's layers for v5/v9, `struct.pack` following the RFC byte layouts for IPFIX and options),
never taken from the decoder's own structs.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import raw
from scapy.layers.netflow import (
    NetflowDataflowsetV9,
    NetflowFlowsetV9,
    NetflowHeader,
    NetflowHeaderV5,
    NetflowHeaderV9,
    NetflowRecordV5,
    NetflowRecordV9,
    NetflowTemplateFieldV9,
    NetflowTemplateV9,
)

from tunnelacct.collector import DecodeReason, FlowDecoder, FlowRecord

EXPORTER = ("192.0.2.10", 4739)
OTHER_EXPORTER = ("192.0.2.10", 4740)
EXPORT_SECS = 1_700_000_000
NOW = float(EXPORT_SECS)
NTP_EPOCH_OFFSET_S = 2_208_988_800
# Counter keys that mean bad input (the rest are tallies).
BAD_INPUT = {
    DecodeReason.TRUNCATED_HEADER,
    DecodeReason.UNKNOWN_VERSION,
    DecodeReason.BAD_MESSAGE_LENGTH,
    DecodeReason.TRUNCATED_RECORDS,
    DecodeReason.BAD_SET_LENGTH,
    DecodeReason.RESERVED_SET_ID,
    DecodeReason.BAD_TEMPLATE_ID,
    DecodeReason.TEMPLATE_TOO_SHORT,
    DecodeReason.BAD_FIELD_LENGTH,
    DecodeReason.MALFORMED_FIELD,
    DecodeReason.EMPTY_RECORD_TEMPLATE,
}


# -- IPFIX byte layouts (RFC 7011 sections 3.1, 3.3.2, 3.4.1, 3.4.2.2), written for the tests --


def ipfix_message(sets: list[bytes], sequence: int, domain: int = 1) -> bytes:
    """Message header: version 10, total length, export time, sequence, observation domain."""
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), EXPORT_SECS, sequence, domain) + body


def ipfix_set(set_id: int, content: bytes) -> bytes:
    """Set header: set id and the set's length including these 4 bytes."""
    return struct.pack("!HH", set_id, 4 + len(content)) + content


def field_specifiers(fields: list[tuple[int, int, int | None]]) -> bytes:
    """(element id, length, enterprise number or None) -> field specifiers."""
    out = b""
    for element_id, length, enterprise in fields:
        if enterprise is None:
            out += struct.pack("!HH", element_id, length)
        else:
            out += struct.pack("!HHI", element_id | 0x8000, length, enterprise)
    return out


def template_set(template_id: int, fields: list[tuple[int, int, int | None]]) -> bytes:
    """A template set holding one template record."""
    record = struct.pack("!HH", template_id, len(fields)) + field_specifiers(fields)
    return ipfix_set(2, record)


def options_template_set(
    template_id: int,
    scope: list[tuple[int, int, int | None]],
    options: list[tuple[int, int, int | None]],
) -> bytes:
    """An options template set: id, field count, scope field count, scope fields first."""
    head = struct.pack("!HHH", template_id, len(scope) + len(options), len(scope))
    return ipfix_set(3, head + field_specifiers(scope) + field_specifiers(options))


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed


# A fixed IPFIX template like softflowd's: addresses, ports, protocol, 4-byte counters, ms times.
FIXED_FIELDS: list[tuple[int, int, int | None]] = [
    (8, 4, None),  # sourceIPv4Address
    (12, 4, None),  # destinationIPv4Address
    (7, 2, None),  # sourceTransportPort
    (11, 2, None),  # destinationTransportPort
    (4, 1, None),  # protocolIdentifier
    (6, 1, None),  # tcpControlBits
    (1, 4, None),  # octetDeltaCount, reduced from 8 to 4 bytes
    (2, 4, None),  # packetDeltaCount
    (152, 8, None),  # flowStartMilliseconds
    (153, 8, None),  # flowEndMilliseconds
    (136, 1, None),  # flowEndReason
]


def fixed_record(
    src: str, dst: str, sport: int, dport: int, octets: int, packets: int, start_ms: int
) -> bytes:
    return (
        ip4(src)
        + ip4(dst)
        + struct.pack("!HHBB", sport, dport, 6, 0x1B)
        + struct.pack("!II", octets, packets)
        + struct.pack("!QQB", start_ms, start_ms + 2500, 3)
    )


def fixed_message(
    sequence: int, records: int, domain: int = 1, with_template: bool = True
) -> bytes:
    data = b"".join(
        fixed_record("10.0.0.1", "10.0.0.2", 40000 + i, 443, 1000 + i, 10 + i, 1_700_000_000_000)
        for i in range(records)
    )
    sets = [template_set(256, FIXED_FIELDS)] if with_template else []
    sets.append(ipfix_set(256, data))
    return ipfix_message(sets, sequence, domain)


def counter(decoder: FlowDecoder, reason: str, exporter: tuple[str, int] = EXPORTER) -> int:
    return decoder.stats(exporter).get(reason, 0)


def bad_input(decoder: FlowDecoder, exporter: tuple[str, int] = EXPORTER) -> int:
    return sum(count for key, count in decoder.stats(exporter).items() if key in BAD_INPUT)


# -- NetFlow v5 ------------------------------------------------------------------------------


def test_v5_records_carry_scapy_header_and_record_values() -> None:
    records = [
        NetflowRecordV5(
            src="10.1.0.1",
            dst="10.2.0.2",
            dpkts=12,
            dOctets=3400,
            first=9000,
            last=9800,
            srcport=51000,
            dstport=53,
            tcpFlags=0,
            prot=17,
        ),
        NetflowRecordV5(
            src="10.1.0.3",
            dst="10.2.0.4",
            dpkts=5,
            dOctets=700,
            first=5000,
            last=10000,
            srcport=40000,
            dstport=22,
            tcpFlags=0x13,
            prot=6,
        ),
    ]
    header = NetflowHeaderV5(
        count=2, sysUptime=10000, unixSecs=EXPORT_SECS, unixNanoSeconds=0, flowSequence=100
    )
    payload = raw(NetflowHeader(version=5) / header / records[0] / records[1])
    decoder = FlowDecoder()
    decoded = decoder.decode_datagram(payload, EXPORTER, NOW)
    assert [(r.protocol, r.src_addr, r.dst_addr, r.src_port, r.dst_port) for r in decoded] == [
        (17, "10.1.0.1", "10.2.0.2", 51000, 53),
        (6, "10.1.0.3", "10.2.0.4", 40000, 22),
    ]
    assert [(r.octets, r.packets, r.tcp_flags) for r in decoded] == [(3400, 12, 0), (700, 5, 0x13)]
    # First 9000 ms of uptime, header at uptime 10000 ms = EXPORT_SECS: started 1 s earlier.
    assert decoded[0].start_ts == pytest.approx(EXPORT_SECS - 1.0)
    assert decoded[0].end_ts == pytest.approx(EXPORT_SECS - 0.2)
    assert decoded[1].start_ts == pytest.approx(EXPORT_SECS - 5.0)
    assert decoded[0].reverse_octets is None and not decoded[0].estimated
    assert counter(decoder, "records") == 2 and bad_input(decoder) == 0


def test_v5_sequence_gap_counts_lost_flows_and_sampling_scales() -> None:
    def v5(sequence: int, count: int) -> bytes:
        header = NetflowHeaderV5(
            count=count, sysUptime=1000, unixSecs=EXPORT_SECS, flowSequence=sequence
        )
        packet = NetflowHeader(version=5) / header
        for _index in range(count):
            packet = packet / NetflowRecordV5(dpkts=1, dOctets=100, prot=6)
        return raw(packet)

    decoder = FlowDecoder()
    decoder.decode_datagram(v5(0, 3), EXPORTER, NOW)
    decoder.decode_datagram(v5(3, 2), EXPORTER, NOW)
    decoder.decode_datagram(v5(12, 1), EXPORTER, NOW)  # flows 5..11 never arrived
    assert decoder.lost(EXPORTER, 5, 0) == 7
    assert counter(decoder, "lost_records") == 7

    sampled = raw(
        NetflowHeader(version=5)
        / NetflowHeaderV5(count=1, unixSecs=EXPORT_SECS, samplingInterval=(1 << 14) | 100)
        / NetflowRecordV5(dpkts=2, dOctets=300, prot=17)
    )
    record = FlowDecoder().decode_datagram(sampled, EXPORTER, NOW)[0]
    assert (record.octets, record.packets, record.estimated) == (30000, 200, True)


# -- NetFlow v9 ------------------------------------------------------------------------------


def v9_datagram(flowsets: list[object], sequence: int, uptime_ms: int, source_id: int = 0) -> bytes:
    header = NetflowHeaderV9(
        count=len(flowsets),
        sysUptime=uptime_ms,
        unixSecs=EXPORT_SECS,
        packageSequence=sequence,
        SourceID=source_id,
    )
    packet = NetflowHeader(version=9) / header
    for flowset in flowsets:
        packet = packet / flowset
    return raw(packet)


def v9_template(template_id: int, fields: list[tuple[int, int]]) -> object:
    template_fields = [
        NetflowTemplateFieldV9(fieldType=element_id, fieldLength=length)
        for element_id, length in fields
    ]
    template = NetflowTemplateV9(templateID=template_id, template_fields=template_fields)
    return NetflowFlowsetV9(templates=[template])


def v9_data(template_id: int, records: list[bytes]) -> object:
    return NetflowDataflowsetV9(
        templateID=template_id, records=[NetflowRecordV9(fieldValue=value) for value in records]
    )


# softflowd's v9 layout (IPv4), with flowEndReason as the non-standard field type 0.
V9_FIELDS = [(8, 4), (12, 4), (22, 4), (21, 4), (1, 4), (2, 4), (7, 2), (11, 2), (4, 1), (6, 1)]
V9_FIELDS += [(0, 1)]


def v9_record(octets: int, first_ms: int, last_ms: int, end_reason: int) -> bytes:
    return (
        ip4("10.9.0.1")
        + ip4("10.9.0.2")
        + struct.pack("!IIII", first_ms, last_ms, octets, 7)
        + struct.pack("!HHBBB", 33000, 80, 6, 0x19, end_reason)
    )


def test_v9_template_and_data_ipv4_with_softflowd_end_reason() -> None:
    datagram = v9_datagram(
        [
            v9_template(256, V9_FIELDS),
            v9_data(256, [v9_record(1500, 40_000, 49_000, 2), v9_record(80, 45_000, 50_000, 3)]),
        ],
        sequence=1,
        uptime_ms=50_000,
    )
    decoder = FlowDecoder()
    decoded = decoder.decode_datagram(datagram, EXPORTER, NOW)
    assert [(r.src_addr, r.dst_addr, r.src_port, r.dst_port, r.protocol) for r in decoded] == [
        ("10.9.0.1", "10.9.0.2", 33000, 80, 6)
    ] * 2
    assert [(r.octets, r.packets, r.tcp_flags, r.end_reason) for r in decoded] == [
        (1500, 7, 0x19, 2),
        (80, 7, 0x19, 3),
    ]
    # Uptime 50 s = EXPORT_SECS, so uptime 40 s was 10 s before the export.
    assert decoded[0].start_ts == pytest.approx(EXPORT_SECS - 10.0)
    assert decoded[0].end_ts == pytest.approx(EXPORT_SECS - 1.0)
    assert decoded[1].end_ts == pytest.approx(EXPORT_SECS)
    assert decoded[0].version == 9 and bad_input(decoder) == 0


def test_v9_ipv6_records_give_ipv6_text() -> None:
    fields = [(27, 16), (28, 16), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (61, 1)]
    value = ip6("2001:db8::1") + ip6("2001:db8:0:1::53")
    value += struct.pack("!HHBIIB", 5353, 53, 17, 240, 2, 1)
    datagram = v9_datagram([v9_template(300, fields), v9_data(300, [value])], 1, 1000)
    (record,) = FlowDecoder().decode_datagram(datagram, EXPORTER, NOW)
    assert (record.src_addr, record.dst_addr) == ("2001:db8::1", "2001:db8:0:1::53")
    assert (record.protocol, record.src_port, record.dst_port) == (17, 5353, 53)
    assert (record.octets, record.packets, record.direction) == (240, 2, 1)


def test_v9_sequence_gap_counts_lost_export_packets_exactly() -> None:
    decoder = FlowDecoder()
    template = v9_template(256, V9_FIELDS)
    for sequence in (10, 11, 15, 16, 20):  # 12, 13, 14 and 17, 18, 19 lost
        data = v9_data(256, [v9_record(100, 1000, 2000, 1)] * 3)
        decoder.decode_datagram(v9_datagram([template, data], sequence, 5000), EXPORTER, NOW)
    assert decoder.lost(EXPORTER, 9, 0) == 6
    assert counter(decoder, "lost_packets") == 6
    assert counter(decoder, "records") == 15


def test_v9_uptime_going_backwards_drops_the_exporters_templates() -> None:
    decoder = FlowDecoder()
    template = v9_template(256, V9_FIELDS)
    decoder.decode_datagram(v9_datagram([template], 100, 900_000), EXPORTER, NOW)
    # Restarted: uptime back to 2 s; the data set must wait for a template again.
    data = v9_data(256, [v9_record(100, 1000, 1500, 1)])
    assert decoder.decode_datagram(v9_datagram([data], 101, 2000), EXPORTER, NOW) == []
    assert counter(decoder, "exporter_restarts") == 1
    assert decoder.pending_count(EXPORTER) == 1
    late_template = v9_datagram([template], 102, 2500)
    (record,) = decoder.decode_datagram(late_template, EXPORTER, NOW)
    assert record.octets == 100
    # The buffered set keeps its own header's uptime (2000 ms).
    assert record.start_ts == pytest.approx(EXPORT_SECS - 1.0)


# -- IPFIX -----------------------------------------------------------------------------------


def test_ipfix_fixed_template_with_reduced_size_counters() -> None:
    decoder = FlowDecoder()
    payload = fixed_message(sequence=0, records=3)
    decoded = decoder.decode_datagram(payload, EXPORTER, NOW)
    assert [r.src_port for r in decoded] == [40000, 40001, 40002]
    assert [(r.octets, r.packets) for r in decoded] == [(1000, 10), (1001, 11), (1002, 12)]
    assert decoded[0].start_ts == pytest.approx(1_700_000_000.0)
    assert decoded[0].end_ts == pytest.approx(1_700_000_002.5)
    assert (decoded[0].tcp_flags, decoded[0].end_reason) == (0x1B, 3)
    assert (decoded[0].domain_id, decoded[0].exporter) == (1, EXPORTER)
    assert bad_input(decoder) == 0 and counter(decoder, "templates") == 1


def test_ipfix_variable_length_enterprise_and_odd_sized_fields() -> None:
    fields: list[tuple[int, int, int | None]] = [
        (8, 4, None),
        (82, 65535, None),  # interfaceName, variable length
        (12, 4, None),
        (1, 3, None),  # octetDeltaCount in 3 bytes
        (2, 2, None),  # packetDeltaCount in 2 bytes
        (7, 2, None),
        (11, 2, None),
        (4, 1, None),
        (100, 6, 9),  # an unknown enterprise element, skipped by its length
        (1, 65535, 12345),  # enterprise 12345's element 1 is not octets
        (150, 4, None),  # flowStartSeconds
        (151, 4, None),
    ]
    tail = struct.pack("!HHB", 1234, 80, 6) + b"ENTERP" + b"\x03abc"
    tail += struct.pack("!II", 1_699_999_990, 1_699_999_999)
    short_name = ip4("10.0.0.7") + b"\x04wg0a" + ip4("10.0.0.8") + (70000).to_bytes(3, "big")
    short_name += struct.pack("!H", 65) + tail
    long_name = ip4("10.0.0.9") + b"\xff" + struct.pack("!H", 300) + b"n" * 300
    long_name += ip4("10.0.0.10") + (5).to_bytes(3, "big") + struct.pack("!H", 1) + tail
    payload = ipfix_message(
        [template_set(400, fields), ipfix_set(400, short_name + long_name + b"\0\0")], 0
    )
    decoder = FlowDecoder()
    decoded = decoder.decode_datagram(payload, EXPORTER, NOW)
    assert [(r.src_addr, r.dst_addr, r.octets, r.packets) for r in decoded] == [
        ("10.0.0.7", "10.0.0.8", 70000, 65),
        ("10.0.0.9", "10.0.0.10", 5, 1),
    ]
    assert [(r.start_ts, r.end_ts) for r in decoded] == [(1_699_999_990.0, 1_699_999_999.0)] * 2
    assert bad_input(decoder) == 0


def test_ipfix_variable_length_field_past_record_end_is_malformed() -> None:
    fields: list[tuple[int, int, int | None]] = [(8, 4, None), (82, 65535, None), (1, 4, None)]
    record = ip4("10.0.0.1") + b"\x40abc" + struct.pack("!I", 5)  # claims 64 name bytes
    payload = ipfix_message([template_set(500, fields), ipfix_set(500, record)], 0)
    decoder = FlowDecoder()
    assert decoder.decode_datagram(payload, EXPORTER, NOW) == []
    assert counter(decoder, "malformed_field") == 1


def test_ipfix_biflow_reverse_fields_are_never_forward_counters() -> None:
    # Reverse IEs (PEN 29305) first, so a decoder ignoring the enterprise bit would take them.
    fields: list[tuple[int, int, int | None]] = [
        (1, 8, 29305),
        (2, 8, 29305),
        (6, 1, 29305),  # reverseTcpControlBits, not the forward flags
        (8, 4, None),
        (12, 4, None),
        (7, 2, None),
        (11, 2, None),
        (4, 1, None),
        (1, 4, None),
        (2, 4, None),
        (6, 1, None),
    ]
    value = struct.pack("!QQB", 90_000, 61, 0x12) + ip4("10.0.0.1") + ip4("10.0.0.2")
    value += struct.pack("!HHBIIB", 45000, 443, 6, 4_200, 40, 0x02)
    payload = ipfix_message([template_set(256, fields), ipfix_set(256, value)], 0)
    (record,) = FlowDecoder().decode_datagram(payload, EXPORTER, NOW)
    assert (record.octets, record.packets, record.tcp_flags) == (4_200, 40, 0x02)
    assert (record.reverse_octets, record.reverse_packets) == (90_000, 61)

    reverse_only: list[tuple[int, int, int | None]] = [(8, 4, None), (1, 4, 29305)]
    payload = ipfix_message(
        [template_set(257, reverse_only), ipfix_set(257, ip4("10.0.0.1") + struct.pack("!I", 9))],
        0,
    )
    (record,) = FlowDecoder().decode_datagram(payload, EXPORTER, NOW)
    assert (record.octets, record.reverse_octets) == (0, 9)


def test_ipfix_time_encodings_seconds_milliseconds_and_ntp() -> None:
    ntp_start = ((1_700_000_000 + NTP_EPOCH_OFFSET_S) << 32) | (1 << 31)  # .5 s
    ntp_end = ((1_700_000_003 + NTP_EPOCH_OFFSET_S) << 32) | (1 << 30)  # .25 s
    fields: list[tuple[int, int, int | None]] = [(8, 4, None), (156, 8, None), (157, 8, None)]
    payload = ipfix_message(
        [
            template_set(256, fields),
            ipfix_set(256, ip4("10.0.0.1") + struct.pack("!QQ", ntp_start, ntp_end)),
        ],
        0,
    )
    (record,) = FlowDecoder().decode_datagram(payload, EXPORTER, NOW)
    assert record.start_ts == pytest.approx(1_700_000_000.5)
    assert record.end_ts == pytest.approx(1_700_000_003.25)


def test_ipfix_uptime_times_use_system_init_time_from_an_options_record() -> None:
    init_ms = 1_699_999_000_000
    options = options_template_set(258, [(149, 4, None)], [(160, 8, None)])
    options_data = ipfix_set(258, struct.pack("!IQ", 1, init_ms))
    fields: list[tuple[int, int, int | None]] = [(8, 4, None), (22, 4, None), (21, 4, None)]
    data = ipfix_set(256, ip4("10.0.0.1") + struct.pack("!II", 5_000, 65_000))
    decoder = FlowDecoder()
    # Without IE 160 yet the record falls back to the export time and is counted.
    first = ipfix_message([template_set(256, fields), data], 0)
    (early,) = decoder.decode_datagram(first, EXPORTER, NOW)
    assert early.start_ts == EXPORT_SECS
    assert counter(decoder, "missing_time_base") == 1
    second = ipfix_message([options, options_data, data], 1)
    (record,) = decoder.decode_datagram(second, EXPORTER, NOW)
    assert record.start_ts == pytest.approx(1_699_999_005.0)
    assert record.end_ts == pytest.approx(1_699_999_065.0)
    assert counter(decoder, "options_records") == 1


@pytest.mark.parametrize(
    ("up_s", "uptime_ms", "expected_ts"),
    [
        # Exporter up for 60 days: the 32-bit uptime wrapped once (2**32 ms = 4294967.296 s).
        (60 * 86_400, 5_000, EXPORT_SECS - 60 * 86_400 + 4_294_967.296 + 5.0),
        # softflowd, up 10 minutes, replaying a capture older than its own start: the uptime
        # is "negative" (3 s before systemInitTime).
        (600, 2**32 - 3_000, EXPORT_SECS - 600 - 3.0),
    ],
    ids=["wrapped", "before_init"],
)
def test_ipfix_uptimes_wrap_as_32_bit_serial_numbers(
    up_s: int, uptime_ms: int, expected_ts: float
) -> None:
    init_ms = (EXPORT_SECS - up_s) * 1000
    options = options_template_set(258, [(149, 4, None)], [(160, 8, None)])
    options_data = ipfix_set(258, struct.pack("!IQ", 1, init_ms))
    fields: list[tuple[int, int, int | None]] = [(8, 4, None), (22, 4, None)]
    data = ipfix_set(256, ip4("10.0.0.1") + struct.pack("!I", uptime_ms))
    payload = ipfix_message([options, options_data, template_set(256, fields), data], 0)
    (record,) = FlowDecoder().decode_datagram(payload, EXPORTER, NOW)
    assert record.start_ts == pytest.approx(expected_ts, abs=1e-6)


@pytest.mark.parametrize(
    ("options", "values", "interval"),
    [
        ([(34, 4, None)], struct.pack("!I", 10), 10),  # samplingInterval
        ([(305, 4, None), (306, 4, None)], struct.pack("!II", 1, 99), 100),  # 1 in 100
    ],
)
def test_ipfix_sampling_options_scale_counters_and_mark_estimated(
    options: list[tuple[int, int, int | None]], values: bytes, interval: int
) -> None:
    fields: list[tuple[int, int, int | None]] = [(8, 4, None), (1, 4, None), (2, 4, None)]
    fields += [(1, 4, 29305), (2, 4, 29305)]
    payload = ipfix_message(
        [
            options_template_set(300, [(149, 4, None)], options),
            ipfix_set(300, struct.pack("!I", 1) + values),
            template_set(256, fields),
            ipfix_set(256, ip4("10.0.0.1") + struct.pack("!IIII", 150, 3, 40, 1)),
        ],
        0,
    )
    (record,) = FlowDecoder().decode_datagram(payload, EXPORTER, NOW)
    assert (record.octets, record.packets) == (150 * interval, 3 * interval)
    assert (record.reverse_octets, record.reverse_packets) == (40 * interval, interval)
    assert record.estimated and record.sampling_interval == interval


def test_v9_options_template_sets_the_sampling_interval() -> None:
    # RFC 3954 section 6.1: template id, scope length, option length (bytes), scope fields,
    # option fields, padding to 4 bytes. Scope type 1 (system) must not read as octets.
    options_body = struct.pack("!HHH", 260, 4, 4) + struct.pack("!HHHH", 1, 4, 34, 4) + b"\0\0"
    options_flowset = struct.pack("!HH", 1, 4 + len(options_body)) + options_body
    options_record = struct.pack("!II", 0, 64)
    options_data = struct.pack("!HH", 260, 4 + len(options_record)) + options_record
    header = struct.pack("!HHIIII", 9, 2, 5000, EXPORT_SECS, 1, 0)
    decoder = FlowDecoder()
    assert decoder.decode_datagram(header + options_flowset + options_data, EXPORTER, NOW) == []
    datagram = v9_datagram(
        [v9_template(256, V9_FIELDS), v9_data(256, [v9_record(100, 1000, 2000, 1)])], 2, 6000
    )
    (record,) = decoder.decode_datagram(datagram, EXPORTER, NOW)
    assert (record.octets, record.packets, record.estimated) == (6400, 7 * 64, True)
    assert bad_input(decoder) == 0


# -- template life cycle -----------------------------------------------------------------------


def test_template_redefinition_replaces_the_layout() -> None:
    decoder = FlowDecoder()
    decoder.decode_datagram(fixed_message(0, 1), EXPORTER, NOW)
    redefined: list[tuple[int, int, int | None]] = [(12, 4, None), (8, 4, None), (1, 8, None)]
    value = ip4("10.5.0.2") + ip4("10.5.0.1") + struct.pack("!Q", 2**40)
    payload = ipfix_message([template_set(256, redefined), ipfix_set(256, value)], 1)
    (record,) = decoder.decode_datagram(payload, EXPORTER, NOW)
    assert (record.src_addr, record.dst_addr, record.octets) == ("10.5.0.1", "10.5.0.2", 2**40)
    assert counter(decoder, "templates") == 2


def test_template_withdrawal_removes_one_or_all_templates() -> None:
    decoder = FlowDecoder()
    decoder.decode_datagram(fixed_message(0, 1), EXPORTER, NOW)
    withdraw = ipfix_message([ipfix_set(2, struct.pack("!HH", 256, 0))], 1)
    decoder.decode_datagram(withdraw, EXPORTER, NOW)
    assert counter(decoder, "templates_withdrawn") == 1
    assert decoder.decode_datagram(fixed_message(1, 1, with_template=False), EXPORTER, NOW) == []
    assert decoder.pending_count(EXPORTER) == 1

    decoder = FlowDecoder()
    other = template_set(257, FIXED_FIELDS)
    decoder.decode_datagram(
        ipfix_message([template_set(256, FIXED_FIELDS), other], 0), EXPORTER, NOW
    )
    withdraw_all = ipfix_message([ipfix_set(2, struct.pack("!HH", 2, 0))], 0)
    decoder.decode_datagram(withdraw_all, EXPORTER, NOW)
    assert counter(decoder, "templates_withdrawn") == 2
    assert decoder.templates.count() == 0


def test_template_expires_after_timeout_since_last_refresh() -> None:
    decoder = FlowDecoder(template_timeout_s=100.0, pending_timeout_s=1000.0)
    decoder.decode_datagram(fixed_message(0, 1), EXPORTER, 0.0)
    # A refresh at 90 s (same layout) moves the deadline to 190 s.
    decoder.decode_datagram(fixed_message(1, 1), EXPORTER, 90.0)
    assert len(decoder.decode_datagram(fixed_message(2, 1, with_template=False), EXPORTER, 180.0))
    assert decoder.decode_datagram(fixed_message(3, 1, with_template=False), EXPORTER, 191.0) == []
    assert counter(decoder, "templates_expired") == 1
    assert counter(decoder, "templates") == 1  # the refresh was not a new definition
    assert decoder.pending_count(EXPORTER) == 1


def test_expire_templates_sweeps_by_the_injected_clock() -> None:
    decoder = FlowDecoder(template_timeout_s=10.0)
    decoder.decode_datagram(fixed_message(0, 0), EXPORTER, 0.0)
    assert decoder.expire_templates(5.0) == 0
    assert decoder.expire_templates(10.5) == 1
    assert counter(decoder, "templates_expired") == 1


def test_ipfix_sequence_going_backwards_is_a_restart() -> None:
    decoder = FlowDecoder()
    decoder.decode_datagram(fixed_message(5000, 2), EXPORTER, NOW)
    assert decoder.decode_datagram(fixed_message(0, 2, with_template=False), EXPORTER, NOW) == []
    assert counter(decoder, "exporter_restarts") == 1
    assert decoder.templates.count() == 0


def test_data_before_template_is_buffered_then_decoded() -> None:
    decoder = FlowDecoder()
    assert decoder.decode_datagram(fixed_message(0, 2, with_template=False), EXPORTER, NOW) == []
    assert counter(decoder, "pending_sets") == 1
    template_only = ipfix_message([template_set(256, FIXED_FIELDS)], 2)
    decoded = decoder.decode_datagram(template_only, EXPORTER, NOW + 1)
    assert [r.src_port for r in decoded] == [40000, 40001]
    assert decoder.pending_count(EXPORTER) == 0


def test_pending_buffer_overflow_and_expiry_are_counted_as_dropped() -> None:
    decoder = FlowDecoder(pending_sets=4, pending_timeout_s=30.0)
    for sequence in range(6):
        orphan = fixed_message(sequence, 1, with_template=False)
        decoder.decode_datagram(orphan, EXPORTER, NOW)
    assert counter(decoder, "pending_dropped_overflow") == 2
    assert decoder.pending_count(EXPORTER) == 4
    decoded = decoder.decode_datagram(
        ipfix_message([template_set(256, FIXED_FIELDS)], 6), EXPORTER, NOW
    )
    assert len(decoded) == 4

    decoder.decode_datagram(fixed_message(7, 1, with_template=False, domain=2), EXPORTER, NOW)
    decoder.decode_datagram(b"\x00\x0a", EXPORTER, NOW + 31.0)
    assert counter(decoder, "pending_dropped_expired") == 1
    assert decoder.pending_count(EXPORTER) == 0


def test_templates_are_per_exporter_and_per_domain() -> None:
    decoder = FlowDecoder()
    layout_a: list[tuple[int, int, int | None]] = [(8, 4, None), (1, 4, None)]
    layout_b: list[tuple[int, int, int | None]] = [(1, 4, None), (8, 4, None)]
    value = ip4("10.0.0.1") + struct.pack("!I", 77)
    decoder.decode_datagram(ipfix_message([template_set(256, layout_a)], 0), EXPORTER, NOW)
    decoder.decode_datagram(ipfix_message([template_set(256, layout_b)], 0), OTHER_EXPORTER, NOW)
    (from_a,) = decoder.decode_datagram(ipfix_message([ipfix_set(256, value)], 0), EXPORTER, NOW)
    swapped = struct.pack("!I", 77) + ip4("10.0.0.1")
    from_b = decoder.decode_datagram(
        ipfix_message([ipfix_set(256, swapped)], 0), OTHER_EXPORTER, NOW
    )
    assert (from_a.src_addr, from_a.octets) == ("10.0.0.1", 77)
    assert (from_b[0].src_addr, from_b[0].octets) == ("10.0.0.1", 77)
    # Same exporter, another observation domain: no template there.
    other_domain = ipfix_message([ipfix_set(256, value)], 0, domain=9)
    assert decoder.decode_datagram(other_domain, EXPORTER, NOW) == []


# -- sequence accounting ---------------------------------------------------------------------


@pytest.mark.parametrize("includes_current", [False, True], ids=["rfc7011", "softflowd"])
def test_ipfix_sequence_gaps_count_lost_records_under_both_conventions(
    includes_current: bool,
) -> None:
    counts = [3, 5, 2, 4, 6, 1, 2]
    dropped = {3, 5}  # messages that never arrive: 4 + 1 records lost
    decoder = FlowDecoder()
    sent_before = 0
    for index, count in enumerate(counts):
        sequence = sent_before + count if includes_current else sent_before
        sent_before += count
        if index not in dropped:
            decoder.decode_datagram(fixed_message(sequence, count), EXPORTER, NOW)
    assert decoder.lost(EXPORTER, 10, 1) == 5
    assert counter(decoder, "lost_records") == 5
    assert decoder.domains[(EXPORTER[0], EXPORTER[1], 10, 1)].includes_current is includes_current


def test_options_records_do_not_count_in_the_ipfix_sequence() -> None:
    options = options_template_set(300, [(149, 4, None)], [(34, 4, None)])
    options_data = ipfix_set(300, struct.pack("!II", 1, 1))
    decoder = FlowDecoder()
    decoder.decode_datagram(fixed_message(0, 2), EXPORTER, NOW)
    decoder.decode_datagram(ipfix_message([options, options_data], 2), EXPORTER, NOW)
    decoder.decode_datagram(fixed_message(2, 3), EXPORTER, NOW)
    decoder.decode_datagram(fixed_message(5, 1), EXPORTER, NOW)
    assert counter(decoder, "lost_records") == 0


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x00", "truncated_header"),
        (b"\x00\x07" + bytes(30), "unknown_version"),
        (b"\x00\x0a" + bytes(10), "truncated_header"),
        (struct.pack("!HHIII", 10, 200, 0, 0, 1), "bad_message_length"),
        (ipfix_message([struct.pack("!HH", 256, 0)], 0), "bad_set_length"),
        (ipfix_message([struct.pack("!HH", 256, 2)], 0), "bad_set_length"),
        (ipfix_message([struct.pack("!HH", 256, 400) + bytes(8)], 0), "bad_set_length"),
        (
            ipfix_message([ipfix_set(2, struct.pack("!HHHH", 256, 3, 8, 4))], 0),
            "template_too_short",
        ),
        (ipfix_message([ipfix_set(2, struct.pack("!HHHH", 12, 1, 8, 4))], 0), "bad_template_id"),
        (ipfix_message([ipfix_set(7, bytes(4))], 0), "reserved_set_id"),
        (ipfix_message([template_set(256, [(8, 3, None)])], 0), "bad_field_length"),
    ],
)
def test_bad_input_is_counted_by_reason_never_raised(payload: bytes, reason: str) -> None:
    decoder = FlowDecoder()
    assert decoder.decode_datagram(payload, EXPORTER, NOW) == []
    assert counter(decoder, reason) == 1
    assert counter(decoder, "datagrams") == 1


def valid_datagrams() -> list[bytes]:
    v9 = v9_datagram(
        [v9_template(256, V9_FIELDS), v9_data(256, [v9_record(100, 1000, 2000, 1)] * 2)], 1, 5000
    )
    v5 = raw(
        NetflowHeader(version=5)
        / NetflowHeaderV5(count=2, unixSecs=EXPORT_SECS)
        / NetflowRecordV5(prot=6)
        / NetflowRecordV5(prot=17)
    )
    variable: list[tuple[int, int, int | None]] = [(8, 4, None), (82, 65535, None), (1, 4, 29305)]
    ipfix_variable = ipfix_message(
        [template_set(257, variable), ipfix_set(257, ip4("10.0.0.1") + b"\x02ab" + bytes(4))], 0
    )
    return [fixed_message(0, 3), v9, v5, ipfix_variable]


def test_every_truncation_of_valid_datagrams_is_counted_or_decodes_fewer_records() -> None:
    for datagram in valid_datagrams():
        full = len(FlowDecoder().decode_datagram(datagram, EXPORTER, NOW))
        assert full >= 1
        for cut in range(len(datagram)):
            decoder = FlowDecoder()
            decoded = decoder.decode_datagram(datagram[:cut], EXPORTER, NOW)
            assert bad_input(decoder) >= 1 or len(decoded) < full, (datagram.hex(), cut)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_and_are_counted(payload: bytes) -> None:
    decoder = FlowDecoder()
    decoded = decoder.decode_datagram(payload, EXPORTER, NOW)
    assert all(isinstance(record, FlowRecord) for record in decoded)
    assert counter(decoder, "datagrams") == 1
    if len(payload) < 2 or payload[:2] not in (b"\x00\x05", b"\x00\x09", b"\x00\x0a"):
        assert bad_input(decoder) == 1


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(range(4)),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_valid_datagrams_never_raise(which: int, edits: list[tuple[int, int]]) -> None:
    datagram = bytearray(valid_datagrams()[which])
    for position, value in edits:
        datagram[position % len(datagram)] = value
    decoder = FlowDecoder(pending_sets=2)
    for _repeat in range(3):  # the second and third pass see the learned templates
        decoder.decode_datagram(bytes(datagram), EXPORTER, NOW)
    assert counter(decoder, "datagrams") == 3
