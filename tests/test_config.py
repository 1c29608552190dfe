"""load_config(): defaults, the environment override and one error per rule at the right line."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import socket
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.helpers.pcapwrite import LINKTYPE_RAW, write_pcap
from tunnelacct.config.load import load_config
from tunnelacct.config.model import (
    ARRAY_SECTIONS,
    SECTION_KEYS,
    CaptureConfig,
    ClientConfig,
    CollectorConfig,
    Config,
    DatabaseConfig,
    ExporterConfig,
    OrgConfig,
    ResourceConfig,
    ServiceConfig,
    Timeouts,
    WireguardConfig,
    WriterConfig,
    parse_ports,
)
from tunnelacct.enums import IpProto
from tunnelacct.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tunnelacct.toml"
KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(1, 33))).decode()
MARK = "#<"  # marks the line an error must point at


def write(tmp_path: Path, text: str) -> Path:
    """Write `text` as tmp_path/tunnelacct.toml and return its path."""
    path = tmp_path / "tunnelacct.toml"
    path.write_text(text, encoding="utf-8")
    return path


def marked_line(text: str) -> int:
    """The 1-based number of the only line carrying MARK."""
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if MARK in line]
    assert len(lines) == 1, "a case marks exactly one line"
    return lines[0]


def test_no_path_gives_defaults() -> None:
    assert load_config(None, environ={}) == Config(gateway=socket.gethostname())


def test_empty_file_gives_defaults_and_keeps_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    # the default SQLite file is relative, like every relative path: to the config's directory
    beside_the_config = DatabaseConfig(f"sqlite:///{tmp_path / 'tunnelacct.db'}")
    expected = Config(path=str(path), gateway=socket.gethostname(), database=beside_the_config)
    assert load_config(path, environ={}) == expected


def test_documented_defaults() -> None:
    config = load_config(None, environ={})
    assert config.database.url == "sqlite:///tunnelacct.db"
    assert config.timeouts == Timeouts(60.0, 3600.0, 5.0, 30.0)
    assert config.writer == WriterConfig(5000, 1.0, 100_000)
    assert config.default_org == "unattributed"
    assert config.captures == ()  # no [[capture]]: a query-only node
    assert config.wireguard == WireguardConfig(interfaces=(), refresh_s=30.0)
    assert config.service == ServiceConfig(
        queue_packets=262_144, shutdown_timeout_s=30.0, status_interval_s=60.0
    )


FULL = """\
[database]
url = "postgresql://acct@db.internal/tunnelacct"
synchronous = "full"

[timeouts]
udp_idle = 30
tcp_idle = 7200.5
tcp_linger = 2
checkpoint = 15
first_write = 7.5

[writer]
batch_size = 100
flush_interval = 0.25
max_pending = 1000
write_timeout = 12.5

[gateway]
name = "gw-7"

[attribution]
default_org = "nobody"

[[orgs]]
id = "acme"
name = "Acme Corp"
retention_days = 90

[[orgs]]
id = "beta"
retention_days = "forever"
logging = false

[[clients]]
id = "alice-laptop"
org = "acme"
name = "Alice's laptop"
user = "alice"
addresses = ["100.64.0.2", "fd00:64::2/128", "100.64.9.9/24"]
public_key = "{KEY_A}"

[[clients]]
id = "printer"
org = "nobody"
addresses = ["100.64.0.77"]

[[resources]]
id = "pg-primary"
org = "beta"
name = "Postgres primary"
address = "10.99.0.5"
ports = "5432, 8000-8100,80,8050-8200"
protocols = ["udp", "tcp"]

[[resources]]
id = "net6"
org = "acme"
address = "fd00:99::1/64"
ports = 53

[collector]
listen = ["127.0.0.1:2055", "[::]:4739"]
template_timeout = 600
stitch_gap = 2.5
max_queue = 5000
active_timeout = 120

[[collector.exporters]]
address = "192.0.2.10"
gateway = "branch-fw"

[[collector.exporters]]
address = "2001:db8:7::/48"
gateway = "dc-edge"
sampling = 100

