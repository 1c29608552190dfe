"""Inventory: longest-prefix clients, most specific resources, org rules, and a correct cache."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelacct.config.load import load_config
from tunnelacct.config.model import ClientConfig, Config, OrgConfig, ResourceConfig, parse_ports
from tunnelacct.enums import IpProto
from tunnelacct.sessions.attribution import Inventory
from tunnelacct.sessions.events import Attribution

TCP, UDP = IpProto.TCP, IpProto.UDP


def inventory(tmp_path: Path, text: str) -> Inventory:
    """An Inventory of the config `text`, loaded from a real file."""
    path = tmp_path / "tunnelacct.toml"
    path.write_text(text, encoding="utf-8")
    return Inventory.from_config(load_config(path, environ={}))


def ip(text: str) -> tuple[int, int]:
    """(family, int) of an address, as the flow engine passes it."""
    addr = ipaddress.ip_address(text)
    return addr.version, int(addr)


def client_id(inv: Inventory, address: str) -> str | None:
    client = inv.client_for(*ip(address))
    return None if client is None else client.id


def resource_id(inv: Inventory, responder: str, port: int, proto: IpProto = TCP) -> str | None:
    family, addr = ip(responder)
    return inv.attribute(family, ip("192.0.2.1")[1], addr, port, proto).resource_id


def entries(kind: str, **tables: str) -> str:
    """[[kind]] tables: id -> the rest of the table's body."""
    return "".join(f'[[{kind}]]\nid = "{i}"\n{body}\n' for i, body in tables.items())


NESTED_CLIENTS = '[[orgs]]\nid = "o"\n' + entries(
    "clients",
    # declared out of prefix order on purpose: the longest prefix wins, not the first declared
    host='org = "o"\naddresses = ["100.64.1.7", "fd00:64:1::7"]',
    wide='org = "o"\naddresses = ["100.64.0.0/16", "fd00:64::/32"]',
    narrow='org = "o"\naddresses = ["100.64.1.0/24", "fd00:64:1::/48"]',
)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("100.64.1.7", "host"),
        ("100.64.1.8", "narrow"),
        ("100.64.1.0", "narrow"),
        ("100.64.255.255", "wide"),
        ("100.65.0.1", None),
        ("fd00:64:1::7", "host"),
        ("fd00:64:1::8", "narrow"),
        ("fd00:64:2::7", "wide"),
        ("fd00:65::7", None),
    ],
)
def test_longest_prefix_picks_most_specific_client(
    tmp_path: Path, address: str, expected: str | None
) -> None:
    inv = inventory(tmp_path, NESTED_CLIENTS)
    assert client_id(inv, address) == expected
    assert inv.is_client_address(*ip(address)) is (expected is not None)


def test_families_never_match_each_other(tmp_path: Path) -> None:
    text = '[[clients]]\nid = "all4"\norg = "unattributed"\naddresses = ["0.0.0.0/0"]\n'
    inv = inventory(tmp_path, text)
    assert client_id(inv, "203.0.113.9") == "all4"
    assert client_id(inv, "::1") is None
    assert client_id(inv, "::ffff:203.0.113.9") is None
    assert inv.client_for(5, 1) is None


RESOURCES = '[[orgs]]\nid = "o"\n' + entries(
    "resources",
    subnet_pg='org = "o"\naddress = "10.0.0.0/24"\nports = "5432"',
    host_any='org = "o"\naddress = "10.0.0.5"\nprotocols = ["udp"]',
    host_wide='org = "o"\naddress = "10.0.0.5"\nports = "1-1000"\nprotocols = ["tcp"]',
    host_narrow='org = "o"\naddress = "10.0.0.5"\nports = "22,400-500"\nprotocols = ["tcp"]',
    host_all_tcp='org = "o"\naddress = "10.0.0.5"\nprotocols = ["tcp"]',
    zeta='org = "o"\naddress = "10.0.0.9"\nports = "443"',
    alpha='org = "o"\naddress = "10.0.0.9"\nports = "443"',
    v6_dns='org = "o"\naddress = "fd00:99::/64"\nports = "53"\nprotocols = ["udp"]',
)


