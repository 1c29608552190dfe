"""RecordTable: flow records (NetFlow/IPFIX, built here with FlowRecord's constructor) become the
same session events as captured packets (sessions/flowrecords.py's module docstring is the spec).

The oracle is the records each test builds: a session's counters are the sums of the octets and
packets its records carry, split by which endpoint sent them, never numbers the table produced
earlier.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypedDict, Unpack

import pytest

from tunnelacct.capture.decode import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from tunnelacct.collector.records import FlowRecord
from tunnelacct.config.model import Timeouts
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.sessions.days import DAY_S, day_of, traffic_by_day
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.sessions.flowrecords import (
    CLOSING_HOLD_S,
    END_ACTIVE,
    END_DETECTED,
    END_FORCED,
    END_IDLE,
    END_LACK_OF_RESOURCES,
    OPEN_HOLD_MARGIN_S,
    RecordTable,
    exporter_interface,
    exporter_of_interface,
)

TIMEOUTS = Timeouts(udp_idle_s=30.0, tcp_idle_s=120.0, tcp_linger_s=5.0, checkpoint_s=30.0)
STITCH_GAP_S = 5.0
ACTIVE_TIMEOUT_S = 300.0
OPEN_HOLD_S = ACTIVE_TIMEOUT_S + OPEN_HOLD_MARGIN_S
EXPORTER_ADDRESS = "192.0.2.10"
EXPORTER_PORT = 2055
GATEWAY = "branch-fw"

# Record times (the exporter's clock) and arrival times (the collector's clock) are kept apart
# on purpose: an exporter sends a record after the flow's span, sometimes long after.
T0 = 1_700_000_000.0  # 22:13:20 UTC: every record time below stays on this UTC day
RECEIVED_TS = T0 + 100.0
# where the day after T0's begins (for the midnight tests)
MIDNIGHT = float((day_of(T0) + 1) * DAY_S)

ICMP_PROTOCOL = 1
SAMPLING_INTERVAL = 100  # of an estimated record: its counters arrive scaled by this

CLIENT = "100.64.0.2"  # inside a client's tunnel addresses
SERVER = "10.99.0.5"
# two hosts neither of which is a client: only the record rules choose the initiator
HOST_LOW = "10.1.0.5"
HOST_HIGH = "10.1.0.9"

CLIENT_ADDRESSES = {(4, int(ipaddress.ip_address(CLIENT)))}


def is_client(family: int, address: int) -> bool:
    """The test's one client tunnel address."""
    return (family, address) in CLIENT_ADDRESSES


def attribute(
    family: int, initiator: int, responder: int, responder_port: int, proto: IpProto
) -> Attribution:
    """A client when the initiator is one, a resource named after protocol and port."""
    client_id = "alice" if (family, initiator) in CLIENT_ADDRESSES else None
    return Attribution(
        org_id="acme", client_id=client_id, resource_id=f"{proto.label}/{responder_port}"
    )


def new_table(
    interface: str | None = None,
    clock: Callable[[], float] = lambda: RECEIVED_TS,
    max_sessions: int = 262_144,
) -> RecordTable:
    """A table of the test exporter (domain 0 unless `interface` says otherwise), whose clock
    (the collector's, read when a session resumes) says `clock()`."""
    return RecordTable(
        TIMEOUTS,
        max_sessions=max_sessions,
        stitch_gap_s=STITCH_GAP_S,
        active_timeout_s=ACTIVE_TIMEOUT_S,
        interface=interface or exporter_interface(EXPORTER_ADDRESS, 0),
        gateway=GATEWAY,
        attribute=attribute,
        is_client=is_client,
        clock=clock,
    )


# -- records -----------------------------------------------------------------------------------


def flow_record(
    protocol: int,
    src_addr: str,
    src_port: int,
    dst_addr: str,
    dst_port: int,
    *,
    start_ts: float,
    end_ts: float,
    octets: int,
    packets: int,
    tcp_flags: int | None = None,
    end_reason: int | None = None,
    reverse_octets: int | None = None,
    reverse_packets: int | None = None,
    estimated: bool = False,
) -> FlowRecord:
    """One IPFIX record of the test exporter."""
    return FlowRecord(
        exporter=(EXPORTER_ADDRESS, EXPORTER_PORT),
        version=10,
        domain_id=0,
        protocol=protocol,
        src_addr=src_addr,
        dst_addr=dst_addr,
        src_port=src_port,
        dst_port=dst_port,
        octets=octets,
        packets=packets,
        reverse_octets=reverse_octets,
        reverse_packets=reverse_packets,
        start_ts=start_ts,
        end_ts=end_ts,
        tcp_flags=tcp_flags,
        end_reason=end_reason,
        direction=None,
        sampling_interval=SAMPLING_INTERVAL if estimated else 1,
        estimated=estimated,
    )


class RecordExtras(TypedDict, total=False):
    """The optional fields of a test record."""

    tcp_flags: int | None
    end_reason: int | None
    reverse_octets: int | None
    reverse_packets: int | None
    estimated: bool


@dataclass(frozen=True)
class Conversation:
    """One 5-tuple, written as its initiator sees it; builds the records of either direction."""

    initiator: str
    initiator_port: int
    responder: str
    responder_port: int
    protocol: IpProto = IpProto.TCP

    def forward(
        self,
        *,
        start_ts: float,
        end_ts: float,
        octets: int,
        packets: int,
        **extras: Unpack[RecordExtras],
    ) -> FlowRecord:
        """A record of what the initiator sent (or a biflow with it as the source)."""
        return flow_record(
            self.protocol,
            self.initiator,
            self.initiator_port,
            self.responder,
            self.responder_port,
            start_ts=start_ts,
            end_ts=end_ts,
            octets=octets,
            packets=packets,
            **extras,
        )

    def reverse(
        self,
        *,
        start_ts: float,
        end_ts: float,
        octets: int,
        packets: int,
        **extras: Unpack[RecordExtras],
    ) -> FlowRecord:
        """A record of what the responder sent."""
        return flow_record(
            self.protocol,
            self.responder,
            self.responder_port,
            self.initiator,
            self.initiator_port,
            start_ts=start_ts,
            end_ts=end_ts,
            octets=octets,
            packets=packets,
            **extras,
        )


class Counters(NamedTuple):
    """A session's counters by direction (tx = initiator to responder)."""

    bytes_tx: int
    packets_tx: int
    bytes_rx: int
    packets_rx: int


