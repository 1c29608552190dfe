"""SQLModel tables: inventory (orgs, clients, resources) and session records.

These classes mirror the Alembic migrations in `migrations/`, which are the only source of the
schema; `tests/test_store.py` fails when the two drift apart.
"""

from __future__ import annotations

import ipaddress
import socket
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    text,
)
from sqlalchemy import false as sa_false
from sqlalchemy import true as sa_true
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.types import TypeEngine
from sqlmodel import Field, SQLModel

# Constraint and index names follow this convention so that migrations (SQLite batch mode
# included) can address them by name on every dialect.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ADDR_LEN = 45  # longest IPv6 text form (IPv4-mapped with full groups)


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamp with microseconds, stored in UTC and always read back as an aware UTC datetime.

    SQLite has no time zone type, so values are stored there as naive UTC text
    ("2026-11-23 10:40:45.123456", fixed width, so text order is time order).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Reject naive datetimes; convert aware ones to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: tunnelacct stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to naive values (SQLite) and normalise aware ones to UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class IpAddress(TypeDecorator[str]):
    """An IP address as the text `flowkey.addr_text` writes (inet_ntop: `10.0.0.1`, `fd00::2`,
    `::ffff:1.2.3.4`): `inet` on PostgreSQL (issue 7), String(ADDR_LEN) elsewhere, and read
    back as that same text on both.

    PostgreSQL prints a host inet without its /32 or /128 (`host()` and the output function
    alike; not `CAST(... AS text)`, which adds it) in inet_ntop's form: tests/test_inet.py.
    """

    impl = String(ADDR_LEN)  # its comparator (LIKE, ||) serves the SQLite filters
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """INET on PostgreSQL, String(ADDR_LEN) elsewhere."""
        if dialect.name == "postgresql":
            return dialect.type_descriptor(INET())
        return dialect.type_descriptor(String(ADDR_LEN))

    def process_result_value(
        self, value: str | ipaddress.IPv4Address | ipaddress.IPv6Address | None, dialect: Dialect
    ) -> str | None:
        """Text as it comes (SQLAlchemy reads inet as PostgreSQL's text); a driver's ipaddress
        object (`native_inet_types=True`) printed by inet_ntop, not by Python 3.11's ipaddress,
        which writes ::ffff:1.2.3.4 as ::ffff:102:304."""
        if value is None or isinstance(value, str):
            return value
        family = socket.AF_INET if value.version == 4 else socket.AF_INET6
        return socket.inet_ntop(family, value.packed)


class TableBase(SQLModel):
    """Base of every tunnelacct table: its own metadata with the naming convention."""

    metadata: ClassVar[MetaData] = MetaData(naming_convention=NAMING_CONVENTION)


class Org(TableBase, table=True):
    """An organisation: the unit of scoping and retention."""

    __tablename__: ClassVar[Any] = "orgs"

    id: str = Field(sa_type=String, primary_key=True)
    name: str = Field(sa_type=String)
    retention_days: int | None = Field(
        default=None, sa_type=Integer, nullable=True
    )  # None: forever
    updated_at: datetime = Field(sa_type=UtcDateTime)
    # False: the org's sessions are not stored at all (still counted in metrics).
    logging: bool = Field(
        default=True, sa_type=Boolean, sa_column_kwargs={"server_default": sa_true()}
    )
    # days of the usage rollup kept (issue 18); None: forever
    usage_retention_days: int | None = Field(default=None, sa_type=Integer, nullable=True)


