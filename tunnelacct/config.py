"""Configuration: one TOML file, validated once, returned as frozen dataclasses.

load_config(path, environ) is implemented below; every other module receives the section it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunnelacct.enums import IpProto

DEFAULT_DATABASE_URL = "sqlite:///tunnelacct.db"
DEFAULT_ORG = "unattributed"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """[database]: where session records are stored (SQLAlchemy-style URL)."""

    url: str = DEFAULT_DATABASE_URL


@dataclass(frozen=True, slots=True)
class Timeouts:
    """[timeouts], all in seconds of packet time."""

    udp_idle_s: float = 60.0
    tcp_idle_s: float = 3600.0
    tcp_linger_s: float = 5.0  # after FIN both ways or RST: late ACKs/retransmits still count
    checkpoint_s: float = 30.0


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """[writer]: batching of session rows into the store."""

    batch_size: int = 5000  # rows per transaction
    flush_interval_s: float = 1.0  # longest a pending event waits
    max_pending: int = 100_000  # events held in memory before producers are made to wait


@dataclass(frozen=True, slots=True)
class OrgConfig:
    """[[orgs]]: one organisation."""

    id: str
    name: str
    retention_days: int = 30


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