def expected_counters(records: Sequence[FlowRecord], initiator: str, port: int) -> Counters:
    """The oracle: what each endpoint sent, summed over the records. A record's octets and
    packets were sent by its source; a biflow's reverse ones by its destination."""
    bytes_tx = 0
    packets_tx = 0
    bytes_rx = 0
    packets_rx = 0
    for record in records:
        reverse_octets = record.reverse_octets or 0
        reverse_packets = record.reverse_packets or 0
        if (record.src_addr, record.src_port) == (initiator, port):
            bytes_tx += record.octets
            packets_tx += record.packets
            bytes_rx += reverse_octets
            packets_rx += reverse_packets
        else:
            bytes_rx += record.octets
            packets_rx += record.packets
            bytes_tx += reverse_octets
            packets_tx += reverse_packets
    return Counters(bytes_tx, packets_tx, bytes_rx, packets_rx)


def conversation_counters(conversation: Conversation, records: Sequence[FlowRecord]) -> Counters:
    """expected_counters() with the conversation's initiator as tx."""
    return expected_counters(records, conversation.initiator, conversation.initiator_port)


def counters(event: SessionEvent) -> Counters:
    return Counters(event.bytes_tx, event.packets_tx, event.bytes_rx, event.packets_rx)


def closed(events: Sequence[SessionEvent]) -> list[SessionEvent]:
    return [event for event in events if event.kind is EventKind.CLOSED]


def only(events: Sequence[SessionEvent]) -> SessionEvent:
    assert len(events) == 1, events
    return events[0]


def close_everything(table: RecordTable) -> list[SessionEvent]:
    """End every session (those still open as `shutdown`) and return the CLOSED events."""
    return closed(table.close_all(CloseReason.SHUTDOWN))


WEB = Conversation(HOST_HIGH, 40000, HOST_LOW, 443)


# -- stitching: which records continue a session -----------------------------------------------


def sessions_of(batches: Sequence[Sequence[FlowRecord]]) -> list[SessionEvent]:
    """Feed each batch one second of collector time after the previous one, end everything,
    and return the CLOSED events in start order."""
    table = new_table()
    for arrival_index, batch in enumerate(batches):
        table.add_records(batch, RECEIVED_TS + arrival_index)
    return sorted(close_everything(table), key=lambda event: event.started_ts)


def test_active_timeout_pieces_of_one_flow_are_one_session_with_summed_counters() -> None:
    """Three records of one 5-tuple and direction, each starting within stitch_gap of the
    previous one's end (the first two ended by the exporter's active timeout), are one session:
    counters are their sums, it starts at the first start and its last time is the last end."""
    first = WEB.forward(
        start_ts=T0,
        end_ts=T0 + 60,
        octets=15_000,
        packets=20,
        tcp_flags=TCP_SYN | TCP_ACK,
        end_reason=END_ACTIVE,
    )
    second = WEB.forward(
        start_ts=first.end_ts + 1,
        end_ts=first.end_ts + 61,
        octets=9_000,
        packets=12,
        tcp_flags=TCP_ACK,
        end_reason=END_ACTIVE,
    )
    third = WEB.forward(
        start_ts=second.end_ts + STITCH_GAP_S - 0.5,
        end_ts=second.end_ts + 30,
        octets=700,
        packets=3,
        tcp_flags=TCP_ACK | TCP_FIN,
        end_reason=END_DETECTED,
    )
    table = new_table()
    events = []
    for record in (first, second, third):
        received_ts = record.end_ts + 2  # each piece arrives when the exporter expires it
        table.add_records([record], received_ts)
        events += table.advance(received_ts)
    events += table.advance(third.end_ts + 2 + CLOSING_HOLD_S + 1)
    session = only(closed(events))
    assert counters(session) == conversation_counters(WEB, [first, second, third])
    assert session.started_ts == first.start_ts
    assert session.last_ts == third.end_ts
    assert session.ended_ts == third.end_ts
    assert session.close_reason is CloseReason.FIN
    assert table.stats.sessions_opened == 1


DNS = Conversation(HOST_HIGH, 40053, HOST_LOW, 53, protocol=IpProto.UDP)
STREAM = Conversation(HOST_HIGH, 40004, HOST_LOW, 4433, protocol=IpProto.UDP)


def test_a_udp_record_past_stitch_gap_after_an_uncut_piece_opens_a_second_session() -> None:
    """A UDP record starting more than stitch_gap after the session's last end, whose previous
    piece the exporter did not cut at its active timeout, belongs to a new session; the earlier
    one ends `idle` at its last record's end."""
    first = DNS.forward(start_ts=T0, end_ts=T0 + 1, octets=80, packets=1)
    later = DNS.forward(
        start_ts=first.end_ts + STITCH_GAP_S + 1,
        end_ts=first.end_ts + STITCH_GAP_S + 2,
        octets=90,
        packets=1,
    )
    first_session, later_session = sessions_of([[first, later]])
    assert first_session.session_id != later_session.session_id
    assert counters(first_session) == conversation_counters(DNS, [first])
    assert counters(later_session) == conversation_counters(DNS, [later])
    assert first_session.close_reason is CloseReason.IDLE
    assert first_session.ended_ts == first.end_ts


def test_a_split_session_ends_idle_once_advanced_and_the_new_one_waits_for_the_open_hold() -> None:
    """After a record past stitch_gap split a UDP 5-tuple, advancing the collector's clock ends
    the earlier session as `idle`; the new one stays open until the open hold has passed."""
    first = DNS.forward(start_ts=T0, end_ts=T0 + 1, octets=80, packets=1)
    later = DNS.forward(
        start_ts=first.end_ts + STITCH_GAP_S + 1,
        end_ts=first.end_ts + STITCH_GAP_S + 2,
        octets=90,
        packets=1,
    )
    table = new_table()
    table.add_records([first, later], RECEIVED_TS)
    ended_first = only(table.advance(RECEIVED_TS + 1))
    assert ended_first.started_ts == first.start_ts
    assert ended_first.close_reason is CloseReason.IDLE
    assert table.advance(RECEIVED_TS + OPEN_HOLD_S - 0.5) == []
    ended_later = only(table.advance(RECEIVED_TS + OPEN_HOLD_S + 0.5))
    assert ended_later.started_ts == later.start_ts
    assert ended_later.close_reason is CloseReason.IDLE


@pytest.mark.parametrize(
    ("gap_s", "sessions"),
    [(STITCH_GAP_S + 1, 1), (TIMEOUTS.udp_idle_s - 1, 1), (TIMEOUTS.udp_idle_s + 1, 2)],
    ids=["past-stitch-gap", "just-within-udp-idle", "past-udp-idle"],
)
def test_a_udp_piece_after_an_active_timeout_cut_continues_up_to_udp_idle(
    gap_s: float, sessions: int
) -> None:
    """When the exporter cut the previous UDP piece at its active timeout, the next piece
    continues the session up to udp_idle after its end, not only within stitch_gap."""
    cut = STREAM.forward(
        start_ts=T0, end_ts=T0 + 300, octets=400_000, packets=800, end_reason=END_ACTIVE
    )
    following = STREAM.forward(
        start_ts=cut.end_ts + gap_s, end_ts=cut.end_ts + gap_s + 60, octets=9_000, packets=30
    )
    events = sessions_of([[cut], [following]])
    assert len(events) == sessions
    totals = [counters(event) for event in events]
    if sessions == 1:
        assert totals == [conversation_counters(STREAM, [cut, following])]
    else:
        assert totals == [
            conversation_counters(STREAM, [cut]),
            conversation_counters(STREAM, [following]),
        ]