class Client(TableBase, table=True):
    """A tunnel client/peer; `addresses` is a JSON list of CIDR strings."""

    __tablename__: ClassVar[Any] = "clients"

    id: str = Field(sa_type=String, primary_key=True)
    org_id: str = Field(sa_type=String, foreign_key="orgs.id")
    name: str = Field(sa_type=String)
    user_id: str | None = Field(default=None, sa_type=String, nullable=True)
    addresses: str = Field(sa_type=Text)
    public_key: str | None = Field(default=None, sa_type=String, nullable=True)
    active: bool = Field(default=True, sa_type=Boolean)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class Resource(TableBase, table=True):
    """A private resource: CIDR, ports ("22,8000-8100"; NULL = all) and protocols ("tcp,udp")."""

    __tablename__: ClassVar[Any] = "resources"

    id: str = Field(sa_type=String, primary_key=True)
    org_id: str = Field(sa_type=String, foreign_key="orgs.id")
    name: str = Field(sa_type=String)
    address: str = Field(sa_type=String)
    ports: str | None = Field(default=None, sa_type=Text, nullable=True)
    protocols: str = Field(sa_type=Text)
    active: bool = Field(default=True, sa_type=Boolean)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class SessionRecord(TableBase, table=True):
    """One TCP/UDP session as a row; tx = initiator to responder, rx = the reverse.

    Attribution columns are snapshots taken when the session opened, and there are no foreign
    keys to the inventory: changing or deleting config never rewrites or deletes history.
    """

    __tablename__: ClassVar[Any] = "sessions"
    __table_args__: ClassVar[Any] = (
        # Listing and exporting by org and time, keyset-paged on (started_at, id).
        Index(None, "org_id", "started_at", "id"),
        # (No index by end: a retention purge finds the expired sessions by their start,
        # which bounds their end, through the index above; migration 0015.)
        # A restarted gateway resumes its ongoing sessions: only those are indexed, so that
        # writing and purging completed sessions never touches this index.
        Index(
            "ix_sessions_gateway_ongoing",
            "gateway",
            sqlite_where=text("status = 'ongoing'"),
            postgresql_where=text("status = 'ongoing'"),
        ),
        # A page of a client's or a resource's sessions, in the page's order (migration 0014),
        # and its capped count.
        Index(None, "org_id", "client_id", "started_at", "id"),
        Index(None, "org_id", "resource_id", "started_at", "id"),
        # An org's ongoing sessions, newest first (the web UI's live log and its count): only
        # those are indexed, like the one above (migration 0012).
        Index(
            "ix_sessions_org_id_started_at_id_ongoing",
            "org_id",
            "started_at",
            "id",
            sqlite_where=text("status = 'ongoing'"),
            postgresql_where=text("status = 'ongoing'"),
        ),
    )

    id: uuid.UUID = Field(sa_type=Uuid, primary_key=True)
    org_id: str = Field(sa_type=String)
    client_id: str | None = Field(default=None, sa_type=String, nullable=True)
    client_name: str | None = Field(default=None, sa_type=String, nullable=True)
    user_id: str | None = Field(default=None, sa_type=String, nullable=True)
    resource_id: str | None = Field(default=None, sa_type=String, nullable=True)
    resource_name: str | None = Field(default=None, sa_type=String, nullable=True)
    protocol: str = Field(sa_type=String(8))  # IpProto.label: "tcp" or "udp"
    ip_version: int = Field(sa_type=SmallInteger)  # 4 or 6
    src_addr: str = Field(sa_type=IpAddress)
    dst_addr: str = Field(sa_type=IpAddress)
    src_port: int = Field(sa_type=Integer)
    dst_port: int = Field(sa_type=Integer)
    started_at: datetime = Field(sa_type=UtcDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime, nullable=True)
    last_seen_at: datetime = Field(sa_type=UtcDateTime)
    duration_s: float = Field(sa_type=Float)
    bytes_tx: int = Field(sa_type=BigInteger)
    bytes_rx: int = Field(sa_type=BigInteger)
    packets_tx: int = Field(sa_type=BigInteger)
    packets_rx: int = Field(sa_type=BigInteger)
    # L4 payload; NULL when not known: a session built from flow records (migration 0013)
    payload_bytes_tx: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    payload_bytes_rx: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    status: str = Field(sa_type=String(16))  # SessionStatus: "ongoing" or "completed"
    close_reason: str | None = Field(default=None, sa_type=String(32), nullable=True)
    midstream: bool = Field(sa_type=Boolean)
    community_id: str = Field(sa_type=String)
    gateway: str = Field(sa_type=String)
    interface: str = Field(sa_type=String)
    # A session across midnight: its counters at the end of each UTC day before its last
    # packet's, as JSON [["2026-11-30", bytes_tx, bytes_rx, packets_tx, packets_rx], ...]
    # (sessions/days.py); NULL for a session on one day. The usage rollup splits it by them.
    day_split: str | None = Field(default=None, sa_type=Text, nullable=True)
    # Flow records (migration 0013): a sampling interval scaled the counters (estimated), the
    # exporter lost records while the session was open (incomplete). False for captures.
    estimated: bool = Field(
        default=False, sa_type=Boolean, sa_column_kwargs={"server_default": sa_false()}
    )
    incomplete: bool = Field(
        default=False, sa_type=Boolean, sa_column_kwargs={"server_default": sa_false()}
    )


