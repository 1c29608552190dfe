"""NetFlow v9 / IPFIX templates: field lists compiled into one decoder each, and their cache.

A template keeps only the fields the collector uses ("roles"); every other field, enterprise or
not, is skipped by its length. A template whose fields all have fixed lengths decodes a whole
data set with one precompiled `struct.Struct.iter_unpack`; only templates with variable-length
fields (RFC 7011 section 7) take the slower field-by-field path.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

VARIABLE_LENGTH = 65535  # RFC 7011 section 7: the length is carried in the record
PEN_REVERSE = 29305  # RFC 5103: reverse direction information elements

# Time encodings of the start/end roles.
TIME_NONE = 0
TIME_UPTIME_MS = 1  # flowStart/EndSysUpTime (22/21), v9 FIRST/LAST_SWITCHED
TIME_EPOCH_S = 2  # flowStart/EndSeconds (150/151)
TIME_EPOCH_MS = 3  # flowStart/EndMilliseconds (152/153)
TIME_NTP = 4  # flowStart/EndMicro/Nanoseconds (154-157): NTP 32.32 fixed point since 1900

# Roles of flow templates, the order of a decoded row.
FLOW_ROLES = (
    "protocol",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "octets",
    "packets",
    "reverse_octets",
    "reverse_packets",
    "start",
    "end",
    "tcp_flags",
    "end_reason",
    "direction",
)
FLOW_DEFAULTS: tuple[Any, ...] = (0, b"", b"", 0, 0, 0, 0, None, None, None, None, None, None, None)
# Roles of options templates (RFC 7011 section 3.4.2.2, v9 options).
OPTION_ROLES = (
    "sampling_interval",
    "sampling_packet_interval",
    "sampling_packet_space",
    "system_init_ms",
)
OPTION_DEFAULTS: tuple[Any, ...] = (None, None, None, None)


@dataclass(frozen=True, slots=True)
class FieldRole:
    """What one information element means to the collector."""

    role: str
    rank: int = 0  # when several elements fill one role, the lowest rank wins
    time_kind: int = TIME_NONE
    address_family: int = 0  # 4 or 6 for address roles


def _role_table() -> dict[tuple[int, int], FieldRole]:
    """(enterprise number, element id) -> role of flow templates; enterprise 0 is IANA."""
    return {
        (0, 4): FieldRole("protocol"),
        (0, 8): FieldRole("src_addr", rank=0, address_family=4),
        (0, 12): FieldRole("dst_addr", rank=0, address_family=4),
        (0, 27): FieldRole("src_addr", rank=1, address_family=6),
        (0, 28): FieldRole("dst_addr", rank=1, address_family=6),
        (0, 7): FieldRole("src_port"),
        (0, 11): FieldRole("dst_port"),
        (0, 1): FieldRole("octets"),
        (0, 2): FieldRole("packets"),
        # RFC 5103: the reverse octets/packets are IE 1/2 under PEN 29305, never the forward ones.
        (PEN_REVERSE, 1): FieldRole("reverse_octets"),
        (PEN_REVERSE, 2): FieldRole("reverse_packets"),
        (0, 6): FieldRole("tcp_flags"),
        (0, 136): FieldRole("end_reason"),
        (0, 61): FieldRole("direction"),
        (0, 152): FieldRole("start", rank=0, time_kind=TIME_EPOCH_MS),
        (0, 153): FieldRole("end", rank=0, time_kind=TIME_EPOCH_MS),
        (0, 156): FieldRole("start", rank=1, time_kind=TIME_NTP),
        (0, 157): FieldRole("end", rank=1, time_kind=TIME_NTP),
        (0, 154): FieldRole("start", rank=2, time_kind=TIME_NTP),
        (0, 155): FieldRole("end", rank=2, time_kind=TIME_NTP),
        (0, 150): FieldRole("start", rank=3, time_kind=TIME_EPOCH_S),
        (0, 151): FieldRole("end", rank=3, time_kind=TIME_EPOCH_S),
        (0, 22): FieldRole("start", rank=4, time_kind=TIME_UPTIME_MS),
        (0, 21): FieldRole("end", rank=4, time_kind=TIME_UPTIME_MS),
    }


FLOW_ROLE_TABLE = _role_table()
# softflowd's NetFlow v9 output sends flowEndReason as field type 0, which no standard uses.
V9_FLOW_ROLE_TABLE = {**FLOW_ROLE_TABLE, (0, 0): FieldRole("end_reason")}
OPTION_ROLE_TABLE = {
    (0, 34): FieldRole("sampling_interval", rank=0),
    (0, 50): FieldRole("sampling_interval", rank=1),  # v9 FLOW_SAMPLER_RANDOM_INTERVAL
    (0, 305): FieldRole("sampling_packet_interval"),
    (0, 306): FieldRole("sampling_packet_space"),
    (0, 160): FieldRole("system_init_ms"),
}
INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a template: element id, length in bytes (65535 = variable), enterprise."""

    element_id: int
    length: int
    enterprise: int = 0