@pytest.mark.parametrize(
    ("gap_s", "sessions"),
    [(STITCH_GAP_S + 1, 1), (TIMEOUTS.tcp_idle_s - 1, 1), (TIMEOUTS.tcp_idle_s + 1, 2)],
    ids=["past-stitch-gap", "just-within-tcp-idle", "past-tcp-idle"],
)
def test_a_tcp_record_without_syn_continues_an_open_connection_up_to_tcp_idle(
    gap_s: float, sessions: int
) -> None:
    """A TCP record without a SYN continues the open session of its 5-tuple up to tcp_idle
    after its last record (an idle interactive connection), as capture does; past that it
    opens a new (midstream) session and the old one ends `idle`."""
    earlier = WEB.forward(
        start_ts=T0, end_ts=T0 + 30, octets=3_000, packets=25, tcp_flags=TCP_SYN | TCP_ACK
    )
    resumed_typing = WEB.forward(
        start_ts=earlier.end_ts + gap_s,
        end_ts=earlier.end_ts + gap_s + 10,
        octets=600,
        packets=8,
        tcp_flags=TCP_ACK,
    )
    events = sessions_of([[earlier], [resumed_typing]])
    assert len(events) == sessions
    if sessions == 1:
        assert counters(events[0]) == conversation_counters(WEB, [earlier, resumed_typing])
    else:
        assert events[0].close_reason is CloseReason.IDLE
        assert counters(events[1]) == conversation_counters(WEB, [resumed_typing])
        assert events[1].midstream


def test_a_tcp_syn_past_stitch_gap_opens_a_new_session_of_a_connection_never_seen_to_end() -> None:
    """A record with a SYN starting more than stitch_gap after the last end of an open TCP
    session (never seen to end) is a new connection on the 5-tuple: a second session."""
    earlier = WEB.forward(
        start_ts=T0, end_ts=T0 + 30, octets=3_000, packets=25, tcp_flags=TCP_SYN | TCP_ACK
    )
    reconnect = WEB.forward(
        start_ts=earlier.end_ts + STITCH_GAP_S + 1,
        end_ts=earlier.end_ts + STITCH_GAP_S + 5,
        octets=500,
        packets=5,
        tcp_flags=TCP_SYN | TCP_ACK,
    )
    first_session, second_session = sessions_of([[earlier], [reconnect]])
    assert first_session.session_id != second_session.session_id
    assert first_session.close_reason is CloseReason.IDLE
    assert counters(first_session) == conversation_counters(WEB, [earlier])
    assert counters(second_session) == conversation_counters(WEB, [reconnect])
    assert not second_session.midstream


def test_a_tcp_syn_within_stitch_gap_of_an_open_session_continues_it() -> None:
    """The responder's record (its flags hold the SYN of its SYN-ACK) starting within
    stitch_gap of the session is the same connection, not port reuse."""
    forward = WEB.forward(
        start_ts=T0, end_ts=T0 + 30, octets=3_000, packets=25, tcp_flags=TCP_SYN | TCP_ACK
    )
    reverse = WEB.reverse(
        start_ts=T0 + 0.01, end_ts=T0 + 30, octets=60_000, packets=45, tcp_flags=TCP_SYN | TCP_ACK
    )
    session = only(sessions_of([[forward], [reverse]]))
    assert counters(session) == conversation_counters(WEB, [forward, reverse])


# -- who initiated -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "conversation",
    [Conversation(HOST_HIGH, 40000, HOST_LOW, 443), Conversation(HOST_LOW, 40000, HOST_HIGH, 443)],
    ids=["initiator-is-higher-endpoint", "initiator-is-lower-endpoint"],
)
def test_uniflow_pair_starting_together_is_one_session_initiated_from_the_higher_port(
    conversation: Conversation,
) -> None:
    """The two uniflow records of one conversation, timed alike by the exporter, make one
    session whose initiator is the sender from the higher (ephemeral) port, even when the
    reverse record comes first in the batch."""
    forward = conversation.forward(
        start_ts=T0, end_ts=T0 + 3, octets=640, packets=6, tcp_flags=TCP_SYN | TCP_ACK
    )
    reverse = conversation.reverse(
        start_ts=T0, end_ts=T0 + 3, octets=5_200, packets=5, tcp_flags=TCP_SYN | TCP_ACK
    )
    table = new_table()
    table.add_records([reverse, forward], RECEIVED_TS)
    session = only(close_everything(table))
    assert (session.src_addr, session.src_port) == (
        conversation.initiator,
        conversation.initiator_port,
    )
    assert (session.dst_addr, session.dst_port) == (
        conversation.responder,
        conversation.responder_port,
    )
    assert counters(session) == conversation_counters(conversation, [forward, reverse])


def test_uniflow_pair_whose_responder_record_starts_later_is_initiated_by_the_earlier_one() -> None:
    """Of a uniflow pair, the record that started first names the initiator, even when its
    source port is the lower one and the responder's record comes first in the batch."""
    # a service port talking first to an ephemeral one: the port rule alone would pick wrong
    conversation = Conversation(HOST_HIGH, 123, HOST_LOW, 50123, protocol=IpProto.UDP)
    forward = conversation.forward(start_ts=T0, end_ts=T0 + 0.1, octets=76, packets=1)
    reverse = conversation.reverse(start_ts=T0 + 0.2, end_ts=T0 + 0.3, octets=76, packets=1)
    table = new_table()
    table.add_records([reverse, forward], RECEIVED_TS)
    session = only(close_everything(table))
    assert (session.src_addr, session.src_port) == (HOST_HIGH, 123)
    assert counters(session) == conversation_counters(conversation, [forward, reverse])


@pytest.mark.parametrize("with_client_reply", [False, True], ids=["server-only", "server-first"])
def test_records_from_a_server_to_a_client_make_the_client_the_initiator(
    with_client_reply: bool,
) -> None:
    """When only one side is inside a client's tunnel addresses, the client is the initiator,
    even though the server's record is the only one or started first."""
    conversation = Conversation(CLIENT, 40000, SERVER, 443)
    from_server = conversation.reverse(start_ts=T0, end_ts=T0 + 5, octets=9_000, packets=8)
    records = [from_server]
    if with_client_reply:
        records.append(conversation.forward(start_ts=T0 + 1, end_ts=T0 + 5, octets=400, packets=7))
    table = new_table()
    table.add_records(records, RECEIVED_TS)
    session = only(close_everything(table))
    assert (session.src_addr, session.src_port) == (CLIENT, 40000)
    assert counters(session) == conversation_counters(conversation, records)
    assert session.attribution.client_id == "alice"