[[collector.exporters]]
address = "198.51.100.0/24"
gateway = "branch-fw"
sampling = "auto"
""".replace("{KEY_A}", KEY_A)


def test_full_file_loads_every_key(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    assert load_config(path, environ={}) == Config(
        path=str(path),
        database=DatabaseConfig("postgresql://acct@db.internal/tunnelacct", "full"),
        timeouts=Timeouts(
            udp_idle_s=30.0,
            tcp_idle_s=7200.5,
            tcp_linger_s=2.0,
            checkpoint_s=15.0,
            first_write_s=7.5,
        ),
        writer=WriterConfig(
            batch_size=100, flush_interval_s=0.25, max_pending=1000, write_timeout_s=12.5
        ),
        gateway="gw-7",
        default_org="nobody",
        orgs=(
            OrgConfig("acme", "Acme Corp", 90),
            OrgConfig("beta", "beta", None, logging=False, usage_retention_days=None),
        ),
        clients=(
            ClientConfig(
                id="alice-laptop",
                org="acme",
                name="Alice's laptop",
                user="alice",
                addresses=("100.64.0.2/32", "fd00:64::2/128", "100.64.9.0/24"),
                public_key=KEY_A,
            ),
            ClientConfig(id="printer", org="nobody", name="printer", addresses=("100.64.0.77/32",)),
        ),
        resources=(
            ResourceConfig(
                id="pg-primary",
                org="beta",
                name="Postgres primary",
                address="10.99.0.5/32",
                ports=((80, 80), (5432, 5432), (8000, 8200)),
                protocols=(IpProto.UDP, IpProto.TCP),
            ),
            ResourceConfig(
                id="net6",
                org="acme",
                name="net6",
                address="fd00:99::/64",
                ports=((53, 53),),
                protocols=(IpProto.TCP, IpProto.UDP),
            ),
        ),
        collector=CollectorConfig(
            listen=(("127.0.0.1", 2055), ("::", 4739)),  # the IPv6 host without its brackets
            template_timeout_s=600.0,
            stitch_gap_s=2.5,
            max_queue=5000,
            active_timeout_s=120.0,
            exporters=(
                ExporterConfig(address="192.0.2.10/32", gateway="branch-fw"),
                ExporterConfig(address="2001:db8:7::/48", gateway="dc-edge", sampling=100),
                ExporterConfig(address="198.51.100.0/24", gateway="branch-fw", sampling=None),
            ),
        ),
    )


def test_config_is_frozen() -> None:
    config = load_config(None, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.default_org = "x"  # type: ignore[misc]


def test_gateway_section_without_name_uses_host_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\n")
    assert load_config(path, environ={}).gateway == socket.gethostname()


def test_environment_url_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "sqlite:///file.db"\n')
    environ = {"TUNNELACCT_DATABASE_URL": "postgresql://u:pw@db/acct"}
    assert load_config(path, environ=environ).database.url == "postgresql://u:pw@db/acct"
    assert load_config(None, environ=environ).database.url == "postgresql://u:pw@db/acct"


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("sqlite:///file.db", "{config_dir}/file.db"),
        ("sqlite:///../up/file.db", "{parent}/up/file.db"),
        ("sqlite+aiosqlite:///sub/file.db", "{config_dir}/sub/file.db"),
        ("sqlite:///~/file.db", "{home}/file.db"),
        ("sqlite:////var/lib/acct.db", "/var/lib/acct.db"),
    ],
)
def test_a_relative_database_file_is_relative_to_the_config_file_like_pcap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: str, meant: str
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    path = write(config_dir, f'[database]\nurl = "{written}"\n')
    monkeypatch.chdir(tmp_path)  # elsewhere: the working directory must not matter
    url = load_config(path, environ={}).database.url
    expected = meant.format(config_dir=config_dir, parent=tmp_path, home=os.path.expanduser("~"))
    assert make_url(url).database == expected  # the file SQLAlchemy will open


def test_a_relative_database_file_in_the_environment_is_relative_to_the_working_directory(
    tmp_path: Path,
) -> None:
    # not written in a config file: nothing else it could be relative to
    path = write(tmp_path, "")
    url = load_config(path, environ={"TUNNELACCT_DATABASE_URL": "sqlite:///here.db"}).database.url
    assert url == "sqlite:///here.db"


def test_empty_environment_url_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, '[database]\nurl = "sqlite:////var/lib/acct.db"\n')
    config = load_config(path, environ={"TUNNELACCT_DATABASE_URL": ""})
    assert config.database.url == "sqlite:////var/lib/acct.db"


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNNELACCT_DATABASE_URL", "sqlite:///from-env.db")
    assert load_config(None).database.url == "sqlite:///from-env.db"


def test_bad_environment_url_is_named_and_its_password_hidden() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"TUNNELACCT_DATABASE_URL": "mysql://u:hunter2@db/x"})
    assert info.value.key == "$TUNNELACCT_DATABASE_URL"
    assert info.value.value == "mysql://u:***@db/x"
    assert "hunter2" not in str(info.value)


def test_client_org_may_be_the_undeclared_default_org(tmp_path: Path) -> None:
    text = '[[clients]]\nid = "c"\norg = "unattributed"\naddresses = ["100.64.0.9"]\n'
    assert load_config(write(tmp_path, text), environ={}).clients[0].org == "unattributed"


def test_nested_client_cidrs_are_allowed(tmp_path: Path) -> None:
    text = (
        '[[orgs]]\nid = "o"\n'
        '[[clients]]\nid = "a"\norg = "o"\naddresses = ["100.64.0.0/16"]\n'
        '[[clients]]\nid = "b"\norg = "o"\naddresses = ["100.64.1.0/24"]\n'
    )
    clients = load_config(write(tmp_path, text), environ={}).clients
    assert [c.addresses for c in clients] == [("100.64.0.0/16",), ("100.64.1.0/24",)]


def test_message_names_file_line_key_value_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    body = "\n".join(
        f'[[resources]]\nid = "r{i}"\norg = "acme"\naddress = "10.0.0.{i}"' for i in (1, 2)
    )
    text = f'[[orgs]]\nid = "acme"\n{body}\n[[resources]]\nid = "pg-primary"\norg = "acme"\n'
    text += 'address = "10.99.0.5/32"\nports = "80-"\n'
    write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config("tunnelacct.toml", environ={})
    assert str(info.value) == (
        "config error: tunnelacct.toml line 15: [[resources]] \"pg-primary\" ports = '80-': "
        "expected a port or a range like 8000-8100"
    )


DB, TO, WR = "[database]\n", "[timeouts]\n", "[writer]\n"
ORG = '[[orgs]]\nid = "acme"\n'
CLIENT = ORG + '[[clients]]\nid = "alice"\norg = "acme"\n'
RES = ORG + '[[resources]]\nid = "pg"\norg = "acme"\n'
RES_AT = RES + 'address = "::1"\n'
OA, C, R = '[[orgs]] "acme"', '[[clients]] "alice"', '[[resources]] "pg"'
KEY_33 = base64.b64encode(bytes(33)).decode()  # 44 characters, but 33 bytes
REPLAY = "replay.pcap"  # a real capture file the invalid-value test writes beside the config
CAP = "[[capture]]\n"
CI, CP = CAP + 'interface = "wg0"\n', CAP + f'pcap = "{REPLAY}"\n'
K1, WG, SV = "[[capture]] #1", "[wireguard]\n", "[service]\n"
LONG_UTF8 = "wg-" + "\u00e4" * 7  # 10 characters but 17 bytes: over IFNAMSIZ - 1
CO = '[collector]\nlisten = ["127.0.0.1:2055"]\n'
EX = "[[collector.exporters]]\n"
EXA = EX + 'address = "192.0.2.10"\n'  # an entry still without its gateway
EXG = EXA + 'gateway = "branch-fw"\n'  # a whole entry
E1, E2 = "[[collector.exporters]] #1", "[[collector.exporters]] #2"
LISTEN_WHY = 'expected an array of "host:port"'

# (id, text with MARK on the offending line, key as shown, value shown, part of why)
INVALID: list[tuple[str, str, str, object, str]] = [
    (
        "unknown-section",
        "[databse] #<\n",
        "databse",
        None,
        "allowed: api, attribution, capture, clients",
    ),
    ("unknown-top-key", 'gatway = "gw" #<\n', "gatway", "gw", "unknown section"),
    ("unknown-key", TO + "udp_idel = 5 #<\n", "[timeouts] udp_idel", 5, "allowed: udp_idle"),
    ("dotted-subtable", DB + "[database.extra] #<\n", "[database] extra", None, "allowed: url"),
    ("section-not-table", 'database = "x" #<\n', "database", "x", "write [database]"),
    ("array-as-table", '[orgs] #<\nid = "acme"\n', "orgs", None, "write [[orgs]]"),
    ("url-type", DB + "url = 5 #<\n", "[database] url", 5, "non-empty string"),
    (
        "synchronous",
        DB + 'synchronous = "extra" #<\n',
        "[database] synchronous",
        "extra",
        '"normal" (survives a crash) or "full"',
    ),
    ("url-scheme", DB + 'url = "mysql://d/x" #<\n', "[database] url", "mysql://d/x", "sqlite:///"),
    (
        "url-sqlite-2-slashes",
        DB + 'url = "sqlite://a" #<\n',
        "[database] url",
        "sqlite://a",
        "expected a file",
    ),
    (
        "url-password",
        DB + 'url = "mongodb://u:pw@h/x" #<\n',
        "[database] url",
        "mongodb://u:***@h/x",
        "postgresql://",
    ),
    ("udp-idle-zero", TO + "udp_idle = 0 #<\n", "[timeouts] udp_idle", 0, "> 0"),
    ("tcp-idle-negative", TO + "tcp_idle = -1.5 #<\n", "[timeouts] tcp_idle", -1.5, "> 0"),
    ("linger-string", TO + 'tcp_linger = "5" #<\n', "[timeouts] tcp_linger", "5", "seconds"),
    ("checkpoint-bool", TO + "checkpoint = true #<\n", "[timeouts] checkpoint", True, "seconds"),
    ("first-write-negative", TO + "first_write = -1 #<\n", "[timeouts] first_write", -1, ">= 0"),
    ("first-write-string", TO + 'first_write = "10" #<\n', "[timeouts] first_write", "10", ">= 0"),
    ("udp-idle-nan", TO + "udp_idle = nan #<\n", "[timeouts] udp_idle", float("nan"), "> 0"),
    ("tcp-idle-inf", TO + "tcp_idle = inf #<\n", "[timeouts] tcp_idle", float("inf"), "> 0"),
    ("batch-zero", WR + "batch_size = 0 #<\n", "[writer] batch_size", 0, "integer >= 1"),
    ("batch-bool", WR + "batch_size = true #<\n", "[writer] batch_size", True, "integer"),
    ("pending-float", WR + "max_pending = 1.5 #<\n", "[writer] max_pending", 1.5, "integer"),
    ("flush-zero", WR + "flush_interval = 0 #<\n", "[writer] flush_interval", 0, "> 0"),
    ("write-timeout-zero", WR + "write_timeout = 0 #<\n", "[writer] write_timeout", 0, "> 0"),
    ("gateway-blank", '[gateway]\nname = " " #<\n', "[gateway] name", " ", "non-empty"),
    (
        "default-org-id",
        '[attribution]\ndefault_org = "no org" #<\n',
        "[attribution] default_org",
        "no org",
        "letters, digits",
    ),
    ("org-missing-id", '[[orgs]] #<\nname = "Acme"\n', "[[orgs]] #1 id", None, "missing"),
    ("org-empty-id", ORG + '[[orgs]]\nid = "" #<\n', "[[orgs]] #2 id", "", "non-empty id"),
    ("org-bad-id", '[[orgs]]\nid = "a/b" #<\n', "[[orgs]] #1 id", "a/b", "letters, digits"),
    ("org-int-id", "[[orgs]]\nid = 7 #<\n", "[[orgs]] #1 id", 7, "letters, digits"),
    (
        "org-duplicate",
        ORG + '[[orgs]]\nid = "acme" #<\n',
        f"{OA} id",
        "acme",
        "duplicate id; already used at line 2",
    ),
    (
        "retention-zero",
        ORG + "retention_days = 0 #<\n",
        f"{OA} retention_days",
        0,
        'days 1-36500 or "forever" (to store nothing, set logging = false)',
    ),
    (
        "retention-negative",
        ORG + "retention_days = -1 #<\n",
        f"{OA} retention_days",
        -1,
        'days 1-36500 or "forever"',
    ),
    ("retention-bool", ORG + "retention_days = true #<\n", f"{OA} retention_days", True, "1-36500"),
    ("retention-float", ORG + "retention_days = 1.5 #<\n", f"{OA} retention_days", 1.5, "1-36500"),
    (
        "retention-huge",
        ORG + "retention_days = 36501 #<\n",
        f"{OA} retention_days",
        36501,
        "1-36500",
    ),
    (
        "retention-never",
        ORG + 'retention_days = "never" #<\n',
        f"{OA} retention_days",
        "never",
        '"forever"',
    ),
    (
        "retention-forever-case",
        ORG + 'name = "A"\nretention_days = "Forever" #<\n',
        f"{OA} retention_days",
        "Forever",
        '"forever"',
    ),
    (
        "usage-retention-zero",
        ORG + "usage_retention_days = 0 #<\n",
        f"{OA} usage_retention_days",
        0,
        'days 1-36500 or "forever"',
    ),
    (
        "usage-retention-shorter",
        ORG + "retention_days = 90\nusage_retention_days = 60 #<\n",
        f"{OA} usage_retention_days",
        60,
        "at least retention_days (90 days): the usage rollup outlives the sessions",
    ),
    (
        "usage-retention-sessions-forever",
        ORG + 'retention_days = "forever"\nusage_retention_days = 400 #<\n',
        f"{OA} usage_retention_days",
        400,
        "at least retention_days (forever)",
    ),
    ("logging-string", ORG + 'logging = "no" #<\n', f"{OA} logging", "no", "true or false"),
    ("logging-int", ORG + 'name = "A"\nlogging = 1 #<\n', f"{OA} logging", 1, "true or false"),
    ("org-name-type", ORG + "name = 3 #<\n", f"{OA} name", 3, "non-empty string"),
    (
        "org-typo",
        ORG + "retension_days = 9 #<\n",
        f"{OA} retension_days",
        9,
        "allowed: id, name, retention_days, usage_retention_days, logging",
    ),
    ("org-logging-typo", ORG + "loging = false #<\n", f"{OA} loging", False, "logging"),
    (
        "client-missing-id",
        ORG + '[[clients]] #<\norg = "acme"\n',
        "[[clients]] #1 id",
        None,
        "missing",
    ),
    ("client-missing-org", ORG + '[[clients]] #<\nid = "alice"\n', f"{C} org", None, "missing"),
    (
        "client-unknown-org",
        ORG + '[[clients]]\nid = "alice"\norg = "acne" #<\n',
        f"{C} org",
        "acne",
        "unknown org; declared: acme, unattributed",
    ),
    (
        "client-duplicate",
        CLIENT + '[[clients]]\nid = "alice" #<\norg = "acme"\n',
        f"{C} id",
        "alice",
        "duplicate id; already used at line 4",
    ),
    (
        "client-unmatchable",
        ORG + '[[clients]] #<\nid = "alice"\norg = "acme"\naddresses = []\n',
        C,
        None,
        "a client needs addresses or a public_key",
    ),
    (
        "client-typo",
        CLIENT + "adresses = [] #<\n",
        f"{C} adresses",
        None,
        "allowed: id, org, name, user, addresses, public_key",
    ),
    ("client-name-empty", CLIENT + 'name = "" #<\n', f"{C} name", "", "non-empty"),
    ("client-empty-user", CLIENT + 'user = "" #<\n', f"{C} user", "", "non-empty"),
    (
        "client-bad-cidr",
        CLIENT + 'addresses = ["100.64.0.300"] #<\n',
        f"{C} addresses",
        "100.64.0.300",
        "IPv4 or IPv6 address or CIDR",
    ),
    (
        "client-bad-prefix",
        CLIENT + 'addresses = ["fd00::/129"] #<\n',
        f"{C} addresses",
        "fd00::/129",
        "CIDR",
    ),
    (
        "client-addresses-string",
        CLIENT + 'addresses = "100.64.0.2" #<\n',
        f"{C} addresses",
        "100.64.0.2",
        "array of CIDR strings",
    ),
    (
        "client-same-cidr",
        CLIENT + 'addresses = ["100.64.0.2/32"]\n[[clients]]\nid = "bob"\n'
        'org = "acme"\naddresses = ["fd00::1", "100.64.0.2"] #<\n',
        '[[clients]] "bob" addresses',
        "100.64.0.2",
        'already assigned to client "alice"',
    ),
    (
        "client-cidr-twice",
        CLIENT + 'addresses = ["10.1.0.0/16", "10.1.2.3/16"] #<\n',
        f"{C} addresses",
        "10.1.2.3/16",
        "10.1.0.0/16 is listed twice",
    ),
    (
        "client-bad-key",
        CLIENT + 'public_key = "abc" #<\n',
        f"{C} public_key",
        "abc",
        "44-character base64",
    ),
    (
        "client-key-33-bytes",
        CLIENT + f'public_key = "{KEY_33}" #<\n',
        f"{C} public_key",
        KEY_33,
        "32 bytes",
    ),
    (
        "client-same-key",
        CLIENT + f'public_key = "{KEY_A}"\n[[clients]]\nid = "bob"\n'
        f'org = "acme"\npublic_key = "{KEY_A}" #<\n',
        '[[clients]] "bob" public_key',
        KEY_A,
        'already the key of client "alice"',
    ),
    (
        "resource-missing-id",
        ORG + '[[resources]] #<\norg = "acme"\naddress = "::1"\n',
        "[[resources]] #1 id",
        None,
        "required key is missing",
    ),
    (
        "resource-duplicate",
        RES_AT + '[[resources]]\nid = "pg" #<\n',
        f"{R} id",
        "pg",
        "duplicate id; already used at line 4",
    ),
    (
        "resource-unknown-org",
        ORG + '[[resources]]\nid = "pg"\norg = "x" #<\naddress = "::1"\n',
        f"{R} org",
        "x",
        "unknown org",
    ),
    ("resource-name-type", RES + 'name = ["pg"] #<\n', f"{R} name", None, "non-empty"),
    (
        "resource-missing-address",
        ORG + '[[resources]] #<\nid = "pg"\norg = "acme"\n',
        f"{R} address",
        None,
        "required key is missing",
    ),
    (
        "resource-bad-address",
        RES + 'address = "10.9.0.5/33" #<\n',
        f"{R} address",
        "10.9.0.5/33",
        "CIDR",
    ),
    ("resource-address-list", RES + 'address = ["10.0.0.1"] #<\n', f"{R} address", None, "CIDR"),
    (
        "ports-open-range",
        RES_AT + 'ports = "80-" #<\n',
        f"{R} ports",
        "80-",
        "expected a port or a range like 8000-8100",
    ),
    (
        "ports-too-big",
        RES_AT + 'ports = "80,70000" #<\n',
        f"{R} ports",
        "80,70000",
        "port 70000 is outside 0-65535",
    ),
    (
        "ports-reversed",
        RES_AT + 'ports = "8100-8000" #<\n',
        f"{R} ports",
        "8100-8000",
        "range 8100-8000 is reversed",
    ),
    ("ports-letters", RES_AT + 'ports = "b-a" #<\n', f"{R} ports", "b-a", "a port or a range"),
    ("ports-empty", RES_AT + 'ports = "" #<\n', f"{R} ports", "", "a port or a range"),
    ("ports-empty-part", RES_AT + 'ports = "80,,443" #<\n', f"{R} ports", "80,,443", "a port"),
    ("ports-int-too-big", RES_AT + "ports = 65536 #<\n", f"{R} ports", "65536", "outside"),
    ("ports-bool", RES_AT + "ports = true #<\n", f"{R} ports", True, "expected a string"),
    (
        "protocols-icmp",
        RES_AT + 'protocols = ["icmp"] #<\n',
        f"{R} protocols",
        "icmp",
        'expected "tcp" or "udp"',
    ),
    (
        "protocols-upper",
        RES_AT + 'protocols = ["TCP"] #<\n',
        f"{R} protocols",
        "TCP",
        'expected "tcp" or "udp"',
    ),
    (
        "protocols-twice",
        RES_AT + 'protocols = ["tcp", "tcp"] #<\n',
        f"{R} protocols",
        "tcp",
        "listed twice",
    ),
    ("protocols-empty", RES_AT + "protocols = [] #<\n", f"{R} protocols", None, "omit the key"),
    ("protocols-string", RES_AT + 'protocols = "tcp" #<\n', f"{R} protocols", "tcp", "an array"),
    (
        "resource-typo",
        RES_AT + 'port = "80" #<\n',
        f"{R} port",
        "80",
        "allowed: id, org, name, address, ports, protocols",
    ),
    (
        "third-resource",
        ORG
        + "".join(
            f'[[resources]]\nid = "r{i}"\norg = "acme"\naddress = "10.0.0.{i}"\nports = "{i}"\n'
            for i in (1, 2)
        )
        + '[[resources]]\nid = "r3"\norg = "acme"\naddress = "10.0.0.3"\n'
        'ports = "80-" #<\n'
        '[[resources]]\nid = "r4"\norg = "acme"\naddress = "::4"\nports = "80-"\n',
        '[[resources]] "r3" ports',
        "80-",
        "range like 8000-8100",
    ),
    (
        "key-in-multiline-string",
        '[gateway]\nname = """\nx = 1\n"""\n' + TO + "udp_idle = 0 #<\n",
        "[timeouts] udp_idle",
        0,
        "> 0",
    ),
    ("capture-not-array", 'capture = "wg0" #<\n', "capture", "wg0", "write [[capture]]"),
    ("capture-as-table", '[capture] #<\ninterface = "wg0"\n', "capture", None, "write [[capture]]"),
    (
        "capture-neither",
        "[[capture]] #<\nsnaplen = 96\n",
        K1,
        None,
        "expected exactly one of interface or pcap",
    ),
    (
        "capture-both",
        f'[[capture]] #<\ninterface = "wg0"\npcap = "{REPLAY}"\n',
        K1,
        None,
        "expected exactly one of interface or pcap",
    ),
    (
        "capture-typo",
        CI + "ring_mb = 8 #<\n",
        f"{K1} ring_mb",
        8,
        "allowed: interface, pcap, snaplen, ring_mib, speed, loop",
    ),
    (
        "interface-space",
        CAP + 'interface = "wg 0" #<\n',
        f"{K1} interface",
        "wg 0",
        "without spaces, '/' or ':'",
    ),
    (
        "interface-tab",
        CAP + 'interface = "wg\\t0" #<\n',
        f"{K1} interface",
        "wg\t0",
        "without spaces",
    ),
    ("interface-slash", CAP + 'interface = "a/b" #<\n', f"{K1} interface", "a/b", "'/'"),
    ("interface-colon", CAP + 'interface = "eth0:1" #<\n', f"{K1} interface", "eth0:1", "':'"),
    (
        "interface-16-chars",
        CAP + 'interface = "abcdefghijklmnop" #<\n',
        f"{K1} interface",
        "abcdefghijklmnop",
        "1-15 bytes",
    ),
    (
        "interface-17-bytes",
        CAP + f'interface = "{LONG_UTF8}" #<\n',
        f"{K1} interface",
        LONG_UTF8,
        "1-15 bytes",
    ),
    ("interface-dot", CAP + 'interface = "." #<\n', f"{K1} interface", ".", "not . or .."),
    ("interface-dotdot", CAP + 'interface = ".." #<\n', f"{K1} interface", "..", "not . or .."),
    ("interface-empty", CAP + 'interface = "" #<\n', f"{K1} interface", "", "interface name"),
    ("interface-int", CAP + "interface = 0 #<\n", f"{K1} interface", 0, "interface name"),
    ("interface-list", CAP + 'interface = ["wg0"] #<\n', f"{K1} interface", None, "interface name"),
    (
        "interface-twice",
        CI + CAP + 'interface = "wg0" #<\n',
        "[[capture]] #2 interface",
        "wg0",
        "captured twice; already at line 2",
    ),
    (
        "speed-on-interface",
        CI + "speed = 1 #<\n",
        f"{K1} speed",
        1,
        "only for a pcap replay, not a live interface",
    ),
    (
        "loop-on-interface",
        CI + "loop = false #<\n",
        f"{K1} loop",
        False,
        "only for a pcap replay, not a live interface",
    ),
    ("pcap-empty", CAP + 'pcap = "" #<\n', f"{K1} pcap", "", "non-empty string"),
    ("pcap-int", CAP + "pcap = 3 #<\n", f"{K1} pcap", 3, "non-empty string"),
    (
        "pcap-missing",
        CAP + 'pcap = "missing.pcap" #<\n',
        f"{K1} pcap",
        "missing.pcap",
        "no such file: ",
    ),
    ("speed-negative", CP + "speed = -1 #<\n", f"{K1} speed", -1, "expected a number >= 0"),
    ("speed-negative-float", CP + "speed = -0.5 #<\n", f"{K1} speed", -0.5, "a number >= 0"),
    ("speed-string", CP + 'speed = "2x" #<\n', f"{K1} speed", "2x", "a number >= 0"),
    ("speed-bool", CP + "speed = true #<\n", f"{K1} speed", True, "a number >= 0"),
    ("speed-nan", CP + "speed = nan #<\n", f"{K1} speed", float("nan"), "a number >= 0"),
    ("speed-inf", CP + "speed = inf #<\n", f"{K1} speed", float("inf"), "a number >= 0"),
    ("loop-string", CP + 'loop = "yes" #<\n', f"{K1} loop", "yes", "expected true or false"),
    ("loop-int", CP + "loop = 1 #<\n", f"{K1} loop", 1, "expected true or false"),
    ("snaplen-63", CI + "snaplen = 63 #<\n", f"{K1} snaplen", 63, "64-1920"),
    ("snaplen-1921", CI + "snaplen = 1921 #<\n", f"{K1} snaplen", 1921, "64-1920"),
    ("snaplen-zero", CI + "snaplen = 0 #<\n", f"{K1} snaplen", 0, "64-1920"),
    ("snaplen-negative", CI + "snaplen = -96 #<\n", f"{K1} snaplen", -96, "64-1920"),
    ("snaplen-float", CI + "snaplen = 96.5 #<\n", f"{K1} snaplen", 96.5, "integer 64-1920"),
    ("snaplen-bool", CI + "snaplen = true #<\n", f"{K1} snaplen", True, "integer 64-1920"),
    ("snaplen-string", CI + 'snaplen = "96" #<\n', f"{K1} snaplen", "96", "integer 64-1920"),
    ("ring-zero", CI + "ring_mib = 0 #<\n", f"{K1} ring_mib", 0, "integer >= 1"),
    ("ring-negative", CI + "ring_mib = -4 #<\n", f"{K1} ring_mib", -4, "integer >= 1"),
    ("ring-float", CI + "ring_mib = 1.5 #<\n", f"{K1} ring_mib", 1.5, "integer >= 1"),
    ("ring-bool", CI + "ring_mib = true #<\n", f"{K1} ring_mib", True, "integer >= 1"),
    (
        "second-capture",
        CI + CAP + 'interface = "wg1"\nsnaplen = 10 #<\n',
        "[[capture]] #2 snaplen",
        10,
        "64-1920",
    ),
    ("wireguard-not-table", 'wireguard = ["wg0"] #<\n', "wireguard", None, "write [wireguard]"),
    (
        "wireguard-as-array",
        '[[wireguard]] #<\ninterfaces = ["wg0"]\n',
        "wireguard",
        None,
        "write [wireguard]",
    ),
    (
        "wireguard-typo",
        WG + 'interface = ["wg0"] #<\n',
        "[wireguard] interface",
        None,
        "allowed: interfaces, refresh",
    ),
    (
        "wg-interfaces-string",
        WG + 'interfaces = "wg0" #<\n',
        "[wireguard] interfaces",
        "wg0",
        'expected an array like ["wg0"]',
    ),
    (
        "wg-interfaces-table",
        WG + "interfaces = {wg0 = true} #<\n",
        "[wireguard] interfaces",
        None,
        "an array",
    ),
    (
        "wg-interface-space",
        WG + 'interfaces = ["wg0", "wg 1"] #<\n',
        "[wireguard] interfaces",
        "wg 1",
        "without spaces",
    ),
    (
        "wg-interface-int",
        WG + "interfaces = [0] #<\n",
        "[wireguard] interfaces",
        0,
        "interface name",
    ),
    (
        "wg-interface-long",
        WG + 'interfaces = ["wireguard-tunnel"] #<\n',
        "[wireguard] interfaces",
        "wireguard-tunnel",
        "1-15 bytes",
    ),
    (
        "wg-interface-dotdot",
        WG + 'interfaces = [".."] #<\n',
        "[wireguard] interfaces",
        "..",
        "not . or ..",
    ),
    (
        "wg-interface-multiline",
        WG + 'interfaces = [ #<\n  "wg0",\n  "wg/1",\n]\n',
        "[wireguard] interfaces",
        "wg/1",
        "'/'",
    ),
    ("refresh-zero", WG + "refresh = 0 #<\n", "[wireguard] refresh", 0, "seconds > 0"),
    ("refresh-negative", WG + "refresh = -5 #<\n", "[wireguard] refresh", -5, "seconds > 0"),
    ("refresh-string", WG + 'refresh = "30s" #<\n', "[wireguard] refresh", "30s", "seconds"),
    ("refresh-bool", WG + "refresh = true #<\n", "[wireguard] refresh", True, "seconds"),
    ("service-not-table", "service = 1 #<\n", "service", 1, "write [service]"),
    (
        "service-typo",
        SV + "queue_size = 5 #<\n",
        "[service] queue_size",
        5,
        "allowed: queue_packets, max_sessions, shutdown_timeout, status_interval, session_events",
    ),
    (
        "api-listen-no-port",
        '[api]\nlisten = "127.0.0.1" #<\n',
        "[api] listen",
        "127.0.0.1",
        'expected "host:port"',
    ),
    (
        "api-listen-big-port",
        '[api]\nlisten = "127.0.0.1:70000" #<\n',
        "[api] listen",
        "127.0.0.1:70000",
        'expected "host:port"',
    ),
    ("api-listen-int", "[api]\nlisten = 8080 #<\n", "[api] listen", 8080, "host:port"),
    (
        "retention-interval-zero",
        "[retention]\ninterval = 0 #<\n",
        "[retention] interval",
        0,
        "seconds > 0",
    ),
    (
        "retention-interval-string",
        '[retention]\ninterval = "1h" #<\n',
        "[retention] interval",
        "1h",
        "seconds > 0",
    ),
    (
        "org-name-nul",
        '[[orgs]]\nid = "a"\nname = "x\\u0000y" #<\n',
        '[[orgs]] "a" name',
        "x\x00y",
        "without NUL",
    ),
    (
        "metrics-listen-no-port",
        '[metrics]\nlisten = "0.0.0.0" #<\n',
        "[metrics] listen",
        "0.0.0.0",
        '"127.0.0.1:9109"',
    ),
    (
        "metrics-client-labels-string",
        '[metrics]\nclient_labels = "yes" #<\n',
        "[metrics] client_labels",
        "yes",
        "true or false",
    ),
    (
        "metrics-max-series-small",
        "[metrics]\nmax_series = 99 #<\n",
        "[metrics] max_series",
        99,
        "at least 100",
    ),
    (
        "metrics-max-series-float",
        "[metrics]\nmax_series = 2e3 #<\n",
        "[metrics] max_series",
        2000.0,
        "integer",
    ),
    (
        "export-workers-negative",
        "[api]\nexport_workers = -1 #<\n",
        "[api] export_workers",
        -1,
        "integer 0-64",
    ),
    (
        "export-workers-bool",
        "[api]\nexport_workers = true #<\n",
        "[api] export_workers",
        True,
        "integer 0-64",
    ),
    (
        "export-workers-many",
        "[api]\nexport_workers = 65 #<\n",
        "[api] export_workers",
        65,
        "integer 0-64",
    ),
    (
        "root-path-trailing-slash",
        '[api]\nroot_path = "/acct/" #<\n',
        "[api] root_path",
        "/acct/",
        "a leading /, no trailing /",
    ),
    (
        "root-path-relative",
        '[api]\nroot_path = "acct" #<\n',
        "[api] root_path",
        "acct",
        "a leading /",
    ),
    (
        "trusted-proxies-not-a-list",
        '[api]\ntrusted_proxies = "127.0.0.1" #<\n',
        "[api] trusted_proxies",
        "127.0.0.1",
        "a list of addresses or networks",
    ),
    (
        "trusted-proxies-bad-network",
        '[api]\ntrusted_proxies = ["10.0.0.0/33"] #<\n',
        "[api] trusted_proxies",
        "10.0.0.0/33",
        "a list of addresses or networks",
    ),
    (
        "login-idle-zero",
        "[api]\nlogin_idle_timeout = 0 #<\n",
        "[api] login_idle_timeout",
        0,
        "seconds > 0",
    ),
    (
        "login-max-age-string",
        '[api]\nlogin_max_age = "12h" #<\n',
        "[api] login_max_age",
        "12h",
        "seconds",
    ),
    (
        "events-empty",
        SV + 'session_events = "" #<\n',
        "[service] session_events",
        "",
        "non-empty string",
    ),
    (
        "events-no-dir",
        SV + 'session_events = "no/such/dir/events.jsonl" #<\n',
        "[service] session_events",
        "no/such/dir/events.jsonl",
        "no such directory",
    ),
    ("queue-zero", SV + "queue_packets = 0 #<\n", "[service] queue_packets", 0, "integer >= 1"),
    ("queue-float", SV + "queue_packets = 1.5 #<\n", "[service] queue_packets", 1.5, "integer"),
    (
        "max-sessions-zero",
        SV + "max_sessions = 0 #<\n",
        "[service] max_sessions",
        0,
        "integer >= 1",
    ),
    ("queue-bool", SV + "queue_packets = true #<\n", "[service] queue_packets", True, "integer"),
    (
        "shutdown-zero",
        SV + "shutdown_timeout = 0 #<\n",
        "[service] shutdown_timeout",
        0,
        "seconds > 0",
    ),
    (
        "shutdown-string",
        SV + 'shutdown_timeout = "30" #<\n',
        "[service] shutdown_timeout",
        "30",
        "seconds",
    ),
    (
        "status-negative",
        SV + "status_interval = -1 #<\n",
        "[service] status_interval",
        -1,
        "seconds > 0",
    ),
    (
        "status-inf",
        SV + "status_interval = inf #<\n",
        "[service] status_interval",
        float("inf"),
        "seconds > 0",
    ),
    ("collector-not-table", "collector = 1 #<\n", "collector", 1, "write [collector]"),
    (
        "collector-as-array",
        '[[collector]] #<\nlisten = ["127.0.0.1:2055"]\n',
        "collector",
        None,
        "write [collector]",
    ),
    (
        "collector-typo",
        CO + "stich_gap = 5 #<\n",
        "[collector] stich_gap",
        5,
        "allowed: listen, template_timeout, stitch_gap, max_queue, active_timeout, exporters",
    ),
    (
        "collector-without-listen",
        "[collector] #<\nmax_queue = 100\n",
        "[collector] listen",
        None,
        "required key is missing",
    ),
    (
        "exporters-without-collector-table",
        '[gateway]\nname = "gw"\n[[collector.exporters]] #<\n'
        + 'address = "192.0.2.10"\ngateway = "fw"\n',
        "[collector] listen",
        None,
        "required key is missing: [[collector.exporters]] send their records to these UDP",
    ),
    (
        "exporters-without-listen",
        "[collector] #<\nstitch_gap = 1\n" + EXG,
        "[collector] listen",
        None,
        "[[collector.exporters]] send their records",
    ),
    (
        "collector-listen-string",
        '[collector]\nlisten = "127.0.0.1:2055" #<\n',
        "[collector] listen",
        "127.0.0.1:2055",
        LISTEN_WHY,
    ),
    (
        "collector-listen-empty",
        "[collector]\nlisten = [] #<\n",
        "[collector] listen",
        None,
        "array",
    ),
    (
        "collector-listen-no-port",
        '[collector]\nlisten = ["127.0.0.1"] #<\n',
        "[collector] listen",
        "127.0.0.1",
        LISTEN_WHY,
    ),
    (
        "collector-listen-big-port",
        '[collector]\nlisten = ["127.0.0.1:65536"] #<\n',
        "[collector] listen",
        "127.0.0.1:65536",
        LISTEN_WHY,
    ),
    (
        "collector-listen-ipv6-without-brackets",
        '[collector]\nlisten = ["::1:2055"] #<\n',
        "[collector] listen",
        "::1:2055",
        '"[::]:4739"',
    ),
    (
        "collector-listen-int",
        "[collector]\nlisten = [2055] #<\n",
        "[collector] listen",
        2055,
        LISTEN_WHY,
    ),
    (
        "collector-listen-ipv4-in-brackets",
        '[collector]\nlisten = ["[127.0.0.1]:2055"] #<\n',
        "[collector] listen",
        "[127.0.0.1]:2055",
        "expected an IPv6 address in the brackets",
    ),
    (
        "collector-listen-bad-ipv6",
        '[collector]\nlisten = ["[1:2:3]:2055"] #<\n',
        "[collector] listen",
        "[1:2:3]:2055",
        "IPv6 address",
    ),
    (
        "collector-listen-twice",
        '[collector]\nlisten = ["127.0.0.1:2055", "[::]:4739", "127.0.0.1:2055"] #<\n',
        "[collector] listen",
        "127.0.0.1:2055",
        "listed twice",
    ),
    (
        "collector-listen-same-address-spelled-twice",
        '[collector]\nlisten = [ #<\n  "[::]:4739",\n  "[0:0::0]:4739",\n]\n',
        "[collector] listen",
        "[0:0::0]:4739",
        'the same address as "[::]:4739"',
    ),
    (
        "template-timeout-zero",
        CO + "template_timeout = 0 #<\n",
        "[collector] template_timeout",
        0,
        "seconds > 0",
    ),
    (
        "template-timeout-string",
        CO + 'template_timeout = "30m" #<\n',
        "[collector] template_timeout",
        "30m",
        "seconds > 0",
    ),
    (
        "template-timeout-inf",
        CO + "template_timeout = inf #<\n",
        "[collector] template_timeout",
        float("inf"),
        "seconds > 0",
    ),
    (
        "stitch-gap-negative",
        CO + "stitch_gap = -1 #<\n",
        "[collector] stitch_gap",
        -1,
        "seconds 0-3600",
    ),
    (
        "stitch-gap-over-an-hour",
        CO + "stitch_gap = 3600.5 #<\n",
        "[collector] stitch_gap",
        3600.5,
        "seconds 0-3600",
    ),
    (
        "stitch-gap-nan",
        CO + "stitch_gap = nan #<\n",
        "[collector] stitch_gap",
        float("nan"),
        "seconds 0-3600",
    ),
    ("stitch-gap-bool", CO + "stitch_gap = false #<\n", "[collector] stitch_gap", False, "0-3600"),
    ("stitch-gap-string", CO + 'stitch_gap = "5" #<\n', "[collector] stitch_gap", "5", "0-3600"),
    (
        "max-queue-zero",
        CO + "max_queue = 0 #<\n",
        "[collector] max_queue",
        0,
        "integer 1-10000000 (datagrams)",
    ),
    (
        "max-queue-huge",
        CO + "max_queue = 10_000_001 #<\n",
        "[collector] max_queue",
        10_000_001,
        "integer 1-10000000",
    ),
    ("max-queue-float", CO + "max_queue = 2e4 #<\n", "[collector] max_queue", 20000.0, "integer"),
    ("max-queue-bool", CO + "max_queue = true #<\n", "[collector] max_queue", True, "integer"),
    (
        "max-queue-string",
        CO + 'max_queue = "20000" #<\n',
        "[collector] max_queue",
        "20000",
        "integer",
    ),
    (
        "active-timeout-zero",
        CO + "active_timeout = 0 #<\n",
        "[collector] active_timeout",
        0,
        "seconds > 0",
    ),
    (
        "active-timeout-negative",
        CO + "active_timeout = -60 #<\n",
        "[collector] active_timeout",
        -60,
        "seconds > 0",
    ),
    (
        "active-timeout-bool",
        CO + "active_timeout = true #<\n",
        "[collector] active_timeout",
        True,
        "seconds",
    ),
    (
        "exporters-not-array",
        CO + 'exporters = "192.0.2.10" #<\n',
        "[collector] exporters",
        "192.0.2.10",
        "expected an array of tables: write [[collector.exporters]]",
    ),
    (
        "exporters-as-one-table",
        CO + '[collector.exporters] #<\naddress = "192.0.2.10"\ngateway = "fw"\n',
        "[collector] exporters",
        None,
        "write [[collector.exporters]]",
    ),
    (
        "exporters-as-one-table-without-listen",
        '[collector.exporters] #<\naddress = "192.0.2.10"\ngateway = "fw"\n',
        "[collector] exporters",
        None,
        "write [[collector.exporters]]",
    ),
    (
        "exporter-typo",
        CO + EXG + "sample = 10 #<\n",
        f"{E1} sample",
        10,
        "unknown key; allowed: address, gateway, sampling",
    ),
    (
        "exporter-id-is-unknown",  # exporters have no id: it is not taken as the entry's name
        CO + EX + 'id = "fw" #<\n',
        f"{E1} id",
        "fw",
        "unknown key",
    ),
    (
        "exporter-missing-address",
        CO + '[[collector.exporters]] #<\ngateway = "fw"\n',
        f"{E1} address",
        None,
        "required key is missing",
    ),
    (
        "exporter-missing-gateway",
        CO + '[[collector.exporters]] #<\naddress = "192.0.2.10"\n',
        f"{E1} gateway",
        None,
        "missing",
    ),
    (
        "exporter-host-bits",
        CO + EX + 'address = "192.0.2.10/24" #<\ngateway = "fw"\n',
        f"{E1} address",
        "192.0.2.10/24",
        "host bits are set: write 192.0.2.0/24 for the network, or 192.0.2.10 for one host",
    ),
    (
        "exporter-host-bits-ipv6",
        CO + EX + 'address = "2001:db8::1/64" #<\ngateway = "fw"\n',
        f"{E1} address",
        "2001:db8::1/64",
        "host bits are set: write 2001:db8::/64 for the network",
    ),
    (
        "exporter-bad-address",
        CO + EX + 'address = "192.0.2.300" #<\n',
        f"{E1} address",
        "192.0.2.300",
        "expected an IPv4 or IPv6 address or network",
    ),
    (
        "exporter-bad-prefix",
        CO + EX + 'address = "10.0.0.0/33" #<\n',
        f"{E1} address",
        "10.0.0.0/33",
        "address or network",
    ),
    (
        "exporter-host-name",
        CO + EX + 'address = "branch-fw.example" #<\n',
        f"{E1} address",
        "branch-fw.example",
        "address or network",
    ),
    (
        "exporter-address-int",
        CO + EX + "address = 3221226010 #<\n",
        f"{E1} address",
        3221226010,
        "address or network",
    ),
    (
        "exporter-address-list",
        CO + EX + 'address = ["192.0.2.10"] #<\n',
        f"{E1} address",
        None,
        "address or network",
    ),
    (
        "exporter-zone-index",
        CO + EX + 'address = "fe80::1%eth0" #<\n',
        f"{E1} address",
        "fe80::1%eth0",
        "no zone index",
    ),
    (
        "exporter-same-network",
        CO + EXG + EX + 'gateway = "other"\naddress = "192.0.2.10/32" #<\n',
        f"{E2} address",
        "192.0.2.10/32",
        "duplicate exporter network 192.0.2.10/32; already at line 4",
    ),
    (
        "exporter-same-ipv6-network",
        CO
        + EX
        + 'address = "2001:db8::/32"\ngateway = "a"\n'
        + EXG
        + EX
        + 'address = "2001:0DB8:0::/32" #<\ngateway = "b"\n',
        "[[collector.exporters]] #3 address",
        "2001:0DB8:0::/32",
        "duplicate exporter network 2001:db8::/32; already at line 4",
    ),
    ("exporter-gateway-empty", CO + EXA + 'gateway = "" #<\n', f"{E1} gateway", "", "non-empty"),
    ("exporter-gateway-blank", CO + EXA + 'gateway = " " #<\n', f"{E1} gateway", " ", "non-empty"),
    ("exporter-gateway-int", CO + EXA + "gateway = 7 #<\n", f"{E1} gateway", 7, "non-empty string"),
    (
        "exporter-gateway-nul",
        CO + EXA + 'gateway = "fw\\u0000" #<\n',
        f"{E1} gateway",
        "fw\x00",
        "without NUL",
    ),
    (
        "sampling-zero",
        CO + EXG + "sampling = 0 #<\n",
        f"{E1} sampling",
        0,
        'expected "auto" or an integer 1-2147483647 (1 in N packets)',
    ),
    ("sampling-negative", CO + EXG + "sampling = -10 #<\n", f"{E1} sampling", -10, "1-2147483647"),
    (
        "sampling-over-31-bits",
        CO + EXG + "sampling = 2147483648 #<\n",
        f"{E1} sampling",
        2147483648,
        "1-2147483647",
    ),
    ("sampling-bool", CO + EXG + "sampling = true #<\n", f"{E1} sampling", True, "an integer"),
    ("sampling-float", CO + EXG + "sampling = 10.0 #<\n", f"{E1} sampling", 10.0, "an integer"),
    ("sampling-ratio", CO + EXG + 'sampling = "1/100" #<\n', f"{E1} sampling", "1/100", '"auto"'),
    ("sampling-case", CO + EXG + 'sampling = "Auto" #<\n', f"{E1} sampling", "Auto", '"auto"'),
    (
        "second-exporter",
        CO + EXG + EX + 'address = "192.0.2.11"\ngateway = "b"\nsampling = 0 #<\n',
        f"{E2} sampling",
        0,
        "1-2147483647",
    ),
    (
        "second-exporter-typo",
        CO + EXG + EX + 'adress = "192.0.2.11" #<\n',
        f"{E2} adress",
        "192.0.2.11",
        "allowed: address, gateway, sampling",
    ),
    (
        "exporter-after-captures-and-orgs",  # other arrays do not shift the entry count
        CI + ORG + EXG + CAP + 'interface = "wg1"\n' + EX + 'address = "::1/129" #<\n' + CO,
        f"{E2} address",
        "::1/129",
        "address or network",
    ),
    (
        "collector-table-after-its-exporters",
        EXG + EXG.replace("10", "11") + '[collector]\nlisten = ["127.0.0.1:2055"]\n'
        "max_queue = 0 #<\n",
        "[collector] max_queue",
        0,
        "integer 1-10000000",
    ),
    (
        "exporters-inline-tables",
        CO + 'exporters = [ #<\n  {address = "192.0.2.10", gateway = "a"},\n'
        '  {address = "192.0.2.10/24", gateway = "b"},\n]\n',
        f"{E2} address",
        "192.0.2.10/24",
        "host bits are set",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "value", "why"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_value_is_reported_at_its_line(
    tmp_path: Path, text: str, key: str, value: object, why: str
) -> None:
    write_pcap(tmp_path / REPLAY, [], LINKTYPE_RAW)  # so `pcap = "replay.pcap"` exists
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    err, line = info.value, marked_line(text)
    assert (err.path, err.line, err.key) == (str(path), line, key)
    assert repr(err.value) == repr(value)  # repr: nan != nan
    assert why in err.why
    shown = "" if value is None else f" = {value!r}"
    assert str(err) == f"config error: {path} line {line}: {key}{shown}: {err.why}"


def test_every_key_has_an_invalid_case() -> None:
    shown = {case[2] for case in INVALID}
    for section, names in SECTION_KEYS.items():
        label = re.escape(f"[[{section}]]" if section in ARRAY_SECTIONS else f"[{section}]")
        for name in names:
            pattern = re.compile(rf"{label}( \S+)? {name}")
            assert any(pattern.fullmatch(key) for key in shown), f"no case for {section}.{name}"


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ('[database]\nurl = "x"\n[timeouts\n', 3, "Expected ']'"),
        ("[writer]\nbatch_size = \n", 2, "Invalid value"),
        ('[[orgs]]\nid = "acme"\nid = "beta"\n', 3, "Cannot overwrite a value"),
        ('[gateway]\nname = "gw', 2, "Unterminated string"),
    ],
)
def test_toml_syntax_error_names_its_line(tmp_path: Path, text: str, line: int, why: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert (info.value.key, info.value.line, info.value.path) == ("TOML syntax", line, str(path))
    assert why in info.value.why


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file"):
        load_config(tmp_path / "missing.toml", environ={})


def test_non_utf8_file_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[gateway]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert (info.value.line, info.value.why) == (2, "not valid UTF-8")


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("80", ((80, 80),)),
        ("0", ((0, 0),)),
        ("80,443", ((80, 80), (443, 443))),
        ("8000-8100", ((8000, 8100),)),
        ("80, 443 ,8000-8100", ((80, 80), (443, 443), (8000, 8100))),
        ("443,80", ((80, 80), (443, 443))),
        ("8000 - 8100", ((8000, 8100),)),
        ("0-65535", ((0, 65535),)),
        ("8000-8100,8050-8200,79,80,81", ((79, 81), (8000, 8200))),
        ("5,5,5-5", ((5, 5),)),
    ],
)
def test_port_strings_parse_to_sorted_merged_ranges(
    tmp_path: Path, text: str, ranges: tuple[tuple[int, int], ...]
) -> None:
    assert parse_ports(text) == ranges
    toml = f'[[resources]]\nid = "r"\norg = "unattributed"\naddress = "::1"\nports = "{text}"\n'
    assert load_config(write(tmp_path, toml), environ={}).resources[0].ports == ranges


@pytest.mark.parametrize("text", ["80-", "70000", "b-a", "9-8", "", " ", "80,", "-80", "1.5", "٨٠"])
def test_bad_port_strings_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ports(text)


def test_resource_defaults(tmp_path: Path) -> None:
    text = '[[resources]]\nid = "r"\norg = "unattributed"\naddress = "10.99.0.5/24"\n'
    resource = load_config(write(tmp_path, text), environ={}).resources[0]
    # host bits are accepted and cleared; no ports = all ports; no protocols = both
    assert resource == ResourceConfig("r", "unattributed", "r", "10.99.0.0/24", None)
    assert resource.protocols == (IpProto.TCP, IpProto.UDP)


def test_org_defaults_keep_30_days_and_store_sessions(tmp_path: Path) -> None:
    org = load_config(write(tmp_path, ORG), environ={}).orgs[0]
    assert org == OrgConfig("acme", "acme", retention_days=30, logging=True)


@pytest.mark.parametrize(
    ("lines", "retention_days", "logging"),
    [
        ("retention_days = 1", 1, True),
        ("retention_days = 3650", 3650, True),
        ('retention_days = "forever"', None, True),  # None: never purged
        ("logging = false", 30, False),
        ("logging = true", 30, True),
        ('retention_days = "forever"\nlogging = false', None, False),
        ("logging = false\nretention_days = 7", 7, False),
    ],
)
def test_org_retention_and_logging_load(
    tmp_path: Path, lines: str, retention_days: int | None, logging: bool
) -> None:
    org = load_config(write(tmp_path, f"{ORG}{lines}\n"), environ={}).orgs[0]
    assert (org.retention_days, org.logging) == (retention_days, logging)


@pytest.mark.parametrize(
    ("lines", "usage_retention_days"),
    [
        ("", 400),  # the default: the longer of 400 days and the session retention
        ("retention_days = 500", 500),
        ('retention_days = "forever"', None),  # sessions kept forever: usage too
        ("usage_retention_days = 3650", 3650),
        ('usage_retention_days = "forever"', None),
        ("retention_days = 7\nusage_retention_days = 7", 7),
    ],
)
def test_org_usage_retention_loads_with_its_default(
    tmp_path: Path, lines: str, usage_retention_days: int | None
) -> None:
    org = load_config(write(tmp_path, f"{ORG}{lines}\n"), environ={}).orgs[0]
    assert org.usage_retention_days == usage_retention_days


def test_empty_capture_wireguard_and_service_sections_give_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[wireguard]\n[service]\n"), environ={})
    assert config.captures == ()
    assert config.wireguard == WireguardConfig()
    assert config.service == ServiceConfig()
    assert (config.wireguard.interfaces, config.wireguard.refresh_s) == ((), 30.0)
    assert (config.service.queue_packets, config.service.shutdown_timeout_s) == (262_144, 30.0)
    assert config.service.status_interval_s == 60.0


def test_capture_defaults(tmp_path: Path) -> None:
    write_pcap(tmp_path / "day1.pcap", [], LINKTYPE_RAW)
    text = '[[capture]]\ninterface = "wg0"\n[[capture]]\npcap = "day1.pcap"\n'
    live, replay = load_config(write(tmp_path, text), environ={}).captures
    # headers-only snaplen, a 64 MiB ring; a replay runs once, as fast as possible
    assert live == CaptureConfig("wg0", None, snaplen=96, ring_mib=64, speed=0.0, loop=False)
    assert replay == CaptureConfig(None, str(tmp_path / "day1.pcap"), 96, 64, 0.0, False)
    assert (live.name, replay.name) == ("wg0", str(tmp_path / "day1.pcap"))


def test_capture_wireguard_and_service_keys_load(tmp_path: Path) -> None:
    (tmp_path / "captures").mkdir()
    write_pcap(tmp_path / "captures" / "day1.pcapng", [], LINKTYPE_RAW)
    other = write_pcap(tmp_path / "other.pcap", [], LINKTYPE_RAW)
    text = f"""\
