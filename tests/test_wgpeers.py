"""wgpeers: parsing `wg show IFACE dump`, reading it from a real interface, merging into clients."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.netlab import TUNNEL_V4, TUNNEL_V6, WITH_UAPI_DIR, WireguardLab
from tunnelacct.config.model import ClientConfig
from tunnelacct.errors import TunnelacctError
from tunnelacct.sessions.wgpeers import (
    WireGuardError,
    clients_with_peers,
    parse_wg_dump,
    read_wg_peers,
)

needs_lab = pytest.mark.usefixtures("require_lab")  # skips, or under CI fails

ALICE = "A2CtwbblQTjBk55qQB2DZ5Nud4M5ZuOU0GM7TZ7Hb2I="
BOB = "8KcicGfBtlr6L1zjJajgqbmfZi2DDiEjZKAffaC2qTo="
CAROL = "MvUv+tUphpH+Om88ZRSYWhgAAe7UusKoEOcc4C592VU="
DAVE = "dJAYPT0oUnDtuTnIUIJNOeHmNB/L3XD4YDskVqA7UlM="
PSK = "1MjNDrZEaPU/O6pslIvfpJm5m4+PeWcoyWvUcj/Y1XI="

# As `wg show wg0 dump` prints it on a gateway (keys are real, made with wg genkey | wg pubkey).
INTERFACE_LINE = "\t".join(["yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", BOB, "51820", "off"])
DUMP = (
    "\n".join(
        [
            INTERFACE_LINE,
            # host bits set on purpose: wg prints what it was given, we normalise
            f"{ALICE}\t(none)\t10.98.1.2:41414\t100.64.0.2/32,fd00:64::2/128\t1718000000\t"
            "5316\t4772\toff",
            f"{BOB}\t{PSK}\t[fd00:98::2]:51820\t100.64.0.3/32,10.20.0.7/24,FD00:64::3/128\t0\t0\t0\t25",
            f"{CAROL}\t(none)\t(none)\t(none)\t0\t0\t0\toff",
            f"{DAVE}\t(none)\t(none)\t0.0.0.0/0,::/0\t0\t0\t0\toff",
        ]
    )
    + "\n"
)


def test_dump_gives_every_peer_with_normalised_allowed_ips() -> None:
    assert parse_wg_dump(DUMP) == {
        ALICE: ("100.64.0.2/32", "fd00:64::2/128"),
        BOB: ("100.64.0.3/32", "10.20.0.0/24", "fd00:64::3/128"),
        CAROL: (),
        DAVE: ("0.0.0.0/0", "::/0"),
    }


def test_interface_without_peers_gives_no_peers() -> None:
    assert parse_wg_dump(INTERFACE_LINE + "\n") == {}


def _peer(allowed: str = "100.64.0.2/32", key: str = ALICE, rx: str = "0") -> str:
    return f"{key}\t(none)\t(none)\t{allowed}\t0\t{rx}\t0\toff"


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("", 1, "empty output"),
        ("private\tpublic\t51820\n", 1, "expected 4 tab-separated interface fields"),
        # `wg show all dump` prefixes the interface name: one field too many
        (f"{INTERFACE_LINE}\nwg0\t{_peer()}\n", 2, "expected 8 tab-separated peer fields"),
        (f"{INTERFACE_LINE}\n{_peer()}\n{_peer().replace(chr(9), ' ')}\n", 3, "got 1"),
        (f"{INTERFACE_LINE}\n{_peer()}\n\n", 3, "got 1"),
        (f"{INTERFACE_LINE}\n{_peer(key='not-a-key')}\n", 2, "'not-a-key' is not a base64"),
        (f"{INTERFACE_LINE}\n{_peer()}\n{_peer(key=BOB)}\n{_peer()}\n", 4, "listed twice"),
        (f"{INTERFACE_LINE}\n{_peer('100.64.0.2/33')}\n", 2, "'100.64.0.2/33' is not a CIDR"),
        (f"{INTERFACE_LINE}\n{_peer('10.0.0.0/8,,')}\n", 2, "'' is not a CIDR"),
        (f"{INTERFACE_LINE}\n{_peer(rx='-1')}\n", 2, "transfer-rx '-1' is not a number"),
    ],
)
def test_malformed_dump_names_line_and_problem(text: str, line: int, why: str) -> None:
    with pytest.raises(WireGuardError) as caught:
        parse_wg_dump(text)
    assert caught.value.line == line
    assert f"line {line}: " in str(caught.value)
    assert why in str(caught.value)
    assert isinstance(caught.value, TunnelacctError)


def test_peers_add_allowed_ips_after_configured_addresses_without_duplicates() -> None:
    alice = ClientConfig("alice", "acme", "alice", addresses=("100.64.0.2/32",), public_key=ALICE)
    keyless = ClientConfig("printer", "acme", "printer", addresses=("100.64.0.9/32",))
    unknown = ClientConfig("carol", "acme", "carol", addresses=("100.64.0.4/32",), public_key=CAROL)
    bob = ClientConfig("bob", "acme", "bob", user="bob@acme", public_key=BOB)
    peers = {ALICE: ("fd00:64::2/128", "100.64.0.2/32"), BOB: ("100.64.0.3/32",), DAVE: ()}

    merged = clients_with_peers((alice, keyless, unknown, bob), peers)

    assert merged == (
        ClientConfig(
            "alice",
            "acme",
            "alice",
            addresses=("100.64.0.2/32", "fd00:64::2/128"),
            public_key=ALICE,
        ),
        keyless,
        unknown,
        ClientConfig(
            "bob", "acme", "bob", user="bob@acme", addresses=("100.64.0.3/32",), public_key=BOB
        ),
    )
    assert merged[1] is keyless and merged[2] is unknown
    assert alice.addresses == ("100.64.0.2/32",)  # inputs untouched
    assert clients_with_peers((), peers) == ()


def test_missing_wg_binary_is_a_wireguard_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-wg")
    with pytest.raises(WireGuardError, match=r"wg show wg0 dump: cannot run .*no-such-wg"):
        read_wg_peers("wg0", wg=missing)


def test_malformed_output_of_run_names_interface_and_line() -> None:
    with pytest.raises(WireGuardError, match=r"^wg show wg7 dump line 2: expected 8") as caught:
        read_wg_peers("wg7", run=lambda argv: INTERFACE_LINE + "\nbogus\n")
    assert (caught.value.interface, caught.value.line) == ("wg7", 2)


# -- the real thing: wireguard-go on the lab's gateway --------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[WireguardLab]:
    """One running WireGuard lab for this module's netns tests."""
    with WireguardLab() as lab:
        yield lab