def test_biflow_counts_forward_as_tx_and_reverse_as_rx_with_its_source_as_initiator() -> None:
    """An RFC 5103 biflow's source is the initiator (even from the lower port): its forward
    counters are tx, its reverse counters rx."""
    conversation = Conversation(HOST_HIGH, 53, HOST_LOW, 40053, protocol=IpProto.UDP)
    forward_octets = 120
    forward_packets = 2
    reverse_octets = 900
    reverse_packets = 3
    biflow = conversation.forward(
        start_ts=T0,
        end_ts=T0 + 1,
        octets=forward_octets,
        packets=forward_packets,
        reverse_octets=reverse_octets,
        reverse_packets=reverse_packets,
    )
    table = new_table()
    table.add_records([biflow], RECEIVED_TS)
    session = only(close_everything(table))
    assert (session.src_addr, session.src_port) == (HOST_HIGH, 53)
    assert counters(session) == Counters(
        bytes_tx=forward_octets,
        packets_tx=forward_packets,
        bytes_rx=reverse_octets,
        packets_rx=reverse_packets,
    )


# -- how sessions end --------------------------------------------------------------------------


def tcp_records(*, forward_flags: int, end_reason: int | None) -> list[FlowRecord]:
    """One uniflow record of WEB with these flags and end."""
    return [
        WEB.forward(
            start_ts=T0,
            end_ts=T0 + 4,
            octets=1_500,
            packets=9,
            tcp_flags=forward_flags,
            end_reason=end_reason,
        )
    ]


def fins_from_both_sides() -> list[FlowRecord]:
    """The uniflow pair of WEB, each direction with a FIN and no end reason."""
    return [
        WEB.forward(
            start_ts=T0,
            end_ts=T0 + 4,
            octets=1_500,
            packets=9,
            tcp_flags=TCP_SYN | TCP_ACK | TCP_FIN,
        ),
        WEB.reverse(
            start_ts=T0,
            end_ts=T0 + 4,
            octets=8_000,
            packets=7,
            tcp_flags=TCP_SYN | TCP_ACK | TCP_FIN,
        ),
    ]


def fin_in_a_biflow() -> list[FlowRecord]:
    """One biflow record of WEB with a FIN and no end reason."""
    return [
        WEB.forward(
            start_ts=T0,
            end_ts=T0 + 4,
            octets=1_500,
            packets=9,
            reverse_octets=8_000,
            reverse_packets=7,
            tcp_flags=TCP_SYN | TCP_ACK | TCP_FIN,
        )
    ]


def udp_records(end_reason: int | None) -> list[FlowRecord]:
    """One UDP record (a DNS query) with this end reason."""
    return [DNS.forward(start_ts=T0, end_ts=T0 + 1, octets=80, packets=1, end_reason=end_reason)]


ENDED_RECORDS = {
    "rst": (
        tcp_records(forward_flags=TCP_SYN | TCP_ACK | TCP_RST, end_reason=None),
        CloseReason.RST,
    ),
    "fins-both-sides": (fins_from_both_sides(), CloseReason.FIN),
    "fin-end-detected": (
        tcp_records(forward_flags=TCP_SYN | TCP_ACK | TCP_FIN, end_reason=END_DETECTED),
        CloseReason.FIN,
    ),
    "fin-in-a-biflow": (fin_in_a_biflow(), CloseReason.FIN),
    "udp-idle": (udp_records(END_IDLE), CloseReason.IDLE),
    "forced-end": (udp_records(END_FORCED), CloseReason.EXPORTER_FORCED),
    "lack-of-resources": (
        tcp_records(forward_flags=TCP_SYN | TCP_ACK, end_reason=END_LACK_OF_RESOURCES),
        CloseReason.EXPORTER_FORCED,
    ),
}


@pytest.mark.parametrize(("records", "reason"), ENDED_RECORDS.values(), ids=list(ENDED_RECORDS))
def test_records_that_say_the_flow_ended_close_the_session_after_the_closing_hold(
    records: list[FlowRecord], reason: CloseReason
) -> None:
    """A session ended by its records (RST; FIN both ways, with flowEndReason 3 or in a biflow;
    flowEndReason 1, 4, 5) closes with that reason once CLOSING_HOLD_S has passed since its
    last record arrived, not before, and ends at its last record's end."""
    table = new_table()
    table.add_records(records, RECEIVED_TS)
    assert table.advance(RECEIVED_TS + CLOSING_HOLD_S - 0.5) == []
    session = only(table.advance(RECEIVED_TS + CLOSING_HOLD_S + 0.5))
    assert session.kind is EventKind.CLOSED
    assert session.close_reason is reason
    assert session.ended_ts == max(record.end_ts for record in records)
    first = records[0]
    assert counters(session) == expected_counters(records, first.src_addr, first.src_port)
    assert len(table) == 0


def test_a_full_table_ends_a_session_past_its_linger_before_it_evicts_an_open_one() -> None:
    """Two sessions fill the table: one its records ended by FIN both ways, one open. A third
    conversation's record, past the first one's linger in record time, ends that one with its
    reason instead of evicting the open one."""
    table = new_table(max_sessions=2)
    table.add_records(fins_from_both_sides(), RECEIVED_TS)
    dns = udp_records(None)
    table.add_records(dns, RECEIVED_TS)
    after_linger = T0 + 4 + TIMEOUTS.tcp_linger_s + 1
    third = STREAM.forward(start_ts=after_linger, end_ts=after_linger + 1, octets=90, packets=1)
    table.add_records([third], RECEIVED_TS + 1)
    assert table.stats.table_full == 1
    (web,) = closed(table.advance(RECEIVED_TS + 1))
    assert web.close_reason is CloseReason.FIN
    assert (web.src_port, web.dst_port) == (WEB.initiator_port, WEB.responder_port)
    assert table.stats.closed[str(CloseReason.EVICTED)] == 0
    assert len(table) == 2


OPEN_RECORDS = {
    "fin-one-side": tcp_records(forward_flags=TCP_SYN | TCP_ACK | TCP_FIN, end_reason=None),
    "active-timeout": tcp_records(forward_flags=TCP_SYN | TCP_ACK, end_reason=END_ACTIVE),
    # an exporter's idle timeout ends no TCP connection (capture's tcp_idle does)
    "tcp-exporter-idle": tcp_records(forward_flags=TCP_SYN | TCP_ACK, end_reason=END_IDLE),
    "udp-active-timeout": udp_records(END_ACTIVE),
    "no-end-reason": udp_records(None),
}


