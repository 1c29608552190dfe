"""Decode NetFlow v5, NetFlow v9 and IPFIX (RFC 7011) datagrams into FlowRecord lists.

Pure code: no sockets, no clock (callers pass `now`, epoch seconds), no logging per record.
Nothing raises on bad input; every problem is counted per exporter under a DecodeReason.

Example:
    decoder = FlowDecoder(template_timeout_s=1800.0, pending_sets=64)
    records = decoder.decode_datagram(payload, ("192.0.2.10", 2055), now=time.time())
    decoder.counters[("192.0.2.10", 2055)]["records"]
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import Any

from tunnelacct.collector.records import DecodeReason, FlowRecord
from tunnelacct.collector.templates import (
    TIME_EPOCH_MS,
    TIME_EPOCH_S,
    TIME_NONE,
    TIME_NTP,
    TIME_UPTIME_MS,
    FieldSpec,
    Template,
    TemplateCache,
    TemplateKey,
)

Exporter = tuple[str, int]

VERSION_HEADER = struct.Struct(">H")
# NetFlow v5: version, count, sysUptime ms, unix secs, unix nsecs, flow sequence, engine type,
# engine id, sampling (2 mode bits + 14 interval bits).
V5_HEADER = struct.Struct(">HHIIIIBBH")
# srcaddr, dstaddr, nexthop, input, output, dPkts, dOctets, First, Last, srcport, dstport, pad,
# tcp_flags, prot, tos, src_as, dst_as, src_mask, dst_mask, pad.
V5_RECORD = struct.Struct(">4s4s4xHHIIIIHHxBBBHHBB2x")
# NetFlow v9 (RFC 3954): version, count, sysUptime ms, unix secs, sequence, source id.
V9_HEADER = struct.Struct(">HHIIII")
# IPFIX (RFC 7011 section 3.1): version, length, export time s, sequence, observation domain.
IPFIX_HEADER = struct.Struct(">HHIII")
SET_HEADER = struct.Struct(">HH")
V9_OPTIONS_HEADER = struct.Struct(">HHH")  # template id, scope length, option length (bytes)
IPFIX_OPTIONS_HEADER = struct.Struct(">HHH")  # template id, field count, scope field count
FIELD_SPEC = struct.Struct(">HH")
ENTERPRISE = struct.Struct(">I")

ENTERPRISE_BIT = 0x8000
NTP_TO_UNIX_S = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
SERIAL_MODULUS = 1 << 32
SERIAL_HALF = 1 << 31
V9_TEMPLATE_SET = 0
V9_OPTIONS_SET = 1
IPFIX_TEMPLATE_SET = 2
IPFIX_OPTIONS_SET = 3
MIN_DATA_SET_ID = 256
V5_SAMPLING_INTERVAL_MASK = 0x3FFF


def serial_difference(later: int, earlier: int) -> int:
    """Signed distance later - earlier of two 32-bit serial numbers (RFC 1982 style)."""
    distance = (later - earlier) % SERIAL_MODULUS
    return distance - SERIAL_MODULUS if distance >= SERIAL_HALF else distance


class DomainState:
    """Sequence and options state of one (exporter, version, domain)."""

    __slots__ = (
        "last_sequence",
        "last_uptime_ms",
        "synced_sequence",
        "synced_records",
        "includes_current",
        "lost",
        "sampling_interval",
        "system_init_ms",
    )

    def __init__(self) -> None:
        self.last_sequence: int | None = None
        self.last_uptime_ms: int | None = None
        # Sequence and record count of the previous fully decoded message (None: resync).
        self.synced_sequence: int | None = None
        self.synced_records = 0
        # IPFIX: does the exporter's sequence include the current message (softflowd) or not
        # (RFC 7011)? None until two messages tell the conventions apart.
        self.includes_current: bool | None = None
        self.lost = 0  # records (IPFIX, v5) or export packets (v9)
        self.sampling_interval = 1
        self.system_init_ms: int | None = None


class SetContext:
    """Header facts a data set needs to be decoded later (times, domain), and the sampling
    interval the config sets for its exporter (None: what the exporter says)."""

    __slots__ = ("exporter", "key", "version", "unix_secs", "uptime_ms", "sampling")

    def __init__(
        self,
        exporter: Exporter,
        key: TemplateKey,
        version: int,
        unix_secs: int,
        uptime_ms: int,
        sampling: int | None = None,
    ) -> None:
        self.exporter = exporter
        self.key = key
        self.version = version
        self.unix_secs = unix_secs
        self.uptime_ms = uptime_ms
        self.sampling = sampling


class PendingSet:
    """A data set whose template had not arrived yet."""

    __slots__ = ("context", "template_id", "body", "arrived_ts")

    def __init__(self, context: SetContext, template_id: int, body: bytes, arrived_ts: float):
        self.context = context
        self.template_id = template_id
        self.body = body
        self.arrived_ts = arrived_ts


class FlowDecoder:
    """Per-exporter template state plus the decoders of NetFlow v5, v9 and IPFIX datagrams."""

    def __init__(
        self,
        template_timeout_s: float = 1800.0,
        pending_sets: int = 64,
        pending_timeout_s: float = 60.0,
    ) -> None:
        self.templates = TemplateCache(template_timeout_s)
        self.pending_sets = pending_sets
        self.pending_timeout_s = pending_timeout_s
        self.counters: dict[Exporter, dict[str, int]] = {}
        self.domains: dict[TemplateKey, DomainState] = {}
        self._pending: dict[Exporter, deque[PendingSet]] = {}

    # -- public -----------------------------------------------------------------------------

    def decode_datagram(
        self, payload: bytes, exporter: Exporter, now: float, sampling: int | None = None
    ) -> list[FlowRecord]:
        """Decode one UDP payload from `exporter` received at `now` (epoch s); never raises.

        `sampling` is the config's interval for this exporter ([[collector.exporters]]
        sampling = N): it scales the counters whatever the exporter reports; None = "auto",
        the interval of the exporter's options records (v9/IPFIX) or v5 header."""
        counters = self.counters.get(exporter)
        if counters is None:
            counters = self.counters[exporter] = {}
        self._count(counters, DecodeReason.DATAGRAMS)
        out: list[FlowRecord] = []
        self._expire_pending(exporter, now, counters)
        if len(payload) < 2:
            self._count(counters, DecodeReason.TRUNCATED_HEADER)
            return out
        version = VERSION_HEADER.unpack_from(payload, 0)[0]
        if version == 10:
            self._decode_ipfix(payload, exporter, now, counters, out, sampling)
        elif version == 9:
            self._decode_v9(payload, exporter, now, counters, out, sampling)
        elif version == 5:
            self._decode_v5(payload, exporter, counters, out, sampling)
        else:
            self._count(counters, DecodeReason.UNKNOWN_VERSION)
        return out

    def stats(self, exporter: Exporter) -> dict[str, int]:
        """A copy of one exporter's counters (reason or tally -> count)."""
        return dict(self.counters.get(exporter, {}))

    def lost(self, exporter: Exporter, version: int, domain_id: int) -> int:
        """Records (IPFIX, v5) or export packets (v9) lost in one domain's sequence."""
        state = self.domains.get((exporter[0], exporter[1], version, domain_id))
        return state.lost if state is not None else 0

    def expire_templates(self, now: float) -> int:
        """Drop templates not refreshed within the timeout; returns how many."""
        removed = self.templates.expire(now)
        for key, count in removed.items():
            counters = self.counters.setdefault((key[0], key[1]), {})
            self._count(counters, DecodeReason.TEMPLATES_EXPIRED, count)
        return sum(removed.values())

    def pending_count(self, exporter: Exporter) -> int:
        """Data sets of one exporter waiting for their template."""
        return len(self._pending.get(exporter, ()))

    # -- headers ----------------------------------------------------------------------------

    @staticmethod
    def _count(counters: dict[str, int], reason: str, amount: int = 1) -> None:
        counters[reason] = counters.get(reason, 0) + amount

    def _domain(self, key: TemplateKey) -> DomainState:
        state = self.domains.get(key)
        if state is None:
            state = self.domains[key] = DomainState()
        return state

    def _restart(self, key: TemplateKey, state: DomainState, counters: dict[str, int]) -> None:
        """The exporter restarted: its templates and options state are stale."""
        self._count(counters, DecodeReason.EXPORTER_RESTARTS)
        self.templates.drop_domain(key)
        state.synced_sequence = None
        state.sampling_interval = 1
        state.system_init_ms = None
        pending = self._pending.get((key[0], key[1]))
        if pending:
            kept = [entry for entry in pending if entry.context.key != key]
            self._count(counters, DecodeReason.PENDING_DROPPED_RESTART, len(pending) - len(kept))
            pending.clear()
            pending.extend(kept)

    def _decode_v5(
        self,
        payload: bytes,
        exporter: Exporter,
        counters: dict[str, int],
        out: list[FlowRecord],
        sampling: int | None,
    ) -> None:
        if len(payload) < V5_HEADER.size:
            self._count(counters, DecodeReason.TRUNCATED_HEADER)
            return
        header = V5_HEADER.unpack_from(payload, 0)
        count = header[1]
        uptime_ms = header[2]
        unix_secs = header[3]
        unix_nsecs = header[4]
        sequence = header[5]
        domain_id = header[6] << 8 | header[7]
        sampling_interval = max(1, header[8] & V5_SAMPLING_INTERVAL_MASK)
        if sampling is not None:
            sampling_interval = sampling
        available = (len(payload) - V5_HEADER.size) // V5_RECORD.size
        if count > available:
            self._count(counters, DecodeReason.TRUNCATED_RECORDS)
            count = available
        key = (exporter[0], exporter[1], 5, domain_id)
        state = self._domain(key)
        # v5 sequence: flows seen before this datagram.
        if state.last_sequence is not None and serial_difference(sequence, state.last_sequence) < 0:
            self._count(counters, DecodeReason.EXPORTER_RESTARTS)
            state.synced_sequence = None
        if state.synced_sequence is not None:
            gap = serial_difference(sequence, state.synced_sequence + state.synced_records)
            if gap > 0:
                state.lost += gap
                self._count(counters, DecodeReason.LOST_RECORDS, gap)
        state.last_sequence = sequence
        state.synced_sequence = sequence
        state.synced_records = header[1]
        export_ts = unix_secs + unix_nsecs / 1e9
        estimated = sampling_interval > 1
        offset = V5_HEADER.size
        for _index in range(count):
            record = V5_RECORD.unpack_from(payload, offset)
            offset += V5_RECORD.size
            start_ts = export_ts - serial_difference(uptime_ms, record[6]) / 1000.0
            end_ts = export_ts - serial_difference(uptime_ms, record[7]) / 1000.0
            out.append(
                FlowRecord(
                    exporter,
                    5,
                    domain_id,
                    record[11],
                    socket.inet_ntoa(record[0]),
                    socket.inet_ntoa(record[1]),
                    record[8],
                    record[9],
                    record[5] * sampling_interval,
                    record[4] * sampling_interval,
                    None,
                    None,
                    start_ts,
                    end_ts,
                    record[10],
                    None,
                    None,
                    sampling_interval,
                    estimated,
                )
            )
        self._count(counters, DecodeReason.RECORDS, count)

    def _decode_v9(
        self,
        payload: bytes,
        exporter: Exporter,
        now: float,
        counters: dict[str, int],
        out: list[FlowRecord],
        sampling: int | None,
    ) -> None:
        if len(payload) < V9_HEADER.size:
            self._count(counters, DecodeReason.TRUNCATED_HEADER)
            return
        header = V9_HEADER.unpack_from(payload, 0)
        uptime_ms = header[2]
        unix_secs = header[3]
        sequence = header[4]
        source_id = header[5]
        key = (exporter[0], exporter[1], 9, source_id)
        state = self._domain(key)
        restarted = state.last_uptime_ms is not None and (
            serial_difference(uptime_ms, state.last_uptime_ms) < 0
            or serial_difference(sequence, state.last_sequence or 0) < 0
        )
        if restarted:
            self._restart(key, state, counters)
        elif state.last_sequence is not None:
            # RFC 3954: the v9 sequence counts export packets.
            gap = serial_difference(sequence, state.last_sequence + 1)
            if gap > 0:
                state.lost += gap
                self._count(counters, DecodeReason.LOST_PACKETS, gap)
            elif gap < 0:
                self._count(counters, DecodeReason.SEQUENCE_BACKWARDS)
        state.last_uptime_ms = uptime_ms
        state.last_sequence = sequence
        context = SetContext(exporter, key, 9, unix_secs, uptime_ms, sampling)
        self._walk_sets(payload, V9_HEADER.size, len(payload), context, state, now, counters, out)

    def _decode_ipfix(
        self,
        payload: bytes,
        exporter: Exporter,
        now: float,
        counters: dict[str, int],
        out: list[FlowRecord],
        sampling: int | None,
    ) -> None:
        if len(payload) < IPFIX_HEADER.size:
            self._count(counters, DecodeReason.TRUNCATED_HEADER)
            return
        header = IPFIX_HEADER.unpack_from(payload, 0)
        message_length = header[1]
        export_secs = header[2]
        sequence = header[3]
        domain_id = header[4]
        if message_length < IPFIX_HEADER.size or message_length > len(payload):
            self._count(counters, DecodeReason.BAD_MESSAGE_LENGTH)
            return
        key = (exporter[0], exporter[1], 10, domain_id)
        state = self._domain(key)
        if state.last_sequence is not None and serial_difference(sequence, state.last_sequence) < 0:
            # Both sequence conventions only ever grow: going backwards is a restart.
            self._restart(key, state, counters)
        state.last_sequence = sequence
        context = SetContext(exporter, key, 10, export_secs, 0, sampling)
        first_record = len(out)
        complete = self._walk_sets(
            payload, IPFIX_HEADER.size, message_length, context, state, now, counters, out
        )
        self._account_ipfix(state, sequence, len(out) - first_record, complete, counters)

    def _account_ipfix(
        self,
        state: DomainState,
        sequence: int,
        records: int,
        complete: bool,
        counters: dict[str, int],
    ) -> None:
        """Count records lost between two IPFIX messages of one domain.

        RFC 7011 section 3.1: the sequence counts data records sent *before* this message;
        softflowd counts them *including* this message. The first two messages whose record
        counts differ tell the conventions apart; until then a gap is counted as RFC 7011 says.
        Only flow records count (softflowd does not count options records).
        """
        if not complete:
            # Sets waiting for a template: this message's record count is not known yet.
            state.synced_sequence = None
            return
        if state.synced_sequence is None:
            state.synced_sequence = sequence
            state.synced_records = records
            return
        expected_rfc = (state.synced_sequence + state.synced_records) % SERIAL_MODULUS
        expected_including = (state.synced_sequence + records) % SERIAL_MODULUS
        if state.includes_current is None:
            matches_rfc = sequence == expected_rfc
            matches_including = sequence == expected_including
            if matches_rfc != matches_including:
                state.includes_current = matches_including
        if state.includes_current:
            gap = serial_difference(sequence, expected_including)
        else:
            gap = serial_difference(sequence, expected_rfc)
        if gap > 0:
            state.lost += gap
            self._count(counters, DecodeReason.LOST_RECORDS, gap)
        elif gap < 0:
            self._count(counters, DecodeReason.SEQUENCE_BACKWARDS)
        state.synced_sequence = sequence
        state.synced_records = records

    # -- sets -------------------------------------------------------------------------------

    def _walk_sets(
        self,
        payload: bytes,
        offset: int,
        end: int,
        context: SetContext,
        state: DomainState,
        now: float,
        counters: dict[str, int],
        out: list[FlowRecord],
    ) -> bool:
        """Decode every set of a message; False when a data set had to wait for its template."""
        complete = True
        is_ipfix = context.version == 10
        while end - offset >= SET_HEADER.size:
            set_header = SET_HEADER.unpack_from(payload, offset)
            set_id = set_header[0]
            set_length = set_header[1]
            if set_length < SET_HEADER.size or offset + set_length > end:
                # Nothing after a bad length can be trusted: stop this message.
                self._count(counters, DecodeReason.BAD_SET_LENGTH)
                return complete
            body_start = offset + SET_HEADER.size
            body_end = offset + set_length
            offset = body_end
            if set_id >= MIN_DATA_SET_ID:
                template = self._live_template(context.key, set_id, now, counters)
                if template is None:
                    complete = False
                    self._buffer(context, set_id, payload[body_start:body_end], now, counters)
                else:
                    self._decode_data(template, payload, body_start, body_end, context, state, out)
            elif is_ipfix and set_id == IPFIX_TEMPLATE_SET:
                self._parse_ipfix_templates(payload, body_start, body_end, False, context, now, out)
            elif is_ipfix and set_id == IPFIX_OPTIONS_SET:
                self._parse_ipfix_templates(payload, body_start, body_end, True, context, now, out)
            elif not is_ipfix and set_id == V9_TEMPLATE_SET:
                self._parse_v9_templates(payload, body_start, body_end, context, now, out)
            elif not is_ipfix and set_id == V9_OPTIONS_SET:
                self._parse_v9_options_templates(payload, body_start, body_end, context, now, out)
            else:
                self._count(counters, DecodeReason.RESERVED_SET_ID)
        return complete

    def _live_template(
        self, key: TemplateKey, template_id: int, now: float, counters: dict[str, int]
    ) -> Template | None:
        if self.templates.is_expired(key, template_id, now):
            self._count(counters, DecodeReason.TEMPLATES_EXPIRED)
        return self.templates.lookup(key, template_id, now)

    def _no_more_templates(
        self, payload: bytes, offset: int, end: int, template_id: int, counters: dict[str, int]
    ) -> bool:
        """Whether a v9 (options) template set ends at `offset`: the rest is zero padding, or
        the id is below 256, which no template may have (counted)."""
        if template_id >= MIN_DATA_SET_ID:
            return False
        if any(payload[offset:end]):
            self._count(counters, DecodeReason.BAD_TEMPLATE_ID)
        return True

    def _parse_v9_templates(
        self,
        payload: bytes,
        offset: int,
        end: int,
        context: SetContext,
        now: float,
        out: list[FlowRecord],
    ) -> None:
        counters = self.counters[context.exporter]
        while end - offset >= FIELD_SPEC.size:
            head = FIELD_SPEC.unpack_from(payload, offset)
            template_id = head[0]
            field_count = head[1]
            if self._no_more_templates(payload, offset, end, template_id, counters):
                return
            fields_end = offset + FIELD_SPEC.size * (1 + field_count)
            if field_count == 0 or fields_end > end:
                self._count(counters, DecodeReason.TEMPLATE_TOO_SHORT)
                return
            fields = [
                FieldSpec(*FIELD_SPEC.unpack_from(payload, position))
                for position in range(offset + FIELD_SPEC.size, fields_end, FIELD_SPEC.size)
            ]
            offset = fields_end
            self._learn(Template(template_id, fields, 9), context, now, out)

    def _parse_v9_options_templates(
        self,
        payload: bytes,
        offset: int,
        end: int,
        context: SetContext,
        now: float,
        out: list[FlowRecord],
    ) -> None:
        counters = self.counters[context.exporter]
        while end - offset >= V9_OPTIONS_HEADER.size:
            head = V9_OPTIONS_HEADER.unpack_from(payload, offset)
            template_id = head[0]
            scope_bytes = head[1]
            option_bytes = head[2]
            if self._no_more_templates(payload, offset, end, template_id, counters):
                return
            fields_start = offset + V9_OPTIONS_HEADER.size
            fields_end = fields_start + scope_bytes + option_bytes
            if scope_bytes % 4 or option_bytes % 4 or fields_end > end:
                self._count(counters, DecodeReason.TEMPLATE_TOO_SHORT)
                return
            fields = [
                FieldSpec(*FIELD_SPEC.unpack_from(payload, position))
                for position in range(fields_start, fields_end, FIELD_SPEC.size)
            ]
            offset = fields_end
            template = Template(
                template_id, fields, 9, scope_count=scope_bytes // 4, is_options=True
            )
            self._learn(template, context, now, out)

    def _parse_ipfix_templates(
        self,
        payload: bytes,
        offset: int,
        end: int,
        is_options: bool,
        context: SetContext,
        now: float,
        out: list[FlowRecord],
    ) -> None:
        counters = self.counters[context.exporter]
        header_bytes = IPFIX_OPTIONS_HEADER.size if is_options else FIELD_SPEC.size
        while end - offset >= FIELD_SPEC.size:
            head = FIELD_SPEC.unpack_from(payload, offset)
            template_id = head[0]
            field_count = head[1]
            if field_count == 0:
                # RFC 7011 section 8.1: a template withdrawal; the set id withdraws them all.
                if template_id == (IPFIX_OPTIONS_SET if is_options else IPFIX_TEMPLATE_SET):
                    withdrawn = self.templates.withdraw_all(context.key, is_options)
                elif template_id >= MIN_DATA_SET_ID:
                    withdrawn = self.templates.withdraw(context.key, template_id)
                elif not any(payload[offset:end]):
                    return  # padding
                else:
                    self._count(counters, DecodeReason.BAD_TEMPLATE_ID)
                    return
                self._count(counters, DecodeReason.TEMPLATES_WITHDRAWN, withdrawn)
                offset += FIELD_SPEC.size
                continue
            if template_id < MIN_DATA_SET_ID:
                self._count(counters, DecodeReason.BAD_TEMPLATE_ID)
                return
            if offset + header_bytes > end:
                self._count(counters, DecodeReason.TEMPLATE_TOO_SHORT)
                return
            scope_count = IPFIX_OPTIONS_HEADER.unpack_from(payload, offset)[2] if is_options else 0
            position = offset + header_bytes
            fields = []
            for _index in range(field_count):
                if position + FIELD_SPEC.size > end:
                    self._count(counters, DecodeReason.TEMPLATE_TOO_SHORT)
                    return
                spec = FIELD_SPEC.unpack_from(payload, position)
                position += FIELD_SPEC.size
                enterprise = 0
                if spec[0] & ENTERPRISE_BIT:
                    if position + ENTERPRISE.size > end:
                        self._count(counters, DecodeReason.TEMPLATE_TOO_SHORT)
                        return
                    enterprise = ENTERPRISE.unpack_from(payload, position)[0]
                    position += ENTERPRISE.size
                fields.append(FieldSpec(spec[0] & ~ENTERPRISE_BIT, spec[1], enterprise))
            offset = position
            if scope_count > field_count:
                self._count(counters, DecodeReason.TEMPLATE_TOO_SHORT)
                return
            template = Template(
                template_id, fields, 10, scope_count=scope_count, is_options=is_options
            )
            self._learn(template, context, now, out)

    def _learn(
        self, template: Template, context: SetContext, now: float, out: list[FlowRecord]
    ) -> None:
        """Store a template, then decode the data sets that were waiting for it."""
        counters = self.counters[context.exporter]
        if template.bad_field_lengths:
            self._count(counters, DecodeReason.BAD_FIELD_LENGTH, template.bad_field_lengths)
        if self.templates.store(context.key, template, now):
            self._count(counters, DecodeReason.TEMPLATES)
        pending = self._pending.get(context.exporter)
        if not pending:
            return
        ready = [
            entry
            for entry in pending
            if entry.template_id == template.template_id and entry.context.key == context.key
        ]
        if not ready:
            return
        waiting = [entry for entry in pending if entry not in ready]
        pending.clear()
        pending.extend(waiting)
        live = self.templates.lookup(context.key, template.template_id, now)
        if live is None:
            return
        state = self._domain(context.key)
        for entry in ready:
            self._count(counters, DecodeReason.PENDING_DECODED)
            self._decode_data(live, entry.body, 0, len(entry.body), entry.context, state, out)

    def _buffer(
        self,
        context: SetContext,
        template_id: int,
        body: bytes,
        now: float,
        counters: dict[str, int],
    ) -> None:
        """Keep a data set for an unknown template; the oldest one goes when the buffer is full."""
        pending = self._pending.get(context.exporter)
        if pending is None:
            pending = self._pending[context.exporter] = deque()
        if self.pending_sets <= 0:
            self._count(counters, DecodeReason.PENDING_DROPPED_OVERFLOW)
            return
        if len(pending) >= self.pending_sets:
            pending.popleft()
            self._count(counters, DecodeReason.PENDING_DROPPED_OVERFLOW)
        pending.append(PendingSet(context, template_id, body, now))
        self._count(counters, DecodeReason.PENDING_SETS)

    def _expire_pending(self, exporter: Exporter, now: float, counters: dict[str, int]) -> None:
        pending = self._pending.get(exporter)
        while pending and now - pending[0].arrived_ts > self.pending_timeout_s:
            pending.popleft()
            self._count(counters, DecodeReason.PENDING_DROPPED_EXPIRED)

    # -- data records -----------------------------------------------------------------------

    def _decode_data(
        self,
        template: Template,
        body: bytes,
        start: int,
        end: int,
        context: SetContext,
        state: DomainState,
        out: list[FlowRecord],
    ) -> None:
        counters = self.counters[context.exporter]
        if template.record_struct is not None and template.record_bytes == 0:
            self._count(counters, DecodeReason.EMPTY_RECORD_TEMPLATE)
            return
        decoded = template.rows(body, start, end)
        rows = decoded[0]
        if not decoded[1]:
            self._count(counters, DecodeReason.MALFORMED_FIELD)
        if template.is_options:
            self._apply_options(rows, state)
            self._count(counters, DecodeReason.OPTIONS_RECORDS, len(rows))
            return
        self._build_records(template, rows, context, state, counters, out)
        self._count(counters, DecodeReason.RECORDS, len(rows))

    @staticmethod
    def _apply_options(rows: list[tuple[Any, ...]], state: DomainState) -> None:
        """Options records set the domain's sampling interval and system init time."""
        for row in rows:
            interval = row[0]
            packet_interval = row[1]
            packet_space = row[2]
            if interval is not None:
                state.sampling_interval = max(1, interval)
            elif packet_interval is not None and packet_interval > 0:
                # RFC 5477: select `interval` packets, then skip `space` packets.
                space = packet_space or 0
                state.sampling_interval = max(1, (packet_interval + space) // packet_interval)
            if row[3] is not None:
                state.system_init_ms = row[3]

    def _build_records(
        self,
        template: Template,
        rows: list[tuple[Any, ...]],
        context: SetContext,
        state: DomainState,
        counters: dict[str, int],
        out: list[FlowRecord],
    ) -> None:
        """The hot path: role-ordered rows -> FlowRecords, times in epoch seconds."""
        exporter = context.exporter
        version = context.version
        domain_id = context.key[3]
        family = template.address_family
        inet_ntop = socket.inet_ntop
        address_family = socket.AF_INET6 if family == 6 else socket.AF_INET
        sampling = state.sampling_interval if context.sampling is None else context.sampling
        estimated = sampling > 1
        start_kind = template.start_kind
        end_kind = template.end_kind
        # Uptime base, epoch ms: v9 from the header, IPFIX from systemInitTime (IE 160).
        uptime_base_ms: float | None
        if version == 9:
            uptime_base_ms = context.unix_secs * 1000.0 - context.uptime_ms
        elif state.system_init_ms is not None:
            uptime_base_ms = float(state.system_init_ms)
        else:
            uptime_base_ms = None
        export_ts = float(context.unix_secs)
        if uptime_base_ms is None and TIME_UPTIME_MS in (start_kind, end_kind) and rows:
            self._count(counters, DecodeReason.MISSING_TIME_BASE, len(rows))
        for row in rows:
            if family:
                src_addr = inet_ntop(address_family, row[1])
                dst_addr = inet_ntop(address_family, row[2]) if row[2] else ""
            else:
                src_addr = ""
                dst_addr = ""
            octets = row[5]
            packets = row[6]
            reverse_octets = row[7]
            reverse_packets = row[8]
            if estimated:
                octets *= sampling
                packets *= sampling
                if reverse_octets is not None:
                    reverse_octets *= sampling
                if reverse_packets is not None:
                    reverse_packets *= sampling
            start_ts = _to_ts(start_kind, row[9], export_ts, uptime_base_ms)
            end_ts = _to_ts(end_kind, row[10], export_ts, uptime_base_ms)
            out.append(
                FlowRecord(
                    exporter,
                    version,
                    domain_id,
                    row[0],
                    src_addr,
                    dst_addr,
                    row[3],
                    row[4],
                    octets,
                    packets,
                    reverse_octets,
                    reverse_packets,
                    start_ts,
                    end_ts,
                    row[11],
                    row[12],
                    row[13],
                    sampling,
                    estimated,
                )
            )


def _to_ts(kind: int, raw: int | None, export_ts: float, uptime_base_ms: float | None) -> float:
    """One start/end field as epoch seconds; the export time when the record has none."""
    if raw is None or kind == TIME_NONE:
        return export_ts
    if kind == TIME_EPOCH_MS:
        return raw / 1000.0
    if kind == TIME_UPTIME_MS:
        if uptime_base_ms is None:
            return export_ts
        # Uptimes are 32-bit ms and wrap after 49.7 days (a replaying exporter even sends
        # "negative" ones): measure back from the uptime at export time, as a serial number.
        export_uptime_ms = round(export_ts * 1000.0 - uptime_base_ms)
        back_ms = serial_difference(export_uptime_ms, raw)
        return export_ts - back_ms / 1000.0
    if kind == TIME_EPOCH_S:
        return float(raw)
    if kind == TIME_NTP:
        # RFC 7011 section 6.1.9/6.1.10: NTP 32.32 fixed point, seconds since 1900.
        return (raw >> 32) - NTP_TO_UNIX_S + (raw & 0xFFFFFFFF) / SERIAL_MODULUS
    return export_ts


__all__ = ["DomainState", "FlowDecoder", "serial_difference"]