def run_in(lab: WireguardLab, role: str) -> Callable[[list[str]], str]:
    """A `run` for read_wg_peers: argv inside the role's namespace, next to its wireguard-go."""

    def run(argv: list[str]) -> str:
        assert lab.workdir is not None
        uapi = str(lab.workdir / f"uapi-{role}")
        done = lab.run(role, ["sh", "-c", WITH_UAPI_DIR, uapi, *argv], check=False, timeout_s=10)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
        return done.stdout

    return run


@pytest.mark.netns
@needs_lab
def test_gateway_interface_gives_each_client_key_with_its_tunnel_addresses(
    lab: WireguardLab,
) -> None:
    peers = read_wg_peers("wg0", run=run_in(lab, "gw"))
    # oracle: the addresses the lab configured with `wg set ... allowed-ips`
    assert peers == {
        lab.public_keys[client]: (TUNNEL_V4[client], TUNNEL_V6[client])
        for client in ("alice", "bob")
    }


@pytest.mark.netns
@needs_lab
def test_missing_interface_is_a_wireguard_error_with_wg_stderr(lab: WireguardLab) -> None:
    with pytest.raises(WireGuardError, match=r"wg show wg9 dump: wg exited with status \d+: \S"):
        read_wg_peers("wg9", run=run_in(lab, "gw"))
