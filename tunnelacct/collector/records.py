"""What the flow decoder yields (FlowRecord) and the reasons it counts bad input under."""

from __future__ import annotations

from enum import StrEnum


class DecodeReason(StrEnum):
    """Counter keys of a flow exporter: bad input by reason, plus a few plain tallies."""

    # Tallies, not errors.
    DATAGRAMS = "datagrams"
    RECORDS = "records"  # flow records yielded (options records are not counted here)
    OPTIONS_RECORDS = "options_records"
    TEMPLATES = "templates"  # template definitions learned or replaced
    TEMPLATES_WITHDRAWN = "templates_withdrawn"
    TEMPLATES_EXPIRED = "templates_expired"
    EXPORTER_RESTARTS = "exporter_restarts"
    LOST_RECORDS = "lost_records"  # IPFIX and v5: sequence gaps count data records
    LOST_PACKETS = "lost_packets"  # NetFlow v9: sequence gaps count export packets
    PENDING_SETS = "pending_sets"  # data sets buffered until their template arrives
    PENDING_DECODED = "pending_decoded"
    # Bad input.
    TRUNCATED_HEADER = "truncated_header"
    UNKNOWN_VERSION = "unknown_version"
    BAD_MESSAGE_LENGTH = "bad_message_length"  # IPFIX header length vs datagram size
    TRUNCATED_RECORDS = "truncated_records"  # v5: header count beyond the datagram
    BAD_SET_LENGTH = "bad_set_length"  # zero, shorter than a set header, or past the end
    RESERVED_SET_ID = "reserved_set_id"
    BAD_TEMPLATE_ID = "bad_template_id"  # a template id below 256
    TEMPLATE_TOO_SHORT = "template_too_short"
    BAD_FIELD_LENGTH = "bad_field_length"  # a known field with a length it cannot have
    MALFORMED_FIELD = "malformed_field"  # a variable-length field past its record's end
    EMPTY_RECORD_TEMPLATE = "empty_record_template"  # data for a template of zero bytes
    PENDING_DROPPED_OVERFLOW = "pending_dropped_overflow"
    PENDING_DROPPED_EXPIRED = "pending_dropped_expired"
    PENDING_DROPPED_RESTART = "pending_dropped_restart"  # their exporter restarted meanwhile
    MISSING_TIME_BASE = "missing_time_base"  # IPFIX uptimes without systemInitTime (IE 160)
    SEQUENCE_BACKWARDS = "sequence_backwards"  # reordered or duplicated message, not counted lost


class FlowRecord:
    """One flow record of an exporter, counters already scaled by the sampling interval.

    `ts` values are float epoch seconds. `reverse_octets`/`reverse_packets` are None unless the
    record is an RFC 5103 biflow (PEN 29305 IEs 1 and 2). `estimated` is True when a sampling
    interval above 1 scaled the counters.
    """

    __slots__ = (
        "exporter",
        "version",
        "domain_id",
        "protocol",
        "src_addr",
        "dst_addr",
        "src_port",
        "dst_port",
        "octets",
        "packets",
        "reverse_octets",
        "reverse_packets",
        "start_ts",
        "end_ts",
        "tcp_flags",
        "end_reason",
        "direction",
        "sampling_interval",
        "estimated",
    )

    def __init__(
        self,
        exporter: tuple[str, int],
        version: int,
        domain_id: int,
        protocol: int,
        src_addr: str,
        dst_addr: str,
        src_port: int,
        dst_port: int,
        octets: int,
        packets: int,
        reverse_octets: int | None,
        reverse_packets: int | None,
        start_ts: float,
        end_ts: float,
        tcp_flags: int | None,
        end_reason: int | None,
        direction: int | None,
        sampling_interval: int,
        estimated: bool,
    ) -> None:
        self.exporter = exporter
        self.version = version
        self.domain_id = domain_id
        self.protocol = protocol
        self.src_addr = src_addr
        self.dst_addr = dst_addr
        self.src_port = src_port
        self.dst_port = dst_port
        self.octets = octets
        self.packets = packets
        self.reverse_octets = reverse_octets
        self.reverse_packets = reverse_packets
        self.start_ts = start_ts
        self.end_ts = end_ts
        self.tcp_flags = tcp_flags
        self.end_reason = end_reason
        self.direction = direction
        self.sampling_interval = sampling_interval
        self.estimated = estimated

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"FlowRecord({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlowRecord):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    __hash__ = None  # type: ignore[assignment]