class UsageDay(TableBase, table=True):
    """The usage rollup (issue 18): what one group moved on one UTC day, kept by the writer.

    A group is an org's client, user, resource, protocol and gateway ('' where a session had
    none, so that the key has no NULLs). Bytes and packets count on the day of their packets;
    a session counts as started on its first packet's day and as completed on its last's.
    Kept for the org's usage retention, not its session retention.
    """

    __tablename__: ClassVar[Any] = "usage_days"

    org_id: str = Field(sa_type=String, primary_key=True)
    day: str = Field(sa_type=String(10), primary_key=True)  # ISO date: "2026-11-30"
    client_id: str = Field(sa_type=String, primary_key=True)
    user_id: str = Field(sa_type=String, primary_key=True)
    resource_id: str = Field(sa_type=String, primary_key=True)
    protocol: str = Field(sa_type=String(8), primary_key=True)
    gateway: str = Field(sa_type=String, primary_key=True)
    bytes_tx: int = Field(sa_type=BigInteger)
    bytes_rx: int = Field(sa_type=BigInteger)
    packets_tx: int = Field(sa_type=BigInteger)
    packets_rx: int = Field(sa_type=BigInteger)
    sessions_started: int = Field(sa_type=BigInteger)
    sessions_completed: int = Field(sa_type=BigInteger)


class UsageMonth(TableBase, table=True):
    """The usage rollup per calendar month (issue 18): each row the sum of the usage_days rows
    of its month and group, kept so by everything that writes usage_days (the writer, a
    rebuild, a purge); what a report of whole months reads."""

    __tablename__: ClassVar[Any] = "usage_months"

    org_id: str = Field(sa_type=String, primary_key=True)
    month: str = Field(sa_type=String(7), primary_key=True)  # "2026-11"
    client_id: str = Field(sa_type=String, primary_key=True)
    user_id: str = Field(sa_type=String, primary_key=True)
    resource_id: str = Field(sa_type=String, primary_key=True)
    protocol: str = Field(sa_type=String(8), primary_key=True)
    gateway: str = Field(sa_type=String, primary_key=True)
    bytes_tx: int = Field(sa_type=BigInteger)
    bytes_rx: int = Field(sa_type=BigInteger)
    packets_tx: int = Field(sa_type=BigInteger)
    packets_rx: int = Field(sa_type=BigInteger)
    sessions_started: int = Field(sa_type=BigInteger)
    sessions_completed: int = Field(sa_type=BigInteger)


class ApiToken(TableBase, table=True):
    """A bearer token of the API, stored as a SHA-256 hash of its secret only.

    `role` is "auditor" (one org, `org_id`) or "admin" (every org, `org_id` NULL).
    """

    __tablename__: ClassVar[Any] = "api_tokens"

    id: str = Field(sa_type=String(16), primary_key=True)
    secret_sha256: str = Field(sa_type=String(64))
    role: str = Field(sa_type=String(16))
    org_id: str | None = Field(default=None, sa_type=String, nullable=True)
    name: str | None = Field(default=None, sa_type=String, nullable=True)
    created_at: datetime = Field(sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime, nullable=True)
    # refused from then on; None: never expires
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime, nullable=True)
    # when a request last carried it, to within LAST_USED_RESOLUTION_S (web/auth.py)
    last_used_at: datetime | None = Field(default=None, sa_type=UtcDateTime, nullable=True)


class User(TableBase, table=True):
    """A user of the web UI: `role` "admin" (every org, `org_id` NULL) or "auditor" (one org);
    the password only as a scrypt hash (web/users.py)."""

    __tablename__: ClassVar[Any] = "users"

    name: str = Field(sa_type=String, primary_key=True)
    role: str = Field(sa_type=String(16))
    org_id: str | None = Field(default=None, sa_type=String, nullable=True)
    password_scrypt: str = Field(sa_type=String)
    created_at: datetime = Field(sa_type=UtcDateTime)


