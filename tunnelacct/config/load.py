"""Loading the config: one TOML file, validated once, returned as a frozen Config.

`load_config(path, environ)` reads the file and applies the environment; `Loader` holds the
rule of every key, so a parsed TOML document becomes a Config or a ConfigError. Each error
names the file, the key as written ([[resources]] "pg-primary" ports), the line it is on, the
value and why.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeGuard

from tunnelacct.config.database_url import database_url_problem, redact_url, with_sqlite_base
from tunnelacct.config.model import (
    DATABASE_URL_ENV,
    DEFAULT_DATABASE_URL,
    DEFAULT_ORG,
    MAX_COLLECTOR_QUEUE,
    MAX_RETENTION_DAYS,
    MAX_SAMPLING,
    MAX_STITCH_GAP_S,
    MIN_SERIES,
    SECTION_KEYS,
    SYNCHRONOUS_LEVELS,
    ApiConfig,
    CaptureConfig,
    ClientConfig,
    CollectorConfig,
    Config,
    DatabaseConfig,
    ExporterConfig,
    MetricsConfig,
    OrgConfig,
    ResourceConfig,
    RetentionConfig,
    ServiceConfig,
    Timeouts,
    WireguardConfig,
    WriterConfig,
    default_usage_retention,
    parse_ports,
)
from tunnelacct.config.tomllines import KeyLines
from tunnelacct.enums import IpProto
from tunnelacct.errors import ConfigError

_ID = re.compile(r"[A-Za-z0-9._-]+")
API_LISTEN_ENV = "TUNNELACCT_API_LISTEN"
_ROOT_PATH = re.compile(r"/[A-Za-z0-9._~/-]*")
_ID_WHY = "expected a non-empty id of letters, digits, '.', '_' or '-'"
_PROTOCOLS = {p.label: p for p in IpProto}
_TIMEOUTS, _WRITER = Timeouts(), WriterConfig()
_ORG = OrgConfig(id="", name="")
_FOREVER = "forever"  # retention_days that never purges (OrgConfig.retention_days = None)
# retention issue: "off" is logging = false, never retention_days = 0, so 0 is an error
_RETENTION_WHY = 'expected days 1-36500 or "forever" (to store nothing, set logging = false)'
_USAGE_RETENTION_WHY = 'expected days 1-36500 or "forever"'
_CAPTURE, _WIREGUARD, _SERVICE = CaptureConfig(), WireguardConfig(), ServiceConfig()
_IFNAME = re.compile(r"[^\s/:]{1,15}")  # Linux IFNAMSIZ - 1, no whitespace, '/' or ':'
_IFNAME_WHY = "expected an interface name of 1-15 bytes without spaces, '/' or ':' (not . or ..)"
_WG_KEY_CHARS = 44  # base64 of a 32-byte Curve25519 key, with one "=" of padding
_COLLECTOR = CollectorConfig(listen=())
_AUTO = "auto"  # [[collector.exporters]] sampling that takes what the exporter reports (None)
_MAX_QUEUE_WHY = f"expected an integer 1-{MAX_COLLECTOR_QUEUE} (datagrams)"
_SAMPLING_WHY = f'expected "auto" or an integer 1-{MAX_SAMPLING} (1 in N packets)'
_LISTEN_UDP_WHY = 'expected an array of "host:port" like ["127.0.0.1:2055", "[::]:4739"]'
# sections written at the top level; a dotted name ("collector.exporters") is inside another
_TOP_SECTIONS = tuple(sorted(name for name in SECTION_KEYS if "." not in name))


def load_config(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Config:
    """Read and validate the TOML file at `path` (None = all defaults) into a frozen Config.

    `environ` defaults to os.environ; a non-empty $TUNNELACCT_DATABASE_URL replaces [database] url,
    and a non-empty $TUNNELACCT_API_LISTEN replaces [api] listen.
    CIDRs may have host bits set: "10.99.0.5/24" is accepted and stored as "10.99.0.0/24".
    """
    env = os.environ if environ is None else environ
    if path is None:
        config = Config(gateway=socket.gethostname())
    else:
        shown = os.fspath(path)
        text = _read(shown)
        try:
            doc = tomllib.loads(text)
            config = Loader(shown, KeyLines(text)).config(doc)
        except tomllib.TOMLDecodeError as exc:
            raise _syntax_error(shown, text, exc) from None
        except RecursionError:
            # tomllib parses nested arrays and inline tables recursively (issue 16, item 8)
            why = "arrays or inline tables nested too deeply to read (thousands of levels)"
            raise ConfigError("TOML syntax", why, path=shown) from None
    env_url = env.get(DATABASE_URL_ENV)
    if env_url:
        problem = database_url_problem(env_url)
        if problem is not None:
            raise ConfigError(f"${DATABASE_URL_ENV}", problem, value=redact_url(env_url))
        database = dataclasses.replace(config.database, url=env_url)
        config = dataclasses.replace(config, database=database)
    env_listen = env.get(API_LISTEN_ENV)
    if env_listen:
        address = listen_address(env_listen)
        if address is None:
            why = 'expected "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"'
            raise ConfigError(f"${API_LISTEN_ENV}", why, value=env_listen)
        api = dataclasses.replace(config.api, host=address[0], port=address[1])
        config = dataclasses.replace(config, api=api)
    return config


def listen_address(text: str, *, allow_port_zero: bool = False) -> tuple[str, int] | None:
    """(host, port) of a "host:port" listen address (IPv6 host in brackets); None if not one.

    Port 0 (bind any free port) is one only with `allow_port_zero`.
    """
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\s\[\]]+):(\d{1,5})", text)
    if m is None:
        return None
    bracketed = m.group(1) is not None  # "[::1]:8080"
    host = m.group(1) if bracketed else m.group(3)
    port = int(m.group(2) if bracketed else m.group(4))
    lowest = 0 if allow_port_zero else 1
    return (host, port) if lowest <= port <= 65535 else None


def _read(path: str) -> str:
    """The file's text, or a ConfigError when it cannot be read or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError("file", f"cannot read: {exc.strerror}", path=path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("file", "not valid UTF-8", path=path, line=line) from None


