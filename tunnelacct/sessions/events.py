"""Session events: what the flow engine hands to the writer (opened, checkpoint, closed)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.sessions.days import DayMark


@dataclass(frozen=True, slots=True)
class Attribution:
    """Who and what a session belongs to, fixed when it opens (names as they were then)."""

    org_id: str
    client_id: str | None = None
    client_name: str | None = None
    user_id: str | None = None
    resource_id: str | None = None
    resource_name: str | None = None

    @property
    def attributed(self) -> bool:
        """True when a client or a resource matched."""
        return self.client_id is not None or self.resource_id is not None


@dataclass(slots=True)
class SessionEvent:
    """A snapshot of one session's state; the writer upserts it by `session_id`.

    Treated as immutable once made (nothing assigns to an event's fields), but not declared
    frozen: a frozen dataclass sets each of its 26 fields through object.__setattr__, 3.3 µs
    an event against 0.8 µs, and a session-heavy import makes one or more per session
    (issue 21). Unhashable, as a mutable dataclass is: the writer keys sessions by their id.

    Times are float epoch seconds (packet time). `ended_ts` and `close_reason` are set only on
    CLOSED events. tx = initiator (src) to responder (dst), rx = the reverse.

    Sessions built from flow records (the collector, issue 20) have no payload figures
    (`payload_bytes_*` None, stored NULL), are `estimated` when a sampling interval scaled
    their counters, `incomplete` when their exporter lost records while they were open, and
    carry their exporter's `gateway` (None: the service's own [gateway] name).
    """

    kind: EventKind
    session_id: uuid.UUID
    proto: IpProto
    family: int  # 4 or 6
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    started_ts: float
    last_ts: float
    ended_ts: float | None
    bytes_tx: int
    bytes_rx: int
    packets_tx: int
    packets_rx: int
    payload_bytes_tx: int | None
    payload_bytes_rx: int | None
    close_reason: CloseReason | None
    midstream: bool  # first packet seen was not the opening one (e.g. TCP without a SYN)
    community_id: str
    attribution: Attribution
    interface: str
    # its counters at the end of each UTC day before its last packet's (sessions/days.py)
    day_marks: tuple[DayMark, ...] = ()
    estimated: bool = False
    incomplete: bool = False
    gateway: str | None = None