class WebLogin(TableBase, table=True):
    """One signed-in browser of the web UI (web/ui/logins.py): its cookie reads
    `<id>.<secret>`, only the secret's SHA-256 is stored. Idle expiry counts from
    `last_seen_at`, absolute expiry from `created_at`; logout sets `ended_at`."""

    __tablename__: ClassVar[Any] = "web_logins"
    __table_args__: ClassVar[Any] = (Index(None, "user_name"),)

    id: str = Field(sa_type=String(16), primary_key=True)
    secret_sha256: str = Field(sa_type=String(64))
    user_name: str = Field(sa_type=String)
    csrf_token: str = Field(sa_type=String(64))
    created_at: datetime = Field(sa_type=UtcDateTime)
    last_seen_at: datetime = Field(sa_type=UtcDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime, nullable=True)


class AccessRecord(TableBase, table=True):
    """One read of an org's sessions or usage (issue 19, web/accesslog.py): when, by whom
    (`actor` "token:<id>" or "user:<name>", and its role), through the API or the UI (`via`),
    what (`what`: "sessions", "sessions.csv", "session", "usage", "usage.csv"), the filter as
    given, the rows answered and the HTTP status. Purged with the org's sessions."""

    __tablename__: ClassVar[Any] = "access_log"
    __table_args__: ClassVar[Any] = (
        # the retention purge deletes an org's rows by time
        Index(None, "org_id", "at"),
        # ids never given again after a purge, so that newest-first pages by id stay exact
        {"sqlite_autoincrement": True},
    )

    # BIGINT on PostgreSQL (a row per read for years); SQLite's rowid is 64-bit already
    id: int | None = Field(
        default=None, sa_type=BigInteger().with_variant(Integer(), "sqlite"), primary_key=True
    )
    at: datetime = Field(sa_type=UtcDateTime)
    org_id: str = Field(sa_type=String)
    actor: str = Field(sa_type=String)
    role: str = Field(sa_type=String(16))
    via: str = Field(sa_type=String(8))  # AccessVia: "api" or "ui"
    what: str = Field(sa_type=String(32))  # AccessTarget
    filter_text: str = Field(sa_type=Text)
    rows: int | None = Field(default=None, sa_type=BigInteger, nullable=True)
    status: int = Field(sa_type=Integer)


class PurgeRun(TableBase, table=True):
    """One org's part of a retention purge: when, the cutoff, rows deleted (or counted), outcome.

    `outcome` is "running" (until it ends), "ok" or "failed"; `run_id` groups the orgs of one
    invocation; `dry_run` rows count what a real run would delete.
    """

    __tablename__: ClassVar[Any] = "purge_runs"
    __table_args__: ClassVar[Any] = (Index(None, "started_at"),)

    id: int | None = Field(default=None, sa_type=Integer, primary_key=True)
    run_id: str = Field(sa_type=String(32))
    org_id: str = Field(sa_type=String)
    host: str = Field(sa_type=String)
    started_at: datetime = Field(sa_type=UtcDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UtcDateTime, nullable=True)
    cutoff: datetime = Field(sa_type=UtcDateTime)
    dry_run: bool = Field(sa_type=Boolean)
    deleted: int = Field(default=0, sa_type=BigInteger)
    outcome: str = Field(sa_type=String(16))
    error: str | None = Field(default=None, sa_type=Text, nullable=True)
    # the usage rollup's part (issue 18): its first day kept, and the rollup rows deleted
    usage_cutoff_day: str | None = Field(default=None, sa_type=String(10), nullable=True)
    usage_deleted: int = Field(
        default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": text("0")}
    )


class PurgeLock(TableBase, table=True):
    """A lease that lets one purge run at a time across processes and machines sharing a store.

    Taken by an UPDATE that succeeds only when the lease is free or expired, renewed between
    batches, released at the end; a crashed holder's lease simply expires.
    """

    __tablename__: ClassVar[Any] = "purge_locks"

    name: str = Field(sa_type=String(32), primary_key=True)
    holder: str | None = Field(default=None, sa_type=String, nullable=True)
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime, nullable=True)


def table_of(model: type[SQLModel]) -> Table:
    """The Core table behind a SQLModel table class."""
    table = getattr(model, "__table__", None)
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return table
