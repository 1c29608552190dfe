"""What each capture reports: its counters since the service started, read by the status file
and the metrics. Plain data, so that reading it loads nothing of the capture path."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields


@dataclass(slots=True)
class CaptureStatus:
    """Counters of one capture since the service started (read by status and metrics)."""

    name: str
    kind: str  # "interface" or "pcap"
    state: str = "starting"  # starting, waiting (for the interface), capturing, finished, stopped
    packets: int = 0  # packets read from the source (decoded or not)
    kernel_packets: int = 0  # live: packets the kernel passed to the ring, incl. drops
    kernel_drops: int = 0  # live: packets the ring had no room for
    # packets read and dropped: shutdown ran out of time, or the sessionizer stopped on an error
    queue_drops: int = 0
    # packets read and not yet taken by the sessionizer: it is behind (a burst, or the
    # writer holding it back). [service] queue_packets bounds their TCP/UDP ones.
    queued_packets: int = 0
    decode_errors: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # valid packets that are not TCP/UDP
    open_sessions: int = 0
    sessions_opened: int = 0
    closed: Counter[str] = field(default_factory=Counter)
    late_packets: int = 0  # more than flowtable.LATE_S older than a packet before them
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready copy (dataclasses.asdict would mangle the Counters)."""
        return {
            f.name: dict(v) if isinstance(v := getattr(self, f.name), Counter) else v
            for f in fields(self)
        }