def _syntax_error(path: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    """A ConfigError at the line tomllib reports ("... (at line 3, column 7)")."""
    message = str(exc)
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if match is not None:
        why = f"{message[: match.start()]} (column {match[2]})"
        return ConfigError("TOML syntax", why, path=path, line=int(match[1]))
    why = message.replace(" (at end of document)", " at the end of the file")
    return ConfigError("TOML syntax", why, path=path, line=text.count("\n") + 1)


def _shown(value: object) -> object:
    """`value` when it is a scalar worth echoing in an error, else None (tables, arrays)."""
    return value if isinstance(value, str | int | float) else None


@dataclass(frozen=True, slots=True)
class _Where:
    """A table being checked: its name, its entry index and how a person writes it."""

    table: str  # "" for the top level
    index: int
    label: str  # "[timeouts]", '[[resources]] "pg-primary"', "[[resources]] #3", or ""


class Loader:
    """Turns the parsed TOML document into a Config, failing with the first problem found."""

    __slots__ = ("_path", "_lines")

    def __init__(self, path: str, lines: KeyLines) -> None:
        self._path = path
        self._lines = lines

    def fail(self, where: _Where, key: str | None, why: str, value: object = None) -> NoReturn:
        """Raise the ConfigError for `key` of `where`, at the line the key is written on."""
        shown = " ".join(part for part in (where.label, key) if part)
        line = self._lines.find(where.table, where.index, key)
        raise ConfigError(shown, why, value=value, path=self._path, line=line)

    @property
    def _base(self) -> str:
        """The directory of the config file: what every relative path in it is relative to."""
        return os.path.dirname(os.path.abspath(self._path))

    def _resolved(self, path: str) -> str:
        """`path` (`~` expanded) made absolute, relative to the config file's directory."""
        return os.path.normpath(os.path.join(self._base, os.path.expanduser(path)))

    def config(self, doc: Mapping[str, object]) -> Config:
        """The validated Config of the whole document."""
        top = _Where("", 0, "")
        for name, value in doc.items():
            if name not in _TOP_SECTIONS:
                allowed = ", ".join(_TOP_SECTIONS)
                self.fail(top, name, f"unknown section; allowed: {allowed}", _shown(value))
        where, t = self._section(doc, "database")
        url = self._text(where, t, "url", DEFAULT_DATABASE_URL)
        why = database_url_problem(url)
        if why is not None:
            self.fail(where, "url", why, redact_url(url))
        url = with_sqlite_base(url, self._base)
        synchronous = self._text(where, t, "synchronous", "normal")
        if synchronous not in SYNCHRONOUS_LEVELS:
            why = 'expected "normal" (survives a crash) or "full" (also a power loss)'
            self.fail(where, "synchronous", why, synchronous)
        where, t = self._section(doc, "timeouts")
        timeouts = Timeouts(
            udp_idle_s=self._seconds(where, t, "udp_idle", _TIMEOUTS.udp_idle_s),
            tcp_idle_s=self._seconds(where, t, "tcp_idle", _TIMEOUTS.tcp_idle_s),
            tcp_linger_s=self._seconds(where, t, "tcp_linger", _TIMEOUTS.tcp_linger_s),
            checkpoint_s=self._seconds(where, t, "checkpoint", _TIMEOUTS.checkpoint_s),
            first_write_s=self._seconds_or_zero(where, t, "first_write", _TIMEOUTS.first_write_s),
        )
        where, t = self._section(doc, "writer")
        writer = WriterConfig(
            batch_size=self._count(where, t, "batch_size", _WRITER.batch_size),
            flush_interval_s=self._seconds(where, t, "flush_interval", _WRITER.flush_interval_s),
            max_pending=self._count(where, t, "max_pending", _WRITER.max_pending),
            write_timeout_s=self._seconds(where, t, "write_timeout", _WRITER.write_timeout_s),
        )
        where, t = self._section(doc, "gateway")
        gateway = self._text(where, t, "name", socket.gethostname())
        where, t = self._section(doc, "attribution")
        default_org = self._ident(where, t, "default_org", DEFAULT_ORG)
        orgs = tuple(self._orgs(doc))
        known = {org.id for org in orgs} | {default_org}
        where, t = self._section(doc, "wireguard")
        interfaces = t.get("interfaces", [])
        if not isinstance(interfaces, list):
            self.fail(where, "interfaces", 'expected an array like ["wg0"]', _shown(interfaces))
        for name in interfaces:
            if not _is_ifname(name):
                self.fail(where, "interfaces", _IFNAME_WHY, _shown(name))
        wireguard = WireguardConfig(
            interfaces=tuple(dict.fromkeys(interfaces)),
            refresh_s=self._seconds(where, t, "refresh", _WIREGUARD.refresh_s),
        )
        where, t = self._section(doc, "service")
        service = ServiceConfig(
            queue_packets=self._count(where, t, "queue_packets", _SERVICE.queue_packets),
            max_sessions=self._count(where, t, "max_sessions", _SERVICE.max_sessions),
            shutdown_timeout_s=self._seconds(
                where, t, "shutdown_timeout", _SERVICE.shutdown_timeout_s
            ),
            status_interval_s=self._seconds(
                where, t, "status_interval", _SERVICE.status_interval_s
            ),
            session_events=self._events_path(where, t),
        )
        where, t = self._section(doc, "api")
        api = ApiConfig()
        if "listen" in t:
            host, port = self._listen(where, t, "8080")
            api = ApiConfig(host=host, port=port)
        if "export_workers" in t:
            workers = t["export_workers"]
            if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 64:
                self.fail(where, "export_workers", "expected an integer 0-64", _shown(workers))
            api = dataclasses.replace(api, export_workers=workers)
        api = dataclasses.replace(
            api,
            root_path=self._root_path(where, t),
            trusted_proxies=self._proxies(where, t),
            login_idle_timeout_s=self._seconds(
                where, t, "login_idle_timeout", api.login_idle_timeout_s
            ),
            login_max_age_s=self._seconds(where, t, "login_max_age", api.login_max_age_s),
        )
        where, t = self._section(doc, "retention")
        retention = RetentionConfig(
            interval_s=self._seconds(where, t, "interval", RetentionConfig().interval_s)
        )
        where, t = self._section(doc, "metrics")
        metrics = MetricsConfig(
            client_labels=self._flag(where, t, "client_labels", False),
            max_series=self._count(where, t, "max_series", MetricsConfig().max_series),
        )
        if metrics.max_series < MIN_SERIES:
            why = f"expected at least {MIN_SERIES} (room for the overflow series)"
            self.fail(where, "max_series", why, metrics.max_series)
        if "listen" in t:
            host, port = self._listen(where, t, "9109")
            metrics = dataclasses.replace(metrics, host=host, port=port)
        return Config(
            path=self._path,
            database=DatabaseConfig(url, synchronous),
            timeouts=timeouts,
            writer=writer,
            gateway=gateway,
            default_org=default_org,
            orgs=orgs,
            clients=tuple(self._clients(doc, known)),
            resources=tuple(self._resources(doc, known)),
            captures=tuple(self._captures(doc)),
            wireguard=wireguard,
            service=service,
            api=api,
            retention=retention,
            metrics=metrics,
            collector=self._collector(doc),
        )

    def _root_path(self, where: _Where, t: Mapping[str, object]) -> str:
        """[api] root_path: "" or a path like /tunnelacct (no trailing slash)."""
        value = t.get("root_path", "")
        why = 'expected "" or a path such as "/tunnelacct" (a leading /, no trailing /)'
        if not isinstance(value, str):
            self.fail(where, "root_path", why, _shown(value))
        if value and (not _ROOT_PATH.fullmatch(value) or value.endswith("/")):
            self.fail(where, "root_path", why, _shown(value))
        return value

    def _proxies(self, where: _Where, t: Mapping[str, object]) -> tuple[str, ...]:
        """[api] trusted_proxies: addresses or networks of the proxies in front."""
        values = t.get("trusted_proxies", [])
        why = 'expected a list of addresses or networks, e.g. ["127.0.0.1", "10.0.0.0/8"]'
        if not isinstance(values, list):
            self.fail(where, "trusted_proxies", why, _shown(values))
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except (TypeError, ValueError):
                self.fail(where, "trusted_proxies", why, _shown(value))
        return tuple(values)

    def _listen(self, where: _Where, t: Mapping[str, object], port_eg: str) -> tuple[str, int]:
        """A "host:port" (IPv6 host in brackets) listen address."""
        listen = t["listen"]
        address = listen_address(listen) if isinstance(listen, str) else None
        if address is None:
            why = f'expected "host:port", e.g. "127.0.0.1:{port_eg}" or "[::1]:{port_eg}"'
            self.fail(where, "listen", why, _shown(listen))
        return address

    def _section(self, doc: Mapping[str, object], name: str) -> tuple[_Where, dict[str, object]]:
        """The [name] table (empty when absent), after checking it has only known keys."""
        t = doc.get(name, {})
        if not isinstance(t, dict):
            self.fail(_Where("", 0, ""), name, f"expected a table: write [{name}]", _shown(t))
        where = _Where(name, 0, f"[{name}]")
        self._known_keys(where, t, name)
        return where, t

    def _entries(
        self, holder: Mapping[str, object], name: str
    ) -> Iterator[tuple[_Where, dict[str, object]]]:
        """Each [[name]] entry with a label naming it by id (or by position while the id is bad).

        `holder` is the table the array is a key of: the document, or the [collector] table
        for [[collector.exporters]] (its key "exporters").
        """
        parent, _, key = name.rpartition(".")
        entries = holder.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            why = f"expected an array of tables: write [[{name}]]"
            self.fail(_Where(parent, 0, f"[{parent}]" if parent else ""), key, why, _shown(entries))
        for index, entry in enumerate(entries):
            ident = entry.get("id")
            named = (
                "id" in SECTION_KEYS[name]
                and isinstance(ident, str)
                and _ID.fullmatch(ident) is not None
            )
            where = _Where(
                name, index, f'[[{name}]] "{ident}"' if named else f"[[{name}]] #{index + 1}"
            )
            self._known_keys(where, entry, name)
            yield where, entry

    def _known_keys(self, where: _Where, t: Mapping[str, object], section: str) -> None:
        """Fail on the first key of `t` that `section` does not have (usually a typo)."""
        allowed = SECTION_KEYS[section]
        for key, value in t.items():
            if key not in allowed:
                self.fail(where, key, f"unknown key; allowed: {', '.join(allowed)}", _shown(value))

    def _unique_id(self, where: _Where, t: Mapping[str, object], seen: dict[str, _Where]) -> str:
        """The entry's id, checked for syntax and uniqueness within its kind."""
        ident = self._ident(where, t, "id", None)
        first = seen.setdefault(ident, where)
        if first is not where:
            line = self._lines.find(first.table, first.index, "id")
            self.fail(where, "id", f"duplicate id; already used at line {line}", ident)
        return ident

    def _org_ref(self, where: _Where, t: Mapping[str, object], known: set[str]) -> str:
        """The entry's org, which must be declared in [[orgs]] or be the default org."""
        org = self._ident(where, t, "org", None)
        if org not in known:
            self.fail(where, "org", f"unknown org; declared: {', '.join(sorted(known))}", org)
        return org

    def _orgs(self, doc: Mapping[str, object]) -> Iterator[OrgConfig]:
        seen: dict[str, _Where] = {}
        for where, t in self._entries(doc, "orgs"):
            ident = self._unique_id(where, t, seen)
            retention_days = self._retention_days(where, t)
            yield OrgConfig(
                id=ident,
                name=self._text(where, t, "name", ident),
                retention_days=retention_days,
                logging=self._flag(where, t, "logging", _ORG.logging),
                usage_retention_days=self._usage_retention_days(where, t, retention_days),
            )

    def _clients(self, doc: Mapping[str, object], known: set[str]) -> Iterator[ClientConfig]:
        seen: dict[str, _Where] = {}
        owners: dict[str, str] = {}  # normalised CIDR -> client id: one owner per tunnel address
        keys: dict[str, str] = {}  # public key -> client id
        clients: list[tuple[_Where, ClientConfig]] = []
        for where, t in self._entries(doc, "clients"):
            ident = self._unique_id(where, t, seen)
            org = self._org_ref(where, t, known)
            name = self._text(where, t, "name", ident)
            user = t.get("user")
            if user is not None and (not isinstance(user, str) or not user.strip()):
                self.fail(where, "user", "expected a non-empty string", _shown(user))
            raw = t.get("addresses", [])
            if not isinstance(raw, list):
                self.fail(where, "addresses", "expected an array of CIDR strings", _shown(raw))
            addresses: list[str] = []
            for item in raw:
                cidr = self._cidr(where, "addresses", item)
                owner = owners.setdefault(cidr, ident)
                if owner != ident:
                    self.fail(where, "addresses", f'already assigned to client "{owner}"', item)
                if cidr in addresses:
                    self.fail(where, "addresses", f"{cidr} is listed twice", item)
                addresses.append(cidr)
            public_key = t.get("public_key")
            if public_key is not None:
                if not isinstance(public_key, str) or not _is_wireguard_key(public_key):
                    why = f"expected a {_WG_KEY_CHARS}-character base64 WireGuard key (32 bytes)"
                    self.fail(where, "public_key", why, _shown(public_key))
                other = keys.setdefault(public_key, ident)
                if other != ident:
                    self.fail(
                        where, "public_key", f'already the key of client "{other}"', public_key
                    )
            clients.append(
                (where, ClientConfig(ident, org, name, user, tuple(addresses), public_key))
            )
        # after every entry's own checks, so that a duplicate id or address is reported as such
        for where, client in clients:
            if not client.addresses and client.public_key is None:
                why = (
                    "a client needs addresses or a public_key (or both): with neither, no "
                    "session can ever be attributed to it"
                )
                self.fail(where, None, why)
            yield client

    def _resources(self, doc: Mapping[str, object], known: set[str]) -> Iterator[ResourceConfig]:
        seen: dict[str, _Where] = {}
        for where, t in self._entries(doc, "resources"):
            ident = self._unique_id(where, t, seen)
            org = self._org_ref(where, t, known)
            name = self._text(where, t, "name", ident)
            if "address" not in t:
                self.fail(where, "address", "required key is missing")
            yield ResourceConfig(
                id=ident,
                org=org,
                name=name,
                address=self._cidr(where, "address", t["address"]),
                ports=self._ports(where, t.get("ports")),
                protocols=self._protocols(where, t.get("protocols")),
            )

    def _events_path(self, where: _Where, t: Mapping[str, object]) -> str | None:
        """[service] session_events: "-" (standard output) or a file in an existing directory."""
        if "session_events" not in t:
            return None
        value = self._text(where, t, "session_events", "-")
        if value == "-":
            return value
        path = self._resolved(value)
        if not os.path.isdir(os.path.dirname(path)):
            self.fail(where, "session_events", f"no such directory: {os.path.dirname(path)}", value)
        return path

    def _captures(self, doc: Mapping[str, object]) -> Iterator[CaptureConfig]:
        seen: dict[str, _Where] = {}
        for where, t in self._entries(doc, "capture"):
            if ("interface" in t) == ("pcap" in t):
                self.fail(where, None, "expected exactly one of interface or pcap")
            if "interface" in t:
                key = "interface"
                name = t["interface"]
                if not _is_ifname(name):
                    self.fail(where, key, _IFNAME_WHY, _shown(name))
                for replay_only in ("speed", "loop"):
                    if replay_only in t:
                        why = "only for a pcap replay, not a live interface"
                        self.fail(where, replay_only, why, _shown(t[replay_only]))
                path = None
            else:
                key = "pcap"
                name = self._text(where, t, key, "")
                path = self._resolved(name)
                if not os.path.isfile(path):
                    self.fail(where, key, f"no such file: {path}", name)
                name = path
            first = seen.setdefault(name, where)
            if first is not where:
                line = self._lines.find(first.table, first.index, key)
                self.fail(where, key, f"captured twice; already at line {line}", name)
            speed = t.get("speed", _CAPTURE.speed)
            if (
                isinstance(speed, bool)
                or not isinstance(speed, int | float)
                or not (math.isfinite(speed) and speed >= 0)
            ):
                why = "expected a number >= 0 (0 = as fast as possible, 1 = recorded speed)"
                self.fail(where, "speed", why, _shown(speed))
            loop = t.get("loop", _CAPTURE.loop)
            if not isinstance(loop, bool):
                self.fail(where, "loop", "expected true or false", _shown(loop))
            snaplen = t.get("snaplen", _CAPTURE.snaplen)
            if (
                isinstance(snaplen, bool)
                or not isinstance(snaplen, int)
                or not 64 <= snaplen <= 1920
            ):
                why = (
                    "expected an integer 64-1920 (bytes; headers only: 96 is enough for IPv6 + TCP)"
                )
                self.fail(where, "snaplen", why, _shown(snaplen))
            yield CaptureConfig(
                interface=name if path is None else None,
                pcap=path,
                snaplen=snaplen,
                ring_mib=self._count(where, t, "ring_mib", _CAPTURE.ring_mib),
                speed=float(speed),
                loop=loop,
            )

    def _collector(self, doc: Mapping[str, object]) -> CollectorConfig | None:
        """[collector] with its [[collector.exporters]]; None when the file has neither."""
        if "collector" not in doc:
            return None
        where, t = self._section(doc, "collector")
        # the entries first: a problem of their own ([collector.exporters] written as a single
        # table, say) is reported as such rather than as the missing listen it implies
        exporters = tuple(self._exporters(t))
        if "listen" not in t:
            why = "required key is missing"
            if exporters:
                why += ": [[collector.exporters]] send their records to these UDP addresses"
            self.fail(where, "listen", why)
        listen = self._collector_listen(where, t["listen"])
        template_timeout_s = self._seconds(
            where, t, "template_timeout", _COLLECTOR.template_timeout_s
        )
        stitch_gap_s = self._stitch_gap(where, t)
        queued = t.get("max_queue", _COLLECTOR.max_queue)
        max_queue = self._integer(where, "max_queue", queued, MAX_COLLECTOR_QUEUE, _MAX_QUEUE_WHY)
        active_timeout_s = self._seconds(where, t, "active_timeout", _COLLECTOR.active_timeout_s)
        return CollectorConfig(
            listen=listen,
            template_timeout_s=template_timeout_s,
            stitch_gap_s=stitch_gap_s,
            max_queue=max_queue,
            active_timeout_s=active_timeout_s,
            exporters=exporters,
        )

    def _collector_listen(self, where: _Where, values: object) -> tuple[tuple[str, int], ...]:
        """[collector] listen: a non-empty array of UDP "host:port" addresses (IPv6 host in
        brackets, port 0 = any free port), none listed twice."""
        if not isinstance(values, list) or not values:
            self.fail(where, "listen", _LISTEN_UDP_WHY, _shown(values))
        addresses: list[tuple[str, int]] = []
        seen: dict[tuple[str, int], str] = {}  # (comparable host, port) -> as first written
        for value in values:
            address = (
                listen_address(value, allow_port_zero=True) if isinstance(value, str) else None
            )
            if address is None:
                self.fail(where, "listen", _LISTEN_UDP_WHY, _shown(value))
            host = address[0]
            port = address[1]
            if value.startswith("[") and not _is_ipv6(host):
                self.fail(where, "listen", "expected an IPv6 address in the brackets", value)
            comparable = (_comparable_host(host), port)
            # port 0 twice is two sockets on two free ports, not a clash
            if port != 0 and comparable in seen:
                first = seen[comparable]
                twice = "listed twice" if first == value else f'the same address as "{first}"'
                self.fail(where, "listen", twice, value)
            seen[comparable] = value
            addresses.append(address)
        return tuple(addresses)

    def _stitch_gap(self, where: _Where, t: Mapping[str, object]) -> float:
        """[collector] stitch_gap: a finite number of seconds 0-3600."""
        value = t.get("stitch_gap", _COLLECTOR.stitch_gap_s)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and 0 <= value <= MAX_STITCH_GAP_S)
        ):
            why = f"expected a number of seconds 0-{MAX_STITCH_GAP_S:g}"
            self.fail(where, "stitch_gap", why, _shown(value))
        return float(value)

    def _exporters(self, collector: Mapping[str, object]) -> Iterator[ExporterConfig]:
        """[[collector.exporters]]: the collector's allow-list, each network at most once."""
        seen: dict[str, _Where] = {}  # normalised network -> its entry
        for where, t in self._entries(collector, "collector.exporters"):
            if "address" not in t:
                self.fail(where, "address", "required key is missing")
            network = self._exporter_network(where, t["address"])
            first = seen.setdefault(network, where)
            if first is not where:
                line = self._lines.find(first.table, first.index, "address")
                why = f"duplicate exporter network {network}; already at line {line}"
                self.fail(where, "address", why, t["address"])
            if "gateway" not in t:
                self.fail(where, "gateway", "required key is missing")
            yield ExporterConfig(
                address=network,
                gateway=self._text(where, t, "gateway", ""),
                sampling=self._sampling(where, t),
            )

    def _exporter_network(self, where: _Where, value: object) -> str:
        """An exporter's address or network, normalised ("192.0.2.10" -> "192.0.2.10/32").

        Unlike a client's CIDR, host bits are an error: an allow-list silently widened from a
        typo would accept exporters nobody meant to trust.
        """
        why = "expected an IPv4 or IPv6 address or network like 192.0.2.10 or 2001:db8::/64"
        if not isinstance(value, str):
            self.fail(where, "address", why, _shown(value))
        if "%" in value:
            why = "expected no zone index (%...): the allow-list matches addresses, not interfaces"
            self.fail(where, "address", why, value)
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            self.fail(where, "address", why, value)
        host = ipaddress.ip_interface(value).ip
        if host != network.network_address:
            why = f"host bits are set: write {network} for the network, or {host} for one host"
            self.fail(where, "address", why, value)
        return str(network)

    def _sampling(self, where: _Where, t: Mapping[str, object]) -> int | None:
        """An exporter's sampling: N of 1 in N packets, or "auto" (None: as the exporter says)."""
        value = t.get("sampling", _AUTO)
        if value == _AUTO:
            return None
        return self._integer(where, "sampling", value, MAX_SAMPLING, _SAMPLING_WHY)

    def _ports(self, where: _Where, value: object) -> tuple[tuple[int, int], ...] | None:
        """Resource ports: a string like "80,8000-8100", a bare integer, or absent (all ports)."""
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            why = 'expected a string like "80,443" or "8000-8100"'
            self.fail(where, "ports", why, _shown(value))
        try:
            return parse_ports(value)
        except ValueError as exc:
            self.fail(where, "ports", str(exc), value)

    def _protocols(self, where: _Where, value: object) -> tuple[IpProto, ...]:
        """Resource protocols: a non-empty array of "tcp"/"udp" without repeats; absent = both."""
        if value is None:
            return (IpProto.TCP, IpProto.UDP)
        if not isinstance(value, list) or not value:
            why = 'expected an array like ["tcp"] or ["tcp", "udp"] (omit the key for both)'
            self.fail(where, "protocols", why, _shown(value))
        protocols: list[IpProto] = []
        for item in value:
            proto = _PROTOCOLS.get(item) if isinstance(item, str) else None
            if proto is None:
                self.fail(where, "protocols", 'expected "tcp" or "udp"', _shown(item))
            if proto in protocols:
                self.fail(where, "protocols", "listed twice", item)
            protocols.append(proto)
        return tuple(protocols)

    def _cidr(self, where: _Where, key: str, value: object) -> str:
        """A normalised CIDR: a bare address is a host (/32 or /128); host bits are cleared."""
        why = "expected an IPv4 or IPv6 address or CIDR like 10.99.0.5/32 or fd00::/64"
        if not isinstance(value, str):
            self.fail(where, key, why, _shown(value))
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            self.fail(where, key, why, value)

    def _text(self, where: _Where, t: Mapping[str, object], key: str, default: str) -> str:
        """A non-empty string without NUL (PostgreSQL text cannot hold it), or `default` when
        the key is absent."""
        value = t.get(key, default)
        if not isinstance(value, str) or not value.strip() or "\x00" in value:
            self.fail(where, key, "expected a non-empty string without NUL", _shown(value))
        return value

    def _ident(self, where: _Where, t: Mapping[str, object], key: str, default: str | None) -> str:
        """An id of [A-Za-z0-9._-]; required when `default` is None."""
        value = t.get(key, default)
        if value is None:
            self.fail(where, key, "required key is missing")
        if not isinstance(value, str) or _ID.fullmatch(value) is None:
            self.fail(where, key, _ID_WHY, _shown(value))
        return value

    def _seconds(self, where: _Where, t: Mapping[str, object], key: str, default: float) -> float:
        """A finite number of seconds > 0 (int or float; a bool is not a number)."""
        value = t.get(key, default)
        why = "expected a number of seconds > 0"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, key, why, _shown(value))
        if not math.isfinite(value) or value <= 0:
            self.fail(where, key, why, value)
        return float(value)

    def _seconds_or_zero(
        self, where: _Where, t: Mapping[str, object], key: str, default: float
    ) -> float:
        """A finite number of seconds >= 0 (int or float; a bool is not a number)."""
        value = t.get(key, default)
        why = "expected a number of seconds >= 0"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(where, key, why, _shown(value))
        if not math.isfinite(value) or value < 0:
            self.fail(where, key, why, value)
        return float(value)

    def _retention_days(self, where: _Where, t: Mapping[str, object]) -> int | None:
        """An org's retention_days: an integer 1-36500, or "forever" (None); absent = default."""
        value = t.get("retention_days", _ORG.retention_days)
        return self._days_or_forever(where, "retention_days", value, _RETENTION_WHY)

    def _usage_retention_days(
        self, where: _Where, t: Mapping[str, object], retention_days: int | None
    ) -> int | None:
        """An org's usage_retention_days: an integer 1-36500 or "forever" (None), no shorter
        than its retention_days (the rollup outlives the sessions it sums); absent = the
        longer of 400 days and retention_days."""
        if "usage_retention_days" not in t:
            return default_usage_retention(retention_days)
        value = t["usage_retention_days"]
        days = self._days_or_forever(where, "usage_retention_days", value, _USAGE_RETENTION_WHY)
        if days is not None and (retention_days is None or days < retention_days):
            kept = "forever" if retention_days is None else f"{retention_days} days"
            why = f"at least retention_days ({kept}): the usage rollup outlives the sessions"
            self.fail(where, "usage_retention_days", why, _shown(value))
        return days

    def _days_or_forever(self, where: _Where, key: str, value: object, why: str) -> int | None:
        """`value` of `key`: an integer 1-36500, or "forever" (None)."""
        if value == _FOREVER:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 1 <= value <= MAX_RETENTION_DAYS
        ):
            self.fail(where, key, why, _shown(value))
        return value

    def _flag(self, where: _Where, t: Mapping[str, object], key: str, default: bool) -> bool:
        """A TOML boolean (1, 0 or "no" are not accepted)."""
        value = t.get(key, default)
        if not isinstance(value, bool):
            self.fail(where, key, "expected true or false", _shown(value))
        return value

    def _integer(self, where: _Where, key: str, value: object, highest: int, why: str) -> int:
        """`value` of `key`: an integer 1-`highest` (a bool or a float is not accepted)."""
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= highest:
            self.fail(where, key, why, _shown(value))
        return value

    def _count(self, where: _Where, t: Mapping[str, object], key: str, default: int) -> int:
        """An integer >= 1 (a bool or a float is not accepted)."""
        value = t.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(where, key, "expected an integer >= 1", _shown(value))
        return value


def _is_ifname(value: object) -> TypeGuard[str]:
    """True when `value` is a name Linux accepts for an interface (dev_valid_name)."""
    return (
        isinstance(value, str)
        and _IFNAME.fullmatch(value) is not None
        and value not in (".", "..")
        and len(value.encode()) <= 15  # IFNAMSIZ counts bytes, not characters
    )


def _is_ipv6(host: str) -> bool:
    """True when `host` is the text of an IPv6 address ("::", "fe80::1")."""
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _comparable_host(host: str) -> str:
    """`host` as compared for duplicates: an IP address in its compressed form ("0::0" is
    "::"), a name in lower case."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def _is_wireguard_key(value: str) -> bool:
    """True when `value` is the base64 text of a 32-byte WireGuard public key."""
    if len(value) != _WG_KEY_CHARS:
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except binascii.Error:
        return False
