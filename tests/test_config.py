"""load_config(): defaults, the environment override and one error per rule at the right line."""

from __future__ import annotations

import base64
import dataclasses
import re
import socket
from pathlib import Path

import pytest

from tunnelacct.config import (
    ARRAY_SECTIONS,
    SECTION_KEYS,
    ClientConfig,
    Config,
    DatabaseConfig,
    OrgConfig,
    ResourceConfig,
    Timeouts,
    WriterConfig,
    load_config,
    parse_ports,
)
from tunnelacct.enums import IpProto
from tunnelacct.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "README.md"
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
    assert load_config(path, environ={}) == Config(path=str(path), gateway=socket.gethostname())


def test_documented_defaults() -> None:
    config = load_config(None, environ={})
    assert config.database.url == "sqlite:///tunnelacct.db"
    assert config.timeouts == Timeouts(60.0, 3600.0, 5.0, 30.0)
    assert config.writer == WriterConfig(5000, 1.0, 100_000)
    assert config.default_org == "unattributed"


FULL = """\
[database]
url = "postgresql://acct@db.internal/tunnelacct"

[timeouts]
udp_idle = 30
tcp_idle = 7200.5
tcp_linger = 2
checkpoint = 15

[writer]
batch_size = 100
flush_interval = 0.25
max_pending = 1000

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
""".replace("{KEY_A}", KEY_A)


