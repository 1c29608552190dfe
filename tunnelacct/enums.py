"""Fixed vocabulary shared by the flow engine, the store and the exports."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class IpProto(IntEnum):
    """IP protocol numbers tunnelacct sessionizes."""

    TCP = 6
    UDP = 17

    @property
    def label(self) -> str:
        """Lower-case name used in rows, CSV and filters ("tcp", "udp")."""
        return self.name.lower()


class Direction(StrEnum):
    """tx = initiator to responder, rx = the reverse."""

    TX = "tx"
    RX = "rx"


class SessionStatus(StrEnum):
    """Whether a session record can still change."""

    ONGOING = "ongoing"
    COMPLETED = "completed"


class CloseReason(StrEnum):
    """Why a session ended."""

    FIN = "fin"  # FIN seen from both sides (after a short linger for the last ACK)
    RST = "rst"
    IDLE = "idle"  # no packet for the protocol's idle timeout
    SHUTDOWN = "shutdown"  # the service stopped while the session was open
    END_OF_CAPTURE = "end_of_capture"  # an imported file ended while the session was open
    # the flow table was full ([service] max_sessions): among the least recently active,
    # ended early; a later packet of its 5-tuple opens a new session
    EVICTED = "evicted"
    # a flow exporter ended the flow itself (flowEndReason 4 forced end, 5 lack of resources)
    EXPORTER_FORCED = "exporter_forced"


class EventKind(StrEnum):
    """What a session event reports."""

    OPENED = "opened"
    CHECKPOINT = "checkpoint"
    CLOSED = "closed"