class Template:
    """A template compiled to a decoder: `rows(body)` yields one tuple per record, in role order.

    Example: `Template(256, fields, version=10).rows(set_body)` -> [(6, b"\\n\\0\\0\\1", ...)].
    """

    __slots__ = (
        "template_id",
        "fields",
        "scope_count",
        "is_options",
        "refreshed_ts",
        "address_family",
        "start_kind",
        "end_kind",
        "bad_field_lengths",
        "record_struct",
        "record_bytes",
        "min_record_bytes",
        "steps",
        "picker",
        "defaults",
        "odd_int_roles",
    )

    def __init__(
        self,
        template_id: int,
        fields: Iterable[FieldSpec],
        version: int,
        scope_count: int = 0,
        is_options: bool = False,
        refreshed_ts: float = 0.0,
    ) -> None:
        self.template_id = template_id
        self.fields = tuple(fields)
        self.scope_count = scope_count
        self.is_options = is_options
        self.refreshed_ts = refreshed_ts
        roles: tuple[str, ...]
        if is_options:
            table = OPTION_ROLE_TABLE
            roles = OPTION_ROLES
            self.defaults = OPTION_DEFAULTS
        else:
            table = V9_FLOW_ROLE_TABLE if version == 9 else FLOW_ROLE_TABLE
            roles = FLOW_ROLES
            self.defaults = FLOW_DEFAULTS
        chosen = self._choose_fields(table)
        self.address_family = 0
        self.start_kind = TIME_NONE
        self.end_kind = TIME_NONE
        # Struct codes of kept fields by field index; the rest is skipped by length.
        codes: dict[int, str] = {}
        self.bad_field_lengths = 0
        odd_field_indexes: set[int] = set()
        for role, (field_index, field_role) in chosen.items():
            length = self.fields[field_index].length
            if field_role.address_family:
                if length != (4 if field_role.address_family == 4 else 16):
                    self.bad_field_lengths += 1
                    continue
                codes[field_index] = f"{length}s"
                if role == "src_addr":
                    self.address_family = field_role.address_family
            elif 1 <= length <= 8:
                # RFC 7011 section 6.2: unsigned counters may be sent in fewer bytes.
                if length in INT_CODES:
                    codes[field_index] = INT_CODES[length]
                else:
                    codes[field_index] = f"{length}s"
                    odd_field_indexes.add(field_index)
                if role == "start":
                    self.start_kind = field_role.time_kind
                elif role == "end":
                    self.end_kind = field_role.time_kind
            else:
                self.bad_field_lengths += 1
        if "dst_addr" in chosen and chosen["dst_addr"][0] in codes and self.address_family == 0:
            # A destination without a usable source address: addresses are left empty.
            del codes[chosen["dst_addr"][0]]
        kept_order = sorted(codes)
        row_position = {field_index: position for position, field_index in enumerate(kept_order)}
        slots = []
        for role_number, role in enumerate(roles):
            field_index = chosen[role][0] if role in chosen else -1
            if field_index in row_position:
                slots.append(row_position[field_index])
            else:
                slots.append(len(kept_order) + role_number)
        self.picker = itemgetter(*slots)
        odd_positions = {row_position[index] for index in odd_field_indexes}
        self.odd_int_roles = tuple(
            role_number for role_number, slot in enumerate(slots) if slot in odd_positions
        )
        self.steps: tuple[tuple[int, struct.Struct | None], ...] = tuple(
            (spec.length, struct.Struct(">" + codes[index]) if index in codes else None)
            for index, spec in enumerate(self.fields)
        )
        variable = any(spec.length == VARIABLE_LENGTH for spec in self.fields)
        self.min_record_bytes = sum(
            1 if spec.length == VARIABLE_LENGTH else spec.length for spec in self.fields
        )
        if variable:
            self.record_struct = None
            self.record_bytes = 0
        else:
            layout = "".join(
                codes.get(index, f"{spec.length}x") for index, spec in enumerate(self.fields)
            )
            self.record_struct = struct.Struct(">" + layout)
            self.record_bytes = self.record_struct.size

    def _choose_fields(
        self, table: dict[tuple[int, int], FieldRole]
    ) -> dict[str, tuple[int, FieldRole]]:
        """Role -> (field index, role) of the best-ranked fixed-length field filling it."""
        chosen: dict[str, tuple[int, FieldRole]] = {}
        for field_index, spec in enumerate(self.fields):
            # Scope fields describe what an options record is about; v9 scope types 1-5 would
            # otherwise collide with element ids such as 1 (octets).
            if field_index < self.scope_count or spec.length == VARIABLE_LENGTH:
                continue
            field_role = table.get((spec.enterprise, spec.element_id))
            if field_role is None:
                continue
            previous = chosen.get(field_role.role)
            if previous is None or field_role.rank < previous[1].rank:
                chosen[field_role.role] = (field_index, field_role)
        source = chosen.get("src_addr")
        destination = chosen.get("dst_addr")
        if (
            source is not None
            and destination is not None
            and destination[1].address_family != source[1].address_family
        ):
            # Prefer a destination of the source's family (a template may carry both).
            for field_index, spec in enumerate(self.fields):
                field_role = table.get((spec.enterprise, spec.element_id))
                if (
                    field_index >= self.scope_count
                    and field_role is not None
                    and field_role.role == "dst_addr"
                    and field_role.address_family == source[1].address_family
                ):
                    chosen["dst_addr"] = (field_index, field_role)
                    break
            else:
                del chosen["dst_addr"]
        return chosen

    def same_layout(self, other: Template) -> bool:
        """True when `other` defines the same fields (a refresh, not a redefinition)."""
        return (
            self.fields == other.fields
            and self.scope_count == other.scope_count
            and self.is_options == other.is_options
        )

    def rows(self, body: bytes, start: int, end: int) -> tuple[list[tuple[Any, ...]], bool]:
        """Decode the records in body[start:end]: (rows in role order, True if all were valid).

        Trailing bytes shorter than one record are padding (RFC 7011 section 3.3.1).
        """
        tail = self.defaults
        picker = self.picker
        if self.record_struct is not None:
            record_bytes = self.record_bytes
            if record_bytes == 0:
                return [], False
            count = (end - start) // record_bytes
            view = memoryview(body)[start : start + count * record_bytes]
            decoded = [picker(row + tail) for row in self.record_struct.iter_unpack(view)]
        else:
            decoded = []
            position = start
            while end - position >= self.min_record_bytes:
                row = self._read_variable_record(body, position, end)
                if row is None:
                    return self._finish(decoded), False
                position = row[1]
                decoded.append(picker(row[0] + tail))
        return self._finish(decoded), True

    def _finish(self, decoded: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Turn reduced-size counters of 3, 5, 6 or 7 bytes into ints."""
        if not self.odd_int_roles:
            return decoded
        converted = []
        for picked in decoded:
            values = list(picked)
            for role_number in self.odd_int_roles:
                values[role_number] = int.from_bytes(values[role_number], "big")
            converted.append(tuple(values))
        return converted

    def _read_variable_record(
        self, body: bytes, position: int, end: int
    ) -> tuple[tuple[Any, ...], int] | None:
        """One record of a template with variable-length fields: (kept values, next offset)."""
        values: list[Any] = []
        for length, reader in self.steps:
            if length == VARIABLE_LENGTH:
                if position >= end:
                    return None
                field_bytes = body[position]
                position += 1
                if field_bytes == 255:
                    # RFC 7011 section 7: 255 announces a two-byte length.
                    if position + 2 > end:
                        return None
                    field_bytes = int.from_bytes(body[position : position + 2], "big")
                    position += 2
                if position + field_bytes > end:
                    return None
                position += field_bytes
                continue
            if position + length > end:
                return None
            if reader is not None:
                values.append(reader.unpack_from(body, position)[0])
            position += length
        return tuple(values), position


TemplateKey = tuple[str, int, int, int]  # exporter address, port, version, source id / domain


class TemplateCache:
    """Templates per (exporter address, port, version, domain), each expiring
    `template_timeout_s` after its last refresh. Time is passed in (`now`), never read."""

    __slots__ = ("template_timeout_s", "_templates")

    def __init__(self, template_timeout_s: float = 1800.0) -> None:
        self.template_timeout_s = template_timeout_s
        self._templates: dict[TemplateKey, dict[int, Template]] = {}

    def store(self, key: TemplateKey, template: Template, now: float) -> bool:
        """Add, refresh or replace a template; True when its layout is new or changed."""
        known = self._templates.setdefault(key, {})
        previous = known.get(template.template_id)
        if previous is not None and previous.same_layout(template):
            previous.refreshed_ts = now
            return False
        template.refreshed_ts = now
        known[template.template_id] = template
        return True

    def lookup(self, key: TemplateKey, template_id: int, now: float) -> Template | None:
        """The live template, or None; an expired one is removed (see `is_expired`)."""
        known = self._templates.get(key)
        if known is None:
            return None
        template = known.get(template_id)
        if template is None:
            return None
        if now - template.refreshed_ts > self.template_timeout_s:
            del known[template_id]
            return None
        return template

    def withdraw(self, key: TemplateKey, template_id: int) -> int:
        """Remove one template; returns how many were removed (0 or 1)."""
        known = self._templates.get(key, {})
        return 1 if known.pop(template_id, None) is not None else 0

    def withdraw_all(self, key: TemplateKey, is_options: bool) -> int:
        """RFC 7011 section 8.1: withdraw every (options) template of one domain."""
        known = self._templates.get(key, {})
        doomed = [tid for tid, template in known.items() if template.is_options == is_options]
        for template_id in doomed:
            del known[template_id]
        return len(doomed)

    def drop_domain(self, key: TemplateKey) -> int:
        """Forget every template of one exporter domain (it restarted); returns the count."""
        return len(self._templates.pop(key, {}))

    def expire(self, now: float) -> dict[TemplateKey, int]:
        """Remove templates not refreshed within the timeout; returns counts per key."""
        removed: dict[TemplateKey, int] = {}
        for key, known in self._templates.items():
            doomed = [
                tid
                for tid, template in known.items()
                if now - template.refreshed_ts > self.template_timeout_s
            ]
            for template_id in doomed:
                del known[template_id]
            if doomed:
                removed[key] = len(doomed)
        return removed

    def count(self, key: TemplateKey | None = None) -> int:
        """How many templates are held, for one key or all."""
        if key is not None:
            return len(self._templates.get(key, {}))
        return sum(len(known) for known in self._templates.values())

    def counts(self) -> dict[TemplateKey, int]:
        """How many templates each exporter domain holds (for metrics)."""
        return {key: len(known) for key, known in self._templates.items() if known}

    def is_expired(self, key: TemplateKey, template_id: int, now: float) -> bool:
        """True when a template is held but older than the timeout (lookup would drop it)."""
        template = self._templates.get(key, {}).get(template_id)
        return template is not None and now - template.refreshed_ts > self.template_timeout_s