@pytest.mark.parametrize("records", OPEN_RECORDS.values(), ids=list(OPEN_RECORDS))
def test_records_that_do_not_end_the_flow_leave_the_session_open_until_the_open_hold(
    records: list[FlowRecord],
) -> None:
    """A FIN from one side only, flowEndReason 2, flowEndReason 1 on TCP, or no end reason
    leave the session open past the closing hold; it ends as `idle` only after
    active_timeout + OPEN_HOLD_MARGIN_S."""
    table = new_table()
    table.add_records(records, RECEIVED_TS)
    assert table.advance(RECEIVED_TS + CLOSING_HOLD_S + 0.5) == []
    assert table.advance(RECEIVED_TS + OPEN_HOLD_S - 0.5) == []
    assert len(table) == 1
    session = only(table.advance(RECEIVED_TS + OPEN_HOLD_S + 0.5))
    assert session.close_reason is CloseReason.IDLE


def test_an_open_session_ends_at_its_last_record_end_held_from_its_last_arrival() -> None:
    """An open session's hold runs on the collector's clock from its last record's arrival, and
    when it ends its ended_ts is that record's end (exporter time), not the collector's clock."""
    first = WEB.forward(start_ts=T0, end_ts=T0 + 30, octets=2_000, packets=10)
    second = WEB.forward(start_ts=T0 + 31, end_ts=T0 + 50, octets=600, packets=4)
    first_arrival = first.end_ts + 400  # records arrive well after their span
    second_arrival = first_arrival + 200
    table = new_table()
    table.add_records([first], first_arrival)
    assert table.advance(first_arrival + OPEN_HOLD_S - 1) == []
    table.add_records([second], second_arrival)
    assert table.advance(first_arrival + OPEN_HOLD_S + 1) == []
    assert table.advance(second_arrival + OPEN_HOLD_S - 0.5) == []
    session = only(table.advance(second_arrival + OPEN_HOLD_S + 0.5))
    assert session.close_reason is CloseReason.IDLE
    assert session.ended_ts == second.end_ts
    assert counters(session) == conversation_counters(WEB, [first, second])


def test_a_late_reverse_record_counts_in_the_closed_session_and_renews_its_hold() -> None:
    """A record arriving within the closing hold is counted in the closed session, and the hold
    then counts from that record's arrival."""
    forward_fin, reverse_fin = fins_from_both_sides()
    table = new_table()
    table.add_records([forward_fin], RECEIVED_TS)
    reverse_arrival = RECEIVED_TS + CLOSING_HOLD_S - 2
    table.add_records([reverse_fin], reverse_arrival)
    assert table.advance(reverse_arrival + CLOSING_HOLD_S - 0.5) == []
    session = only(table.advance(reverse_arrival + CLOSING_HOLD_S + 0.5))
    assert session.close_reason is CloseReason.FIN
    assert counters(session) == conversation_counters(WEB, [forward_fin, reverse_fin])


def test_a_syn_record_after_a_fin_close_opens_a_second_session() -> None:
    """Port reuse: after FINs from both sides, a TCP record with a SYN starting after the close
    opens a new session with its own id; the first keeps only its own records."""
    first_connection = fins_from_both_sides()
    close_ts = max(record.end_ts for record in first_connection)
    reused = WEB.forward(
        start_ts=close_ts + 1, end_ts=close_ts + 3, octets=300, packets=3, tcp_flags=TCP_SYN
    )
    table = new_table()
    table.add_records(first_connection, RECEIVED_TS)
    table.add_records([reused], RECEIVED_TS + 1)
    events = close_everything(table)
    by_start = {event.started_ts: event for event in events}
    assert set(by_start) == {T0, reused.start_ts}
    first_session = by_start[T0]
    second_session = by_start[reused.start_ts]
    assert first_session.session_id != second_session.session_id
    assert first_session.close_reason is CloseReason.FIN
    assert counters(first_session) == conversation_counters(WEB, first_connection)
    assert counters(second_session) == conversation_counters(WEB, [reused])


def test_a_record_without_syn_after_a_fin_close_counts_in_the_closed_session() -> None:
    """A record without a SYN within stitch_gap after the close (the last ACKs) is no port
    reuse: it counts in the closed session."""
    first_connection = fins_from_both_sides()
    close_ts = max(record.end_ts for record in first_connection)
    last_ack = WEB.forward(
        start_ts=close_ts + 0.5, end_ts=close_ts + 0.5, octets=40, packets=1, tcp_flags=TCP_ACK
    )
    table = new_table()
    table.add_records(first_connection, RECEIVED_TS)
    table.add_records([last_ack], RECEIVED_TS + 1)
    session = only(close_everything(table))
    assert session.close_reason is CloseReason.FIN
    assert counters(session) == conversation_counters(WEB, [*first_connection, last_ack])


def test_a_record_without_syn_past_stitch_gap_after_a_fin_close_opens_a_midstream_session() -> None:
    """After the connection ended by FIN, a record past stitch_gap belongs to a new session even
    without a SYN (it is no longer the closed connection's), and that session is midstream."""
    first_connection = fins_from_both_sides()
    close_ts = max(record.end_ts for record in first_connection)
    later = WEB.forward(
        start_ts=close_ts + STITCH_GAP_S + 1,
        end_ts=close_ts + STITCH_GAP_S + 3,
        octets=700,
        packets=6,
        tcp_flags=TCP_ACK,
    )
    first_session, second_session = sessions_of([first_connection, [later]])
    assert first_session.close_reason is CloseReason.FIN
    assert counters(first_session) == conversation_counters(WEB, first_connection)
    assert counters(second_session) == conversation_counters(WEB, [later])
    assert second_session.midstream


def test_a_syn_record_after_the_exporter_forced_an_end_opens_a_second_session() -> None:
    """A TCP session its exporter ended (flowEndReason 4) is over: a record with a SYN starting
    after that end opens a new session, even within stitch_gap."""
    forced = WEB.forward(
        start_ts=T0,
        end_ts=T0 + 4,
        octets=1_500,
        packets=9,
        tcp_flags=TCP_SYN | TCP_ACK,
        end_reason=END_FORCED,
    )
    reconnect = WEB.forward(
        start_ts=forced.end_ts + 1,
        end_ts=forced.end_ts + 2,
        octets=200,
        packets=2,
        tcp_flags=TCP_SYN | TCP_ACK,
    )
    first_session, second_session = sessions_of([[forced], [reconnect]])
    assert first_session.close_reason is CloseReason.EXPORTER_FORCED
    assert first_session.session_id != second_session.session_id
    assert counters(first_session) == conversation_counters(WEB, [forced])
    assert counters(second_session) == conversation_counters(WEB, [reconnect])


# -- what every event carries ------------------------------------------------------------------


