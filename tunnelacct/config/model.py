"""The config model: every section of the TOML file as a frozen dataclass, with its defaults
and limits. `config.load` builds a Config from a file; every other module receives the section
it needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tunnelacct.enums import IpProto

DEFAULT_DATABASE_URL = "sqlite:///tunnelacct.db"
DEFAULT_ORG = "unattributed"
DATABASE_URL_ENV = "TUNNELACCT_DATABASE_URL"  # overrides [database] url when set and non-empty

# Every section and its keys, in documentation order; ARRAY_SECTIONS are written [[name]].
SECTION_KEYS: Mapping[str, tuple[str, ...]] = {
    "database": ("url", "synchronous"),
    "timeouts": ("udp_idle", "tcp_idle", "tcp_linger", "checkpoint", "first_write"),
    "writer": ("batch_size", "flush_interval", "max_pending", "write_timeout"),
    "gateway": ("name",),
    "attribution": ("default_org",),
    "orgs": ("id", "name", "retention_days", "usage_retention_days", "logging"),
    "clients": ("id", "org", "name", "user", "addresses", "public_key"),
    "resources": ("id", "org", "name", "address", "ports", "protocols"),
    "capture": ("interface", "pcap", "snaplen", "ring_mib", "speed", "loop"),
    "wireguard": ("interfaces", "refresh"),
    "service": (
        "queue_packets",
        "max_sessions",
        "shutdown_timeout",
        "status_interval",
        "session_events",
    ),
    "api": (
        "listen",
        "export_workers",
        "root_path",
        "trusted_proxies",
        "login_idle_timeout",
        "login_max_age",
    ),
    "retention": ("interval",),
    "metrics": ("listen", "client_labels", "max_series"),
    "collector": (
        "listen",
        "template_timeout",
        "stitch_gap",
        "max_queue",
        "active_timeout",
        "exporters",
    ),
    # the entries of [collector] exporters, written [[collector.exporters]]: a dotted name is
    # an array of tables inside the section before the dot, never a top-level section
    "collector.exporters": ("address", "gateway", "sampling"),
}
# retention_days is 1..MAX_RETENTION_DAYS (100 years) or "forever": the bound keeps a purge's
# cutoff (now - days) a valid date and the value within PostgreSQL's INTEGER.
MAX_RETENTION_DAYS = 36_500
ARRAY_SECTIONS = frozenset({"orgs", "clients", "resources", "capture", "collector.exporters"})
MIN_SERIES = 100  # [metrics] max_series: room for the overflow series of every metric
MAX_STITCH_GAP_S = 3600.0  # [collector] stitch_gap: at most an hour
MAX_COLLECTOR_QUEUE = 10_000_000  # [collector] max_queue: a typo's extra zeros stay bounded
MAX_SAMPLING = 2**31 - 1  # [[collector.exporters]] sampling: the largest 1-in-N interval


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """[database]: where session records are stored (SQLAlchemy-style URL), and for SQLite how
    durable a commit is: "normal" survives a crash of the process (WAL), "full" also a power
    loss, at the cost of an fsync per commit."""

    url: str = DEFAULT_DATABASE_URL
    synchronous: str = "normal"


SYNCHRONOUS_LEVELS = ("normal", "full")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """[timeouts], all in seconds of packet time."""

    udp_idle_s: float = 60.0
    tcp_idle_s: float = 3600.0
    tcp_linger_s: float = 5.0  # after FIN both ways or RST: late ACKs/retransmits still count
    checkpoint_s: float = 30.0
    # a session still open this long after its start is first written (its opened event); one
    # that ends sooner is written once, when it ends. 0: as soon as it opens.
    first_write_s: float = 0.0


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """[writer]: batching of session rows into the store."""

    batch_size: int = 5000  # rows per transaction
    flush_interval_s: float = 1.0  # longest a pending event waits
    max_pending: int = 100_000  # events held in memory before producers are made to wait
    # longest one batch's write may take before it is given up and retried (a frozen server,
    # a dead connection without a reset, a frozen filesystem)
    write_timeout_s: float = 60.0


USAGE_RETENTION_MIN_DAYS = 400  # the default usage retention: a year and its month to compare


def default_usage_retention(retention_days: int | None) -> int | None:
    """The usage retention of an org that sets none: the longer of USAGE_RETENTION_MIN_DAYS
    and its session retention, forever when its sessions are kept forever."""
    if retention_days is None:
        return None
    return max(USAGE_RETENTION_MIN_DAYS, retention_days)


@dataclass(frozen=True, slots=True)
class OrgConfig:
    """[[orgs]]: one organisation."""

    id: str
    name: str
    retention_days: int | None = 30  # completed sessions older than this are purged; None = forever
    logging: bool = True  # False: none of the org's sessions are stored (metrics still count them)
    # days of the usage rollup kept (issue 18); None = forever. The loader resolves an absent
    # one to the longer of USAGE_RETENTION_MIN_DAYS and retention_days (forever if that is):
    # the default here is that of the default retention_days
    usage_retention_days: int | None = USAGE_RETENTION_MIN_DAYS


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """[[clients]]: one tunnel client/peer and its tunnel addresses (CIDR strings)."""

    id: str
    org: str
    name: str  # defaults to id
    user: str | None = None
    addresses: tuple[str, ...] = ()
    public_key: str | None = None


@dataclass(frozen=True, slots=True)
class ResourceConfig:
    """[[resources]]: a private resource: CIDR + port ranges + protocols."""

    id: str
    org: str
    name: str  # defaults to id
    address: str  # CIDR, IPv4 or IPv6
    ports: tuple[tuple[int, int], ...] | None = None  # inclusive ranges; None = all ports
    protocols: tuple[IpProto, ...] = (IpProto.TCP, IpProto.UDP)


@dataclass(frozen=True, slots=True)
class CaptureConfig:
    """[[capture]]: one packet source of `serve`: a live interface or a capture file to replay."""

    interface: str | None = None
    pcap: str | None = None  # resolved against the config file's directory
    snaplen: int = 96  # bytes kept per packet (live): headers only
    ring_mib: int = 64  # TPACKET_V3 ring size (live)
    speed: float = 0.0  # replay: 0 = as fast as possible, 1 = recorded speed, 2 = twice as fast
    loop: bool = False  # replay: start again at the end of the file

    @property
    def name(self) -> str:
        """The interface name or the capture file path."""
        return self.interface if self.interface is not None else str(self.pcap)


@dataclass(frozen=True, slots=True)
class WireguardConfig:
    """[wireguard]: interfaces whose peers (`wg show <iface> dump`) give clients their addresses."""

    interfaces: tuple[str, ...] = ()
    refresh_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """[service]: limits of `serve`."""

    queue_packets: int = 262_144  # decoded packets waiting for the sessionizer, per capture
    # open sessions per capture (and per import): past it the least recently active are
    # evicted, so a flood of new flows cannot grow memory without bound (~600 B a session)
    max_sessions: int = 262_144
    shutdown_timeout_s: float = 30.0  # longest a SIGTERM waits for the store
    status_interval_s: float = 60.0  # how often status (and any dropped packets) is logged
    session_events: str | None = None  # JSON lines of opens and closes: a file, or "-" = stdout


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """[retention]: how often `serve` purges expired sessions (as `tunnelacct purge` does)."""

    interval_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """[api]: the REST API of `serve` (absent = no API)."""

    host: str | None = None
    port: int = 8080
    export_workers: int = 1  # processes quoting CSV downloads (0: in the service's own)
    root_path: str = ""  # the path prefix a reverse proxy serves the API and UI under
    # proxies whose X-Forwarded-For/-Proto are believed (the https of a Secure cookie)
    trusted_proxies: tuple[str, ...] = ()
    login_idle_timeout_s: float = 30 * 60.0  # a web UI login ends this long after its last page
    login_max_age_s: float = 12 * 3600.0  # and this long after signing in, whatever


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """[metrics]: the label guard of `serve`'s Prometheus metrics, and an optional own listener."""

    host: str | None = None  # None: /metrics only on the API listener
    port: int = 9109
    client_labels: bool = False  # a `client` label on traffic and session metrics
    max_series: int = 2000  # per metric; label sets beyond go to the "_overflow" series


