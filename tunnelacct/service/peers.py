"""Who a tunnel address belongs to, kept current: the config's clients, with the addresses
their WireGuard peers allow (`wg show <iface> dump` of each [wireguard] interface, read every
refresh_s), as the attribution inventory the flow tables ask at each session's open."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.model import ClientConfig, Config
from tunnelacct.errors import TunnelacctError
from tunnelacct.sessions.attribution import Inventory
from tunnelacct.sessions.wgpeers import WireGuardError, clients_with_peers, read_wg_peers
from tunnelacct.store.inventory import sync_inventory

log = logging.getLogger(__name__)


class PeerIdentity:
    """The attribution inventory of one serve, and the WireGuard peers behind it."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._clients = config.clients
        self._inventory = Inventory.from_config(config)
        self._peers: dict[str, dict[str, tuple[str, ...]]] = {}  # interface -> last good peers
        self._problems: dict[str, str] = {}  # interface -> why its peers cannot be read

    def attribute(self, *args: Any) -> Any:
        """Inventory.attribute of the inventory as it is now (peers change it)."""
        return self._inventory.attribute(*args)

    def is_client(self, family: int, addr: int) -> bool:
        return self._inventory.is_client_address(family, addr)

    async def refresh(self, engine: AsyncEngine, *, initial: bool = False) -> None:
        """Read the peers of each [wireguard] interface; apply and store changed addresses
        (always at the `initial` read)."""
        for iface in self._config.wireguard.interfaces:
            try:
                self._peers[iface] = await asyncio.to_thread(read_wg_peers, iface)
                if self._problems.pop(iface, None) is not None:
                    log.info("wireguard peers of %s readable again", iface)
            except WireGuardError as e:
                if self._problems.get(iface) != str(e):
                    log.warning("%s; keeping the peers read before (%d)", e, len(self._peers))
                self._problems[iface] = str(e)
        merged: dict[str, tuple[str, ...]] = {}
        for peers in self._peers.values():
            for key, allowed in peers.items():
                merged[key] = tuple(dict.fromkeys((*merged.get(key, ()), *allowed)))
        clients = clients_with_peers(self._config.clients, merged)
        if clients == self._clients and not initial:
            return
        self._apply(clients)
        await sync_inventory(engine, dataclasses.replace(self._config, clients=clients))

    def _apply(self, clients: tuple[ClientConfig, ...]) -> None:
        changed = [c.id for c, old in zip(clients, self._clients, strict=True) if c != old]
        self._clients = clients
        with_peers = dataclasses.replace(self._config, clients=clients)
        self._inventory = Inventory.from_config(with_peers)
        if changed:
            log.info("clients with addresses from wireguard peers: %s", ", ".join(changed))

    async def keep_current(self, engine: AsyncEngine) -> None:
        """Forever: refresh every [wireguard] refresh_s; a failure is logged."""
        while True:
            await asyncio.sleep(self._config.wireguard.refresh_s)
            try:
                await self.refresh(engine)
            except TunnelacctError as e:
                log.warning("wireguard peer refresh failed: %s", e)
