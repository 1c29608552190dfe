"""WireGuard peers of a running interface: public key -> allowed IPs, from `wg show IFACE dump`.

Lets a client be declared by public key only and take its tunnel addresses from the interface:

    peers = read_wg_peers("wg0")
    clients = clients_with_peers(config.clients, peers)
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import logging
import subprocess
from collections.abc import Callable, Mapping

from tunnelacct.config.model import ClientConfig
from tunnelacct.errors import TunnelacctError

log = logging.getLogger(__name__)

WG_TIMEOUT_S = 10.0
NONE = "(none)"  # how wg writes an absent key, endpoint or allowed-ips list
# wg(8) "dump": the interface line, then one line per peer, fields tab-separated.
INTERFACE_FIELDS = ("private-key", "public-key", "listen-port", "fwmark")
PEER_FIELDS = (
    "public-key",
    "preshared-key",
    "endpoint",
    "allowed-ips",
    "latest-handshake",
    "transfer-rx",
    "transfer-tx",
    "persistent-keepalive",
)
_COUNTER_FIELDS = ("latest-handshake", "transfer-rx", "transfer-tx")


class WireGuardError(TunnelacctError):
    """`wg` cannot be run or its dump is malformed: names the interface, the line and why."""

    def __init__(self, why: str, *, interface: str | None = None, line: int | None = None) -> None:
        self.why, self.interface, self.line = why, interface, line
        where = "wg show" + (f" {interface}" if interface else "") + " dump"
        if line is not None:
            where += f" line {line}"
        super().__init__(f"{where}: {why}")


def parse_wg_dump(text: str) -> dict[str, tuple[str, ...]]:
    """Public key -> allowed IPs (normalised CIDR strings) of each peer in `wg show IFACE dump`.

    A peer with allowed-ips "(none)" maps to (). Raises WireGuardError naming the 1-based line.
    """
    lines = text.splitlines()
    if not lines:
        raise WireGuardError("empty output, expected the interface line", line=1)
    _split(lines[0], 1, INTERFACE_FIELDS)
    peers: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = dict(zip(PEER_FIELDS, _split(line, number, PEER_FIELDS), strict=True))
        key = fields["public-key"]
        if not _is_wireguard_key(key):
            raise WireGuardError(f"public-key {key!r} is not a base64 32-byte key", line=number)
        if key in peers:
            raise WireGuardError(f"peer {key} is listed twice", line=number)
        for name in _COUNTER_FIELDS:
            if not fields[name].isdigit():
                raise WireGuardError(f"{name} {fields[name]!r} is not a number", line=number)
        peers[key] = _allowed_ips(fields["allowed-ips"], number)
    return peers


def read_wg_peers(
    interface: str,
    *,
    wg: str = "wg",
    run: Callable[[list[str]], str] | None = None,
) -> dict[str, tuple[str, ...]]:
    """Public key -> allowed IPs of the peers of a running interface, via `wg show IFACE dump`.

    `run(argv)` returns the command's stdout and may run it elsewhere (e.g. `ip netns exec`); it
    reports failure as the default does, by raising OSError, subprocess.CalledProcessError (with
    stderr) or subprocess.TimeoutExpired. Each becomes a WireGuardError carrying wg's stderr.
    """
    argv = [wg, "show", interface, "dump"]
    try:
        text = (run or _run)(argv)
    except subprocess.CalledProcessError as exc:
        stderr = _text(exc.stderr).strip() or "no error output"
        why = f"{wg} exited with status {exc.returncode}: {stderr}"
        raise WireGuardError(why, interface=interface) from None
    except subprocess.TimeoutExpired:
        raise WireGuardError(f"{wg} timed out", interface=interface) from None
    except OSError as exc:  # FileNotFoundError, PermissionError: the binary cannot be run
        raise WireGuardError(f"cannot run {wg!r}: {exc}", interface=interface) from None
    try:
        peers = parse_wg_dump(text)
    except WireGuardError as exc:
        raise WireGuardError(exc.why, interface=interface, line=exc.line) from None
    log.debug("read %d peers from %s", len(peers), interface)
    return peers


def clients_with_peers(
    clients: tuple[ClientConfig, ...], peers: Mapping[str, tuple[str, ...]]
) -> tuple[ClientConfig, ...]:
    """Clients whose public key is a peer get the peer's allowed IPs added to their addresses.

    Addresses stay in order, configured first, without duplicates (both sides are normalised
    CIDRs). Clients without a key, or whose key is not a peer, are returned unchanged. Pure.
    """
    merged: list[ClientConfig] = []
    for client in clients:
        allowed = peers.get(client.public_key) if client.public_key is not None else None
        if allowed is None:
            merged.append(client)
            continue
        addresses = tuple(dict.fromkeys((*client.addresses, *allowed)))
        merged.append(dataclasses.replace(client, addresses=addresses))
    return tuple(merged)


def _run(argv: list[str]) -> str:
    """Run argv without a shell and return its stdout; raise on failure or timeout."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WG_TIMEOUT_S, check=True)
    return done.stdout


def _split(line: str, number: int, names: tuple[str, ...]) -> list[str]:
    """The tab-separated fields of one dump line, checked against the expected count."""
    fields = line.split("\t")
    if len(fields) != len(names):
        what = "interface" if number == 1 else "peer"
        why = f"expected {len(names)} tab-separated {what} fields ({' '.join(names)}), got "
        raise WireGuardError(why + str(len(fields)), line=number)
    return fields


def _allowed_ips(value: str, number: int) -> tuple[str, ...]:
    """The comma-separated allowed-ips field as normalised CIDRs; "(none)" is ()."""
    if value == NONE:
        return ()
    cidrs: list[str] = []
    for item in value.split(","):
        try:
            cidr = str(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise WireGuardError(f"allowed-ips entry {item!r} is not a CIDR", line=number) from None
        if cidr not in cidrs:
            cidrs.append(cidr)
    return tuple(cidrs)


def _is_wireguard_key(value: str) -> bool:
    """True when `value` is the base64 text of a 32-byte WireGuard key."""
    try:
        return len(base64.b64decode(value, validate=True)) == 32
    except binascii.Error:
        return False


def _text(output: str | bytes | None) -> str:
    """Captured process output as text, whatever `run` captured it as."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