@pytest.mark.parametrize(
    ("responder", "port", "proto", "expected"),
    [
        ("10.0.0.6", 5432, TCP, "subnet_pg"),  # only the /24 covers .6
        ("10.0.0.6", 5433, TCP, None),  # outside its port list
        ("10.0.0.5", 5432, UDP, "host_any"),  # a /32 beats the /24 even with all ports
        ("10.0.0.5", 450, TCP, "host_narrow"),  # 400-500 is narrower than 1-1000 and all
        ("10.0.0.5", 22, TCP, "host_narrow"),  # 22-22 is narrower still
        ("10.0.0.5", 900, TCP, "host_wide"),  # 1-1000 beats all ports
        ("10.0.0.5", 2000, TCP, "host_all_tcp"),
        ("10.0.0.5", 0, TCP, "host_all_tcp"),
        ("10.0.0.5", 450, UDP, "host_any"),  # the tcp-only ranges do not serve UDP
        ("10.0.0.9", 443, TCP, "zeta"),  # identical rules: the first declared wins
        ("10.0.0.9", 80, TCP, None),
        ("10.0.1.5", 5432, TCP, None),
        ("fd00:99::1234", 53, UDP, "v6_dns"),
        ("fd00:99::1234", 53, TCP, None),
        ("fd00:98::1", 53, UDP, None),
    ],
)
def test_most_specific_resource_wins(
    tmp_path: Path, responder: str, port: int, proto: IpProto, expected: str | None
) -> None:
    inv = inventory(tmp_path, RESOURCES)
    assert resource_id(inv, responder, port, proto) == expected
    family, addr = ip(responder)
    found = inv.resource_for(family, addr, port, proto)
    assert (None if found is None else found.id) == expected


def test_resources_match_the_responder_only(tmp_path: Path) -> None:
    inv = inventory(tmp_path, RESOURCES)
    # the resource host opens a connection outwards: it is not "to" the resource
    attribution = inv.attribute(4, ip("10.0.0.5")[1], ip("192.0.2.1")[1], 5432, TCP)
    assert attribution == Attribution(org_id="unattributed")
    assert not attribution.attributed


ORGS = """
[attribution]
default_org = "nobody"
[[orgs]]
id = "acme"
[[orgs]]
id = "beta"
[[clients]]
id = "alice"
org = "acme"
name = "Alice's laptop"
user = "alice@example.com"
addresses = ["100.64.0.2"]
[[resources]]
id = "pg"
org = "beta"
name = "Postgres"
address = "10.99.0.5"
ports = "5432"
"""


def test_resource_org_beats_client_org(tmp_path: Path) -> None:
    inv = inventory(tmp_path, ORGS)
    assert inv.attribute(4, ip("100.64.0.2")[1], ip("10.99.0.5")[1], 5432, TCP) == Attribution(
        org_id="beta",
        client_id="alice",
        client_name="Alice's laptop",
        user_id="alice@example.com",
        resource_id="pg",
        resource_name="Postgres",
    )


def test_client_org_when_no_resource_matches(tmp_path: Path) -> None:
    inv = inventory(tmp_path, ORGS)
    assert inv.attribute(4, ip("100.64.0.2")[1], ip("10.99.0.5")[1], 80, TCP) == Attribution(
        org_id="acme",
        client_id="alice",
        client_name="Alice's laptop",
        user_id="alice@example.com",
    )


def test_client_found_on_the_responder_side(tmp_path: Path) -> None:
    inv = inventory(tmp_path, ORGS)
    attribution = inv.attribute(4, ip("10.1.2.3")[1], ip("100.64.0.2")[1], 51820, UDP)
    assert (attribution.org_id, attribution.client_id) == ("acme", "alice")


def test_default_org_when_nothing_matches(tmp_path: Path) -> None:
    inv = inventory(tmp_path, ORGS)
    attribution = inv.attribute(4, ip("10.1.2.3")[1], ip("10.1.2.4")[1], 5432, TCP)
    assert attribution == Attribution(org_id="nobody")


def test_inventory_exposes_the_config_tuples(tmp_path: Path) -> None:
    path = tmp_path / "tunnelacct.toml"
    path.write_text(ORGS, encoding="utf-8")
    config = load_config(path, environ={})
    inv = Inventory.from_config(config)
    assert (inv.orgs, inv.clients, inv.resources) == (config.orgs, config.clients, config.resources)


# Property: Inventory (cached, any cache size) agrees with a brute-force ipaddress oracle.

# Both families use the same integers (IPv6 ::a00:0 is the int of 10.0.0.0), so a cache that
# forgot the family in its key would answer IPv6 lookups with IPv4 results and fail here.
BASE = int(ipaddress.IPv4Address("10.0.0.0"))
ORG_IDS = ("acme", "beta")