def test_full_file_loads_every_key(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    assert load_config(path, environ={}) == Config(
        path=str(path),
        database=DatabaseConfig("postgresql://acct@db.internal/tunnelacct"),
        timeouts=Timeouts(udp_idle_s=30.0, tcp_idle_s=7200.5, tcp_linger_s=2.0, checkpoint_s=15.0),
        writer=WriterConfig(batch_size=100, flush_interval_s=0.25, max_pending=1000),
        gateway="gw-7",
        default_org="nobody",
        orgs=(OrgConfig("acme", "Acme Corp", 90), OrgConfig("beta", "beta", 30)),
        clients=(
            ClientConfig(
                id="alice-laptop",
                org="acme",
                name="Alice's laptop",
                user="alice",
                addresses=("100.64.0.2/32", "fd00:64::2/128", "100.64.9.0/24"),
                public_key=KEY_A,
            ),
            ClientConfig(id="printer", org="nobody", name="printer"),
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
    text = '[[clients]]\nid = "c"\norg = "unattributed"\n'
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

# (id, text with MARK on the offending line, key as shown, value shown, part of why)
INVALID: list[tuple[str, str, str, object, str]] = [
    ("unknown-section", "[databse] #<\n", "databse", None, "allowed: attribution, clients"),
    ("unknown-top-key", 'gatway = "gw" #<\n', "gatway", "gw", "unknown section"),
    ("unknown-key", TO + "udp_idel = 5 #<\n", "[timeouts] udp_idel", 5, "allowed: udp_idle"),
    ("dotted-subtable", DB + "[database.extra] #<\n", "[database] extra", None, "allowed: url"),
    ("section-not-table", 'database = "x" #<\n', "database", "x", "write [database]"),
    ("array-as-table", '[orgs] #<\nid = "acme"\n', "orgs", None, "write [[orgs]]"),
    ("url-type", DB + "url = 5 #<\n", "[database] url", 5, "non-empty string"),
    ("url-scheme", DB + 'url = "mysql://d/x" #<\n', "[database] url", "mysql://d/x", "sqlite:///"),
    ("url-sqlite-2-slashes", DB + 'url = "sqlite://a" #<\n', "[database] url", "sqlite://a",
     "expected a file"),
    ("url-password", DB + 'url = "mongodb://u:pw@h/x" #<\n', "[database] url",
     "mongodb://u:***@h/x", "postgresql://"),
    ("udp-idle-zero", TO + "udp_idle = 0 #<\n", "[timeouts] udp_idle", 0, "> 0"),
    ("tcp-idle-negative", TO + "tcp_idle = -1.5 #<\n", "[timeouts] tcp_idle", -1.5, "> 0"),
    ("linger-string", TO + 'tcp_linger = "5" #<\n', "[timeouts] tcp_linger", "5", "seconds"),
    ("checkpoint-bool", TO + "checkpoint = true #<\n", "[timeouts] checkpoint", True, "seconds"),
    ("udp-idle-nan", TO + "udp_idle = nan #<\n", "[timeouts] udp_idle", float("nan"), "> 0"),
    ("tcp-idle-inf", TO + "tcp_idle = inf #<\n", "[timeouts] tcp_idle", float("inf"), "> 0"),
    ("batch-zero", WR + "batch_size = 0 #<\n", "[writer] batch_size", 0, "integer >= 1"),
    ("batch-bool", WR + "batch_size = true #<\n", "[writer] batch_size", True, "integer"),
    ("pending-float", WR + "max_pending = 1.5 #<\n", "[writer] max_pending", 1.5, "integer"),
    ("flush-zero", WR + "flush_interval = 0 #<\n", "[writer] flush_interval", 0, "> 0"),
    ("gateway-blank", '[gateway]\nname = " " #<\n', "[gateway] name", " ", "non-empty"),
    ("default-org-id", '[attribution]\ndefault_org = "no org" #<\n', "[attribution] default_org",
     "no org", "letters, digits"),
    ("org-missing-id", '[[orgs]] #<\nname = "Acme"\n', "[[orgs]] #1 id", None, "missing"),
    ("org-empty-id", ORG + '[[orgs]]\nid = "" #<\n', "[[orgs]] #2 id", "", "non-empty id"),
    ("org-bad-id", '[[orgs]]\nid = "a/b" #<\n', "[[orgs]] #1 id", "a/b", "letters, digits"),
    ("org-int-id", "[[orgs]]\nid = 7 #<\n", "[[orgs]] #1 id", 7, "letters, digits"),
    ("org-duplicate", ORG + '[[orgs]]\nid = "acme" #<\n', f"{OA} id", "acme",
     "duplicate id; already used at line 2"),
    ("retention-zero", ORG + "retention_days = 0 #<\n", f"{OA} retention_days", 0, ">= 1"),
    ("retention-bool", ORG + "retention_days = true #<\n", f"{OA} retention_days", True, ">= 1"),
    ("retention-float", ORG + "retention_days = 1.5 #<\n", f"{OA} retention_days", 1.5, ">= 1"),
    ("org-name-type", ORG + "name = 3 #<\n", f"{OA} name", 3, "non-empty string"),
    ("org-typo", ORG + "retension_days = 9 #<\n", f"{OA} retension_days", 9,
     "allowed: id, name, retention_days"),
    ("client-missing-id", ORG + '[[clients]] #<\norg = "acme"\n', "[[clients]] #1 id", None,
     "missing"),
    ("client-missing-org", ORG + '[[clients]] #<\nid = "alice"\n', f"{C} org", None, "missing"),
    ("client-unknown-org", ORG + '[[clients]]\nid = "alice"\norg = "acne" #<\n', f"{C} org",
     "acne", "unknown org; declared: acme, unattributed"),
    ("client-duplicate", CLIENT + '[[clients]]\nid = "alice" #<\norg = "acme"\n', f"{C} id",
     "alice", "duplicate id; already used at line 4"),
    ("client-typo", CLIENT + "adresses = [] #<\n", f"{C} adresses", None,
     "allowed: id, org, name, user, addresses, public_key"),
    ("client-name-empty", CLIENT + 'name = "" #<\n', f"{C} name", "", "non-empty"),
    ("client-empty-user", CLIENT + 'user = "" #<\n', f"{C} user", "", "non-empty"),
    ("client-bad-cidr", CLIENT + 'addresses = ["100.64.0.300"] #<\n', f"{C} addresses",
     "100.64.0.300", "IPv4 or IPv6 address or CIDR"),
    ("client-bad-prefix", CLIENT + 'addresses = ["fd00::/129"] #<\n', f"{C} addresses",
     "fd00::/129", "CIDR"),
    ("client-addresses-string", CLIENT + 'addresses = "100.64.0.2" #<\n', f"{C} addresses",
     "100.64.0.2", "array of CIDR strings"),
    ("client-same-cidr", CLIENT + 'addresses = ["100.64.0.2/32"]\n[[clients]]\nid = "bob"\n'
     'org = "acme"\naddresses = ["fd00::1", "100.64.0.2"] #<\n', '[[clients]] "bob" addresses',
     "100.64.0.2", 'already assigned to client "alice"'),
    ("client-cidr-twice", CLIENT + 'addresses = ["10.1.0.0/16", "10.1.2.3/16"] #<\n',
     f"{C} addresses", "10.1.2.3/16", "10.1.0.0/16 is listed twice"),
    ("client-bad-key", CLIENT + 'public_key = "abc" #<\n', f"{C} public_key", "abc",
     "44-character base64"),
    ("client-key-33-bytes", CLIENT + f'public_key = "{KEY_33}" #<\n', f"{C} public_key", KEY_33,
     "32 bytes"),
    ("client-same-key", CLIENT + f'public_key = "{KEY_A}"\n[[clients]]\nid = "bob"\n'
     f'org = "acme"\npublic_key = "{KEY_A}" #<\n', '[[clients]] "bob" public_key', KEY_A,
     'already the key of client "alice"'),
    ("resource-missing-id", ORG + '[[resources]] #<\norg = "acme"\naddress = "::1"\n',
     "[[resources]] #1 id", None, "required key is missing"),
    ("resource-duplicate", RES_AT + '[[resources]]\nid = "pg" #<\n', f"{R} id", "pg",
     "duplicate id; already used at line 4"),
    ("resource-unknown-org", ORG + '[[resources]]\nid = "pg"\norg = "x" #<\naddress = "::1"\n',
     f"{R} org", "x", "unknown org"),
    ("resource-name-type", RES + 'name = ["pg"] #<\n', f"{R} name", None, "non-empty"),
    ("resource-missing-address", ORG + '[[resources]] #<\nid = "pg"\norg = "acme"\n',
     f"{R} address", None, "required key is missing"),
    ("resource-bad-address", RES + 'address = "10.9.0.5/33" #<\n', f"{R} address",
     "10.9.0.5/33", "CIDR"),
    ("resource-address-list", RES + 'address = ["10.0.0.1"] #<\n', f"{R} address", None, "CIDR"),
    ("ports-open-range", RES_AT + 'ports = "80-" #<\n', f"{R} ports", "80-",
     "expected a port or a range like 8000-8100"),
    ("ports-too-big", RES_AT + 'ports = "80,70000" #<\n', f"{R} ports", "80,70000",
     "port 70000 is outside 0-65535"),
    ("ports-reversed", RES_AT + 'ports = "8100-8000" #<\n', f"{R} ports", "8100-8000",
     "range 8100-8000 is reversed"),
    ("ports-letters", RES_AT + 'ports = "b-a" #<\n', f"{R} ports", "b-a", "a port or a range"),
    ("ports-empty", RES_AT + 'ports = "" #<\n', f"{R} ports", "", "a port or a range"),
    ("ports-empty-part", RES_AT + 'ports = "80,,443" #<\n', f"{R} ports", "80,,443", "a port"),
    ("ports-int-too-big", RES_AT + "ports = 65536 #<\n", f"{R} ports", "65536", "outside"),
    ("ports-bool", RES_AT + "ports = true #<\n", f"{R} ports", True, "expected a string"),
    ("protocols-icmp", RES_AT + 'protocols = ["icmp"] #<\n', f"{R} protocols", "icmp",
     'expected "tcp" or "udp"'),
    ("protocols-upper", RES_AT + 'protocols = ["TCP"] #<\n', f"{R} protocols", "TCP",
     'expected "tcp" or "udp"'),
    ("protocols-twice", RES_AT + 'protocols = ["tcp", "tcp"] #<\n', f"{R} protocols", "tcp",
     "listed twice"),
    ("protocols-empty", RES_AT + "protocols = [] #<\n", f"{R} protocols", None, "omit the key"),
    ("protocols-string", RES_AT + 'protocols = "tcp" #<\n', f"{R} protocols", "tcp", "an array"),
    ("resource-typo", RES_AT + 'port = "80" #<\n', f"{R} port", "80",
     "allowed: id, org, name, address, ports, protocols"),
    ("third-resource", ORG + "".join(
        f'[[resources]]\nid = "r{i}"\norg = "acme"\naddress = "10.0.0.{i}"\nports = "{i}"\n'
        for i in (1, 2)) + '[[resources]]\nid = "r3"\norg = "acme"\naddress = "10.0.0.3"\n'
     'ports = "80-" #<\n[[resources]]\nid = "r4"\norg = "acme"\naddress = "::4"\nports = "80-"\n',
     '[[resources]] "r3" ports', "80-", "range like 8000-8100"),
    ("key-in-multiline-string", '[gateway]\nname = """\nx = 1\n"""\n' + TO + "udp_idle = 0 #<\n",
     "[timeouts] udp_idle", 0, "> 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "key", "value", "why"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_value_is_reported_at_its_line(
    tmp_path: Path, text: str, key: str, value: object, why: str
) -> None:
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


def test_docs_example_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, "README.md has a full ```toml example"
    config = load_config(write(tmp_path, max(blocks, key=len)), environ={})
    assert config.orgs and config.clients and config.resources
