"""Inventory: who and what a session belongs to, from its addresses, responder port and protocol.

Addresses arrive as the flow engine holds them: (family, int), family 4 or 6 and the address as
an unsigned integer (32-bit for IPv4, 128-bit for IPv6). No ipaddress objects on the hot path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeVar

from tunnelacct.config.model import ClientConfig, Config, OrgConfig, ResourceConfig
from tunnelacct.enums import IpProto
from tunnelacct.sessions.events import Attribution

DEFAULT_CACHE_SIZE = 65_536  # attribute() results kept before the cache is cleared
_ALL_PORTS = 65_536  # the width of "all ports", wider than any configured range
_NO_PORT = _ALL_PORTS + 1  # the "width" of a rule whose ranges miss the port: never chosen
_BITS = {4: 32, 6: 128}

_V = TypeVar("_V")
# family -> ((netmask, {masked network int: value}), ...), longest prefix first
_Levels = dict[int, tuple[tuple[int, dict[int, _V]], ...]]
# (inclusive port ranges or None for all, protocols, resource), in declaration order
_Rule = tuple[tuple[tuple[int, int], ...] | None, frozenset[int], ResourceConfig]


def _levels(items: Iterable[tuple[str, _V]]) -> _Levels[list[_V]]:
    """Index (CIDR, value) pairs by family and prefix length; values keep their given order."""
    by_length: dict[tuple[int, int], dict[int, list[_V]]] = {}
    for cidr, value in items:
        net = ipaddress.ip_network(cidr, strict=False)
        nets = by_length.setdefault((net.version, net.prefixlen), {})
        nets.setdefault(int(net.network_address), []).append(value)
    levels: _Levels[list[_V]] = {}
    for family, bits in _BITS.items():
        lengths = sorted((n for f, n in by_length if f == family), reverse=True)
        all_ones = (1 << bits) - 1
        levels[family] = tuple(
            (all_ones ^ ((1 << (bits - n)) - 1), by_length[(family, n)]) for n in lengths
        )
    return levels


class Inventory:
    """Clients by longest-prefix match of tunnel addresses; resources by address, port, protocol.

    Build one per Config with Inventory.from_config(config); a new config means a new Inventory.
    Lookups assume `addr` fits its family (< 2**32 for 4, < 2**128 for 6); other families match
    nothing.
    """

    __slots__ = (
        "_orgs",
        "_clients",
        "_resources",
        "_default_org",
        "_client_levels",
        "_resource_levels",
        "_cache",
        "_cache_size",
        "_shared",
    )

    def __init__(self, config: Config, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        """Index `config`'s clients and resources; attribute() keeps up to `cache_size` results."""
        self._orgs = config.orgs
        self._clients = config.clients
        self._resources = config.resources
        self._default_org = config.default_org
        # load_config() makes tunnel addresses unique; otherwise the first declared client wins.
        clients = _levels((cidr, c) for c in config.clients for cidr in c.addresses)
        self._client_levels: _Levels[ClientConfig] = {
            family: tuple((mask, {net: cs[0] for net, cs in nets.items()}) for mask, nets in level)
            for family, level in clients.items()
        }
        rules = _levels(
            (r.address, (r.ports, frozenset(int(p) for p in r.protocols), r))
            for r in config.resources
        )
        self._resource_levels: _Levels[tuple[_Rule, ...]] = {
            family: tuple(
                (mask, {net: tuple(rs) for net, rs in nets.items()}) for mask, nets in level
            )
            for family, level in rules.items()
        }
        self._cache: dict[tuple[int, int, int, int, int], Attribution] = {}
        self._cache_size = max(cache_size, 1)
        # bounded by the config: orgs x (clients + 1) x (resources + 1) at most
        self._shared: dict[tuple[str, int, int], Attribution] = {}

    @classmethod
    def from_config(cls, config: Config, *, cache_size: int = DEFAULT_CACHE_SIZE) -> Inventory:
        """The Inventory of `config`'s clients and resources; `cache_size` bounds attribute()."""
        return cls(config, cache_size)

    @property
    def orgs(self) -> tuple[OrgConfig, ...]:
        """The configured orgs, in declaration order."""
        return self._orgs

    @property
    def clients(self) -> tuple[ClientConfig, ...]:
        """The configured clients, in declaration order."""
        return self._clients

    @property
    def resources(self) -> tuple[ResourceConfig, ...]:
        """The configured resources, in declaration order."""
        return self._resources

    def client_for(self, family: int, addr: int) -> ClientConfig | None:
        """The client whose tunnel CIDR is the longest prefix containing `addr`, or None."""
        for mask, nets in self._client_levels.get(family, ()):
            client = nets.get(addr & mask)
            if client is not None:
                return client
        return None

    def is_client_address(self, family: int, addr: int) -> bool:
        """True when `addr` lies in some client's tunnel CIDR."""
        return self.client_for(family, addr) is not None

    def resource_for(
        self, family: int, addr: int, port: int, proto: IpProto
    ) -> ResourceConfig | None:
        """The most specific resource serving addr:port/proto, or None.

        Most specific = longest prefix, then the narrowest port range containing `port` (all
        ports is the widest), then declaration order.
        """
        for mask, nets in self._resource_levels.get(family, ()):
            rules = nets.get(addr & mask)
            if rules is None:
                continue
            best: ResourceConfig | None = None
            best_width = _NO_PORT
            for ranges, protocols, resource in rules:
                if proto not in protocols:
                    continue
                width = _ALL_PORTS if ranges is None else _width(ranges, port)
                if width < best_width:  # strict: an earlier declaration keeps a tie
                    best = resource
                    best_width = width
            if best is not None:
                return best
        return None

    def attribute(
        self, family: int, initiator: int, responder: int, responder_port: int, proto: IpProto
    ) -> Attribution:
        """Attribute a new session (cached).

        client = LPM of the initiator, else of the responder. resource = resource_for() on the
        responder side only: a session is "to" a resource, so an initiator that happens to sit
        in a resource CIDR does not make the session that resource's. org = the resource's org,
        else the client's, else the configured default org.
        """
        key = (family, initiator, responder, responder_port, proto)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        client = self.client_for(family, initiator) or self.client_for(family, responder)
        resource = self.resource_for(family, responder, responder_port, proto)
        if resource is not None:
            org = resource.org
        elif client is not None:
            org = client.org
        else:
            org = self._default_org
        # one Attribution per (org, client, resource) the config can produce, shared by all
        # their sessions: a session-heavy gateway opens thousands a second (issue 21)
        # (by identity: the config's objects live as long as this Inventory, and hashing a
        # frozen dataclass hashes every field)
        shared_key = (org, id(client), id(resource))
        result = self._shared.get(shared_key)
        if result is None:
            result = self._shared[shared_key] = Attribution(
                org_id=org,
                client_id=None if client is None else client.id,
                client_name=None if client is None else client.name,
                user_id=None if client is None else client.user,
                resource_id=None if resource is None else resource.id,
                resource_name=None if resource is None else resource.name,
            )
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # cheaper than LRU bookkeeping; refills from the live sessions
        self._cache[key] = result
        return result


def _width(ranges: tuple[tuple[int, int], ...], port: int) -> int:
    """The width of the range containing `port`, or _NO_PORT when none does."""
    for lo, hi in ranges:
        if lo <= port <= hi:
            return hi - lo + 1
    return _NO_PORT