def test_events_carry_no_payload_figures_the_tables_gateway_and_the_exporters_interface() -> None:
    """Checkpoint and closed events of a record table have payload_bytes_* None, the table's
    gateway, and the exporter's interface (address and observation domain)."""
    interface = exporter_interface(EXPORTER_ADDRESS, 7)
    table = new_table(interface)
    table.add_records(fins_from_both_sides(), RECEIVED_TS)
    table.add_records(udp_records(None), RECEIVED_TS)
    events = table.checkpoint() + table.close_all(CloseReason.SHUTDOWN)
    assert {event.kind for event in events} == {EventKind.CHECKPOINT, EventKind.CLOSED}
    assert len(events) == 3  # the FIN-closed session is written by its closing event only
    for event in events:
        assert event.payload_bytes_tx is None
        assert event.payload_bytes_rx is None
        assert event.gateway == GATEWAY
        assert event.interface == interface
        assert exporter_of_interface(event.interface) == (EXPORTER_ADDRESS, 7)


@pytest.mark.parametrize(
    ("address", "domain_id"),
    [("192.0.2.10", 0), ("2001:db8::10", 0), ("192.0.2.10", 258), ("2001:db8::10", 4294967295)],
)
def test_exporter_interface_round_trips_address_and_domain(address: str, domain_id: int) -> None:
    """exporter_of_interface() reads back what exporter_interface() wrote, IPv4 and IPv6, with
    domain 0 or another."""
    assert exporter_of_interface(exporter_interface(address, domain_id)) == (address, domain_id)


def test_exporter_interface_names_domain_zero_without_a_suffix() -> None:
    """Domain 0 (the common case, and NetFlow v5) is `flow:<address>` alone."""
    assert exporter_interface("192.0.2.10", 0) == "flow:192.0.2.10"
    assert exporter_interface("192.0.2.10", 3) == "flow:192.0.2.10/3"


@pytest.mark.parametrize(
    "interface",
    ["eth0", "wg0", "a.pcap", "flow:", "flow:/3", "flow:192.0.2.10/x", "flow:192.0.2.10/-1"]
    + ["flow:192.0.2.10/1/2"],
)
def test_exporter_of_interface_is_none_for_captures_and_malformed_names(interface: str) -> None:
    """A capture's interface, or a `flow:` name without an address or with a domain that is not
    a number, names no exporter."""
    assert exporter_of_interface(interface) is None


def test_exporter_of_interface_is_none_for_a_domain_of_non_decimal_digits() -> None:
    """A domain of digits that are not decimal ("²") names no exporter rather than raising."""
    assert exporter_of_interface("flow:192.0.2.10/\u00b2") is None


# -- estimated and incomplete ------------------------------------------------------------------


def test_a_sampled_record_marks_its_session_estimated_and_others_stay_exact() -> None:
    """One record whose counters a sampling interval scaled makes its whole session estimated;
    a session of unsampled records is not."""
    sampled = Conversation(HOST_HIGH, 41000, HOST_LOW, 443)
    exact = Conversation(HOST_HIGH, 42000, HOST_LOW, 443)
    table = new_table()
    table.add_records(
        [
            sampled.forward(start_ts=T0, end_ts=T0 + 1, octets=500, packets=5),
            sampled.reverse(start_ts=T0, end_ts=T0 + 1, octets=9_000, packets=6, estimated=True),
            exact.forward(start_ts=T0, end_ts=T0 + 1, octets=500, packets=5),
        ],
        RECEIVED_TS,
    )
    events = table.checkpoint() + close_everything(table)
    assert len(events) == 4
    estimated_by_port = {(event.src_port, event.kind): event.estimated for event in events}
    assert estimated_by_port == {
        (41000, EventKind.CHECKPOINT): True,
        (41000, EventKind.CLOSED): True,
        (42000, EventKind.CHECKPOINT): False,
        (42000, EventKind.CLOSED): False,
    }


def test_lost_records_mark_the_sessions_open_then_incomplete_and_not_later_ones() -> None:
    """add_records(..., lost=n) marks every session open at that moment incomplete, including
    those its own records opened; sessions already ended or opened later stay complete."""
    ended = Conversation(HOST_HIGH, 41000, HOST_LOW, 53, protocol=IpProto.UDP)
    before = Conversation(HOST_HIGH, 42000, HOST_LOW, 443)
    with_the_loss = Conversation(HOST_HIGH, 43000, HOST_LOW, 443)
    after = Conversation(HOST_HIGH, 44000, HOST_LOW, 443)
    table = new_table()
    table.add_records(
        [ended.forward(start_ts=T0, end_ts=T0 + 1, octets=100, packets=1, end_reason=END_IDLE)],
        RECEIVED_TS,
    )
    events = table.advance(RECEIVED_TS + CLOSING_HOLD_S + 1)
    table.add_records(
        [before.forward(start_ts=T0 + 1, end_ts=T0 + 2, octets=100, packets=1)],
        RECEIVED_TS + CLOSING_HOLD_S + 2,
    )
    table.add_records(
        [with_the_loss.forward(start_ts=T0 + 2, end_ts=T0 + 3, octets=100, packets=1)],
        RECEIVED_TS + CLOSING_HOLD_S + 3,
        lost=3,
    )
    table.add_records(
        [after.forward(start_ts=T0 + 3, end_ts=T0 + 4, octets=100, packets=1)],
        RECEIVED_TS + CLOSING_HOLD_S + 4,
    )
    events += close_everything(table)
    incomplete_by_port = {event.src_port: event.incomplete for event in closed(events)}
    assert incomplete_by_port == {41000: False, 42000: True, 43000: True, 44000: False}
    assert table.sessions_marked_incomplete == 2


def test_a_checkpoint_after_lost_records_reports_the_flag_once_without_new_counters() -> None:
    """A session marked incomplete gets one CHECKPOINT carrying the flag even though its
    counters did not change since the last checkpoint; the next checkpoint has nothing."""
    record = WEB.forward(start_ts=T0, end_ts=T0 + 1, octets=100, packets=1)
    table = new_table()
    table.add_records([record], RECEIVED_TS)
    before_loss = only(table.checkpoint())
    assert not before_loss.incomplete
    assert table.checkpoint() == []
    table.add_records([], RECEIVED_TS + 1, lost=3)
    flagged = only(table.checkpoint())
    assert flagged.kind is EventKind.CHECKPOINT
    assert flagged.session_id == before_loss.session_id
    assert flagged.incomplete
    assert counters(flagged) == counters(before_loss)
    assert table.checkpoint() == []


def test_a_checkpoint_leaves_out_sessions_their_exporter_ended_and_their_close_writes_them() -> (
    None
):
    """A session the exporter ended waits CLOSING_HOLD_S, less than a checkpoint interval, for
    its other direction: a checkpoint leaves it out and its CLOSED event is its one write (issue
    21); an open session beside it is checkpointed."""
    table = new_table()
    forward, reverse = fins_from_both_sides()
    table.add_records([forward, reverse], RECEIVED_TS)
    table.add_records(udp_records(None), RECEIVED_TS)
    checkpointed = only(table.checkpoint())
    assert checkpointed.proto is IpProto.UDP
    ended = only(table.advance(RECEIVED_TS + table.closed_hold_s()))
    assert (ended.kind, ended.close_reason, ended.proto) == (
        EventKind.CLOSED,
        CloseReason.FIN,
        IpProto.TCP,
    )
    assert counters(ended) == Counters(
        forward.octets, forward.packets, reverse.octets, reverse.packets
    )