@dataclass(frozen=True, slots=True)
class ExporterConfig:
    """[[collector.exporters]]: one allow-list entry: flow records sent from `address` (a
    normalised network, "192.0.2.10/32") are accepted and their sessions stored as `gateway`."""

    address: str
    gateway: str
    sampling: int | None = None  # 1 in N packets; None = "auto": what the exporter reports


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """[collector]: the flow-record collector of `serve` (NetFlow, IPFIX over UDP); absent = none.

    Example: CollectorConfig(listen=(("127.0.0.1", 2055), ("::", 4739))).
    """

    # (host, port) pairs; IPv6 hosts without brackets; port 0 binds any free port
    listen: tuple[tuple[str, int], ...]
    template_timeout_s: float = 1800.0  # a template not refreshed for this long is forgotten
    # records of one flow that end and start again at most this far apart are one session
    stitch_gap_s: float = 5.0
    max_queue: int = 20_000  # datagrams waiting between the sockets and the decoder
    active_timeout_s: float = 1800.0  # longest an exporter holds a live flow before exporting it
    exporters: tuple[ExporterConfig, ...] = ()  # the allow-list; empty = nothing is accepted


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    path: str | None = None
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)
    writer: WriterConfig = field(default_factory=WriterConfig)
    gateway: str = ""  # [gateway] name; defaults to the host name
    default_org: str = DEFAULT_ORG  # [attribution] default_org: org of sessions matching nothing
    orgs: tuple[OrgConfig, ...] = ()
    clients: tuple[ClientConfig, ...] = ()
    resources: tuple[ResourceConfig, ...] = ()
    captures: tuple[CaptureConfig, ...] = ()
    wireguard: WireguardConfig = field(default_factory=WireguardConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    collector: CollectorConfig | None = None  # None: no [collector] table


_PORT_PART = re.compile(r"([0-9]{1,9})(?:\s*-\s*([0-9]{1,9}))?")
_PORTS_WHY = "expected a port or a range like 8000-8100"


def parse_ports(text: str) -> tuple[tuple[int, int], ...]:
    """Parse "80,443,8000-8100" into sorted, merged inclusive (lo, hi) ranges; ValueError says why.

    >>> parse_ports("443, 80, 8000-8100,8050-8200")
    ((80, 80), (443, 443), (8000, 8200))
    """
    ranges: list[tuple[int, int]] = []
    for part in text.split(","):
        match = _PORT_PART.fullmatch(part.strip())
        if match is None:
            raise ValueError(_PORTS_WHY)
        lo = int(match[1])
        hi = lo if match[2] is None else int(match[2])
        for port in (lo, hi):
            if port > 65535:
                raise ValueError(f"port {port} is outside 0-65535")
        if lo > hi:
            raise ValueError(f"range {lo}-{hi} is reversed; write {hi}-{lo}")
        ranges.append((lo, hi))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:  # overlapping or adjacent: one range
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return tuple(merged)