def address(family: int, offset: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == 4:
        return ipaddress.IPv4Address(BASE + offset)
    return ipaddress.IPv6Address(BASE + offset)


def network(family: int, offset: int, host_bits: int) -> str:
    """A CIDR near BASE, so generated networks nest and overlap often."""
    prefix = (32 if family == 4 else 128) - host_bits
    return str(ipaddress.ip_network((address(family, offset), prefix), strict=False))


networks = st.builds(network, st.sampled_from([4, 6]), st.integers(0, 300), st.integers(0, 9))
port_specs = st.none() | st.lists(
    st.tuples(st.integers(0, 20), st.integers(0, 6)).map(lambda t: f"{t[0]}-{t[0] + t[1]}"),
    min_size=1,
    max_size=3,
).map(",".join)
protocol_sets = st.sampled_from([(TCP,), (UDP,), (TCP, UDP), (UDP, TCP)])


@st.composite
def configs(draw: st.DrawFn) -> Config:
    cidrs = draw(st.lists(networks, max_size=8, unique=True))  # load_config forbids repeats
    owners = [draw(st.integers(0, 3)) for _ in cidrs]
    clients = tuple(
        ClientConfig(
            id=f"c{i}",
            org=draw(st.sampled_from(ORG_IDS)),
            name=f"Client {i}",
            user=draw(st.none() | st.just(f"user{i}")),
            addresses=tuple(c for c, owner in zip(cidrs, owners, strict=True) if owner == i),
        )
        for i in range(4)
    )
    resources = []
    for i in range(draw(st.integers(0, 8))):
        spec = draw(port_specs)
        resources.append(
            ResourceConfig(
                id=f"r{i}",
                org=draw(st.sampled_from(ORG_IDS)),
                name=f"Resource {i}",
                address=draw(networks),
                ports=None if spec is None else parse_ports(spec),
                protocols=draw(protocol_sets),
            )
        )
    orgs = tuple(OrgConfig(id=o, name=o) for o in ORG_IDS)
    return Config(orgs=orgs, clients=clients, resources=tuple(resources), default_org="nobody")


def oracle_client(config: Config, family: int, offset: int) -> ClientConfig | None:
    """The client with the longest CIDR containing the address, by brute force."""
    addr = address(family, offset)
    found = [
        (ipaddress.ip_network(cidr).prefixlen, c)
        for c in config.clients
        for cidr in c.addresses
        if addr in ipaddress.ip_network(cidr)
    ]
    return max(found, key=lambda pair: pair[0])[1] if found else None


def oracle(
    config: Config, family: int, initiator: int, responder: int, port: int, proto: IpProto
) -> Attribution:
    """The documented attribution rules, by brute force over every client and resource."""

    def width(resource: ResourceConfig) -> int | None:
        if resource.ports is None:
            return 65536
        widths = [hi - lo + 1 for lo, hi in resource.ports if lo <= port <= hi]
        return widths[0] if widths else None

    dst = address(family, responder)
    candidates = [
        (-ipaddress.ip_network(r.address).prefixlen, w, order, r)
        for order, r in enumerate(config.resources)
        if dst in ipaddress.ip_network(r.address)
        and proto in r.protocols
        and (w := width(r)) is not None
    ]
    resource = min(candidates, key=lambda c: c[:3])[3] if candidates else None
    who = oracle_client(config, family, initiator) or oracle_client(config, family, responder)
    org = resource.org if resource else who.org if who else config.default_org
    return Attribution(
        org_id=org,
        client_id=who.id if who else None,
        client_name=who.name if who else None,
        user_id=who.user if who else None,
        resource_id=resource.id if resource else None,
        resource_name=resource.name if resource else None,
    )


@settings(max_examples=200, database=None, deadline=None)
@given(
    config=configs(),
    offsets=st.lists(st.integers(0, 320), min_size=1, max_size=4, unique=True),
    ports=st.lists(st.integers(0, 30), min_size=1, max_size=3, unique=True),
    cache_size=st.sampled_from([1, 7, 65_536]),
)
def test_cached_attribution_matches_brute_force_oracle(
    config: Config, offsets: list[int], ports: list[int], cache_size: int
) -> None:
    inv = Inventory.from_config(config, cache_size=cache_size)
    # every combination, so lookups differing in one argument only follow each other in the cache
    asked = [
        (family, a, b, port, proto)
        for family in (4, 6)
        for a in offsets
        for b in offsets
        for port in ports
        for proto in (TCP, UDP)
    ]
    for _ in range(2):  # the second round is answered from the cache (when it is big enough)
        for family, initiator, responder, port, proto in asked:
            got = inv.attribute(family, BASE + initiator, BASE + responder, port, proto)
            assert got == oracle(config, family, initiator, responder, port, proto)
    for family in (4, 6):
        for offset in offsets:
            assert inv.client_for(family, BASE + offset) == oracle_client(config, family, offset)