# -- what is accounted -------------------------------------------------------------------------


def test_records_of_other_protocols_or_without_addresses_are_skipped_and_counted() -> None:
    """ICMP records and records with an empty address make no session and count in
    records_skipped; `records` counts the others, and stats sum their packets and bytes, a
    biflow's reverse counters included."""
    tcp = WEB.forward(start_ts=T0, end_ts=T0 + 1, octets=1_000, packets=4)
    biflow = DNS.forward(
        start_ts=T0, end_ts=T0 + 1, octets=80, packets=1, reverse_octets=640, reverse_packets=2
    )
    icmp = flow_record(
        ICMP_PROTOCOL, HOST_HIGH, 0, HOST_LOW, 0, start_ts=T0, end_ts=T0, octets=84, packets=1
    )
    no_source = flow_record(
        IpProto.UDP, "", 5000, HOST_LOW, 53, start_ts=T0, end_ts=T0, octets=60, packets=1
    )
    no_destination = flow_record(
        IpProto.TCP, HOST_HIGH, 5000, "", 443, start_ts=T0, end_ts=T0, octets=60, packets=1
    )
    accounted = [tcp, biflow]
    table = new_table()
    table.add_records([icmp, tcp, no_source, biflow, no_destination], RECEIVED_TS)
    assert table.records_skipped == 3
    assert table.records == len(accounted)
    assert len(table) == len(accounted)
    assert table.stats.packets == sum(
        record.packets + (record.reverse_packets or 0) for record in accounted
    )
    assert table.stats.bytes == sum(
        record.octets + (record.reverse_octets or 0) for record in accounted
    )


# -- resume after a restart --------------------------------------------------------------------


def test_suspend_checkpoints_open_sessions_and_a_resumed_one_continues_with_its_id() -> None:
    """suspend() gives a CHECKPOINT of each open session; a new table resuming one continues it
    with a record within stitch_gap of its last time: same id and start, counters continuing
    from the resumed ones, payload still unknown."""
    other = Conversation(HOST_HIGH, 45000, HOST_LOW, 443)
    before_restart = [
        WEB.forward(start_ts=T0, end_ts=T0 + 60, octets=4_000, packets=30, end_reason=END_ACTIVE),
        WEB.reverse(start_ts=T0, end_ts=T0 + 60, octets=90_000, packets=70, end_reason=END_ACTIVE),
    ]
    first_run = new_table()
    first_run.add_records(
        [*before_restart, other.forward(start_ts=T0, end_ts=T0 + 2, octets=100, packets=1)],
        RECEIVED_TS,
    )
    suspended = first_run.suspend()
    assert {event.kind for event in suspended} == {EventKind.CHECKPOINT}
    assert {event.src_port for event in suspended} == {WEB.initiator_port, other.initiator_port}
    (saved,) = [event for event in suspended if event.src_port == WEB.initiator_port]

    second_run = new_table()
    second_run.resume(saved)
    after_restart = [
        WEB.reverse(
            start_ts=saved.last_ts + STITCH_GAP_S - 1,
            end_ts=saved.last_ts + 20,
            octets=30_000,
            packets=25,
            end_reason=END_IDLE,
        ),
        WEB.forward(
            start_ts=saved.last_ts + STITCH_GAP_S - 1,
            end_ts=saved.last_ts + 20,
            octets=1_000,
            packets=12,
            end_reason=END_IDLE,
        ),
    ]
    second_run.add_records(after_restart, RECEIVED_TS + 80)
    session = only(close_everything(second_run))
    assert session.session_id == saved.session_id
    assert session.started_ts == saved.started_ts
    assert (session.src_addr, session.src_port) == (WEB.initiator, WEB.initiator_port)
    assert counters(session) == conversation_counters(WEB, [*before_restart, *after_restart])
    assert session.payload_bytes_tx is None
    assert session.payload_bytes_rx is None
    assert second_run.stats.sessions_opened == 0


def test_a_resumed_session_without_further_records_ends_idle_at_its_last_record_end() -> None:
    """A resumed session that gets no more records still expires: once the open hold has long
    passed it closes as `idle`, ended at its stored last time, with its stored counters."""
    first_run = new_table()
    first_run.add_records(
        [WEB.forward(start_ts=T0, end_ts=T0 + 60, octets=4_000, packets=30)], RECEIVED_TS
    )
    (saved,) = first_run.suspend()
    restart_ts = RECEIVED_TS + 30
    second_run = new_table(clock=lambda: restart_ts)
    second_run.resume(saved)
    # the hold counts from the restart (the collector's clock), not from the stored last time
    assert second_run.advance(restart_ts + OPEN_HOLD_S - 0.5) == []
    assert second_run.advance(restart_ts) == []
    session = only(second_run.advance(restart_ts + 2 * OPEN_HOLD_S))
    assert session.session_id == saved.session_id
    assert session.close_reason is CloseReason.IDLE
    assert session.ended_ts == saved.last_ts
    assert counters(session) == counters(saved)


# -- UTC days ----------------------------------------------------------------------------------


def test_a_session_across_midnight_marks_its_counters_as_they_stood_before_the_new_day() -> None:
    """A session with records ending on both sides of a UTC midnight carries a day mark of the
    old day holding the counters of the records that ended before midnight; the rest of its
    traffic falls on the new day."""
    before_midnight = [
        WEB.forward(
            start_ts=MIDNIGHT - 120,
            end_ts=MIDNIGHT - 60,
            octets=3_000,
            packets=20,
            end_reason=END_ACTIVE,
        ),
        WEB.reverse(
            start_ts=MIDNIGHT - 119,
            end_ts=MIDNIGHT - 61,
            octets=50_000,
            packets=40,
            end_reason=END_ACTIVE,
        ),
    ]
    after_midnight = [
        WEB.forward(
            start_ts=MIDNIGHT - 58,
            end_ts=MIDNIGHT + 30,
            octets=700,
            packets=9,
            end_reason=END_IDLE,
        ),
    ]
    table = new_table()
    table.add_records(before_midnight, MIDNIGHT - 55)
    table.add_records(after_midnight, MIDNIGHT + 35)
    session = only(close_everything(table))
    old_day = day_of(MIDNIGHT - 1)
    at_midnight = conversation_counters(WEB, before_midnight)
    assert session.day_marks == (
        (
            old_day,
            at_midnight.bytes_tx,
            at_midnight.bytes_rx,
            at_midnight.packets_tx,
            at_midnight.packets_rx,
        ),
    )
    totals = counters(session)
    assert totals == conversation_counters(WEB, [*before_midnight, *after_midnight])
    new_day_traffic = conversation_counters(WEB, after_midnight)
    assert traffic_by_day(
        session.day_marks,
        day_of(session.last_ts),
        (totals.bytes_tx, totals.bytes_rx, totals.packets_tx, totals.packets_rx),
    )[-1] == (
        day_of(MIDNIGHT),
        new_day_traffic.bytes_tx,
        new_day_traffic.bytes_rx,
        new_day_traffic.packets_tx,
        new_day_traffic.packets_rx,
    )