[[capture]]
interface = "wg0"
snaplen = 1920
ring_mib = 1

[[capture]]
interface = "eth0.100"
snaplen = 64

[[capture]]
pcap = "captures/day1.pcapng"
speed = 2
loop = true

[[capture]]
pcap = "{other}"
speed = 0.5
loop = false

[wireguard]
interfaces = ["wg0", "wg1", "wg0"]
refresh = 5

[service]
queue_packets = 1024
max_sessions = 5000
shutdown_timeout = 7.5
status_interval = 10
"""
    config = load_config(write(tmp_path, text), environ={})
    assert config.captures == (
        CaptureConfig(interface="wg0", snaplen=1920, ring_mib=1),
        CaptureConfig(interface="eth0.100", snaplen=64),
        CaptureConfig(pcap=str(tmp_path / "captures" / "day1.pcapng"), speed=2.0, loop=True),
        CaptureConfig(pcap=str(other), speed=0.5, loop=False),
    )
    assert all(type(c.speed) is float for c in config.captures)
    # an interface listed twice is read once, in the order first written
    assert config.wireguard == WireguardConfig(interfaces=("wg0", "wg1"), refresh_s=5.0)
    assert config.service == ServiceConfig(
        queue_packets=1024, max_sessions=5000, shutdown_timeout_s=7.5, status_interval_s=10.0
    )


@pytest.mark.parametrize(
    "name", ["wg0", "eth0.100", "br-lan", "veth_a1", "x", "abcdefghijklmno", "wg-\u00e4\u00e4"]
)
def test_linux_interface_names_are_accepted(tmp_path: Path, name: str) -> None:
    text = f'[[capture]]\ninterface = "{name}"\n[wireguard]\ninterfaces = ["{name}"]\n'
    config = load_config(write(tmp_path, text), environ={})
    assert (config.captures[0].interface, config.wireguard.interfaces) == (name, (name,))


def test_pcap_path_is_resolved_against_the_config_files_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc" / "acct"
    (config_dir / "captures").mkdir(parents=True)
    wanted = write_pcap(config_dir / "captures" / "a.pcap", [], LINKTYPE_RAW)
    (tmp_path / "captures").mkdir()  # a decoy where a working-directory lookup would look
    write_pcap(tmp_path / "captures" / "a.pcap", [], LINKTYPE_RAW)
    monkeypatch.chdir(tmp_path)
    write(config_dir, '[[capture]]\npcap = "captures/./a.pcap"\n')
    for config_path in (config_dir / "tunnelacct.toml", Path("etc/acct/tunnelacct.toml")):
        assert load_config(config_path, environ={}).captures[0].pcap == str(wanted)


def test_pcap_path_expands_home_and_keeps_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    in_home = write_pcap(tmp_path / "home" / "a.pcap", [], LINKTYPE_RAW)
    absolute = write_pcap(tmp_path / "b.pcap", [], LINKTYPE_RAW)
    (tmp_path / "etc").mkdir()
    text = f'[[capture]]\npcap = "~/a.pcap"\n[[capture]]\npcap = "{absolute}"\n'
    captures = load_config(write(tmp_path / "etc", text), environ={}).captures
    assert [c.pcap for c in captures] == [str(in_home), str(absolute)]


def test_missing_pcap_error_names_the_file_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", '[gateway]\nname = "gw"\n[[capture]]\npcap = "../caps/x.pcap"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    looked_for = tmp_path / "caps" / "x.pcap"  # beside the config file, not the working dir
    assert (info.value.line, info.value.key) == (4, "[[capture]] #1 pcap")
    assert (info.value.value, info.value.why) == ("../caps/x.pcap", f"no such file: {looked_for}")
    assert str(info.value) == (
        f"config error: {path} line 4: [[capture]] #1 pcap = '../caps/x.pcap': "
        f"no such file: {looked_for}"
    )


@pytest.mark.parametrize("spelling", ["replay.pcap", "./sub/../replay.pcap", "{absolute}"])
def test_same_capture_file_twice_names_the_line_of_the_first(tmp_path: Path, spelling: str) -> None:
    replay = write_pcap(tmp_path / "replay.pcap", [], LINKTYPE_RAW)
    second = spelling.format(absolute=replay)
    text = f'[[capture]]\npcap = "replay.pcap"\nspeed = 1\n\n[[capture]]\npcap = "{second}"\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert (info.value.line, info.value.key) == (6, "[[capture]] #2 pcap")
    assert (info.value.value, info.value.why) == (
        str(replay),
        "captured twice; already at line 2",
    )


def test_an_interface_and_a_file_may_share_a_name(tmp_path: Path) -> None:
    write_pcap(tmp_path / "wg0", [], LINKTYPE_RAW)  # a capture file named like the interface
    text = '[[capture]]\ninterface = "wg0"\n[[capture]]\npcap = "wg0"\n'
    captures = load_config(write(tmp_path, text), environ={}).captures
    assert [(c.interface, c.pcap) for c in captures] == [
        ("wg0", None),
        (None, str(tmp_path / "wg0")),
    ]


def test_docs_example_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, "README.md has a full ```toml example"
    example = max(blocks, key=len)
    config = load_config(write(tmp_path, example), environ={})
    assert config.orgs and config.clients and config.resources
    # the commented [[capture]] is valid too, once uncommented
    keys = r"\[\[capture\]\]|interface =|snaplen =|ring_mib ="
    live = re.sub(rf"^# ({keys})", r"\1", example, flags=re.MULTILINE)
    assert live != example
    captures = load_config(write(tmp_path, live), environ={}).captures
    assert captures == (CaptureConfig(interface="wg0", snaplen=96, ring_mib=64),)


def test_session_events_is_stdout_or_a_file_beside_the_config(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "c.toml"
    path.write_text('[service]\nsession_events = "events.jsonl"\n')
    assert load_config(path, {}).service.session_events == str(conf_dir / "events.jsonl")
    path.write_text('[service]\nsession_events = "-"\n')
    assert load_config(path, {}).service.session_events == "-"
    path.write_text("")
    assert load_config(path, {}).service.session_events is None


def test_api_listen_and_export_workers(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nlisten = "[::1]:9090"\nexport_workers = 0\n')
    api = load_config(path, environ={}).api
    assert (api.host, api.port, api.export_workers) == ("::1", 9090, 0)
    assert load_config(None, environ={}).api.export_workers == 1  # README's default


def test_api_web_ui_keys_load_and_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[api]\nlisten = "127.0.0.1:8080"\nroot_path = "/tunnelacct"\n'
        'trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]\n'
        "login_idle_timeout = 600\nlogin_max_age = 7200\n",
    )
    api = load_config(path, environ={}).api
    assert api.root_path == "/tunnelacct"
    assert api.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert (api.login_idle_timeout_s, api.login_max_age_s) == (600.0, 7200.0)
    defaults = load_config(None, environ={}).api
    assert (defaults.root_path, defaults.trusted_proxies) == ("", ())
    assert (defaults.login_idle_timeout_s, defaults.login_max_age_s) == (1800.0, 43200.0)


def test_api_listen_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nlisten = "127.0.0.1:8080"\n')
    api = load_config(path, environ={"TUNNELACCT_API_LISTEN": "[::1]:9191"}).api
    assert (api.host, api.port) == ("::1", 9191)
    without_section = load_config(None, environ={"TUNNELACCT_API_LISTEN": "0.0.0.0:80"}).api
    assert (without_section.host, without_section.port) == ("0.0.0.0", 80)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"TUNNELACCT_API_LISTEN": "8080"})
    assert info.value.key == "$TUNNELACCT_API_LISTEN" and "host:port" in info.value.why


def test_retention_interval_defaults_to_an_hour_and_loads(tmp_path: Path) -> None:
    assert load_config(None, environ={}).retention.interval_s == 3600.0
    path = write(tmp_path, "[retention]\ninterval = 90\n")
    assert load_config(path, environ={}).retention.interval_s == 90.0


def test_no_collector_table_means_no_collector(tmp_path: Path) -> None:
    assert load_config(None, environ={}).collector is None
    assert load_config(write(tmp_path, "[metrics]\n"), environ={}).collector is None


def test_collector_defaults_and_an_empty_allow_list_load(tmp_path: Path) -> None:
    # the README's defaults; without [[collector.exporters]] the collector loads (and accepts
    # nothing: the service warns about it, the config does not refuse it)
    collector = load_config(write(tmp_path, CO), environ={}).collector
    assert collector == CollectorConfig(
        listen=(("127.0.0.1", 2055),),
        template_timeout_s=1800.0,
        stitch_gap_s=5.0,
        max_queue=20_000,
        active_timeout_s=1800.0,
        exporters=(),
    )


def test_collector_listen_keeps_hosts_without_brackets_and_allows_port_zero(
    tmp_path: Path,
) -> None:
    addresses = [
        "127.0.0.1:2055",
        "[::1]:2055",  # the same port on another address
        "[::]:4739",
        "[fe80::1]:9995",
        "localhost:6343",
        "127.0.0.1:0",  # port 0 binds any free port: twice is two sockets, not a clash
        "127.0.0.1:0",
    ]
    listed = ", ".join(f'"{address}"' for address in addresses)
    collector = load_config(write(tmp_path, f"[collector]\nlisten = [{listed}]\n"), {}).collector
    assert collector is not None
    assert collector.listen == (
        ("127.0.0.1", 2055),
        ("::1", 2055),
        ("::", 4739),
        ("fe80::1", 9995),
        ("localhost", 6343),
        ("127.0.0.1", 0),
        ("127.0.0.1", 0),
    )


def test_collector_bounds_are_inclusive_and_seconds_are_floats(tmp_path: Path) -> None:
    low = CO + "template_timeout = 1\nstitch_gap = 0\nmax_queue = 1\nactive_timeout = 1\n"
    collector = load_config(write(tmp_path, low), environ={}).collector
    assert collector is not None
    assert (collector.stitch_gap_s, collector.max_queue) == (0.0, 1)
    seconds = (collector.template_timeout_s, collector.stitch_gap_s, collector.active_timeout_s)
    assert seconds == (1.0, 0.0, 1.0)
    assert all(type(value) is float for value in seconds)
    high = CO + "stitch_gap = 3600\nmax_queue = 10_000_000\n"
    collector = load_config(write(tmp_path, high), environ={}).collector
    assert collector is not None
    assert (collector.stitch_gap_s, collector.max_queue) == (3600.0, 10_000_000)


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("192.0.2.10", "192.0.2.10/32"),  # a bare address is one host
        ("192.0.2.10/32", "192.0.2.10/32"),
        ("192.0.2.0/28", "192.0.2.0/28"),
        ("192.0.2.0/255.255.255.0", "192.0.2.0/24"),
        ("2001:DB8:0:0::1", "2001:db8::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_exporter_address_is_stored_as_its_network(
    tmp_path: Path, written: str, stored: str
) -> None:
    text = CO + f'[[collector.exporters]]\naddress = "{written}"\ngateway = "fw"\n'
    collector = load_config(write(tmp_path, text), environ={}).collector
    assert collector is not None
    assert collector.exporters == (ExporterConfig(address=stored, gateway="fw"),)


@pytest.mark.parametrize(
    ("line", "sampling"),
    [
        ("", None),  # absent: "auto", what the exporter reports
        ('sampling = "auto"', None),
        ("sampling = 1", 1),
        ("sampling = 512", 512),
        ("sampling = 2147483647", 2**31 - 1),
    ],
)
def test_exporter_sampling_is_auto_or_one_in_n(
    tmp_path: Path, line: str, sampling: int | None
) -> None:
    collector = load_config(write(tmp_path, f"{CO}{EXG}{line}\n"), environ={}).collector
    assert collector is not None
    assert collector.exporters[0].sampling == sampling


def test_exporter_with_host_bits_names_the_network_and_the_host(tmp_path: Path) -> None:
    text = CO + EXG + '\n[[collector.exporters]]\naddress = "198.51.100.7/24"\ngateway = "dc"\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value) == (
        f"config error: {path} line 8: [[collector.exporters]] #2 address = '198.51.100.7/24': "
        "host bits are set: write 198.51.100.0/24 for the network, or 198.51.100.7 for one host"
    )


def test_example_collector_block_loads_once_uncommented(tmp_path: Path) -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    start = example.index("# [collector]\n")
    block = example[start:].split("\n\n", 1)[0]  # up to the first blank line
    live = re.sub(r"^# ?", "", block, flags=re.MULTILINE)
    collector = load_config(write(tmp_path, live), environ={}).collector
    assert collector == CollectorConfig(
        listen=(("127.0.0.1", 2055), ("::1", 4739)),
        exporters=(ExporterConfig(address="192.0.2.10/32", gateway="branch-fw"),),
    )