def test_a_session_on_one_day_has_no_day_marks() -> None:
    """Records all ending before midnight leave no day mark."""
    table = new_table()
    table.add_records(fins_from_both_sides(), RECEIVED_TS)
    session = only(close_everything(table))
    assert session.day_marks == ()


def test_a_record_ending_before_midnight_counts_on_its_day_wherever_it_sorts() -> None:
    """Two sessions exported in one batch: a long one that started first and ended after
    midnight, and a short one that ended before it; the short one's next record ends on the
    new day. The short session's first record counts on the old day (a day mark)."""
    long_flow = Conversation(HOST_HIGH, 46000, HOST_LOW, 443)
    short_flow = Conversation(HOST_HIGH, 47000, HOST_LOW, 443)
    long_record = long_flow.forward(
        start_ts=MIDNIGHT - 1000, end_ts=MIDNIGHT + 10, octets=80_000, packets=100
    )
    short_first = short_flow.forward(
        start_ts=MIDNIGHT - 50, end_ts=MIDNIGHT - 40, octets=2_000, packets=10
    )
    short_next = short_flow.forward(
        start_ts=MIDNIGHT - 38, end_ts=MIDNIGHT + 20, octets=500, packets=5
    )
    table = new_table()
    table.add_records([short_first, long_record], MIDNIGHT + 15)
    table.add_records([short_next], MIDNIGHT + 25)
    events = close_everything(table)
    (short_session,) = [event for event in events if event.src_port == short_flow.initiator_port]
    at_midnight = conversation_counters(short_flow, [short_first])
    assert short_session.day_marks == (
        (
            day_of(MIDNIGHT - 1),
            at_midnight.bytes_tx,
            at_midnight.bytes_rx,
            at_midnight.packets_tx,
            at_midnight.packets_rx,
        ),
    )


# -- started time ------------------------------------------------------------------------------


def test_an_earlier_starting_record_moves_the_start_of_a_session_never_checkpointed() -> None:
    """A later record of an existing session that started earlier (the other direction's, say)
    moves the session's start back while no checkpoint has written it."""
    first = WEB.forward(start_ts=T0 + 10, end_ts=T0 + 20, octets=500, packets=5)
    earlier = WEB.reverse(start_ts=T0 + 5, end_ts=T0 + 20, octets=4_000, packets=4)
    table = new_table()
    table.add_records([first], RECEIVED_TS)
    table.add_records([earlier], RECEIVED_TS + 1)
    session = only(close_everything(table))
    assert session.started_ts == earlier.start_ts
    assert counters(session) == conversation_counters(WEB, [first, earlier])


def test_after_a_checkpoint_an_earlier_starting_record_keeps_the_written_start() -> None:
    """Once a checkpoint has written the session, its start (the row's partition) is fixed: an
    earlier-starting record is counted but does not move it."""
    first = WEB.forward(start_ts=T0 + 10, end_ts=T0 + 20, octets=500, packets=5)
    earlier = WEB.reverse(start_ts=T0 + 5, end_ts=T0 + 20, octets=4_000, packets=4)
    table = new_table()
    table.add_records([first], RECEIVED_TS)
    written = only(table.checkpoint())
    table.add_records([earlier], RECEIVED_TS + 1)
    session = only(close_everything(table))
    assert written.started_ts == first.start_ts
    assert session.started_ts == first.start_ts
    assert counters(session) == conversation_counters(WEB, [first, earlier])


# -- holds and idle ends -----------------------------------------------------------------------


def test_a_udp_direction_idle_does_not_end_the_session_while_the_other_is_still_active() -> None:
    """A one-way stream answered once: the exporter ends the answer's direction as idle and
    cuts the stream's at its active timeout. The session stays open, and the stream's next
    piece, arriving an active timeout later, continues the same session."""
    first_piece = STREAM.forward(
        start_ts=T0, end_ts=T0 + 300, octets=900_000, packets=600, end_reason=END_ACTIVE
    )
    answer = STREAM.reverse(
        start_ts=T0 + 0.1, end_ts=T0 + 2, octets=120, packets=1, end_reason=END_IDLE
    )
    next_piece = STREAM.forward(
        start_ts=T0 + 300.5, end_ts=T0 + 420, octets=400_000, packets=250, end_reason=END_IDLE
    )
    table = new_table()
    table.add_records([first_piece, answer], RECEIVED_TS)
    assert table.advance(RECEIVED_TS + 299) == []
    table.add_records([next_piece], RECEIVED_TS + 300)
    ended = only(table.close_all(CloseReason.SHUTDOWN))
    records = [first_piece, answer, next_piece]
    assert counters(ended) == conversation_counters(STREAM, records)


def test_a_tcp_connection_idle_longer_than_the_active_timeout_stays_one_session() -> None:
    """An interactive TCP connection idle between two pieces for longer than the exporter's
    active timeout (but within tcp_idle) is one session, as capture keeps it: the session
    waits for the longer of the two."""
    first_piece = WEB.forward(
        start_ts=T0, end_ts=T0 + 1, octets=800, packets=6, tcp_flags=TCP_SYN, end_reason=END_IDLE
    )
    long_tcp_idle = Timeouts(udp_idle_s=30.0, tcp_idle_s=3600.0, tcp_linger_s=5.0)
    gap_s = long_tcp_idle.tcp_idle_s - 1  # far beyond the active timeout and its margin
    assert gap_s > ACTIVE_TIMEOUT_S + OPEN_HOLD_MARGIN_S
    second_piece = WEB.forward(
        start_ts=T0 + 1 + gap_s, end_ts=T0 + 2 + gap_s, octets=500, packets=4, tcp_flags=TCP_FIN
    )
    table = RecordTable(
        long_tcp_idle,
        stitch_gap_s=STITCH_GAP_S,
        active_timeout_s=ACTIVE_TIMEOUT_S,
        interface=exporter_interface(EXPORTER_ADDRESS, 0),
        gateway=GATEWAY,
        attribute=attribute,
        is_client=is_client,
    )
    table.add_records([first_piece], RECEIVED_TS)
    assert table.advance(RECEIVED_TS + gap_s) == []
    table.add_records([second_piece], RECEIVED_TS + gap_s)
    ended = only(table.close_all(CloseReason.SHUTDOWN))
    assert counters(ended) == conversation_counters(WEB, [first_piece, second_piece])
